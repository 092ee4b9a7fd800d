//! Attaching one probe: each of its hooks in turn (raw tracepoint, classic
//! tracepoint, kprobe, fexit), the first that loads and attaches wins; the status
//! says which, or why none did.

use std::path::Path;

use aya::{
    Ebpf,
    programs::{FExit, KProbe, RawTracePoint, TracePoint},
};

use super::{
    offsets::KernelInfo,
    table::{Hook, ProbeSpec},
};
use crate::{kernel::tracefs, model::ProbeStatus};

/// Tries each hook of `spec` in order; the first that loads and attaches wins. Also
/// returns that hook's program.
pub fn attach(
    ebpf: &mut Ebpf,
    spec: &ProbeSpec,
    kernel: &KernelInfo,
    tracefs_root: Option<&Path>,
) -> (ProbeStatus, Option<&'static str>) {
    let mut failures = Vec::new();
    // An fexit program written for another prototype of its function is not tried.
    let fits = |hook: &&Hook| match **hook {
        Hook::FExit { function, args, .. } => kernel
            .function_args
            .get(function)
            .is_none_or(|&n| args == 0 || n == args),
        _ => true,
    };
    for hook in spec.hooks.iter().filter(fits) {
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
            Hook::FExit {
                program, function, ..
            } => match kernel.function_args.get(function) {
                None => Err(format!("this kernel's BTF has no function {function}")),
                Some(_) => attach_fexit(ebpf, program, function).map(|()| "fexit".to_owned()),
            },
        };
        match result {
            Ok(mechanism) => {
                let status = ProbeStatus {
                    name: spec.name,
                    attached: true,
                    detail: mechanism,
                };
                return (status, Some(hook.program()));
            }
            Err(e) => {
                let kind = match hook {
                    Hook::Raw { .. } => "raw tracepoint",
                    Hook::Classic { .. } => "tracepoint",
                    Hook::KProbe { .. } => "kprobe",
                    Hook::FExit { .. } => "fexit",
                };
                tracing::debug!("probe {}: {kind}: {e}", spec.name);
                failures.push(format!("{kind}: {e}"));
            }
        }
    }
    let status = ProbeStatus {
        name: spec.name,
        attached: false,
        detail: failures.join("; "),
    };
    (status, None)
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

fn attach_fexit(ebpf: &mut Ebpf, name: &str, function: &str) -> Result<(), String> {
    let btf = aya::Btf::from_sys_fs().map_err(|e| crate::error_chain(&e))?;
    let prog: &mut FExit = program(ebpf, name)?;
    prog.load(function, &btf).map_err(|e| {
        let errno = match &e {
            aya::programs::ProgramError::LoadError { io_error, .. } => io_error.raw_os_error(),
            _ => None,
        };
        match errno {
            // What kernels without BPF trampolines (or that forbid tracing programs)
            // answer, with an empty verifier log.
            Some(libc::EPERM | libc::EOPNOTSUPP | ENOTSUPP) => format!(
                "this kernel does not load fexit programs ({})",
                crate::error_chain(&e)
            ),
            _ => crate::error_chain(&e),
        }
    })?;
    prog.attach().map_err(|e| crate::error_chain(&e))?;
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

/// The kernel's own "operation not supported" (`include/linux/errno.h`, not in libc).
const ENOTSUPP: i32 = 524;
