//! `sockq listeners`: a one-shot table (or JSON) of every TCP listener on the host.

use std::fmt::Write as _;

use crate::{model::Listener, text::escape};

/// The table, one line per listener, widths fitted to the content.
pub fn render_table(listeners: &[Listener]) -> String {
    let header = [
        "NETNS", "LISTEN", "ACCEPTQ", "SYNQ", "DROPS", "SOCKET", "OWNERS",
    ];
    let rows: Vec<[String; 7]> = listeners
        .iter()
        .map(|l| {
            let owners = if l.owners.is_empty() {
                "-".to_owned()
            } else {
                l.owners
                    .iter()
                    .map(|o| format!("{}/{}", o.pid, escape(&o.comm)))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            [
                l.netns.to_string(),
                l.listen_addr(),
                format!("{}/{}", l.accept_queue_len, l.accept_queue_limit),
                l.syn_queue_len.to_string(),
                l.drops.to_string(),
                l.inode.to_string(),
                owners,
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<w$}  ");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&header);
    for row in &rows {
        line(&row.each_ref().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Owner;

    #[test]
    fn table_escapes_owner_names() {
        let l = Listener {
            netns: 4026531840,
            addr: "::".parse().expect("addr"),
            port: 80,
            inode: 123,
            cookie: 1,
            accept_queue_len: 3,
            accept_queue_limit: 2,
            syn_queue_len: 0,
            drops: 15,
            owners: vec![Owner::new(7, "evil\n\x1b[2J")],
            kernel: None,
            queue_full: false,
        };
        let t = render_table(&[l]);
        assert!(t.starts_with("NETNS"), "{t}");
        assert!(t.contains("[::]:80"), "{t}");
        assert!(t.contains("3/2"), "{t}");
        assert!(t.contains("7/evil\\n\\x1b[2J"), "{t}");
        assert_eq!(t.lines().count(), 2, "{t}");
    }
}
