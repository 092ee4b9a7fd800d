//! The few bpf(2) and perf_event_open(2) calls the benchmark makes itself: loading
//! an empty program, attaching it as aya attaches sockq's (a raw tracepoint with
//! `BPF_RAW_TRACEPOINT_OPEN`; a classic tracepoint as a perf event with the program
//! set on it), and switching the kernel's per-program run-time statistics on for as
//! long as a descriptor is held (`BPF_ENABLE_STATS`, Linux 5.8).

use std::{
    ffi::CString,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use anyhow::{Context as _, Result, bail};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
const BPF_ENABLE_STATS: libc::c_long = 32;
const BPF_STATS_RUN_TIME: u32 = 0;
const PERF_TYPE_TRACEPOINT: u32 = 2;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
/// `_IOW('$', 8, __u32)` and `_IO('$', 0)`.
const PERF_EVENT_IOC_SET_BPF: libc::c_ulong = 0x4004_2408;
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;

/// The head of `union bpf_attr` for `BPF_PROG_LOAD`, up to `expected_attach_type`
/// (the kernel zero-fills the rest of a shorter attribute).
#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `union bpf_attr` for `BPF_RAW_TRACEPOINT_OPEN`.
#[repr(C)]
struct RawTracepointAttr {
    name: u64,
    prog_fd: u32,
    _pad: u32,
}

/// The first 64 bytes of `struct perf_event_attr` (`PERF_ATTR_SIZE_VER0`).
#[repr(C)]
struct PerfEventAttr {
    kind: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
}

const _: () = assert!(size_of::<ProgLoadAttr>() == 72);
const _: () = assert!(size_of::<PerfEventAttr>() == 64);

/// `mov64 r0, 0; exit`.
const EMPTY_PROGRAM: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];

fn fd_from(ret: libc::c_long, what: &str) -> Result<OwnedFd> {
    if ret < 0 {
        bail!("{what}: {}", std::io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as i32) })
}

/// The program types the floor loads.
#[derive(Clone, Copy, Debug)]
pub enum ProgramType {
    Tracepoint = 5,
    RawTracepoint = 17,
}

/// An empty program of `prog_type`, named after `hook`.
pub fn load_empty(prog_type: ProgramType, hook: &str) -> Result<OwnedFd> {
    let license = c"GPL";
    let mut prog_name = [0u8; 16];
    for (dst, src) in prog_name
        .iter_mut()
        .zip(format!("floor_{hook}").bytes().take(15))
    {
        *dst = if src.is_ascii_alphanumeric() {
            src
        } else {
            b'_'
        };
    }
    let mut log = vec![0u8; 4096];
    let attr = ProgLoadAttr {
        prog_type: prog_type as u32,
        insn_cnt: EMPTY_PROGRAM.len() as u32,
        insns: EMPTY_PROGRAM.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        kern_version: 0,
        prog_flags: 0,
        prog_name,
        prog_ifindex: 0,
        expected_attach_type: 0,
    };
    // SAFETY: `attr` and the buffers it points to outlive the call; the size is
    // that of `attr`.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &raw const attr,
            size_of::<ProgLoadAttr>() as u32,
        )
    };
    fd_from(ret, "loading an empty program").with_context(|| {
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        format!("verifier log: {}", String::from_utf8_lossy(&log[..end]))
    })
}

/// Attaches `prog` to raw tracepoint `name`; detached when the descriptor closes.
pub fn raw_tracepoint_open(name: &str, prog: &OwnedFd) -> Result<OwnedFd> {
    let name_c = CString::new(name)?;
    let attr = RawTracepointAttr {
        name: name_c.as_ptr() as u64,
        prog_fd: prog.as_raw_fd() as u32,
        _pad: 0,
    };
    // SAFETY: `attr` and the name outlive the call; the size is that of `attr`.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_RAW_TRACEPOINT_OPEN,
            &raw const attr,
            size_of::<RawTracepointAttr>() as u32,
        )
    };
    fd_from(ret, &format!("BPF_RAW_TRACEPOINT_OPEN {name}"))
}

/// A tracepoint perf event on CPU 0 for every process (as aya opens it: the program
/// runs on every CPU), enabled, with `prog` attached.
pub fn tracepoint_event(id: u64, prog: &OwnedFd) -> Result<OwnedFd> {
    let attr = PerfEventAttr {
        kind: PERF_TYPE_TRACEPOINT,
        size: size_of::<PerfEventAttr>() as u32,
        config: id,
        sample_period: 1,
        sample_type: 0,
        read_format: 0,
        flags: 0,
        wakeup_events: 1,
        bp_type: 0,
        config1: 0,
    };
    // SAFETY: `attr` outlives the call; pid -1 with cpu 0 and no group are valid.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &raw const attr,
            -1 as libc::pid_t,
            0 as libc::c_int,
            -1 as libc::c_int,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    let event = fd_from(ret, "perf_event_open")?;
    // SAFETY: ioctls on a perf event descriptor we own, with the argument each takes.
    let set = unsafe {
        libc::ioctl(
            event.as_raw_fd(),
            PERF_EVENT_IOC_SET_BPF as _,
            prog.as_raw_fd(),
        )
    };
    if set != 0 {
        bail!(
            "PERF_EVENT_IOC_SET_BPF: {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: as above.
    let enable = unsafe { libc::ioctl(event.as_raw_fd(), PERF_EVENT_IOC_ENABLE as _, 0) };
    if enable != 0 {
        bail!("PERF_EVENT_IOC_ENABLE: {}", std::io::Error::last_os_error());
    }
    Ok(event)
}

/// Kernel run-time statistics of every BPF program (`run_time_ns`, `run_cnt`), on
/// while the returned descriptor is open. They cost two clock reads per run.
pub fn enable_stats() -> Result<OwnedFd> {
    let attr: u32 = BPF_STATS_RUN_TIME;
    // SAFETY: the attribute of BPF_ENABLE_STATS is one u32, which outlives the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_ENABLE_STATS,
            &raw const attr,
            size_of::<u32>() as u32,
        )
    };
    fd_from(ret, "BPF_ENABLE_STATS")
}
