//! `packet-send`: hand-built Ethernet/IPv4/UDP frames through an AF_PACKET socket, below every
//! socket hook — what a DHCP client does, and a BPFDoor-style backdoor. After sending, the
//! socket is held open (`ready` printed) until the process is killed, so a test can see who
//! holds it.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

use anyhow::{Result, bail, ensure};
use clap::Args;

use super::{announce, count_sent, flood::checksum};

const ETH_P_IP: u16 = 0x0800;
const ETHERNET_HEADER: usize = 14;
const IP_UDP_HEADERS: usize = 20 + 8;

#[derive(Args)]
pub struct PacketSendArgs {
    /// Interface to send on (e.g. a test veth).
    #[arg(long)]
    interface: String,
    /// Source IPv4 address written into each frame.
    #[arg(long)]
    from: Ipv4Addr,
    /// Destination IPv4 address written into each frame (sent to the broadcast MAC).
    #[arg(long)]
    to: Ipv4Addr,
    /// Number of frames.
    #[arg(long)]
    frames: u32,
    /// UDP payload bytes per frame.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u16).range(0..=1400))]
    size: u16,
    /// Hand the frames straight to the driver (PACKET_QDISC_BYPASS), past the qdisc layer and
    /// every tc program on the interface: an attacker's way around the interface counters.
    #[arg(long)]
    qdisc_bypass: bool,
}

pub fn packet_send(args: &PacketSendArgs) -> Result<()> {
    let name = std::ffi::CString::new(args.interface.as_str())?;
    // SAFETY: a valid NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    ensure!(ifindex != 0, "no interface {}", args.interface);
    // SAFETY: plain socket(2) call; the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(ETH_P_IP.to_be())) };
    if fd < 0 {
        bail!(
            "cannot open a packet socket: {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    if args.qdisc_bypass {
        let on: libc::c_int = 1;
        // SAFETY: setsockopt reads one c_int.
        let set = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                (&raw const on).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        ensure!(
            set == 0,
            "PACKET_QDISC_BYPASS: {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: sockaddr_ll is plain data; zero is a valid start.
    let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    address.sll_family = libc::AF_PACKET as u16;
    address.sll_protocol = ETH_P_IP.to_be();
    address.sll_ifindex = ifindex as i32;
    address.sll_halen = 6;
    address.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    for sequence in 0..args.frames {
        let frame = frame(args.from, args.to, args.size, sequence);
        // SAFETY: a valid buffer and sockaddr for the duration of the call.
        let sent = unsafe {
            libc::sendto(
                socket.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                std::ptr::from_ref(&address).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        ensure!(
            sent == frame.len() as isize,
            "sendto: {}",
            std::io::Error::last_os_error()
        );
        count_sent(frame.len() - ETHERNET_HEADER, 1);
    }
    announce("ready")?;
    // Hold the socket until killed.
    loop {
        std::thread::park();
    }
}

/// Broadcast Ethernet + IPv4 (checksummed) + UDP (no checksum) to port 9 (discard).
fn frame(from: Ipv4Addr, to: Ipv4Addr, size: u16, sequence: u32) -> Vec<u8> {
    let ip_length = IP_UDP_HEADERS + usize::from(size);
    let mut frame = vec![0u8; ETHERNET_HEADER + ip_length];
    frame[0..6].copy_from_slice(&[0xff; 6]);
    frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    frame[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes());
    let ip = &mut frame[ETHERNET_HEADER..];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(ip_length as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&(sequence as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&from.octets());
    ip[16..20].copy_from_slice(&to.octets());
    let header_checksum = checksum(&[&ip[..20]]);
    ip[10..12].copy_from_slice(&header_checksum.to_be_bytes());
    let udp = &mut ip[20..];
    udp[0..2].copy_from_slice(&40_000u16.to_be_bytes());
    udp[2..4].copy_from_slice(&9u16.to_be_bytes());
    udp[4..6].copy_from_slice(&(8 + size).to_be_bytes());
    frame
}
