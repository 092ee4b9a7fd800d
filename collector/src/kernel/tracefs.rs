//! tracefs: where classic tracepoints live. aya attaches a classic tracepoint through
//! its event id under tracefs, and the record layout of a tracepoint comes from its
//! `format` file. Raw tracepoints need neither.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

/// Mount points tried in order (the second is the pre-4.1 location under debugfs).
const CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error(
        "tracefs is not mounted and mounting it at /sys/kernel/tracing failed ({source}); \
         mount it with `mount -t tracefs nodev /sys/kernel/tracing`"
    )]
    Mount {
        #[source]
        source: nix::Error,
    },
    #[error("cannot read tracepoint format {path}")]
    ReadFormat {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("tracepoint format {path} has no field `{field}`")]
    MissingField { path: PathBuf, field: String },
}

/// The mounted tracefs, if any.
pub fn find() -> Option<PathBuf> {
    CANDIDATES
        .iter()
        .map(Path::new)
        .find(|p| p.join("events").is_dir())
        .map(Path::to_path_buf)
}

/// Returns the tracefs mount, mounting it at /sys/kernel/tracing when missing.
pub fn ensure_mounted() -> Result<PathBuf, TracefsError> {
    if let Some(path) = find() {
        return Ok(path);
    }
    let target = Path::new(CANDIDATES[0]);
    nix::mount::mount(
        Some("nodev"),
        target,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|source| TracefsError::Mount { source })?;
    tracing::info!("mounted tracefs at {}", target.display());
    Ok(target.to_path_buf())
}

/// Whether the tracepoint `category:name` exists on this kernel (needs tracefs).
pub fn tracepoint_exists(tracefs: &Path, category: &str, name: &str) -> bool {
    tracefs.join("events").join(category).join(name).is_dir()
}

/// Field offsets of a tracepoint's record, from its `format` file.
pub fn field_offsets(
    tracefs: &Path,
    category: &str,
    name: &str,
) -> Result<HashMap<String, u32>, TracefsError> {
    let path = tracefs
        .join("events")
        .join(category)
        .join(name)
        .join("format");
    let text = std::fs::read_to_string(&path).map_err(|source| TracefsError::ReadFormat {
        path: path.clone(),
        source,
    })?;
    Ok(parse_format(&text))
}

/// Looks one field up, with an error naming the format file.
pub fn require(
    offsets: &HashMap<String, u32>,
    tracefs: &Path,
    category: &str,
    name: &str,
    field: &str,
) -> Result<u32, TracefsError> {
    offsets
        .get(field)
        .copied()
        .ok_or_else(|| TracefsError::MissingField {
            path: tracefs
                .join("events")
                .join(category)
                .join(name)
                .join("format"),
            field: field.into(),
        })
}

/// Parses lines like `\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;`
/// into field name -> offset. Array fields (`__u8 saddr[4]`) are keyed by the bare
/// name. Lines that do not parse are skipped.
pub fn parse_format(text: &str) -> HashMap<String, u32> {
    let mut fields = HashMap::new();
    for line in text.lines() {
        let mut decl = None;
        let mut offset = None;
        for part in line.split(';') {
            let part = part.trim();
            if let Some(d) = part.strip_prefix("field:") {
                decl = Some(d);
            } else if let Some(o) = part.strip_prefix("offset:") {
                offset = o.trim().parse::<u32>().ok();
            }
        }
        let (Some(decl), Some(offset)) = (decl, offset) else {
            continue;
        };
        let Some(last) = decl.split_whitespace().last() else {
            continue;
        };
        let name = last
            .split('[')
            .next()
            .unwrap_or(last)
            .trim_start_matches('*');
        if !name.is_empty() {
            fields.insert(name.to_owned(), offset);
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    const INET_SOCK_SET_STATE: &str = "name: inet_sock_set_state
ID: 1510
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;

print fmt: \"family=%s\"";

    #[test]
    fn parses_the_inet_sock_set_state_format() {
        let f = parse_format(INET_SOCK_SET_STATE);
        assert_eq!(f.get("skaddr"), Some(&8));
        assert_eq!(f.get("oldstate"), Some(&16));
        assert_eq!(f.get("newstate"), Some(&20));
        assert_eq!(f.get("saddr"), Some(&32));
        assert_eq!(f.get("saddr_v6"), Some(&40));
        assert_eq!(f.get("common_pid"), Some(&4));
        assert!(!f.contains_key("fmt"));
    }

    #[test]
    fn garbage_yields_no_fields() {
        assert!(parse_format("field:;offset:x;\n\0\0;;field:int a;").is_empty());
    }
}
