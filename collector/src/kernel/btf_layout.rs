//! Kernel struct layout: field offsets resolved at start-up from the running kernel's
//! BTF (`/sys/kernel/btf/vmlinux`, `CONFIG_DEBUG_INFO_BTF=y`, Linux 5.4+), handed to
//! the eBPF programs as [`KernelOffsets`]. Rust eBPF programs have no CO-RE field
//! relocations; this is what keeps one object portable across kernels.
//!
//! Parsing is btf-rs's; this module only walks member paths, descending into
//! anonymous structs and unions the way C member access does.

use std::path::{Path, PathBuf};

use btf_rs::{Btf, Type};
use collector_common::{layout::KernelOffsets, nagle::NagleOffsets};
use fallible_iterator::FallibleIterator as _;

mod io_uring;

/// Where the running kernel publishes its BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// How many members one [`Layout::member`] lookup may examine. A real kernel needs
/// far fewer (on 6.18 the most is 133, for `task_struct.files`); only malformed BTF
/// gets near this.
const MEMBER_VISITS: u32 = 10_000;

/// Why [`LayoutError::Malformed`]: offsets that do not fit in 32 bits.
const OFFSET_OVERFLOW: &str = "its bit offsets add up past 2^32";

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error(
        "kernel BTF not found at {path}: sockq needs a kernel built with CONFIG_DEBUG_INFO_BTF=y \
         (Linux 5.4 or later; most distributions enable it)"
    )]
    BtfMissing { path: PathBuf },
    #[error("cannot parse kernel BTF at {path}")]
    BtfParse {
        path: PathBuf,
        #[source]
        source: btf_rs::Error,
    },
    #[error("kernel BTF has no struct `{0}`")]
    NoStruct(String),
    #[error("kernel BTF: struct `{strukt}` has no member path `{path}`")]
    NoMember { strukt: String, path: String },
    #[error("kernel BTF: `{strukt}.{path}` is a bitfield; sockq cannot read it")]
    Bitfield { strukt: String, path: String },
    #[error("kernel BTF: `{strukt}.{path}` is at a bit offset that is not a byte boundary")]
    Unaligned { strukt: String, path: String },
    #[error("kernel BTF is malformed: looking up `{strukt}.{path}`, {why}")]
    Malformed {
        strukt: String,
        path: String,
        why: &'static str,
    },
    #[error("kernel BTF: the io_uring:{tracepoint} tracepoint: {why}")]
    Prototype { tracepoint: String, why: String },
    #[error("kernel BTF lookup of `{what}` failed")]
    Lookup {
        what: String,
        #[source]
        source: btf_rs::Error,
    },
}

/// A member found by [`Layout::member`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// Offset from the start of the outer struct, in bits.
    pub bit_offset: u32,
    /// Width in bits when the member is a bitfield.
    pub bitfield_size: Option<u32>,
}

impl Field {
    /// Byte offset of a whole-byte, non-bitfield member.
    fn byte_offset(self, strukt: &str, path: &str) -> Result<u32, LayoutError> {
        if self.bitfield_size.is_some_and(|size| size != 0) {
            return Err(LayoutError::Bitfield {
                strukt: strukt.into(),
                path: path.into(),
            });
        }
        if !self.bit_offset.is_multiple_of(8) {
            return Err(LayoutError::Unaligned {
                strukt: strukt.into(),
                path: path.into(),
            });
        }
        Ok(self.bit_offset / 8)
    }
}

/// What [`Layout::find_member`] found.
enum Found {
    /// The member: its field (offset relative to the struct searched) and type.
    Member(Field, Type),
    Nothing,
    /// Malformed BTF that cannot be searched, and why.
    Malformed(&'static str),
}

/// The kernel's type information.
pub struct Layout {
    btf: Btf,
}

impl Layout {
    /// Reads the running kernel's BTF.
    pub fn from_running_kernel() -> Result<Self, LayoutError> {
        Self::from_file(Path::new(VMLINUX_BTF))
    }

    pub fn from_file(path: &Path) -> Result<Self, LayoutError> {
        if !path.exists() {
            return Err(LayoutError::BtfMissing { path: path.into() });
        }
        let btf = Btf::from_file(path).map_err(|source| LayoutError::BtfParse {
            path: path.into(),
            source,
        })?;
        Ok(Self { btf })
    }

