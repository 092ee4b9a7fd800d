//! The io_uring accept programs' part of the layout: `struct io_kiocb` fields and
//! which prototype `io_uring:io_uring_complete` has here. Optional: a kernel without
//! io_uring, or with a layout sockq does not know, runs every other probe.
//!
//! The kernel: <https://elixir.bootlin.com/linux/v6.18/source/include/trace/events/io_uring.h>,
//! `io_uring/io_uring.h` (`io_fill_cqe_req`), `io_uring/io_uring.c` (`io_fill_cqe_aux`).

use btf_rs::Type;
use collector_common::{
    io_uring::{COMPLETE_CQE, COMPLETE_VALUES},
    layout::KernelOffsets,
};

use super::{Layout, LayoutError};

impl Layout {
    /// Why the io_uring accept probes cannot run here, if they cannot.
    pub fn uring_offsets_error(&self) -> Option<LayoutError> {
        self.uring_offsets(&mut KernelOffsets::default()).err()
    }

    /// The `struct io_kiocb` fields the io_uring programs read and the prototype of
    /// `io_uring_complete`. Optional: a kernel without io_uring (or with a layout
    /// sockq does not know) runs every other probe.
    pub(super) fn uring_offsets(&self, o: &mut KernelOffsets) -> Result<(), LayoutError> {
        o.uring_complete_layout = self.uring_complete_layout()?;
        o.req_opcode = self.offset("io_kiocb", "opcode")?;
        o.req_flags = self.offset("io_kiocb", "flags")?;
        o.req_ctx = self.offset("io_kiocb", "ctx")?;
        o.req_user_data = self.offset("io_kiocb", "cqe.user_data")?;
        o.req_file = self.offset("io_kiocb", "file")?;
        o.req_accept_file_slot =
            self.offset("io_kiocb", "cmd")? + self.offset("io_accept", "file_slot")?;
        o.req_multishot_bit = self
            .enum_value("REQ_F_APOLL_MULTISHOT_BIT")?
            .and_then(|v| u32::try_from(v).ok())
            .filter(|bit| *bit < 32)
            .ok_or_else(|| LayoutError::NoMember {
                strukt: "enum io_req_flags (a bit below 32)".into(),
                path: "REQ_F_APOLL_MULTISHOT_BIT".into(),
            })?;
        Ok(())
    }

