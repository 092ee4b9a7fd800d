//! Who accepts: accepts per thread of a server whose threads all accept on one
//! socket, against the connections made and the server's own threads in /proc; and
//! the execution pattern of a one-thread server, as far as this kernel lets sockq
//! see its reads.

use sockq_tests::try_get;

use crate::{ACCEPT_PROBES, Ctx, addr, eventually, measured, metrics, scenario};

/// Several threads accept on one socket: every accept is counted, each for a thread
/// of the server.
pub(crate) fn acceptors(ctx: &Ctx) -> Result<String, String> {
    const CONNS: u32 = 12;
    let server = scenario(&ctx.scenario, &["serve", "multi", "127.0.0.1:7017", "3"])?;
    let pid = server.child.id().to_string();
    listed("127.0.0.1:7017", &pid)?;
    drop(scenario(
        &ctx.scenario,
        &["chat", "127.0.0.1:7017", &CONNS.to_string(), "1"],
    )?);
    let listener = [("listen_addr", "127.0.0.1:7017")];
    let needs = ctx.has_any(ACCEPT_PROBES);
    let threads = eventually(15, || {
        let m = metrics()?;
        let Some(accepts) = measured(ctx, needs, &m, "sockq_listen_accepts_total", &listener)?
        else {
            return match m.find("sockq_acceptor_accepts_total", &listener).len() {
                0 => Ok(None),
                n => Err(format!("{n} acceptor series without an accept probe")),
            };
        };
        let per_thread = m.find("sockq_acceptor_accepts_total", &listener);
        let sum: f64 = per_thread.iter().map(|s| s.value).sum();
        if accepts != f64::from(CONNS) || sum != accepts {
            return Err(format!(
                "{accepts} accepts, {sum} over the threads, {CONNS} connections made"
            ));
        }
        let mut tids = Vec::new();
        for s in per_thread {
            let (tid, comm) = (&s.labels["tid"], &s.labels["comm"]);
            let task = format!("/proc/{pid}/task/{tid}/comm");
            let real = std::fs::read_to_string(&task).map_err(|e| format!("{task}: {e}"))?;
            if s.labels["pid"] != pid || real.trim() != comm {
                return Err(format!("acceptor {:?} is not a thread of {pid}", s.labels));
            }
            tids.push(format!("{tid}: {}", s.value));
        }
        let pattern = m.find("sockq_listener_info", &[listener[0], ("pid", &pid)]);
        let pattern = pattern.first().map(|s| s.labels["pattern"].clone());
        if tids.len() > 1 && pattern.as_deref() != Some("multi_acceptor") {
            return Err(format!(
                "{} accepting threads, pattern {pattern:?}",
                tids.len()
            ));
        }
        Ok(Some((tids, pattern)))
    })?;
    Ok(match threads {
        Some((tids, pattern)) => format!(
            "{CONNS} accepts over threads of {pid} [{}], pattern {}",
            tids.join(", "),
            pattern.unwrap_or_default()
        ),
        None => "not measured here (no accept probe); no series exported".into(),
    })
}

/// One thread accepts and reads: `single_thread` where the reads are seen
/// (`sock_recv_length`), `undetermined` where they cannot be; never a guess.
pub(crate) fn patterns(ctx: &Ctx) -> Result<String, String> {
    const CONNS: u32 = 40;
    let server = scenario(&ctx.scenario, &["serve", "single", "127.0.0.1:7018", "1"])?;
    let pid = server.child.id().to_string();
    listed("127.0.0.1:7018", &pid)?;
    // Four messages each, as the host's pattern tests send: a sampled connection is
    // classified at its fourth read (READS_TO_CLASSIFY).
    drop(scenario(
        &ctx.scenario,
        &["chat", "127.0.0.1:7018", &CONNS.to_string(), "4"],
    )?);
    let expected = if ctx.has_any(ACCEPT_PROBES) && ctx.has("sock_recv_length") {
        "single_thread"
    } else {
        "undetermined"
    };
    let labels = [("listen_addr", "127.0.0.1:7018"), ("pid", pid.as_str())];
    eventually(15, || {
        let m = metrics()?;
        if ctx.has_any(ACCEPT_PROBES) {
            let accepts = m.one("sockq_listen_accepts_total", &labels[..1])?;
            if accepts != f64::from(CONNS) {
                return Err(format!("{accepts} accepts of {CONNS}"));
            }
        }
        let info = m.find("sockq_listener_info", &labels);
        match info.first().map(|s| s.labels["pattern"].as_str()) {
            Some(p) if p == expected => Ok(()),
            other => Err(format!("pattern {other:?}, expected {expected}")),
        }
    })?;
    let body = try_get(addr(), "/api/listeners").ok_or("no answer on /api/listeners")?;
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&body).map_err(|e| format!("/api/listeners: {e}"))?;
    let evidence = rows
        .iter()
        .find(|r| r["port"].as_u64() == Some(7018))
        .and_then(|r| r["pattern"]["evidence"].as_str())
        .ok_or("no evidence for 127.0.0.1:7018 in /api/listeners")?;
    Ok(format!("{expected}: {evidence}"))
}

/// Waits until sockq's inventory lists the listener. Accepts made before that can
/// lose their per-thread counts: each poll drops the counts of listeners missing
/// from its sock_diag dump, and one opened after the dump is missing from it.
fn listed(listen_addr: &str, pid: &str) -> Result<(), String> {
    eventually(15, || {
        metrics()?
            .one(
                "sockq_listener_info",
                &[("listen_addr", listen_addr), ("pid", pid)],
            )
            .map(|_| ())
    })
}
