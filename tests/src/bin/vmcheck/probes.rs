//! The probes as sockq reports them: `sockq_probe_attached` against the doctor's
//! report of the same kernel, and what a check expects of a number whose probes did
//! not attach (no series at all).

use std::collections::{BTreeMap, BTreeSet};

use sockq_tests::Metrics;

use crate::Ctx;

/// The doctor's `[tag] probe NAME   DETAIL` lines: name -> (attached, detail).
pub(crate) fn parse_doctor(text: &str) -> BTreeMap<String, (bool, String)> {
    text.lines()
        .filter_map(|line| {
            let (tag, rest) = (line.get(..6)?, line.get(6..)?.trim_start());
            let (name, detail) = rest.strip_prefix("probe ")?.split_once(' ')?;
            let detail = detail.trim();
            let attached = tag == "[ ok ]" && detail.starts_with("attaches as ");
            Some((name.to_owned(), (attached, detail.to_owned())))
        })
        .collect()
}

/// `sockq_probe_attached` agrees with the doctor, every missing probe has a reason,
/// and the kernel lists a kprobe wherever sockq says it attached one.
pub(crate) fn probes_reported(ctx: &Ctx) -> Result<String, String> {
    let doctor = ctx.doctor.as_ref().ok_or("no doctor output given")?;
    if doctor.is_empty() {
        return Err("the doctor reported no probes".into());
    }
    let mut missing = Vec::new();
    for (probe, &up) in &ctx.attached {
        let (doctor_up, detail) = doctor
            .get(probe)
            .ok_or_else(|| format!("the doctor does not report probe {probe}"))?;
        if *doctor_up != up {
            return Err(format!(
                "probe {probe}: sockq_probe_attached {up}, the doctor says {detail:?}"
            ));
        }
        let reason = detail.trim_start_matches("does not attach, sockq runs without it:");
        if !up && reason.trim().is_empty() {
            return Err(format!(
                "probe {probe} did not attach and no reason is given"
            ));
        }
        if !up {
            missing.push(probe.as_str());
        }
    }
    let kprobes: Vec<&str> = doctor
        .iter()
        .filter(|(_, (up, d))| *up && d.starts_with("attaches as kprobe"))
        .map(|(p, _)| p.as_str())
        .collect();
    let listed = if kprobes.is_empty() {
        String::new()
    } else {
        let list = std::fs::read_to_string("/sys/kernel/debug/kprobes/list")
            .map_err(|e| format!("sockq attached kprobes ({kprobes:?}); kprobes/list: {e}"))?;
        let functions: BTreeSet<&str> = list
            .lines()
            .filter_map(|l| l.split_whitespace().nth(2)?.split('+').next())
            .collect();
        if functions.len() < kprobes.len() {
            return Err(format!(
                "sockq attached kprobes for {kprobes:?}, the kernel lists {functions:?}"
            ));
        }
        format!("; kprobes for {kprobes:?}, the kernel lists {functions:?}")
    };
    Ok(format!(
        "{} of {} attached, as the doctor says; not attached, each with a reason: {missing:?}{listed}",
        ctx.attached.len() - missing.len(),
        ctx.attached.len()
    ))
}

/// `family{labels}` when the probes it needs attached. When they did not, sockq
/// must export no such series: `None`.
pub(crate) fn measured(
    ctx: &Ctx,
    needs: bool,
    m: &Metrics,
    family: &str,
    labels: &[(&str, &str)],
) -> Result<Option<f64>, String> {
    if needs {
        return m.one(family, labels).map(Some);
    }
    match m.find(family, labels).as_slice() {
        [] => Ok(None),
        found => Err(format!(
            "{family}{labels:?} = {} exported although the probes it needs did not attach \
             (attached: {:?})",
            found[0].value,
            ctx.attached
                .iter()
                .filter(|(_, up)| **up)
                .map(|(p, _)| p)
                .collect::<Vec<_>>()
        )),
    }
}
