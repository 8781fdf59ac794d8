//! `xdp-attach`: attaches an XDP program (one that passes every packet) to an interface and
//! holds it until killed (prints `ready`) — an XDP program sees packets in the driver, before
//! every BitSecure program. Built from two instructions through the raw bpf(2) syscall: no
//! object file needed.

use std::os::fd::{FromRawFd as _, OwnedFd};

use anyhow::{Result, bail, ensure};
use clap::Args;

use super::announce;

#[derive(Args)]
pub struct XdpAttachArgs {
    /// Interface to attach to (generic mode, which every driver supports).
    #[arg(long)]
    interface: String,
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;

/// `r0 = XDP_PASS; exit`.
const PASS_PROGRAM: [u64; 2] = [
    0x0000_0002_0000_00b7u64, // mov64 r0, 2 (opcode 0xb7, imm 2)
    0x0000_0000_0000_0095u64, // exit
];

fn bpf(command: libc::c_long, attr: &mut [u8; 128]) -> Result<OwnedFd> {
    // SAFETY: bpf(2) reads at most `attr.len()` bytes of the attribute union.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, command, attr.as_mut_ptr(), attr.len()) };
    if fd < 0 {
        bail!("bpf({command}): {}", std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

pub fn xdp_attach(args: &XdpAttachArgs) -> Result<()> {
    let name = std::ffi::CString::new(args.interface.as_str())?;
    // SAFETY: a valid NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    ensure!(ifindex != 0, "no interface {}", args.interface);
    let license = c"GPL";
    let mut load = [0u8; 128];
    load[0..4].copy_from_slice(&BPF_PROG_TYPE_XDP.to_ne_bytes());
    load[4..8].copy_from_slice(&(PASS_PROGRAM.len() as u32).to_ne_bytes());
    load[8..16].copy_from_slice(&(PASS_PROGRAM.as_ptr() as u64).to_ne_bytes());
    load[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    let program = bpf(BPF_PROG_LOAD, &mut load)?;
    let mut link = [0u8; 128];
    link[0..4].copy_from_slice(&(std::os::fd::AsRawFd::as_raw_fd(&program) as u32).to_ne_bytes());
    link[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    link[8..12].copy_from_slice(&BPF_XDP.to_ne_bytes());
    link[12..16].copy_from_slice(&XDP_FLAGS_SKB_MODE.to_ne_bytes());
    let _link = bpf(BPF_LINK_CREATE, &mut link)?;
    announce("ready")?;
    loop {
        std::thread::park();
    }
}
