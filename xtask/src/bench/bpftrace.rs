//! The bpftrace peers: what someone would write by hand instead of sockq.
//!
//! - The **minimal peer** (the benchmark's original script): transitions, one depth
//!   histogram for all listeners, accepts per thread, SYN-ACK retransmits. It computes
//!   far less than sockq, so a tie with it says little.
//! - The **fair peer** computes what sockq's default set does: transitions per
//!   network namespace; per listener (namespace, socket inode) the accept-queue depth
//!   histogram, its maximum, the limit and the full enqueues; the handshake stamp
//!   (LISTEN -> SYN_RECV of the child), kept until `accept()` returns the child or a
//!   reset drops it while queued, and the accept-wait histogram per listener; accepts
//!   per listener and per (listener, process, thread), the listener found from the fd
//!   `accept()` was given through the task's file table; the queued child's listener
//!   (the accept queue's tail) for the oldest-wait view; drops per (listener, reason);
//!   SYN-ACK retransmits per listener. Not included: sockq's 1-in-N sample of who
//!   reads accepted connections (the storm sends no data) and the rare listener
//!   open/close events of its ring buffer.
//!
//! bpftrace 0.17 attaches these as classic tracepoints (it has no raw tracepoints,
//! and `kfunc` probes do not load on this kernel).

