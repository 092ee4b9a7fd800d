//! The io_uring accept programs' part of the layout: `struct io_kiocb` fields and
//! which prototype `io_uring:io_uring_complete` has here. Optional: a kernel without
//! io_uring, or with a layout sockq does not know, runs every other probe.
//!
//! The kernel: <https://elixir.bootlin.com/linux/v6.18/source/include/trace/events/io_uring.h>,
//! `io_uring/io_uring.h` (`io_fill_cqe_req`), `io_uring/io_uring.c` (`io_fill_cqe_aux`).

use btf_rs::Type;
use collector_common::{
    io_uring::{COMPLETE_CQE, COMPLETE_VALUES},
    layout::KernelOffsets,
};

use super::{Layout, LayoutError};

impl Layout {
    /// Why the io_uring accept probes cannot run here, if they cannot.
    pub fn uring_offsets_error(&self) -> Option<LayoutError> {
        self.uring_offsets(&mut KernelOffsets::default()).err()
    }

    /// The `struct io_kiocb` fields the io_uring programs read and the prototype of
    /// `io_uring_complete`. Optional: a kernel without io_uring (or with a layout
    /// sockq does not know) runs every other probe.
    pub(super) fn uring_offsets(&self, o: &mut KernelOffsets) -> Result<(), LayoutError> {
        o.uring_complete_layout = self.uring_complete_layout()?;
        o.req_opcode = self.offset("io_kiocb", "opcode")?;
        o.req_flags = self.offset("io_kiocb", "flags")?;
        o.req_ctx = self.offset("io_kiocb", "ctx")?;
        o.req_user_data = self.offset("io_kiocb", "cqe.user_data")?;
        o.req_file = self.offset("io_kiocb", "file")?;
        o.req_accept_file_slot =
            self.offset("io_kiocb", "cmd")? + self.offset("io_accept", "file_slot")?;
        o.req_multishot_bit = self
            .enum_value("REQ_F_APOLL_MULTISHOT_BIT")?
            .and_then(|v| u32::try_from(v).ok())
            .filter(|bit| *bit < 32)
            .ok_or_else(|| LayoutError::NoMember {
                strukt: "enum io_req_flags (a bit below 32)".into(),
                path: "REQ_F_APOLL_MULTISHOT_BIT".into(),
            })?;
        // Optional: without the fixed-file table, accepts into direct descriptors are
        // counted lost instead.
        if let Err(e) = self.fixed_file_offsets(o) {
            tracing::debug!("io_uring accepts into direct descriptors will not be counted: {e}");
        }
        Ok(())
    }

    /// The ring's fixed-file table as 6.13 on lays it out (`io_file_table` holding an
    /// `io_rsrc_data` of `io_rsrc_node` pointers); left 0 on other layouts, all or
    /// nothing.
    fn fixed_file_offsets(&self, o: &mut KernelOffsets) -> Result<(), LayoutError> {
        let nodes = self.offset("io_ring_ctx", "file_table.data.nodes")?;
        let nr = self.offset("io_ring_ctx", "file_table.data.nr")?;
        let file_ptr = self.offset("io_rsrc_node", "file_ptr")?;
        (o.ring_fixed_nodes, o.ring_fixed_nr, o.rsrc_node_file_ptr) = (nodes, nr, file_ptr);
        Ok(())
    }

    /// Which `io_uring_complete` prototype this kernel has, and that the submission
    /// and wake-up tracepoints pass the request first (older kernels, 5.10, pass the
    /// ring first: the programs would read it as a request).
    fn uring_complete_layout(&self) -> Result<u32, LayoutError> {
        let submit = match self.tracepoint_args("io_uring_submit_req") {
            Ok(args) => ("io_uring_submit_req", args),
            Err(_) => (
                "io_uring_submit_sqe",
                self.tracepoint_args("io_uring_submit_sqe")?,
            ),
        };
        let wake = (
            "io_uring_task_add",
            self.tracepoint_args("io_uring_task_add")?,
        );
        for (name, args) in [submit, wake] {
            if !args.first().is_some_and(|t| self.points_to(t, "io_kiocb")) {
                return Err(unknown_prototype(
                    name,
                    "its first argument is not the request",
                ));
            }
        }
        let args = self.tracepoint_args("io_uring_complete")?;
        match (args.len(), args.get(2)) {
            (3, Some(cqe)) if self.points_to(cqe, "io_uring_cqe") => Ok(COMPLETE_CQE),
            (5.., Some(Type::Int(user_data))) if user_data.size() == 8 => Ok(COMPLETE_VALUES),
            (n, _) => Err(unknown_prototype(
                "io_uring_complete",
                &format!(
                    "{n} arguments, not (ctx, req, cqe) nor (ctx, req, user_data, res, cflags, ...)"
                ),
            )),
        }
    }

