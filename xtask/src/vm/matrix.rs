//! The kernel x probe -> mechanism matrix, from `sockq doctor` as each VM (and the
//! host) reported it: rows are probes, columns kernels, cells the mechanism that
//! attached ("raw tracepoint", "kprobe ...") or "absent: <why>". It lives in
//! README.md between two markers; vm-test fails when the table there differs from
//! what the kernels showed, and `--update-readme` rewrites it.

use std::path::Path;

use anyhow::{Context as _, Result, bail};

use crate::step;

pub const BEGIN: &str = "<!-- kernel-matrix:begin -->";
pub const END: &str = "<!-- kernel-matrix:end -->";

/// One kernel's column: its header and (probe, cell) in the doctor's order.
pub struct Column {
    pub header: String,
    pub cells: Vec<(String, String)>,
}

impl Column {
    /// From the doctor's report (`[ ok ] probe NAME   attaches as raw_tracepoint`).
    pub fn from_doctor(header: impl Into<String>, report: &[String]) -> Self {
        let cells = report
            .iter()
            .filter_map(|line| {
                let (tag, rest) = (line.get(..6)?, line.get(6..)?.trim_start());
                let (name, detail) = rest.strip_prefix("probe ")?.split_once(' ')?;
                Some((name.to_owned(), cell(tag == "[ ok ]", detail.trim())))
            })
            .collect();
        Self {
            header: header.into(),
            cells,
        }
    }
}

/// A doctor detail as a table cell.
fn cell(ok: bool, detail: &str) -> String {
    if let (true, Some(mechanism)) = (ok, detail.strip_prefix("attaches as ")) {
        return mechanism.replace("raw_tracepoint", "raw tracepoint");
    }
    // Another probe does its work (sockq's `probes::NOT_NEEDED`).
    if let (true, Some(why)) = (ok, detail.strip_prefix("not needed:")) {
        return format!("not needed ({})", why.trim());
    }
    let why = detail
        .strip_prefix("does not attach, sockq runs without it:")
        .unwrap_or(detail)
        .trim();
    format!("absent: {}", short_reason(why))
}

/// The doctor's reasons (`raw tracepoint: <error chain>; kprobe: <error chain>`)
/// cut to what tells kernels apart: the error's last cause, in words for the two
/// errors raw tracepoints give (the mechanism named only when several were tried).
fn short_reason(why: &str) -> String {
    let attempts: Vec<(&str, &str)> = why
        .split("; ")
        .map(|attempt| {
            let (kind, error) = attempt.split_once(": ").unwrap_or(("", attempt));
            let cause = error.rsplit(": ").next().unwrap_or(error);
            let cause = cause.split(" (os error").next().unwrap_or(cause).trim();
            (kind, cause)
        })
        .collect();
    let parts: Vec<String> = attempts
        .iter()
        .map(|&(kind, cause)| {
            let cause = match (kind, cause) {
                ("raw tracepoint", "No such file or directory") => "no such tracepoint",
                ("raw tracepoint", "Invalid argument") => {
                    "EINVAL: the program reads an argument this tracepoint lacks"
                }
                _ => cause,
            };
            if attempts.len() > 1 && !kind.is_empty() {
                format!("{kind}: {cause}")
            } else {
                cause.to_owned()
            }
        })
        .collect();
    parts.join("; ").replace('|', "/")
}

/// The Markdown table: one row per probe (in the order the columns first name
/// them), one column per kernel.
pub fn render(columns: &[Column]) -> String {
    let mut probes: Vec<&str> = Vec::new();
    for c in columns {
        for (p, _) in &c.cells {
            if !probes.contains(&p.as_str()) {
                probes.push(p);
            }
        }
    }
    let mut out = String::from("| probe |");
    for c in columns {
        out.push_str(&format!(" {} |", c.header));
    }
    out.push_str("\n| --- |");
    out.push_str(&" --- |".repeat(columns.len()));
    out.push('\n');
    for p in probes {
        out.push_str(&format!("| `{p}` |"));
        for c in columns {
            let cell = c
                .cells
                .iter()
                .find(|(name, _)| name == p)
                .map_or("not reported", |(_, cell)| cell.as_str());
            out.push_str(&format!(" {cell} |"));
        }
        out.push('\n');
    }
    out
}