    /// Which `io_uring_complete` prototype this kernel has, from the type of its raw
    /// tracepoint (`btf_trace_io_uring_complete`: the tracepoint's arguments after a
    /// `void *` of the tracing machinery's own).
    fn uring_complete_layout(&self) -> Result<u32, LayoutError> {
        const NAME: &str = "btf_trace_io_uring_complete";
        let unknown = |why: &str| LayoutError::NoMember {
            strukt: format!("{NAME} (the io_uring_complete tracepoint)"),
            path: why.into(),
        };
        let lookup = |what: &str, source| LayoutError::Lookup {
            what: what.into(),
            source,
        };
        let types = self
            .btf
            .resolve_types_by_name(NAME)
            .map_err(|_| unknown("absent: no io_uring, or no such tracepoint"))?;
        let Some(Type::Typedef(typedef)) = types.into_iter().next() else {
            return Err(unknown("not a typedef"));
        };
        let pointer = self
            .btf
            .resolve_chained_type(&typedef)
            .map_err(|e| lookup(NAME, e))?;
        let Type::Ptr(pointer) = pointer else {
            return Err(unknown("not a function pointer"));
        };
        let Type::FuncProto(proto) = self
            .btf
            .resolve_chained_type(&pointer)
            .map_err(|e| lookup(NAME, e))?
        else {
            return Err(unknown("not a function pointer"));
        };
        // The third tracepoint argument: the CQE, or the user_data of the old layout.
        let Some(third) = proto.parameters.get(3) else {
            return Err(unknown("fewer than three arguments"));
        };
        let third = self.strip(
            self.btf
                .resolve_chained_type(third)
                .map_err(|e| lookup(NAME, e))?,
        )?;
        match (proto.parameters.len(), third) {
            (4, Type::Ptr(p)) => match self.btf.resolve_chained_type(&p) {
                Ok(Type::Struct(s)) if self.name_of(&s).is_ok_and(|n| n == "io_uring_cqe") => {
                    Ok(COMPLETE_CQE)
                }
                _ => Err(unknown(
                    "(ctx, req, a pointer that is not a struct io_uring_cqe)",
                )),
            },
            (6.., Type::Int(i)) if i.size() == 8 => Ok(COMPLETE_VALUES),
            (n, _) => Err(unknown(&format!(
                "{} arguments, not (ctx, req, cqe) nor (ctx, req, user_data, res, cflags, ...)",
                n - 1
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::btf_layout::tests::{btf_blob, running};

    #[test]
    fn resolves_io_uring_fields_of_the_running_kernel() {
        let Some(layout) = running() else { return };
        let o = layout.kernel_offsets().expect("offsets");
        if let Some(e) = layout.uring_offsets_error() {
            // A kernel without io_uring: the probes stay off, the rest runs.
            eprintln!("skipping: {e}");
            assert_eq!(o.uring_valid, 0);
            return;
        }
        assert_eq!(o.uring_valid, 1);
        // `file`, in a union with the command (`struct io_cmd_data`, 64 bytes), opens
        // struct io_kiocb; the opcode follows; the accept's file slot is in the command.
        assert_eq!(o.req_file, 0, "{o:?}");
        assert!(o.req_opcode >= 64, "{o:?}");
        assert!(
            o.req_accept_file_slot > 0 && o.req_accept_file_slot < o.req_opcode,
            "{o:?}"
        );
        assert!(o.req_multishot_bit > 0 && o.req_multishot_bit < 32, "{o:?}");
        // 6.13 on: (ctx, req, cqe).
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let mut parts = release.trim().split(['.', '-']).map(|p| p.parse::<u32>());
        if let (Some(Ok(major)), Some(Ok(minor))) = (parts.next(), parts.next())
            && (major, minor) >= (6, 13)
        {
            assert_eq!(o.uring_complete_layout, COMPLETE_CQE);
        }
    }

    /// BTF with `btf_trace_io_uring_complete`, a pointer to a function taking
    /// `params` (type ids: 1 `u64`, 2 `int`, 3 `void *`, 5 `struct io_uring_cqe *`).
    fn complete_tracepoint_btf(params: &[u32]) -> Vec<u8> {
        let strings = b"\0u64\0int\0io_uring_cqe\0btf_trace_io_uring_complete\0";
        let name = |n: &str| {
            let needle = format!("\0{n}\0");
            let at = strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .expect("name");
            u32::try_from(at + 1).expect("offset")
        };
        let vlen = u32::try_from(params.len()).expect("params");
        #[rustfmt::skip]
        let mut types: Vec<u32> = vec![
            // [1] u64, [2] int, [3] void *, [4] struct io_uring_cqe, [5] a pointer to it
            name("u64"), 1 << 24, 8, 64,
            name("int"), 1 << 24, 4, (1 << 24) | 32,
            0, 2 << 24, 0,
            name("io_uring_cqe"), 4 << 24, 16,
            0, 2 << 24, 4,
            // [6] void (*)(params...)
            0, (13 << 24) | vlen, 0,
        ];
        types.extend(params.iter().flat_map(|&t| [0, t]));
        // [7] a pointer to [6], [8] the typedef
        types.extend([
            0,
            2 << 24,
            6,
            name("btf_trace_io_uring_complete"),
            8 << 24,
            7,
        ]);
        btf_blob(&types, strings)
    }

    #[test]
    fn tells_the_io_uring_complete_prototypes_apart() {
        let layout = |params: &[u32]| {
            Layout::from_bytes(&complete_tracepoint_btf(params))
                .expect("parses")
                .uring_complete_layout()
        };
        // 6.13 on: (ctx, req, cqe) after the tracing machinery's void *.
        assert_eq!(layout(&[3, 3, 3, 5]).expect("6.13 layout"), COMPLETE_CQE);
        // 5.19 to 6.12: (ctx, req, user_data, res, cflags, extra1, extra2).
        assert_eq!(
            layout(&[3, 3, 3, 1, 2, 2, 1, 1]).expect("6.1 layout"),
            COMPLETE_VALUES
        );
        // Anything else is refused, not guessed: a pointer that is no CQE, too few
        // arguments.
        assert!(layout(&[3, 3, 3, 3]).is_err());
        assert!(layout(&[3, 3, 3]).is_err());
        assert!(
            Layout::from_bytes(&btf_blob(&[1, 1 << 24, 4, 32], b"\0int\0"))
                .expect("parses")
                .uring_complete_layout()
                .is_err()
        );
    }
}
