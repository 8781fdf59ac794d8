//! `tap-merge`: plays the host of a VM, or a NIC doing LRO. Two tap devices with virtio-net
//! headers — one in this network namespace, one in another (the "far" side) — joined by this
//! process: frames from the far side are merged, consecutive TCP segments of one connection
//! into one frame with `gso_size` set, as virtio-net and tun/tap hand them up; the kernel then
//! holds a packet of several wire segments whose `gso_segs` is 0. Frames the other way pass as
//! they are. Runs until killed; `--stats FILE` gets "frames merged_frames segments" after each
//! batch.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::os::fd::AsRawFd as _;
use std::path::PathBuf;

use anyhow::{Context as _, Result, bail, ensure};
use clap::Args;

use super::announce;

#[derive(Args)]
pub struct TapMergeArgs {
    /// Name of the tap device to create in this network namespace.
    #[arg(long)]
    tap: String,
    /// Network namespace (a name under /var/run/netns) of the far side.
    #[arg(long)]
    far_netns: String,
    /// Name of the tap device to create in the far namespace.
    #[arg(long)]
    far_tap: String,
    /// Most segments merged into one frame.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(2..=44))]
    merge: u16,
    /// File rewritten with "frames merged_frames segments" as frames pass.
    #[arg(long)]
    stats: Option<PathBuf>,
}

/// `struct virtio_net_hdr` (linux/virtio_net.h), the header tun puts before each frame.
const VNET_HDR_LEN: usize = 10;
const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
const ETHERNET_HEADER: usize = 14;
/// TCP flags a merged segment may carry: ACK and PSH (anything else ends a run).
const ACK: u8 = 0x10;
const PSH: u8 = 0x08;
/// Offset of the checksum field in the TCP header.
const TCP_CHECKSUM_OFFSET: u16 = 16;
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

pub fn tap_merge(args: &TapMergeArgs) -> Result<()> {
    let near = open_tap(&args.tap)?;
    // setns affects the calling thread only: open the far tap from a thread that moves.
    let far_netns = args.far_netns.clone();
    let far_name = args.far_tap.clone();
    let far = std::thread::spawn(move || -> Result<File> {
        let path = format!("/var/run/netns/{far_netns}");
        let namespace = File::open(&path).with_context(|| format!("cannot open {path}"))?;
        // SAFETY: setns with a valid namespace descriptor.
        if unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns {path}: {}", std::io::Error::last_os_error());
        }
        open_tap(&far_name)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the thread opening the far tap panicked"))??;
    let (near_writer, far_writer) = (near.try_clone()?, far.try_clone()?);
    announce("ready")?;
    // Near → far: as it comes.
    std::thread::spawn(move || pass_through(near, far_writer));
    merge_into(far, near_writer, args.merge, args.stats.as_deref())
}

fn open_tap(name: &str) -> Result<File> {
    ensure!(name.len() < libc::IFNAMSIZ, "tap name {name:?} too long");
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .context("cannot open /dev/net/tun")?;
    // SAFETY: ifreq is plain data; zero is a valid start.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    request.ifr_ifru.ifru_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
    // SAFETY: TUNSETIFF reads and writes one ifreq.
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, &raw mut request) } != 0 {
        bail!("TUNSETIFF {name}: {}", std::io::Error::last_os_error());
    }
    // No offloads towards us: the kernel hands over wire-sized frames with full checksums.
    // SAFETY: TUNSETOFFLOAD takes its flags by value.
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETOFFLOAD, 0 as libc::c_ulong) } != 0 {
        bail!("TUNSETOFFLOAD {name}: {}", std::io::Error::last_os_error());
    }
    Ok(tun)
}

fn pass_through(mut from: File, mut to: File) -> Result<()> {
    let mut buffer = vec![0u8; 65_536 + VNET_HDR_LEN];
    loop {
        let n = from.read(&mut buffer)?;
        if n > VNET_HDR_LEN {
            buffer[..VNET_HDR_LEN].fill(0);
            let _ = to.write(&buffer[..n]);
        }
    }
}

/// One TCP segment of a frame, as far as merging needs it.
struct Segment {
    /// Source and destination address and port.
    flow: [u8; 12],
    seq: u32,
    ack: u32,
    flags: u8,
    /// IP header + TCP header.
    headers: usize,
    ip_header: usize,
    payload: usize,
}

fn segment(frame: &[u8]) -> Option<Segment> {
    if frame.len() < ETHERNET_HEADER + 40 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[ETHERNET_HEADER..];
    let ip_header = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    // TCP, not a fragment.
    if ip[9] != 6 || u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 || total > ip.len() {
        return None;
    }
    let tcp = &ip[ip_header..];
    let tcp_header = usize::from(tcp[12] >> 4) * 4;
    let mut flow = [0u8; 12];
    flow[..8].copy_from_slice(&ip[12..20]);
    flow[8..].copy_from_slice(&tcp[..4]);
    Some(Segment {
        flow,
        seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
        ack: u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]),
        flags: tcp[13],
        headers: ip_header + tcp_header,
        ip_header,
        payload: total.checked_sub(ip_header + tcp_header)?,
    })
}