/// `readme` with `table` between the markers.
pub fn splice(readme: &str, table: &str) -> Result<String> {
    let begin = readme
        .find(BEGIN)
        .with_context(|| format!("README.md has no {BEGIN}"))?;
    let end = readme
        .find(END)
        .with_context(|| format!("README.md has no {END}"))?;
    if end < begin {
        bail!("README.md: {END} comes before {BEGIN}");
    }
    Ok(format!(
        "{}{BEGIN}\n{table}{}",
        &readme[..begin],
        &readme[end..]
    ))
}

/// Compares README.md's table with `table`; rewrites it when `update`, else fails
/// on a difference.
pub fn check_readme(root: &Path, table: &str, update: bool) -> Result<()> {
    let path = root.join("README.md");
    let readme =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let wanted = splice(&readme, table)?;
    if wanted == readme {
        step("README.md's kernel matrix matches these runs");
        return Ok(());
    }
    if update {
        std::fs::write(&path, wanted).with_context(|| format!("writing {}", path.display()))?;
        step("README.md's kernel matrix rewritten from these runs");
        return Ok(());
    }
    bail!(
        "README.md's kernel matrix differs from what these kernels showed (the table \
         above); rerun with --update-readme to rewrite it"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(lines: &[&str]) -> Vec<String> {
        lines.iter().map(|l| (*l).to_owned()).collect()
    }

    #[test]
    fn cells_from_the_doctor() {
        let c = Column::from_doctor(
            "6.1",
            &report(&[
                "[ ok ] kernel                                 Linux 6.1.0",
                "[ ok ] probe inet_sock_set_state              attaches as raw_tracepoint",
                "[ ok ] probe sk_data_ready                    attaches as kprobe",
                "[warn] probe kfree_skb                        does not attach, sockq runs \
                 without it: raw tracepoint: `bpf_raw_tracepoint_open` failed: Invalid \
                 argument (os error 22)",
                "[warn] probe tcp_sendmsg_locked               does not attach, sockq runs \
                 without it: raw tracepoint: `bpf_raw_tracepoint_open` failed: No such file \
                 or directory (os error 2); kprobe: `perf_event_open` failed: Permission \
                 denied (os error 13)",
                "[FAIL] probes                                 not loaded",
            ]),
        );
        assert_eq!(
            c.cells,
            [
                ("inet_sock_set_state".into(), "raw tracepoint".into()),
                ("sk_data_ready".into(), "kprobe".into()),
                (
                    "kfree_skb".into(),
                    "absent: EINVAL: the program reads an argument this tracepoint lacks".into()
                ),
                (
                    "tcp_sendmsg_locked".into(),
                    "absent: raw tracepoint: no such tracepoint; kprobe: Permission denied".into()
                ),
            ]
        );
    }

    #[test]
    fn table_and_markers() {
        let a = Column {
            header: "5.10".into(),
            cells: vec![("p".into(), "raw tracepoint".into())],
        };
        let b = Column {
            header: "6.18 (host)".into(),
            cells: vec![
                ("p".into(), "raw tracepoint".into()),
                ("q".into(), "tracepoint".into()),
            ],
        };
        let table = render(&[a, b]);
        assert_eq!(
            table,
            "| probe | 5.10 | 6.18 (host) |\n| --- | --- | --- |\n\
             | `p` | raw tracepoint | raw tracepoint |\n\
             | `q` | not reported | tracepoint |\n"
        );
        let readme = format!("# x\n{BEGIN}\nold\n{END}\nrest\n");
        assert_eq!(
            splice(&readme, &table).unwrap(),
            format!("# x\n{BEGIN}\n{table}{END}\nrest\n")
        );
        assert!(splice("# no markers\n", &table).is_err());
    }
}