    /// The argument types of raw tracepoint `name`, from the type the kernel gives
    /// its programs (`btf_trace_<name>`, a pointer to a function whose first argument
    /// is the tracing machinery's own `void *`), typedefs and qualifiers stripped.
    fn tracepoint_args(&self, name: &str) -> Result<Vec<Type>, LayoutError> {
        let typedef = format!("btf_trace_{name}");
        let lookup = |source| LayoutError::Lookup {
            what: typedef.clone(),
            source,
        };
        let types = self
            .btf
            .resolve_types_by_name(&typedef)
            .map_err(|_| unknown_prototype(name, ABSENT))?;
        let t = match types.into_iter().next() {
            Some(Type::Typedef(t)) => t,
            Some(_) => {
                return Err(unknown_prototype(
                    name,
                    "its btf_trace_ type is not a typedef",
                ));
            }
            None => return Err(unknown_prototype(name, ABSENT)),
        };
        let Type::Ptr(pointer) = self.btf.resolve_chained_type(&t).map_err(lookup)? else {
            return Err(unknown_prototype(
                name,
                "its btf_trace_ type is no function pointer",
            ));
        };
        let Type::FuncProto(proto) = self.btf.resolve_chained_type(&pointer).map_err(lookup)?
        else {
            return Err(unknown_prototype(
                name,
                "its btf_trace_ type is no function pointer",
            ));
        };
        proto
            .parameters
            .iter()
            .skip(1)
            .map(|p| self.strip(self.btf.resolve_chained_type(p).map_err(lookup)?))
            .collect()
    }

    /// Whether `t` is a pointer to `struct strukt`.
    fn points_to(&self, t: &Type, strukt: &str) -> bool {
        let Type::Ptr(p) = t else { return false };
        matches!(
            self.btf.resolve_chained_type(p),
            Ok(Type::Struct(s)) if self.name_of(&s).is_ok_and(|n| n == strukt)
        )
    }
}

const ABSENT: &str = "absent: no io_uring, or no such tracepoint";