use std::{
    io::{BufRead as _, BufReader, Read as _},
    process::{Child, ChildStdout, Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

pub const MINIMAL_PEER: &str = r#"
tracepoint:sock:inet_sock_set_state { @transitions[args->oldstate, args->newstate] = count(); }
tracepoint:sock:sk_data_ready
/((struct sock *)args->skaddr)->__sk_common.skc_state == 10/
{ @depth = hist(((struct sock *)args->skaddr)->sk_ack_backlog); }
tracepoint:syscalls:sys_exit_accept4 /args->ret >= 0/ { @accepts[tid] = count(); }
tracepoint:tcp:tcp_retransmit_synack { @synack = count(); }
"#;

/// TCP states: 1 ESTABLISHED, 3 SYN_RECV, 7 CLOSE, 8 CLOSE_WAIT, 10 LISTEN.
pub const FAIR_PEER: &str = r#"
tracepoint:sock:inet_sock_set_state
/args->protocol == 6/
{
  $sk = (struct sock *)args->skaddr;
  @transitions[$sk->__sk_common.skc_net.net->ns.inum, args->oldstate, args->newstate] = count();
  if (args->oldstate == 10 && args->newstate == 3) {
    @queued[(uint64)args->skaddr] = nsecs;
  } else if (args->newstate == 7 && (args->oldstate == 1 || args->oldstate == 8)
             && $sk->sk_socket == 0) {
    delete(@queued[(uint64)args->skaddr]);
    delete(@queued_listener[(uint64)args->skaddr]);
  }
}

tracepoint:sock:sk_data_ready
{
  $sk = (struct sock *)args->skaddr;
  if ($sk->__sk_common.skc_state == 10) {
    $ino = ((struct socket_alloc *)$sk->sk_socket)->vfs_inode.i_ino;
    $ns = $sk->__sk_common.skc_net.net->ns.inum;
    $depth = $sk->sk_ack_backlog;
    $limit = $sk->sk_max_ack_backlog;
    @depth[$ns, $ino] = hist($depth);
    @max_depth[$ns, $ino] = max($depth);
    @limit[$ns, $ino] = max($limit);
    if ($depth > $limit) {
      @full[$ns, $ino] = count();
    }
    $child = (uint64)((struct inet_connection_sock *)$sk)->icsk_accept_queue.rskq_accept_tail->sk;
    if (@queued[$child]) {
      @queued_listener[$child] = $ino;
    }
  }
}

tracepoint:syscalls:sys_enter_accept4,
tracepoint:syscalls:sys_enter_accept
{
  @accepting[tid] = args->fd + 1;
}

tracepoint:syscalls:sys_exit_accept4,
tracepoint:syscalls:sys_exit_accept
/@accepting[tid]/
{
  $lfd = @accepting[tid] - 1;
  delete(@accepting[tid]);
  if (args->ret >= 0) {
    $fdt = curtask->files->fdt;
    $lsk = ((struct socket *)(*($fdt->fd + $lfd))->private_data)->sk;
    $ino = ((struct socket_alloc *)$lsk->sk_socket)->vfs_inode.i_ino;
    $ns = $lsk->__sk_common.skc_net.net->ns.inum;
    @accepts[$ns, $ino] = count();
    @acceptors[$ino, pid, tid] = count();
    $child = (uint64)((struct socket *)(*($fdt->fd + args->ret))->private_data)->sk;
    $t = @queued[$child];
    if ($t) {
      @accept_wait_us[$ns, $ino] = hist((nsecs - $t) / 1000);
      delete(@queued[$child]);
      delete(@queued_listener[$child]);
    }
  }
}

tracepoint:skb:kfree_skb
/args->rx_sk != 0/
{
  $sk = (struct sock *)args->rx_sk;
  if ($sk->__sk_common.skc_state == 10) {
    $ino = ((struct socket_alloc *)$sk->sk_socket)->vfs_inode.i_ino;
    @drops[$ino, args->reason] = count();
  }
}

tracepoint:tcp:tcp_retransmit_synack
{
  $sk = (struct sock *)args->skaddr;
  $ino = ((struct socket_alloc *)$sk->sk_socket)->vfs_inode.i_ino;
  @synack_retransmits[$sk->__sk_common.skc_net.net->ns.inum, $ino] = count();
}
"#;

/// Printed by the script's BEGIN probe, which bpftrace runs once every probe is
/// attached.
const READY: &str = "sockq-bench: attached";

/// A running bpftrace script; killed on drop.
pub struct Bpftrace {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

impl Bpftrace {
    pub fn start(script: &str) -> Result<Self> {
        let program = format!("BEGIN {{ printf(\"{READY}\\n\"); }}\n{script}");
        let mut child = Command::new("bpftrace")
            .args(["-e", &program])
            // As many stamps as sockq keeps (bpftrace's default is 4096 keys per map).
            .env("BPFTRACE_MAP_KEYS_MAX", "65536")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting bpftrace (Debian package bpftrace)")?;
        let mut stdout = BufReader::new(child.stdout.take().context("bpftrace stdout")?);
        let mut line = String::new();
        loop {
            line.clear();
            if stdout.read_line(&mut line)? == 0 {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                let _ = child.wait();
                bail!("bpftrace did not attach:\n{err}");
            }
            if line.trim() == READY {
                return Ok(Self { child, stdout });
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the script with SIGINT and returns what it printed: its maps.
    pub fn stop_and_print(mut self) -> Result<String> {
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        let mut maps = String::new();
        self.stdout.read_to_string(&mut maps)?;
        let _ = self.child.wait();
        Ok(maps)
    }
}

impl Drop for Bpftrace {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The maps of a bpftrace run, blank lines dropped, at most `max_lines` lines per map
/// (a map's lines: its keys, and under each histogram key its buckets).
pub fn condense_maps(printed: &str, max_lines: usize) -> String {
    let mut out = String::new();
    let mut map = "";
    let mut lines = 0usize;
    for line in printed.lines().filter(|l| !l.trim().is_empty()) {
        if line.starts_with('@') {
            let name = line.split(['[', ':']).next().unwrap_or(line);
            if name != map {
                map = name;
                lines = 0;
            }
        }
        lines += 1;
        if lines <= max_lines {
            out.push_str(line);
            out.push('\n');
        } else if lines == max_lines + 1 {
            out.push_str("  ...\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn condensed_maps_drop_blank_lines_and_cap_each_map() {
        let printed = "\n\n@a[1]: 5\n@a[2]: 6\n@a[3]: 7\n\n@h[1]: \n[1]  3 |@@@|\n[2]  1 |@|\n\n";
        assert_eq!(
            condense_maps(printed, 2),
            "@a[1]: 5\n@a[2]: 6\n  ...\n@h[1]: \n[1]  3 |@@@|\n  ...\n"
        );
    }

    #[test]
    fn the_fair_peer_covers_every_metric_of_the_default_set() {
        for map in [
            "@transitions[$sk->__sk_common.skc_net.net->ns.inum",
            "@depth[$ns, $ino]",
            "@limit[$ns, $ino]",
            "@full[$ns, $ino]",
            "@accept_wait_us[$ns, $ino]",
            "@accepts[$ns, $ino]",
            "@acceptors[$ino, pid, tid]",
            "@drops[$ino, args->reason]",
        ] {
            assert!(FAIR_PEER.contains(map), "fair peer lacks {map}");
        }
    }
}