    /// Parses BTF from memory (tests, fuzzing).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, LayoutError> {
        let btf = Btf::from_bytes(bytes).map_err(|source| LayoutError::BtfParse {
            path: PathBuf::from("<memory>"),
            source,
        })?;
        Ok(Self { btf })
    }

    /// Resolves a dotted member path (`__sk_common.skc_num`) inside `struct strukt`.
    /// A path component may live inside anonymous structs or unions, as in C.
    pub fn member(&self, strukt: &str, path: &str) -> Result<Field, LayoutError> {
        let mut current = self.find_struct(strukt)?;
        let mut field = Field {
            bit_offset: 0,
            bitfield_size: None,
        };
        let components: Vec<&str> = path.split('.').collect();
        let malformed = |why| LayoutError::Malformed {
            strukt: strukt.into(),
            path: path.into(),
            why,
        };
        let mut budget = MEMBER_VISITS;
        for (i, name) in components.iter().enumerate() {
            let (member_field, member_type) =
                match self.find_member(&current, name, 0, &mut budget)? {
                    Found::Member(field, ty) => (field, ty),
                    Found::Nothing => {
                        return Err(LayoutError::NoMember {
                            strukt: strukt.into(),
                            path: path.into(),
                        });
                    }
                    Found::Malformed(why) => return Err(malformed(why)),
                };
            field.bit_offset = field
                .bit_offset
                .checked_add(member_field.bit_offset)
                .ok_or_else(|| malformed(OFFSET_OVERFLOW))?;
            field.bitfield_size = member_field.bitfield_size;
            if i + 1 < components.len() {
                current = match self.strip(member_type)? {
                    Type::Struct(s) | Type::Union(s) => s,
                    _ => {
                        return Err(LayoutError::NoMember {
                            strukt: strukt.into(),
                            path: path.into(),
                        });
                    }
                };
            }
        }
        Ok(field)
    }

    /// Byte offset of a whole-byte member.
    pub fn offset(&self, strukt: &str, path: &str) -> Result<u32, LayoutError> {
        self.member(strukt, path)?.byte_offset(strukt, path)
    }

    /// The BTF type id of `struct name`, if the kernel has one.
    pub fn struct_id(&self, name: &str) -> Option<u32> {
        self.id_of(name, |t| matches!(t, Type::Struct(_)))
    }

    /// The BTF id of kernel function `name` (a kfunc's: what a call to it names), if
    /// the kernel has one.
    pub fn function_id(&self, name: &str) -> Option<u32> {
        self.id_of(name, |t| matches!(t, Type::Func(_)))
    }

    fn id_of(&self, name: &str, kind: impl Fn(&Type) -> bool) -> Option<u32> {
        let ids = self.btf.resolve_ids_by_name(name).ok()?;
        ids.into_iter()
            .find(|&id| self.btf.resolve_type_by_id(id).is_ok_and(|t| kind(&t)))
    }