fn unknown_prototype(tracepoint: &str, why: &str) -> LayoutError {
    LayoutError::Prototype {
        tracepoint: tracepoint.into(),
        why: why.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::btf_layout::tests::{btf_blob, running};

    #[test]
    fn resolves_io_uring_fields_of_the_running_kernel() {
        let Some(layout) = running() else { return };
        let o = layout.kernel_offsets().expect("offsets");
        if let Some(e) = layout.uring_offsets_error() {
            // A kernel without io_uring: the probes stay off, the rest runs.
            eprintln!("skipping: {e}");
            assert_eq!(o.uring_valid, 0);
            return;
        }
        assert_eq!(o.uring_valid, 1);
        // `file`, in a union with the command (`struct io_cmd_data`, 64 bytes), opens
        // struct io_kiocb; the opcode follows; the accept's file slot is in the command.
        assert_eq!(o.req_file, 0, "{o:?}");
        assert!(o.req_opcode >= 64, "{o:?}");
        assert!(
            o.req_accept_file_slot > 0 && o.req_accept_file_slot < o.req_opcode,
            "{o:?}"
        );
        assert!(o.req_multishot_bit > 0 && o.req_multishot_bit < 32, "{o:?}");
        // 6.13 on: (ctx, req, cqe).
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let mut parts = release.trim().split(['.', '-']).map(|p| p.parse::<u32>());
        if let (Some(Ok(major)), Some(Ok(minor))) = (parts.next(), parts.next())
            && (major, minor) >= (6, 13)
        {
            assert_eq!(o.uring_complete_layout, COMPLETE_CQE);
            // And the fixed-file table of io_rsrc_node pointers: `nr` (u32) then
            // `nodes`; a node's `file_ptr` after its type, refs and tag.
            assert!(o.ring_fixed_nodes > 0, "{o:?}");
            assert_eq!(o.ring_fixed_nodes, o.ring_fixed_nr + 8, "{o:?}");
            assert_eq!(o.rsrc_node_file_ptr, 16, "{o:?}");
        }
    }

    /// BTF with `btf_trace_io_uring_complete`, a pointer to a function taking
    /// `complete` (type ids: 1 `u64`, 2 `int`, 3 `void *`, 5 `struct io_uring_cqe *`,
    /// 7 `struct io_kiocb *`), and `btf_trace_io_uring_submit_req` and `..._task_add`
    /// taking (`void *`, `submit`).
    fn tracepoints_btf(complete: &[u32], submit: u32) -> Vec<u8> {
        let strings = b"\0u64\0int\0io_uring_cqe\0io_kiocb\0btf_trace_io_uring_complete\0\
            btf_trace_io_uring_submit_req\0btf_trace_io_uring_task_add\0";
        let name = |n: &str| super::super::btf_string_offset(strings, n);
        let vlen = u32::try_from(complete.len()).expect("params");
        let (ptr, typedef) = (2 << 24, 8 << 24);
        #[rustfmt::skip]
        let mut types: Vec<u32> = vec![
            // [1] u64, [2] int, [3] void *
            name("u64"), 1 << 24, 8, 64,
            name("int"), 1 << 24, 4, (1 << 24) | 32,
            0, ptr, 0,
            // [4] struct io_uring_cqe, [5] a pointer to it, [6] struct io_kiocb, [7] ...
            name("io_uring_cqe"), 4 << 24, 16,
            0, ptr, 4,
            name("io_kiocb"), 4 << 24, 64,
            0, ptr, 6,
            // [8] void (*)(void *, submit), [9] a pointer to it, [10] [11] typedefs
            0, (13 << 24) | 2, 0, 0, 3, 0, submit,
            0, ptr, 8,
            name("btf_trace_io_uring_submit_req"), typedef, 9,
            name("btf_trace_io_uring_task_add"), typedef, 9,
            // [12] void (*)(complete...)
            0, (13 << 24) | vlen, 0,
        ];
        types.extend(complete.iter().flat_map(|&t| [0, t]));
        // [13] a pointer to [12], [14] its typedef
        #[rustfmt::skip]
        types.extend([0, ptr, 12, name("btf_trace_io_uring_complete"), typedef, 13]);
        btf_blob(&types, strings)
    }

    #[test]
    fn tells_the_io_uring_prototypes_apart() {
        let layout = |complete: &[u32], submit: u32| {
            Layout::from_bytes(&tracepoints_btf(complete, submit))
                .expect("parses")
                .uring_complete_layout()
        };
        // 6.13 on: (ctx, req, cqe) after the tracing machinery's void *.
        assert_eq!(layout(&[3, 3, 3, 5], 7).expect("6.13 layout"), COMPLETE_CQE);
        // Before 6.13 (6.1, 6.12): (ctx, req, user_data, res, cflags, extra1, extra2).
        assert_eq!(
            layout(&[3, 3, 3, 1, 2, 2, 1, 1], 7).expect("6.1 layout"),
            COMPLETE_VALUES
        );
        // Anything else is refused, not guessed: a pointer that is no CQE, too few
        // arguments, submission tracepoints that pass the ring first (5.10).
        assert!(layout(&[3, 3, 3, 3], 7).is_err());
        assert!(layout(&[3, 3, 3], 7).is_err());
        let err = layout(&[3, 3, 3, 1, 2, 2, 1, 1], 3).expect_err("ring first");
        assert!(err.to_string().contains("io_uring_submit_req"), "{err}");
        let err = Layout::from_bytes(&btf_blob(&[1, 1 << 24, 4, 32], b"\0int\0"))
            .expect("parses")
            .uring_complete_layout()
            .expect_err("no io_uring");
        assert!(err.to_string().contains("absent"), "{err}");
    }
}
