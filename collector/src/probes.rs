//! Loading sockq's eBPF object into the kernel, attaching each probe by the cheapest
//! mechanism that works here (probed at run time, never by kernel version), and reading
//! what the programs aggregate.
//!
//! Probes and their mechanisms, best first:
//! - `inet_sock_set_state`: raw tracepoint (Linux 4.17+), else classic tracepoint
//!   `sock/inet_sock_set_state` (4.16+, needs tracefs).

use std::{collections::BTreeMap, path::Path};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{RawTracePoint, TracePoint},
};
use collector_common::{
    layout::{KERNEL_OFFSETS_SYMBOL, KernelOffsets},
    listener::ListenerEvent,
    stats::{STAT_EVENTS_LOST, STAT_READ_ERRORS, STAT_TRANSITIONS_FULL},
    tcp_state::TransitionKey as RawTransitionKey,
};

use crate::{
    kernel_layout::{Layout, LayoutError},
    model::{ProbeStatus, TransitionKey},
    tracefs,
};

/// The eBPF object built by `build.rs`; empty when built with `AYA_BUILD_SKIP=1`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sockq"));

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "this sockq binary was built without its eBPF programs (AYA_BUILD_SKIP); \
         rebuild with `cargo xtask build`"
    )]
    NoObject,
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("loading the eBPF object into the kernel failed")]
    Load {
        #[source]
        source: aya::EbpfError,
    },
    #[error("the eBPF object has no map `{0}`")]
    MissingMap(&'static str),
    #[error("eBPF map `{name}`")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("no probe could be attached: {0}")]
    NothingAttached(String),
}

/// Counters the programs keep about themselves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProgramStats {
    /// Listener events that found the ring buffer full.
    pub events_lost: u64,
    /// Transitions not counted because the transition map was full.
    pub transitions_full: u64,
    /// Failed kernel reads.
    pub read_errors: u64,
}

/// The loaded object and the maps userspace reads.
pub struct Probes {
    // Keeps programs and links alive; dropping it detaches everything.
    _ebpf: Ebpf,
    status: Vec<ProbeStatus>,
    transitions: PerCpuHashMap<MapData, RawTransitionKey, u64>,
    stats: PerCpuArray<MapData, u64>,
}

/// Resolves the offsets the programs need on this kernel: struct layout from BTF,
/// tracepoint record layout from tracefs when it is mounted.
pub fn kernel_offsets(tracefs_root: Option<&Path>) -> Result<KernelOffsets, ProbeError> {
    let layout = Layout::from_running_kernel()?;
    let mut offsets = layout.kernel_offsets()?;
    if let Some(root) = tracefs_root {
        match tracefs::field_offsets(root, "sock", "inet_sock_set_state") {
            Ok(fields) => {
                offsets.tp_state_skaddr = fields.get("skaddr").copied().unwrap_or(0);
                offsets.tp_state_oldstate = fields.get("oldstate").copied().unwrap_or(0);
                offsets.tp_state_newstate = fields.get("newstate").copied().unwrap_or(0);
            }
            Err(e) => tracing::debug!("no classic tracepoint layout: {e}"),
        }
    }
    Ok(offsets)
}

impl Probes {
    /// Loads the object, attaches every probe it can, and takes the ring buffer of
    /// listener events. Fails only when nothing at all can be attached.
    pub fn load(
        offsets: &KernelOffsets,
        tracefs_root: Option<&Path>,
    ) -> Result<(Self, RingBuf<MapData>), ProbeError> {
        if EBPF_OBJECT.is_empty() {
            return Err(ProbeError::NoObject);
        }
        let mut ebpf = EbpfLoader::new()
            .override_global(KERNEL_OFFSETS_SYMBOL, offsets, true)
            .load(EBPF_OBJECT)
            .map_err(|source| ProbeError::Load { source })?;

        let status = vec![attach_inet_sock_set_state(&mut ebpf, offsets, tracefs_root)];
        if status.iter().all(|s| !s.attached) {
            let why = status
                .iter()
                .map(|s| format!("{}: {}", s.name, s.detail))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(ProbeError::NothingAttached(why));
        }

        let events = RingBuf::try_from(take_map(&mut ebpf, "EVENTS")?).map_err(|source| {
            ProbeError::Map {
                name: "EVENTS",
                source,
            }
        })?;
        let transitions =
            PerCpuHashMap::try_from(take_map(&mut ebpf, "TRANSITIONS")?).map_err(|source| {
                ProbeError::Map {
                    name: "TRANSITIONS",
                    source,
                }
            })?;
        let stats = PerCpuArray::try_from(take_map(&mut ebpf, "STATS")?).map_err(|source| {
            ProbeError::Map {
                name: "STATS",
                source,
            }
        })?;
        Ok((
            Self {
                _ebpf: ebpf,
                status,
                transitions,
                stats,
            },
            events,
        ))
    }

