//! The eBPF object's `bpf_rdonly_cast` calls, made real before it is loaded.
//!
//! Rust cannot name a kfunc, so the programs call a placeholder helper number
//! (`RDONLY_CAST_PLACEHOLDER`, `kernel::Kptr` in the eBPF crate). Before aya parses
//! the object, every such call in its code sections becomes either the kfunc call
//! (`BPF_PSEUDO_KFUNC_CALL` with the kfunc's vmlinux BTF id: the verifier types its
//! result, the JIT makes it a register move) or, on a kernel without the kfunc,
//! `r0 = r1`, an instruction every kernel accepts where it is never reached (the
//! programs cast only with a nonzero BTF id, which userspace then leaves at 0).

use collector_common::layout::RDONLY_CAST_PLACEHOLDER;
use object::{Object as _, ObjectSection as _, SectionKind};

/// `BPF_JMP | BPF_CALL`.
const CALL: u8 = 0x85;
/// `BPF_ALU64 | BPF_MOV | BPF_X`.
const MOV64_REG: u8 = 0xbf;
/// `src_reg` of a call to a kernel function by BTF id.
const BPF_PSEUDO_KFUNC_CALL: u8 = 2;
const INSN: usize = 8;

/// What each placeholder call becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CastCall {
    /// The kfunc, by its id in the kernel's BTF.
    Kfunc(u32),
    /// `r0 = r1`: the kernel has no such kfunc.
    Identity,
}

#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    #[error("cannot parse the eBPF object")]
    Parse(#[source] object::Error),
    #[error("section `{0}` lies outside the eBPF object")]
    Section(String),
}

/// A copy of `elf` (8-byte aligned, as aya's parser needs) with every placeholder
/// call of its code sections rewritten; the number rewritten.
pub fn patch(elf: &[u8], call: CastCall) -> Result<(AlignedObject, usize), PatchError> {
    let file = object::File::parse(elf).map_err(PatchError::Parse)?;
    let mut ranges = Vec::new();
    for section in file.sections() {
        if section.kind() != SectionKind::Text {
            continue;
        }
        let Some((start, size)) = section.file_range() else {
            continue;
        };
        let range = usize::try_from(start)
            .ok()
            .zip(usize::try_from(size).ok())
            .and_then(|(start, size)| Some(start..start.checked_add(size)?))
            .filter(|r| r.end <= elf.len())
            .ok_or_else(|| PatchError::Section(section.name().unwrap_or("?").to_owned()))?;
        ranges.push(range);
    }
    let mut object = AlignedObject::new(elf);
    let bytes = object.bytes_mut();
    let patched = ranges
        .into_iter()
        .map(|r| patch_instructions(&mut bytes[r], call))
        .sum();
    Ok((object, patched))
}

/// Rewrites the placeholder calls among the instructions of `code`; how many.
pub fn patch_instructions(code: &mut [u8], call: CastCall) -> usize {
    let mut patched = 0;
    for insn in code.chunks_exact_mut(INSN) {
        let imm = i32::from_le_bytes([insn[4], insn[5], insn[6], insn[7]]);
        // A helper call (registers and offset 0) to the placeholder number.
        if insn[0] != CALL || insn[1] != 0 || insn[2..4] != [0, 0] || imm != RDONLY_CAST_PLACEHOLDER
        {
            continue;
        }
        match call {
            CastCall::Kfunc(id) => {
                insn[1] = BPF_PSEUDO_KFUNC_CALL << 4;
                insn[4..8].copy_from_slice(&id.to_le_bytes());
            }
            CastCall::Identity => {
                // dst r0, src r1.
                insn.copy_from_slice(&[MOV64_REG, 1 << 4, 0, 0, 0, 0, 0, 0]);
            }
        }
        patched += 1;
    }
    patched
}

/// An object's bytes in 8-byte aligned memory.
pub struct AlignedObject {
    words: Vec<u64>,
    len: usize,
}

impl AlignedObject {
    fn new(bytes: &[u8]) -> Self {
        let mut object = Self {
            words: vec![0; bytes.len().div_ceil(8)],
            len: bytes.len(),
        };
        object.bytes_mut().copy_from_slice(bytes);
        object
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `words` holds at least `len` initialised bytes; u8 has no alignment.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, borrowed mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast::<u8>(), self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insn(code: u8, regs: u8, off: i16, imm: i32) -> [u8; 8] {
        let mut i = [0u8; 8];
        i[0] = code;
        i[1] = regs;
        i[2..4].copy_from_slice(&off.to_le_bytes());
        i[4..8].copy_from_slice(&imm.to_le_bytes());
        i
    }

    fn program() -> Vec<u8> {
        [
            insn(MOV64_REG, 0x61, 0, 0),                  // r1 = r6
            insn(CALL, 0, 0, RDONLY_CAST_PLACEHOLDER),    // the placeholder
            insn(CALL, 0, 0, 113),                        // bpf_probe_read_kernel
            insn(CALL, 0x10, 0, RDONLY_CAST_PLACEHOLDER), // a bpf-to-bpf call: not ours
            insn(0x18, 0, 0, RDONLY_CAST_PLACEHOLDER),    // an ld_imm64 of the number
            insn(CALL, 0, 0, RDONLY_CAST_PLACEHOLDER),
        ]
        .concat()
    }

    #[test]
    fn placeholder_calls_become_the_kfunc_call() {
        let mut code = program();
        let before = code.clone();
        assert_eq!(
            patch_instructions(&mut code, CastCall::Kfunc(0x1234_5678)),
            2
        );
        let kfunc = insn(CALL, 0x20, 0, 0x1234_5678);
        assert_eq!(code[8..16], kfunc);
        assert_eq!(code[40..48], kfunc);
        // Everything else as it was.
        assert_eq!(code[..8], before[..8]);
        assert_eq!(code[16..40], before[16..40]);
    }

    #[test]
    fn without_the_kfunc_placeholder_calls_become_r0_eq_r1() {
        let mut code = program();
        assert_eq!(patch_instructions(&mut code, CastCall::Identity), 2);
        assert_eq!(code[8..16], insn(MOV64_REG, 0x10, 0, 0));
        assert_eq!(code[40..48], insn(MOV64_REG, 0x10, 0, 0));
        assert!(!code.chunks(8).any(|i| i[0] == CALL
            && i[1] == 0
            && i[4..8] == RDONLY_CAST_PLACEHOLDER.to_le_bytes()));
    }

    #[test]
    fn a_partial_instruction_at_the_end_is_left() {
        let mut code = program();
        code.truncate(44);
        assert_eq!(patch_instructions(&mut code, CastCall::Identity), 1);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(matches!(
            patch(b"not an elf", CastCall::Identity),
            Err(PatchError::Parse(_))
        ));
    }

    #[test]
    fn the_copy_is_aligned_and_equal() {
        let bytes: Vec<u8> = (0..=255).collect();
        let o = AlignedObject::new(&bytes[1..]);
        assert_eq!(o.bytes(), &bytes[1..]);
        assert_eq!(o.bytes().as_ptr() as usize % 8, 0);
    }
}
