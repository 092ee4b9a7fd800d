//! sockq: per-listener socket and kernel-queue observability.
//!
//! The library holds everything; `src/main.rs` is a thin CLI over it. The modules are
//! the stages data flows through, and each may use only the ones listed before it
//! (see ARCHITECTURE.md; `tests::layering` enforces it):
//! - [`text`]: escaping attacker-controlled names, time formatting (no I/O);
//! - [`model`]: the plain data exchanged between the stages, and the API's wire types;
//! - [`kernel`]: access to the running kernel's facts: BTF layout, tracefs, kallsyms,
//!   capabilities, sysctls;
//! - [`probes`]: the eBPF programs: the probe table, load and attach with fallbacks,
//!   reading and pruning their maps, decoding the ring buffer;
//! - [`inventory`]: listeners from sock_diag in every network namespace, owners and
//!   threads from procfs, the namespaces' own counters;
//! - [`analysis`]: what the numbers mean: queue statistics, full-queue episodes,
//!   execution patterns, Nagle stalls, the listener filter, and the poller that
//!   builds each snapshot;
//! - [`export`]: Prometheus exposition, the HTTP server, the status page, the event log;
//! - [`cmd`]: one module per subcommand, and `run`'s layered configuration.

pub mod analysis;
pub mod cmd;
pub mod export;
pub mod inventory;
pub mod kernel;
pub mod model;
pub mod probes;
pub mod text;

/// An error and its sources on one line, for logs and one-line CLI errors.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// The stages in the order they may depend on each other: a module may use only
    /// modules of a lower rank (and its own). `probes` and `inventory` share a rank
    /// and must not use each other.
    const RANKS: [(&str, u8); 8] = [
        ("text", 0),
        ("model", 1),
        ("kernel", 2),
        ("probes", 3),
        ("inventory", 3),
        ("analysis", 4),
        ("export", 5),
        ("cmd", 6),
    ];

    fn rank(module: &str) -> Option<u8> {
        RANKS.iter().find(|(m, _)| *m == module).map(|(_, r)| *r)
    }

    /// The top-level modules named by `crate::...` paths in `source`, including each
    /// item of a `crate::{a, b::c}` group. Comments are skipped.
    fn crate_paths(source: &str) -> Vec<String> {
        let mut found = Vec::new();
        for line in source.lines() {
            let code = line.split("//").next().unwrap_or("");
            let mut rest = code;
            while let Some(at) = rest.find("crate::") {
                rest = &rest[at + "crate::".len()..];
                if rest.starts_with('{') {
                    // A group may span lines: `group_items` reads those.
                    found.push("{".to_owned());
                } else {
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    found.push(name);
                }
            }
        }
        found
    }

    /// Top-level names in every `crate::{ ... }` group of `source`.
    fn group_items(source: &str) -> Vec<String> {
        let mut items = Vec::new();
        let mut rest = source;
        while let Some(at) = rest.find("crate::{") {
            rest = &rest[at + "crate::{".len()..];
            let (mut depth, mut item, mut at_start) = (1, String::new(), true);
            for c in rest.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 1 => at_start = true,
                    c if depth == 1 && at_start && (c.is_ascii_alphanumeric() || c == '_') => {
                        item.push(c);
                        continue;
                    }
                    _ => {}
                }
                if !item.is_empty() {
                    items.push(std::mem::take(&mut item));
                    at_start = false;
                }
                if depth == 0 {
                    break;
                }
            }
        }
        items
    }

    fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read src").flatten() {
            let path = entry.path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    #[test]
    fn layering() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&src, &mut files);
        let mut violations = Vec::new();
        for file in &files {
            let relative = file.strip_prefix(&src).expect("under src");
            let top = relative
                .components()
                .next()
                .and_then(|c| c.as_os_str().to_str())
                .map(|s| s.trim_end_matches(".rs").to_owned())
                .unwrap_or_default();
            let Some(own) = rank(&top) else {
                continue; // lib.rs, main.rs
            };
            let text = std::fs::read_to_string(file).expect("read source");
            let used = crate_paths(&text)
                .into_iter()
                .filter(|m| m != "{")
                .chain(group_items(&text));
            for module in used {
                if module == top || module == "error_chain" {
                    continue;
                }
                match rank(&module) {
                    Some(r) if r < own => {}
                    _ => violations.push(format!("{} uses crate::{module}", relative.display())),
                }
            }
        }
        assert!(
            violations.is_empty(),
            "dependencies must point down the stages (see ARCHITECTURE.md):\n{}",
            violations.join("\n")
        );
    }

    /// ARCHITECTURE.md's code map and the README's Layout name every stage.
    #[test]
    fn docs_name_every_stage() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let architecture =
            std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
        let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
        for (stage, _) in RANKS {
            let cell = format!("| `{stage}");
            assert!(
                architecture.contains(&cell),
                "ARCHITECTURE.md lacks {stage}"
            );
            assert!(
                readme.contains(&format!("`{stage}` (")),
                "README Layout lacks {stage}"
            );
            let on_disk = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
            assert!(
                on_disk.join(stage).is_dir() || on_disk.join(format!("{stage}.rs")).is_file(),
                "{stage} is documented but not in src/"
            );
        }
    }

    #[test]
    fn layering_sees_grouped_and_plain_paths() {
        let text = "use crate::{\n    export::http, model::{a, b},\n    probes,\n};\nlet x = crate::cmd::run();";
        assert_eq!(group_items(text), ["export", "model", "probes"]);
        assert_eq!(crate_paths(text), ["{", "cmd"]);
    }
}