/// A run of segments being merged: the first frame's headers, then every payload.
struct Run {
    frame: Vec<u8>,
    first: Segment,
    next_seq: u32,
    segments: u16,
    /// A segment shorter than the first ended the run.
    closed: bool,
}

impl Run {
    fn accepts(&self, segment: &Segment, limit: u16) -> bool {
        !self.closed
            && self.segments < limit
            && segment.flow == self.first.flow
            && segment.seq == self.next_seq
            && segment.ack == self.first.ack
            && segment.flags & !(ACK | PSH) == 0
            && segment.payload > 0
            && segment.payload <= self.first.payload
            && self.frame.len() + segment.payload <= ETHERNET_HEADER + 65_535
    }

    fn add(&mut self, frame: &[u8], segment: &Segment) {
        let start = ETHERNET_HEADER + segment.headers;
        self.frame
            .extend_from_slice(&frame[start..start + segment.payload]);
        self.frame[ETHERNET_HEADER + self.first.ip_header + 13] |= segment.flags & PSH;
        self.next_seq = self.next_seq.wrapping_add(segment.payload as u32);
        self.segments += 1;
        self.closed = segment.payload < self.first.payload;
    }

    /// The frame with its virtio-net header: one merged packet of `segments` wire segments.
    fn finish(mut self) -> Vec<u8> {
        let ip_header = self.first.ip_header;
        let ip_length = (self.frame.len() - ETHERNET_HEADER) as u16;
        let ip = &mut self.frame[ETHERNET_HEADER..];
        ip[2..4].copy_from_slice(&ip_length.to_be_bytes());
        ip[10..12].fill(0);
        let checksum = ip_checksum(&ip[..ip_header]);
        ip[10..12].copy_from_slice(&checksum.to_be_bytes());
        let mut header = [0u8; VNET_HDR_LEN];
        if self.segments > 1 {
            let checksum_start = (ETHERNET_HEADER + ip_header) as u16;
            header[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
            header[1] = VIRTIO_NET_HDR_GSO_TCPV4;
            header[2..4]
                .copy_from_slice(&((ETHERNET_HEADER + self.first.headers) as u16).to_le_bytes());
            header[4..6].copy_from_slice(&(self.first.payload as u16).to_le_bytes());
            header[6..8].copy_from_slice(&checksum_start.to_le_bytes());
            header[8..10].copy_from_slice(&TCP_CHECKSUM_OFFSET.to_le_bytes());
        }
        let mut out = header.to_vec();
        out.extend_from_slice(&self.frame);
        out
    }
}

fn ip_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Far → near: merges runs of segments; a run goes out when the next frame does not extend
/// it or no frame is waiting.
fn merge_into(
    far: File,
    mut near: File,
    limit: u16,
    stats: Option<&std::path::Path>,
) -> Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(far.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(far.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
    let mut far = far;
    let mut buffer = vec![0u8; 65_536 + VNET_HDR_LEN];
    let mut run: Option<Run> = None;
    let (mut frames, mut merged, mut segments) = (0u64, 0u64, 0u64);
    loop {
        let n = match far.read(&mut buffer) {
            Ok(n) => n,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                if let Some(done) = run.take() {
                    merged += u64::from(done.segments > 1);
                    near.write_all(&done.finish())?;
                    frames += 1;
                    write_stats(stats, frames, merged, segments);
                }
                let mut poll = libc::pollfd {
                    fd: far.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&raw mut poll, 1, -1) };
                continue;
            }
            Err(error) => return Err(error.into()),
        };
        if n <= VNET_HDR_LEN {
            continue;
        }
        let frame = &buffer[VNET_HDR_LEN..n];
        segments += 1;
        let parsed = segment(frame);
        if let (Some(current), Some(segment)) = (run.as_mut(), parsed.as_ref())
            && current.accepts(segment, limit)
        {
            current.add(frame, segment);
            continue;
        }
        if let Some(done) = run.take() {
            merged += u64::from(done.segments > 1);
            near.write_all(&done.finish())?;
            frames += 1;
        }
        match parsed {
            Some(segment) if segment.payload > 0 && segment.flags & !(ACK | PSH) == 0 => {
                let end = ETHERNET_HEADER + segment.headers + segment.payload;
                run = Some(Run {
                    frame: frame[..end].to_vec(),
                    next_seq: segment.seq.wrapping_add(segment.payload as u32),
                    closed: false,
                    segments: 1,
                    first: segment,
                });
            }
            _ => {
                let mut out = vec![0u8; VNET_HDR_LEN];
                out.extend_from_slice(frame);
                near.write_all(&out)?;
                frames += 1;
            }
        }
    }
}

fn write_stats(path: Option<&std::path::Path>, frames: u64, merged: u64, segments: u64) {
    if let Some(path) = path {
        let _ = std::fs::write(path, format!("{frames} {merged} {segments}\n"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_a_known_header() {
        // From RFC 1071's example style: a header whose checksum field is zeroed.
        let header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ip_checksum(&header), 0xb861);
    }
}