    /// The value of an enumerator (`SKB_DROP_REASON_TCP_LISTEN_OVERFLOW`), if present.
    pub fn enum_value(&self, enumerator: &str) -> Result<Option<i64>, LayoutError> {
        let mut types = self.btf.type_iter();
        while let Some(ty) = types.next().map_err(|source| LayoutError::Lookup {
            what: format!("enumerator `{enumerator}`"),
            source,
        })? {
            match &ty {
                Type::Enum(e) => {
                    for m in &e.members {
                        if self.name_of(m)? == enumerator {
                            return Ok(Some(i64::from(m.val())));
                        }
                    }
                }
                Type::Enum64(e) => {
                    for m in &e.members {
                        if self.name_of(m)? == enumerator {
                            return Ok(i64::try_from(m.val()).ok());
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(None)
    }

    /// How many arguments kernel function `name` takes (fentry/fexit programs read
    /// them, and the return value after them, at fixed positions); `None` when BTF
    /// has no such function (inlined, static and renamed, or absent).
    pub fn function_args(&self, name: &str) -> Option<usize> {
        let types = self.btf.resolve_types_by_name(name).ok()?;
        types.into_iter().find_map(|t| match t {
            Type::Func(f) => match self.btf.resolve_chained_type(&f) {
                Ok(Type::FuncProto(proto)) => Some(proto.parameters.len()),
                _ => None,
            },
            _ => None,
        })
    }

    /// The enumerators of `enum name` as (value, name), e.g. `skb_drop_reason`.
    pub fn enum_members(&self, name: &str) -> Result<Vec<(i64, String)>, LayoutError> {
        let types = self
            .btf
            .resolve_types_by_name(name)
            .map_err(|_| LayoutError::NoStruct(name.into()))?;
        for ty in types {
            if let Type::Enum(e) = ty {
                return e
                    .members
                    .iter()
                    .map(|m| Ok((i64::from(m.val()), self.name_of(m)?)))
                    .collect();
            }
        }
        Err(LayoutError::NoStruct(name.into()))
    }

    /// `enum skb_drop_reason` as value -> short name (`TCP_LISTEN_OVERFLOW`).
    pub fn drop_reason_names(&self) -> std::collections::HashMap<u32, String> {
        self.enum_members("skb_drop_reason")
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(v, n)| {
                let short = n.strip_prefix("SKB_DROP_REASON_").unwrap_or(&n).to_owned();
                Some((u32::try_from(v).ok()?, short))
            })
            .collect()
    }

    fn name_of(&self, t: &dyn btf_rs::BtfType) -> Result<String, LayoutError> {
        self.btf
            .resolve_name(t)
            .map_err(|source| LayoutError::Lookup {
                what: "a name".into(),
                source,
            })
    }

    fn find_struct(&self, name: &str) -> Result<btf_rs::Struct, LayoutError> {
        let types = self
            .btf
            .resolve_types_by_name(name)
            .map_err(|_| LayoutError::NoStruct(name.into()))?;
        types
            .into_iter()
            .find_map(|t| match t {
                Type::Struct(s) => Some(s),
                _ => None,
            })
            .ok_or_else(|| LayoutError::NoStruct(name.into()))
    }

    /// Finds `name` among the members of `s`, looking through anonymous members.
    /// Returns its field (offset relative to `s`) and type.
    fn find_member(
        &self,
        s: &btf_rs::Struct,
        name: &str,
        depth: u32,
        budget: &mut u32,
    ) -> Result<Found, LayoutError> {
        // Anonymous nesting in real kernels is a few levels deep; the bound keeps
        // malformed (cyclic) BTF from recursing forever.
        if depth > 16 {
            return Ok(Found::Nothing);
        }
        for m in &s.members {
            // And this bounds the search of wide nestings (each level's anonymous
            // members referring to the next level several times over), which
            // would otherwise take exponential time within the depth bound.
            let Some(left) = budget.checked_sub(1) else {
                return Ok(Found::Malformed("too many anonymous members to search"));
            };
            *budget = left;
            let member_name = self.name_of(m)?;
            let member_type =
                self.btf
                    .resolve_chained_type(m)
                    .map_err(|source| LayoutError::Lookup {
                        what: format!("the type of member `{member_name}`"),
                        source,
                    })?;
            let here = Field {
                bit_offset: m.bit_offset(),
                bitfield_size: m.bitfield_size(),
            };
            if member_name == name {
                return Ok(Found::Member(here, member_type));
            }
            if member_name.is_empty()
                && let Type::Struct(inner) | Type::Union(inner) = self.strip(member_type)?
            {
                match self.find_member(&inner, name, depth + 1, budget)? {
                    Found::Member(f, t) => {
                        let Some(bit_offset) = here.bit_offset.checked_add(f.bit_offset) else {
                            return Ok(Found::Malformed(OFFSET_OVERFLOW));
                        };
                        let field = Field {
                            bit_offset,
                            bitfield_size: f.bitfield_size,
                        };
                        return Ok(Found::Member(field, t));
                    }
                    Found::Nothing => {}
                    malformed @ Found::Malformed(_) => return Ok(malformed),
                }
            }
        }
        Ok(Found::Nothing)
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn strip(&self, mut t: Type) -> Result<Type, LayoutError> {
        for _ in 0..32 {
            match &t {
                Type::Typedef(_)
                | Type::Volatile(_)
                | Type::Const(_)
                | Type::Restrict(_)
                | Type::TypeTag(_) => {
                    let Some(inner) = t.as_btf_type() else {
                        return Ok(t);
                    };
                    t = self.btf.resolve_chained_type(inner).map_err(|source| {
                        LayoutError::Lookup {
                            what: "a typedef".into(),
                            source,
                        }
                    })?;
                }
                _ => return Ok(t),
            }
        }
        Ok(t)
    }

    /// Everything the eBPF programs need, for this kernel. Tracepoint record offsets
    /// come from tracefs, not BTF: the caller fills them (see `tracefs`).
    ///
    /// The socket basics every probe needs are required. The accept-queue fields are
    /// not: where one is missing (an older or unusual kernel), `queue_valid` stays 0,
    /// the accept-queue programs do nothing, and [`Self::queue_offsets_error`] says
    /// why.
    pub fn kernel_offsets(&self) -> Result<KernelOffsets, LayoutError> {
        let (sk_protocol, sk_protocol_size) = self.sk_protocol()?;
        let mut o = KernelOffsets {
            sk_family: self.offset("sock", "__sk_common.skc_family")?,
            sk_num: self.offset("sock", "__sk_common.skc_num")?,
            sk_rcv_saddr: self.offset("sock", "__sk_common.skc_rcv_saddr")?,
            sk_v6_rcv_saddr: self.offset("sock", "__sk_common.skc_v6_rcv_saddr")?,
            sk_net: self.offset("sock", "__sk_common.skc_net.net")?,
            net_ns_inum: self.offset("net", "ns.inum")?,
            // Optional: kernels before 5.14 have no cookie; the inode keys state then.
            net_cookie: self.offset("net", "net_cookie").unwrap_or(0),
            // Optional (6.18): the inode kept in the sock, one read instead of two.
            sk_ino: self.offset("sock", "sk_ino").unwrap_or(0),
            // Optional: read with skc_net where it comes right before it.
            sk_prot: self.offset("sock", "__sk_common.skc_prot").unwrap_or(0),
            // Optional: without it, TCP accepts are counted but not timed.
            tcp_rcvq_time: self.offset("tcp_sock", "rcvq_space.time").unwrap_or(0),
            // Optional: without them the accept and connect entry programs keep the
            // syscalls' arguments.
            pt_regs_arg0: self.offset("pt_regs", "di").unwrap_or(0),
            pt_regs_arg1: self.offset("pt_regs", "si").unwrap_or(0),
            pt_regs_arg2: self.offset("pt_regs", "dx").unwrap_or(0),
            // Optional: without it no oldest wait.
            icsk_accept_head: self
                .offset("inet_connection_sock", "icsk_accept_queue.rskq_accept_head")
                .unwrap_or(0),
            sk_protocol,
            sk_protocol_size,
            valid: 1,
            ..KernelOffsets::default()
        };
        match self.queue_offsets(&mut o) {
            Ok(()) => o.queue_valid = 1,
            Err(e) => tracing::warn!("accept-queue probes disabled on this kernel: {e}"),
        }
        match self.uring_offsets(&mut o) {
            Ok(()) => o.uring_valid = 1,
            Err(e) => tracing::info!("io_uring accept probes disabled on this kernel: {e}"),
        }
        Ok(o)
    }

    /// Why the accept-queue offsets cannot be resolved here, if they cannot.
    pub fn queue_offsets_error(&self) -> Option<LayoutError> {
        self.queue_offsets(&mut KernelOffsets::default()).err()
    }

    fn queue_offsets(&self, o: &mut KernelOffsets) -> Result<(), LayoutError> {
        o.sk_state = self.offset("sock", "__sk_common.skc_state")?;
        o.sk_ack_backlog = self.offset("sock", "sk_ack_backlog")?;
        o.sk_max_ack_backlog = self.offset("sock", "sk_max_ack_backlog")?;
        o.sk_socket = self.offset("sock", "sk_socket")?;
        o.socket_ino = self.socket_ino()?;
        o.socket_sk = self.offset("socket", "sk")?;
        o.icsk_accept_tail =
            self.offset("inet_connection_sock", "icsk_accept_queue.rskq_accept_tail")?;
        o.request_sock_sk = self.offset("request_sock", "sk")?;
        o.task_files = self.offset("task_struct", "files")?;
        o.files_fdt = self.offset("files_struct", "fdt")?;
        o.fdt_max_fds = self.offset("fdtable", "max_fds")?;
        o.fdt_fd = self.offset("fdtable", "fd")?;
        o.file_private_data = self.offset("file", "private_data")?;
        Ok(())
    }

    /// The fields the Nagle / delayed-ACK programs read. `delack_timer_fn` (from
    /// kallsyms, not BTF) and the ephemeral port range are the caller's; `valid` is
    /// set here.
    pub fn nagle_offsets(&self) -> Result<NagleOffsets, LayoutError> {
        let tcp = |path: &str| self.offset("tcp_sock", path);
        let nonagle = self.member("tcp_sock", "nonagle")?;
        if nonagle
            .bitfield_size
            .is_some_and(|bits| bits > 8 - nonagle.bit_offset % 8)
        {
            return Err(LayoutError::Unaligned {
                strukt: "tcp_sock".into(),
                path: "nonagle".into(),
            });
        }
        let ack_timer_bit = self
            .enum_value("ICSK_ACK_TIMER")?
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| LayoutError::NoMember {
                strukt: "enum inet_csk_ack_state_t".into(),
                path: "ICSK_ACK_TIMER".into(),
            })?;
        Ok(NagleOffsets {
            valid: 1,
            timer_function: self.offset("timer_list", "function")?,
            timer_expires: self.offset("timer_list", "expires")?,
            icsk_delack_timer: self.offset("inet_connection_sock", "icsk_delack_timer")?,
            icsk_ack_pending: self.offset("inet_connection_sock", "icsk_ack.pending")?,
            ack_timer_bit,
            tp_write_seq: tcp("write_seq")?,
            tp_snd_nxt: tcp("snd_nxt")?,
            tp_snd_una: tcp("snd_una")?,
            tp_snd_sml: tcp("snd_sml")?,
            tp_packets_out: tcp("packets_out")?,
            tp_min_rtt_us: tcp("rtt_min")? + self.offset("minmax_sample", "v")?,
            tp_nonagle_byte: nonagle.bit_offset / 8,
            tp_nonagle_shift: nonagle.bit_offset % 8,
            sk_daddr: self.offset("sock", "__sk_common.skc_daddr")?,
            sk_dport: self.offset("sock", "__sk_common.skc_dport")?,
            sk_v6_daddr: self.offset("sock", "__sk_common.skc_v6_daddr")?,
            skb_cb: self.offset("sk_buff", "cb")?,
            tcb_seq: self.offset("tcp_skb_cb", "seq")?,
            tcb_end_seq: self.offset("tcp_skb_cb", "end_seq")?,
            tcb_ack_seq: self.offset("tcp_skb_cb", "ack_seq")?,
            ephemeral_lo: 0,
            ephemeral_hi: 0,
            delack_timer_fn: 0,
        })
    }

    /// A socket's inode lives right after its `struct socket` in `struct socket_alloc`
    /// (`SOCK_INODE()`); this is the offset of `i_ino` from the `struct socket`.
    fn socket_ino(&self) -> Result<u32, LayoutError> {
        let socket = self.offset("socket_alloc", "socket")?;
        let inode = self.offset("socket_alloc", "vfs_inode")?;
        let ino = self.offset("inode", "i_ino")?;
        (inode + ino)
            .checked_sub(socket)
            .ok_or_else(|| LayoutError::NoMember {
                strukt: "socket_alloc".into(),
                path: "vfs_inode.i_ino after socket".into(),
            })
    }

    /// `sk_protocol` is a u16 since Linux 5.6 and an 8-bit bitfield before; an 8-bit
    /// bitfield on a byte boundary reads as a u8. Anything else: (0, 0), no filter.
    fn sk_protocol(&self) -> Result<(u32, u32), LayoutError> {
        let field = self.member("sock", "sk_protocol")?;
        Ok(match field.bitfield_size {
            Some(8) if field.bit_offset.is_multiple_of(8) => (field.bit_offset / 8, 1),
            None | Some(0) if field.bit_offset.is_multiple_of(8) => (field.bit_offset / 8, 2),
            _ => (0, 0),
        })
    }
}

/// Offset of `name` in a BTF string section built by hand (the tests' BTF blobs).
#[cfg(test)]
fn btf_string_offset(strings: &[u8], name: &str) -> u32 {
    let needle = format!("\0{name}\0");
    let at = strings
        .windows(needle.len())
        .position(|w| w == needle.as_bytes())
        .expect("name");
    u32::try_from(at + 1).expect("offset")
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn running() -> Option<Layout> {
        match Layout::from_running_kernel() {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("skipping: {e}");
                None
            }
        }
    }

    #[test]
    fn resolves_sock_fields_of_the_running_kernel() {
        let Some(layout) = running() else { return };
        let o = layout.kernel_offsets().expect("offsets");
        // struct sock starts with struct sock_common; these live in its first 64 bytes
        // on every kernel since 4.x, and the family/port are 2-byte aligned.
        assert!(o.sk_family < 64 && o.sk_family.is_multiple_of(2), "{o:?}");
        assert!(o.sk_num < 64 && o.sk_num.is_multiple_of(2), "{o:?}");
        assert!(o.sk_v6_rcv_saddr > o.sk_rcv_saddr, "{o:?}");
        assert_eq!(o.sk_protocol_size, 2, "{o:?}");
        // skc_prot right before skc_net: the programs read the two at once.
        assert_eq!(o.sk_prot + 8, o.sk_net, "{o:?}");
        assert_eq!(o.valid, 1);
        assert_eq!(o.queue_valid, 1, "{:?}", layout.queue_offsets_error());
    }

    #[test]
    fn counts_the_arguments_of_kernel_functions() {
        let Some(layout) = running() else { return };
        // `inet_csk_accept` took (sk, flags, err, kern) up to 6.9, (sk, arg) since.
        let args = layout.function_args("inet_csk_accept");
        assert!(matches!(args, Some(2 | 4)), "{args:?}");
        // `tcp_v4_rcv(struct sk_buff *skb)` on every kernel sockq runs on.
        assert_eq!(layout.function_args("tcp_v4_rcv"), Some(1));
        assert_eq!(layout.function_args("no_such_function_in_any_kernel"), None);
        // A struct of that name is no function.
        assert_eq!(layout.function_args("sock"), None);
    }

    #[test]
    fn agrees_with_bpftool_where_available() {
        // The kernel's own view of the layout, independently of btf-rs.
        let Some(layout) = running() else { return };
        let Ok(out) = std::process::Command::new("bpftool")
            .args(["btf", "dump", "file", VMLINUX_BTF, "format", "raw"])
            .output()
        else {
            eprintln!("skipping: bpftool not installed");
            return;
        };
        let text = String::from_utf8_lossy(&out.stdout);
        // Find "STRUCT 'sock' size=..." then its "'sk_ack_backlog' type_id=.. bits_offset=N".
        let mut in_sock = false;
        let mut expected = None;
        for line in text.lines() {
            if line.starts_with('[') {
                in_sock = line.contains("STRUCT 'sock' ");
                continue;
            }
            if in_sock && line.trim_start().starts_with("'sk_ack_backlog'") {
                expected = line
                    .split("bits_offset=")
                    .nth(1)
                    .and_then(|s| s.split_whitespace().next())
                    .and_then(|s| s.parse::<u32>().ok());
            }
        }
        let Some(expected) = expected else {
            eprintln!("skipping: bpftool output had no sock.sk_ack_backlog");
            return;
        };
        let field = layout.member("sock", "sk_ack_backlog").expect("member");
        assert_eq!(field.bit_offset, expected);
    }

    #[test]
    fn finds_members_inside_anonymous_unions() {
        let Some(layout) = running() else { return };
        // skc_num sits in an anonymous struct inside an anonymous union of sock_common.
        let num = layout.offset("sock_common", "skc_num").expect("skc_num");
        let dport = layout
            .offset("sock_common", "skc_dport")
            .expect("skc_dport");
        assert_eq!(num, dport + 2);
    }

    #[test]
    fn missing_members_and_structs_are_errors() {
        let Some(layout) = running() else { return };
        assert!(matches!(
            layout.offset("sock", "no_such_member"),
            Err(LayoutError::NoMember { .. })
        ));
        assert!(matches!(
            layout.offset("no_such_struct_sockq", "x"),
            Err(LayoutError::NoStruct(_))
        ));
        let reason = layout
            .enum_value("SKB_DROP_REASON_TCP_LISTEN_OVERFLOW")
            .expect("enum lookup")
            .expect("this kernel has the reason");
        let names = layout.drop_reason_names();
        assert_eq!(
            names.get(&(reason as u32)).map(String::as_str),
            Some("TCP_LISTEN_OVERFLOW")
        );
    }

    #[test]
    fn missing_btf_file_says_what_is_needed() {
        let err = Layout::from_file(Path::new("/nonexistent/vmlinux"))
            .err()
            .expect("error");
        assert!(err.to_string().contains("CONFIG_DEBUG_INFO_BTF"), "{err}");
    }

    /// BTF with `int`, `struct inner { int b @ bit 0x100 }`, `struct sock { struct
    /// inner a @ bit 0xffff_ff00 }` and `struct anon { struct inner @ bit 0xffff_ff00 }`
    /// (anonymous): offsets whose sum does not fit in 32 bits.
    fn overflowing_btf() -> Vec<u8> {
        let strings = b"\0int\0inner\0b\0sock\0a\0anon\0";
        let name = |n: &str| btf_string_offset(strings, n);
        let struct_info = |vlen: u32| (4 << 24) | vlen;
        #[rustfmt::skip]
        let types: Vec<u32> = vec![
            // [1] int
            name("int"), 1 << 24, 4, 32,
            // [2] struct inner
            name("inner"), struct_info(1), 4, name("b"), 1, 0x100,
            // [3] struct sock
            name("sock"), struct_info(1), 4, name("a"), 2, 0xffff_ff00,
            // [4] struct anon, its member anonymous
            name("anon"), struct_info(1), 4, 0, 2, 0xffff_ff00,
        ];
        btf_blob(&types, strings)
    }

    /// A BTF header, then `types` (as little-endian words) and `strings`.
    pub(super) fn btf_blob(types: &[u32], strings: &[u8]) -> Vec<u8> {
        let types: Vec<u8> = types.iter().flat_map(|w| w.to_le_bytes()).collect();
        let len = |b: &[u8]| u32::try_from(b.len()).expect("length");
        let mut btf = vec![0x9f, 0xeb, 1, 0];
        for word in [24, 0, len(&types), len(&types), len(strings)] {
            btf.extend(u32::to_le_bytes(word));
        }
        btf.extend(types);
        btf.extend(strings);
        btf
    }

    #[test]
    fn offsets_past_u32_are_errors_not_overflows() {
        // Found by `cargo xtask fuzz` (target btf): `attempt to add with overflow`.
        let layout = Layout::from_bytes(&overflowing_btf()).expect("parses");
        for (strukt, path) in [("sock", "a.b"), ("anon", "b")] {
            let err = layout.member(strukt, path).expect_err(path);
            assert!(
                matches!(
                    err,
                    LayoutError::Malformed {
                        why: OFFSET_OVERFLOW,
                        ..
                    }
                ),
                "{err}"
            );
        }
        assert!(layout.kernel_offsets().is_err());
    }

    #[test]
    fn wide_anonymous_nesting_is_searched_in_bounded_time() {
        // Found while writing the fuzz target btf (a 128-byte input; the fuzzer
        // had not produced it yet): `struct sock` made of 10 anonymous members of
        // type `struct sock` took 10^16 steps to search.
        let mut types: Vec<u32> = vec![1, (4 << 24) | 10, 8];
        for _ in 0..10 {
            types.extend([0, 1, 0]);
        }
        let layout = Layout::from_bytes(&btf_blob(&types, b"\0sock\0")).expect("parses");
        let started = std::time::Instant::now();
        let err = layout
            .member("sock", "__sk_common.skc_num")
            .expect_err("no such member");
        assert!(matches!(err, LayoutError::Malformed { .. }), "{err}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn malformed_btf_is_an_error_not_a_panic() {
        for bytes in [
            &b""[..],
            &b"garbage"[..],
            &[0x9f, 0xeb, 1, 0, 24, 0, 0, 0, 0, 0, 0, 0][..],
            &[
                0x9f, 0xeb, 1, 0, 24, 0, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255, 0, 0, 0, 0, 0, 0, 0,
                0,
            ][..],
        ] {
            assert!(Layout::from_bytes(bytes).is_err(), "{bytes:?}");
        }
    }
}