    pub fn status(&self) -> &[ProbeStatus] {
        &self.status
    }

    /// TCP state transitions counted in the kernel, summed over CPUs.
    pub fn transitions(&self) -> Result<BTreeMap<TransitionKey, u64>, ProbeError> {
        let mut out = BTreeMap::new();
        for entry in self.transitions.iter() {
            let (key, per_cpu) = entry.map_err(|source| ProbeError::Map {
                name: "TRANSITIONS",
                source,
            })?;
            let total: u64 = per_cpu.iter().copied().fold(0, u64::wrapping_add);
            out.insert(
                TransitionKey {
                    netns: u64::from(key.netns),
                    from: key.from,
                    to: key.to,
                },
                total,
            );
        }
        Ok(out)
    }

    pub fn program_stats(&self) -> Result<ProgramStats, ProbeError> {
        let read = |index: u32| -> Result<u64, ProbeError> {
            let per_cpu = self
                .stats
                .get(&index, 0)
                .map_err(|source| ProbeError::Map {
                    name: "STATS",
                    source,
                })?;
            Ok(per_cpu.iter().copied().fold(0, u64::wrapping_add))
        };
        Ok(ProgramStats {
            events_lost: read(STAT_EVENTS_LOST)?,
            transitions_full: read(STAT_TRANSITIONS_FULL)?,
            read_errors: read(STAT_READ_ERRORS)?,
        })
    }
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, ProbeError> {
    ebpf.take_map(name).ok_or(ProbeError::MissingMap(name))
}

/// Raw tracepoint first; the classic tracepoint when that fails.
fn attach_inet_sock_set_state(
    ebpf: &mut Ebpf,
    offsets: &KernelOffsets,
    tracefs_root: Option<&Path>,
) -> ProbeStatus {
    const NAME: &str = "inet_sock_set_state";
    let raw_error = match attach_raw(ebpf, "inet_sock_set_state_raw", NAME) {
        Ok(()) => return attached(NAME, "raw_tracepoint"),
        Err(e) => e,
    };
    tracing::debug!("raw tracepoint {NAME}: {raw_error}; trying the classic tracepoint");
    let classic = if tracefs_root.is_none() {
        Err("tracefs is not mounted".to_owned())
    } else if offsets.tp_state_skaddr == 0 {
        Err("its tracefs format could not be read".to_owned())
    } else {
        attach_classic(ebpf, "inet_sock_set_state_tp", "sock", NAME)
    };
    match classic {
        Ok(()) => attached(NAME, "tracepoint"),
        Err(classic_error) => ProbeStatus {
            name: NAME,
            attached: false,
            detail: format!("raw tracepoint: {raw_error}; tracepoint: {classic_error}"),
        },
    }
}

fn attached(name: &'static str, mechanism: &str) -> ProbeStatus {
    ProbeStatus {
        name,
        attached: true,
        detail: mechanism.to_owned(),
    }
}

fn attach_raw(ebpf: &mut Ebpf, program: &str, tracepoint: &str) -> Result<(), String> {
    let prog: &mut RawTracePoint = ebpf
        .program_mut(program)
        .ok_or_else(|| format!("program {program} missing from the object"))?
        .try_into()
        .map_err(|e| format!("{e}"))?;
    prog.load().map_err(|e| crate::error_chain(&e))?;
    prog.attach(tracepoint)
        .map_err(|e| crate::error_chain(&e))?;
    Ok(())
}

fn attach_classic(
    ebpf: &mut Ebpf,
    program: &str,
    category: &str,
    name: &str,
) -> Result<(), String> {
    let prog: &mut TracePoint = ebpf
        .program_mut(program)
        .ok_or_else(|| format!("program {program} missing from the object"))?
        .try_into()
        .map_err(|e| format!("{e}"))?;
    prog.load().map_err(|e| crate::error_chain(&e))?;
    prog.attach(category, name)
        .map_err(|e| crate::error_chain(&e))?;
    Ok(())
}

/// Decodes one ring buffer record; `None` when its size is not a `ListenerEvent`'s.
pub fn decode_listener_event(bytes: &[u8]) -> Option<ListenerEvent> {
    if bytes.len() < std::mem::size_of::<ListenerEvent>() {
        return None;
    }
    // SAFETY: the length is checked above, ListenerEvent is Pod (any bit pattern is
    // valid) and read_unaligned imposes no alignment requirement.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<ListenerEvent>()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_records_are_rejected() {
        assert!(decode_listener_event(&[0u8; 10]).is_none());
        let bytes = [0u8; std::mem::size_of::<ListenerEvent>()];
        let ev = decode_listener_event(&bytes).expect("decodes");
        assert_eq!(ev.port, 0);
    }
}
