//! What anyone who can send packets can throw at a rig's listeners: `syn-flood`, TCP SYNs from
//! spoofed sources (a raw socket builds each IPv4 and TCP header), and `udp-clients`, one
//! datagram each from many client ports (each its own socket) to a UDP echo server.
//!
//! Reports count what was sent as IP packets: for `syn-flood` whole IPv4 packets (the header
//! is ours), for `udp-clients` payload bytes (as the other UDP clients do).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use clap::Args;

use super::{DATAGRAM_BUF, address_range_start, count_received, count_sent, pace};

/// IPv4 header (no options) + TCP header (no options).
const SYN_BYTES: usize = 20 + 20;

#[derive(Args)]
pub struct SynFloodArgs {
    /// The listener, e.g. 10.0.0.1:5000 (IPv4).
    #[arg(long)]
    target: SocketAddrV4,
    /// First spoofed source address; the others follow it.
    #[arg(long)]
    first: Ipv4Addr,
    /// Number of SYNs, each from its own source address (and a port derived from it).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    sources: u32,
    /// Send SYN i no earlier than i / R seconds after the start (0 = as fast as possible).
    #[arg(long, default_value_t = 0.0)]
    per_second: f64,
}

#[derive(Args)]
pub struct UdpClientsArgs {
    /// Echo server (`serve --udp`).
    #[arg(long)]
    server: SocketAddr,
    /// Number of clients, each a socket of its own (so its own port) sending one datagram.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    clients: u32,
    /// Payload bytes per datagram.
    #[arg(long, default_value_t = 32)]
    size: u16,
}

/// Sends one SYN from each of `sources` consecutive addresses, without waiting for anything.
pub fn syn_flood(args: &SynFloodArgs) -> Result<()> {
    let first = address_range_start(args.first, args.sources)?;
    ensure!(
        args.per_second >= 0.0 && args.per_second.is_finite(),
        "--per-second must be a finite number ≥ 0"
    );
    // SAFETY: plain socket(2) call; the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    if fd < 0 {
        bail!(
            "cannot open a raw socket: {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let socket = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let destination = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(*args.target.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let start = Instant::now();
    for index in 0..args.sources {
        pace(start, index.into(), args.per_second);
        let source = Ipv4Addr::from(first + index);
        // Ephemeral-looking source ports, different for every source.
        let port = 10_000 + (index % 50_000) as u16;
        let packet = syn_packet(source, port, *args.target.ip(), args.target.port(), index);
        // SAFETY: a valid buffer and sockaddr for the duration of the call.
        let sent = unsafe {
            libc::sendto(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                std::ptr::from_ref(&destination).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        ensure!(
            sent == packet.len() as isize,
            "sendto: {}",
            std::io::Error::last_os_error()
        );
        count_sent(packet.len(), 1);
    }
    Ok(())
}

/// An IPv4 + TCP SYN with valid checksums.
fn syn_packet(
    source: Ipv4Addr,
    source_port: u16,
    target: Ipv4Addr,
    target_port: u16,
    sequence: u32,
) -> [u8; SYN_BYTES] {
    let mut packet = [0u8; SYN_BYTES];
    packet[0] = 0x45; // version 4, 5 words
    packet[2..4].copy_from_slice(&(SYN_BYTES as u16).to_be_bytes());
    packet[8] = 64; // TTL
    packet[9] = 6; // TCP
    packet[12..16].copy_from_slice(&source.octets());
    packet[16..20].copy_from_slice(&target.octets());
    let ip_checksum = checksum(&[&packet[..20]]);
    packet[10..12].copy_from_slice(&ip_checksum.to_be_bytes());
    let tcp = &mut packet[20..];
    tcp[0..2].copy_from_slice(&source_port.to_be_bytes());
    tcp[2..4].copy_from_slice(&target_port.to_be_bytes());
    tcp[4..8].copy_from_slice(&sequence.wrapping_mul(2_654_435_761).to_be_bytes());
    tcp[12] = 5 << 4; // data offset: 5 words
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&64_240u16.to_be_bytes()); // window
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&source.octets());
    pseudo[4..8].copy_from_slice(&target.octets());
    pseudo[9] = 6;
    pseudo[10..12].copy_from_slice(&20u16.to_be_bytes());
    let tcp_checksum = checksum(&[&pseudo, &packet[20..]]);
    packet[36..38].copy_from_slice(&tcp_checksum.to_be_bytes());
    packet
}

/// The Internet checksum (RFC 1071) over the concatenated `parts` (each of even length).
pub(super) fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for part in parts {
        for word in part.chunks(2) {
            sum += u32::from(u16::from_be_bytes([word[0], *word.get(1).unwrap_or(&0)]));
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Each client: a new socket (a new port) sends one datagram and waits for its echo.
pub fn udp_clients(args: &UdpClientsArgs) -> Result<()> {
    let bind: SocketAddr = if args.server.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let payload = vec![0x5a; usize::from(args.size)];
    let mut reply = vec![0u8; DATAGRAM_BUF];
    for client in 0..args.clients {
        let socket = UdpSocket::bind(bind).context("cannot bind a client socket")?;
        socket.set_read_timeout(Some(Duration::from_secs(2)))?;
        socket.send_to(&payload, args.server)?;
        count_sent(payload.len(), 1);
        let (received, _) = socket
            .recv_from(&mut reply)
            .with_context(|| format!("client {client}: no echo from {}", args.server))?;
        count_received(received, 1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packet_with_its_checksum_sums_to_zero() {
        let packet = syn_packet(
            Ipv4Addr::new(100, 64, 1, 2),
            40_000,
            Ipv4Addr::new(10, 0, 0, 1),
            5000,
            7,
        );
        assert_eq!(checksum(&[&packet[..20]]), 0, "IP header");
        let mut pseudo = [0u8; 12];
        pseudo[0..4].copy_from_slice(&packet[12..16]);
        pseudo[4..8].copy_from_slice(&packet[16..20]);
        pseudo[9] = 6;
        pseudo[10..12].copy_from_slice(&20u16.to_be_bytes());
        assert_eq!(checksum(&[&pseudo, &packet[20..]]), 0, "TCP segment");
    }
}
