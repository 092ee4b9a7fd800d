//! Attaching one probe: each of its hooks in turn (raw tracepoint, classic
//! tracepoint, kprobe), the first that loads and attaches wins; the status says which,
//! or why none did.

use std::path::Path;

use aya::{
    Ebpf,
    programs::{KProbe, RawTracePoint, TracePoint},
};

use super::table::{Hook, ProbeSpec};
use crate::{kernel::tracefs, model::ProbeStatus};

/// Tries each hook of `spec` in order; the first that loads and attaches wins.
pub fn attach(ebpf: &mut Ebpf, spec: &ProbeSpec, tracefs_root: Option<&Path>) -> ProbeStatus {
    let mut failures = Vec::new();
    for hook in spec.hooks {
        let result = match *hook {
            Hook::Raw {
                program,
                tracepoint,
            } => attach_raw(ebpf, program, tracepoint).map(|()| "raw_tracepoint".to_owned()),
            Hook::Classic {
                program,
                category,
                name,
            } => match tracefs_root {
                None => Err("tracefs is not mounted".to_owned()),
                Some(root) if !tracefs::tracepoint_exists(root, category, name) => {
                    Err(format!("this kernel has no tracepoint {category}:{name}"))
                }
                Some(_) => {
                    attach_classic(ebpf, program, category, name).map(|()| "tracepoint".to_owned())
                }
            },
            Hook::KProbe { program, function } => {
                attach_kprobe(ebpf, program, function).map(|()| format!("kprobe {function}"))
            }
        };
        match result {
            Ok(mechanism) => {
                return ProbeStatus {
                    name: spec.name,
                    attached: true,
                    detail: mechanism,
                };
            }
            Err(e) => {
                let kind = match hook {
                    Hook::Raw { .. } => "raw tracepoint",
                    Hook::Classic { .. } => "tracepoint",
                    Hook::KProbe { .. } => "kprobe",
                };
                tracing::debug!("probe {}: {kind}: {e}", spec.name);
                failures.push(format!("{kind}: {e}"));
            }
        }
    }
    ProbeStatus {
        name: spec.name,
        attached: false,
        detail: failures.join("; "),
    }
}

/// Program `program` of the object, as the program type `T` its hook needs.
fn program<'a, T>(ebpf: &'a mut Ebpf, program: &str) -> Result<&'a mut T, String>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(program)
        .ok_or_else(|| format!("program {program} missing from the object"))?
        .try_into()
        .map_err(|e| format!("{e}"))
}

fn attach_raw(ebpf: &mut Ebpf, name: &str, tracepoint: &str) -> Result<(), String> {
    let prog: &mut RawTracePoint = program(ebpf, name)?;
    prog.load().map_err(|e| crate::error_chain(&e))?;
    prog.attach(tracepoint).map_err(|e| {
        let errno = match &e {
            aya::programs::ProgramError::SyscallError(s) => s.io_error.raw_os_error(),
            _ => None,
        };
        match errno {
            Some(libc::ENOENT) => format!("this kernel has no tracepoint {tracepoint}"),
            // bpf_probe_register(): the program reads past the tracepoint's arguments.
            Some(libc::EINVAL) => format!(
                "this kernel's {tracepoint} tracepoint has fewer arguments than the program \
                 reads ({})",
                crate::error_chain(&e)
            ),
            _ => crate::error_chain(&e),
        }
    })?;
    Ok(())
}

fn attach_kprobe(ebpf: &mut Ebpf, name: &str, function: &str) -> Result<(), String> {
    let prog: &mut KProbe = program(ebpf, name)?;
    prog.load().map_err(|e| crate::error_chain(&e))?;
    prog.attach(function, 0)
        .map_err(|e| crate::error_chain(&e))?;
    Ok(())
}

fn attach_classic(
    ebpf: &mut Ebpf,
    name: &str,
    category: &str,
    tracepoint: &str,
) -> Result<(), String> {
    let prog: &mut TracePoint = program(ebpf, name)?;
    prog.load().map_err(|e| crate::error_chain(&e))?;
    prog.attach(category, tracepoint)
        .map_err(|e| crate::error_chain(&e))?;
    Ok(())
}
