//! Is each of our programs still attached where we put it? Asks the kernel which programs run
//! on the cgroup for an attach type (`BPF_PROG_QUERY`, not exposed by aya 0.14 for cgroups) and
//! looks for our program's id there.
//!
//! What a root user can do to our attachments, and what this sees (checked on Linux 6.18):
//! - `bpftool cgroup detach <cgroup> <type> id <N>` (`BPF_PROG_DETACH`) fails: our programs are
//!   attached through bpf links, which only a link detach removes. Nothing changes.
//! - `bpftool link detach id <L>` (`BPF_LINK_DETACH`) works: the program is gone from the
//!   query; the link lives on (pinned, or held by the agent) with `cgroup_id 0`.
//! - Attaching another program in its place (`bpftool cgroup attach ... id <M>`), even one with
//!   our name or our tag: the query lists program M, not ours. Comparing ids catches it; names
//!   or tags would not.
//! - `BPF_LINK_UPDATE` on our link (no bpftool command): the link now runs another program;
//!   again our id is gone from the query.
//!
//! The query needs CAP_NET_ADMIN.

use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd, BorrowedFd},
};

const BPF_PROG_QUERY: libc::c_long = 16;

/// `enum bpf_attach_type` values of the attach types we use.
pub const ATTACH_INGRESS: u32 = 0;
pub const ATTACH_EGRESS: u32 = 1;
pub const ATTACH_SOCK_CREATE: u32 = 2;
pub const ATTACH_SOCK_OPS: u32 = 3;
pub const ATTACH_SOCK_RELEASE: u32 = 34;

/// The `query` member of `union bpf_attr` (fields up to `revision`, Linux 6.6; older kernels
/// accept it as long as the tail they do not know is zero).
#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
    prog_attach_flags: u64,
    link_ids: u64,
    link_attach_flags: u64,
    revision: u64,
}

/// Ids of the programs attached directly to `cgroup` for `attach_type` (not inherited ones).
pub fn attached_program_ids(cgroup: BorrowedFd<'_>, attach_type: u32) -> io::Result<Vec<u32>> {
    let mut capacity = 64;
    loop {
        let mut ids = vec![0u32; capacity];
        let mut attr = QueryAttr {
            target_fd: cgroup.as_raw_fd() as u32,
            attach_type,
            prog_ids: ids.as_mut_ptr() as u64,
            prog_cnt: capacity as u32,
            ..QueryAttr::default()
        };
        // SAFETY: attr is a valid bpf_attr prefix for BPF_PROG_QUERY; the kernel writes at most
        // prog_cnt ids into `ids`, which lives until after the call.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_QUERY,
                &mut attr as *mut QueryAttr,
                size_of::<QueryAttr>() as libc::c_uint,
            )
        };
        if ret < 0 {
            let error = io::Error::last_os_error();
            // ENOSPC: more programs than room; prog_cnt says how many.
            if error.raw_os_error() == Some(libc::ENOSPC) && attr.prog_cnt as usize > capacity {
                capacity = attr.prog_cnt as usize;
                continue;
            }
            return Err(error);
        }
        ids.truncate(attr.prog_cnt as usize);
        return Ok(ids);
    }
}

/// What the kernel runs where one of our programs should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// Our program is attached.
    Attached,
    /// Our program is not there; `others` are the programs that are (someone else's, or a
    /// look-alike put in its place).
    Missing { others: Vec<u32> },
}

impl Finding {
    pub fn of(own_id: u32, attached: &[u32]) -> Self {
        if attached.contains(&own_id) {
            Self::Attached
        } else {
            Self::Missing {
                others: attached.to_vec(),
            }
        }
    }

    /// For the log: what runs there instead.
    pub fn describe(&self) -> String {
        match self {
            Self::Attached => "attached".to_owned(),
            Self::Missing { others } if others.is_empty() => {
                "no program of this attach type runs there".to_owned()
            }
            Self::Missing { others } => {
                let ids: Vec<String> = others.iter().map(u32::to_string).collect();
                format!(
                    "only other programs run there, ids {}; one may be a look-alike put in its place",
                    ids.join(", ")
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_id_among_others_is_attached() {
        assert_eq!(Finding::of(7, &[3, 7, 9]), Finding::Attached);
    }

    #[test]
    fn a_look_alike_does_not_count() {
        // Same name or tag does not matter: only the id of the program we attached.
        let finding = Finding::of(7, &[8]);
        assert_eq!(finding, Finding::Missing { others: vec![8] });
        assert!(
            finding.describe().contains("ids 8"),
            "{}",
            finding.describe()
        );
    }

    #[test]
    fn nothing_attached_is_missing() {
        let finding = Finding::of(7, &[]);
        assert_eq!(finding, Finding::Missing { others: vec![] });
        assert!(finding.describe().contains("no program"));
    }
}
