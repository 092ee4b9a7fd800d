//! The programs' own log: the rare conditions they report through aya-log (a map
//! with no room, a failed kernel read, a full event ring buffer), each at most once
//! per sixteenfold growth of its counter (`collector-ebpf/src/stats.rs`), forwarded to
//! the daemon's log at warn level.
//!
//! aya-log 0.3's `EbpfLogger` takes the `AYA_LOGS` ring buffer out of the loaded
//! object and spawns nothing: it is an `AsFd` to poll, whose `flush` hands each record
//! to a `log::Log`. [`forward`] polls it on the runtime; [`Forwarder`] turns records
//! into `tracing` events. Without it (the map missing, an fd that cannot be polled)
//! sockq runs on and says so once: the failures are still counted and exported.

use aya::Ebpf;
use aya_log::EbpfLogger;
use tokio::io::{Interest, unix::AsyncFd};

use crate::text;

/// The programs' log, ready to be polled by [`forward`].
pub struct KernelLog(EbpfLogger<Forwarder>);

/// Takes the programs' log out of the loaded object; `None` (said once, at warn) when
/// it cannot be set up.
pub fn init(ebpf: &mut Ebpf) -> Option<KernelLog> {
    match EbpfLogger::init_with_logger(ebpf, Forwarder) {
        Ok(logger) => Some(KernelLog(logger)),
        Err(e) => {
            tracing::warn!(
                "the eBPF programs' own log is unavailable ({e}); their failures are still \
                 counted in sockq_events_lost_total, but not logged"
            );
            None
        }
    }
}

/// Forwards the programs' log records to the daemon's log until the runtime stops.
pub async fn forward(log: KernelLog) {
    // SAFETY: EbpfLogger owns its ring buffer's fd for its whole life and always
    // returns that fd.
    let registered = unsafe { AsyncFd::register_with_interest(log.0, Interest::READABLE) };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(
                "cannot poll the eBPF programs' own log ({e}); their failures are still \
                 counted in sockq_events_lost_total, but not logged"
            );
            return;
        }
    };
    loop {
        let mut guard = match fd.readable_mut().await {
            Ok(guard) => guard,
            Err(e) => {
                tracing::warn!("the eBPF programs' own log: {e}; no longer forwarded");
                return;
            }
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}

/// Hands aya-log's records to `tracing`, at warn: the programs log only what the
/// daemon's operator should see.
pub struct Forwarder;

impl log::Log for Forwarder {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        tracing::warn!("eBPF: {}", line(record));
    }

    fn flush(&self) {}
}

/// A record as one log line, escaped like every other text that reaches the log.
/// Runs of whitespace become one space: the programs pad their descriptions to a
/// fixed width (cheaper to verify than a length per description).
fn line(record: &log::Record<'_>) -> String {
    let text = record.args().to_string();
    text::escape(&text.split_whitespace().collect::<Vec<_>>().join(" "))
}

#[cfg(test)]
mod tests {
    fn line(text: std::fmt::Arguments<'_>) -> String {
        super::line(&log::Record::builder().args(text).build())
    }

    #[test]
    fn a_record_is_one_line_without_the_padding() {
        assert_eq!(
            line(format_args!(
                "map QUEUED full                         (1 so far on this CPU; error -7)"
            )),
            "map QUEUED full (1 so far on this CPU; error -7)"
        );
        let forged = line(format_args!("map QUEUED full\nWARN forged \"line\"\x1b[2J"));
        assert!(!forged.contains(['\n', '\x1b']), "{forged}");
        assert!(forged.starts_with("map QUEUED full WARN"), "{forged}");
    }
}
