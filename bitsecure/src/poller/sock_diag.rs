//! Socket inventory from the kernel's `sock_diag` netlink interface, and socket ownership
//! from `/proc`.
//!
//! The eBPF programs identify sockets by their cookie (`bpf_get_socket_cookie()`). Sockets
//! that existed before the agent started, or that were accepted, were never seen being
//! created, so their owner is found here: `sock_diag` maps cookie -> inode, and the
//! `/proc/<pid>/fd` links map inode -> pid.
//!
//! The netlink protocol is spoken by hand with `libc` (see `linux/inet_diag.h`,
//! `linux/sock_diag.h` and `linux/netlink.h`).

use std::collections::HashMap;
use std::io;
use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `SOCK_DIAG_BY_FAMILY` from `linux/sock_diag.h` (not in `libc`).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// Kernel TCP state number of a listening socket (`TCP_LISTEN`; `0A` in `/proc/net/tcp`).
pub const TCP_LISTEN: u8 = 10;
/// Receive buffer size: the kernel fills dump replies up to about 32 KiB, so this never truncates.
const RECV_BUF_LEN: usize = 64 * 1024;

/// `struct inet_diag_sockid`. Ports and addresses are in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct InetDiagSockId {
    idiag_sport: u16,
    idiag_dport: u16,
    idiag_src: [u32; 4],
    idiag_dst: [u32; 4],
    idiag_if: u32,
    idiag_cookie: [u32; 2],
}

/// `struct inet_diag_req_v2`: the request body of a `SOCK_DIAG_BY_FAMILY` dump.
#[repr(C)]
#[derive(Clone, Copy)]
struct InetDiagReqV2 {
    sdiag_family: u8,
    sdiag_protocol: u8,
    idiag_ext: u8,
    pad: u8,
    /// Bitmask of `1 << state` of the TCP states wanted.
    idiag_states: u32,
    id: InetDiagSockId,
}

/// `struct inet_diag_msg`: the fixed part of one reply message (attributes follow; unused).
#[repr(C)]
#[derive(Clone, Copy)]
struct InetDiagMsg {
    idiag_family: u8,
    idiag_state: u8,
    idiag_timer: u8,
    idiag_retrans: u8,
    id: InetDiagSockId,
    idiag_expires: u32,
    idiag_rqueue: u32,
    idiag_wqueue: u32,
    idiag_uid: u32,
    idiag_inode: u32,
}

/// A complete request datagram: netlink header followed by the request body.
#[repr(C)]
#[derive(Clone, Copy)]
struct Request {
    header: libc::nlmsghdr,
    body: InetDiagReqV2,
}

// The layouts must match the kernel's byte for byte.
const _: () = assert!(size_of::<InetDiagSockId>() == 48);
const _: () = assert!(size_of::<InetDiagReqV2>() == 56);
const _: () = assert!(size_of::<InetDiagMsg>() == 72);
const _: () = assert!(size_of::<libc::nlmsghdr>() == 16);
const _: () = assert!(size_of::<Request>() == 72);

/// Structs that may be read from arbitrary kernel bytes.
///
/// # Safety
/// Implementors must be `#[repr(C)]` plain integers (or arrays/structs of them), so that every
/// bit pattern is a valid value.
unsafe trait Plain: Copy {}
// SAFETY: all of these consist only of integer fields.
unsafe impl Plain for libc::nlmsghdr {}
// SAFETY: as above.
unsafe impl Plain for libc::nlmsgerr {}
// SAFETY: as above.
unsafe impl Plain for InetDiagMsg {}
// SAFETY: as above.
unsafe impl Plain for i32 {}

/// Reads a `T` from the start of `bytes`, or `None` if there are too few bytes.
fn read_plain<T: Plain>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: the length was checked above, `read_unaligned` has no alignment requirement, and
    // `T: Plain` guarantees every bit pattern is a valid `T`.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// `NLMSG_ALIGN`: netlink messages are padded to 4 bytes.
const fn nlmsg_align(len: usize) -> usize {
    (len + 3) & !3
}

/// One socket as the kernel's sock_diag reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiagSocket {
    /// Socket cookie, the value `bpf_get_socket_cookie()` and `SO_COOKIE` return.
    pub cookie: u64,
    /// Inode of the socket (0 for TIME_WAIT and SYN_RECV entries, which have no file).
    pub inode: u64,
    /// Owner uid of the socket, as the kernel records it.
    pub uid: u32,
    /// IP protocol: 6 for TCP, 17 for UDP.
    pub protocol: u8,
    /// Kernel TCP state number (10 = LISTEN, 1 = ESTABLISHED, 7 = CLOSE for unconnected UDP).
    pub state: u8,
    /// Local address and port.
    pub local: SocketAddr,
    /// Remote address and port (unspecified address and port 0 when not connected).
    pub remote: SocketAddr,
}

/// Why a sock_diag dump failed. `what` names the dump, such as `"TCP/IPv6"`.
#[derive(Debug, thiserror::Error)]
pub enum SockDiagError {
    /// The netlink socket could not be created.
    #[error("cannot open a NETLINK_SOCK_DIAG netlink socket: {0}")]
    Open(io::Error),
    /// The dump request could not be sent.
    #[error("cannot send the sock_diag request for {what} sockets: {error}")]
    Send {
        what: &'static str,
        error: io::Error,
    },
    /// Reading the reply failed.
    #[error("cannot receive the sock_diag reply for {what} sockets: {error}")]
    Recv {
        what: &'static str,
        error: io::Error,
    },
    /// The kernel answered with an error, such as `ENOENT` when the protocol's diag module
    /// (`tcp_diag`, `udp_diag`) is unavailable.
    #[error("the kernel refused the sock_diag dump of {what} sockets: {error}")]
    Kernel {
        what: &'static str,
        error: io::Error,
    },
    /// The reply did not parse as netlink messages.
    #[error("malformed sock_diag reply for {what} sockets: {detail}")]
    Malformed {
        what: &'static str,
        detail: &'static str,
    },
}

/// One dump to request: address family, protocol, state mask, and its name for errors.
struct Query {
    family: u8,
    protocol: u8,
    states: u32,
    what: &'static str,
}

/// Every TCP state.
const ALL_STATES: u32 = 0xffff_ffff;

/// All TCP and UDP sockets, IPv4 and IPv6, of the current network namespace.
pub fn dump_sockets() -> Result<Vec<DiagSocket>, SockDiagError> {
    let queries = [
        (libc::AF_INET, libc::IPPROTO_TCP, "TCP/IPv4"),
        (libc::AF_INET6, libc::IPPROTO_TCP, "TCP/IPv6"),
        (libc::AF_INET, libc::IPPROTO_UDP, "UDP/IPv4"),
        (libc::AF_INET6, libc::IPPROTO_UDP, "UDP/IPv6"),
    ]
    .map(|(family, protocol, what)| Query {
        family: family as u8,
        protocol: protocol as u8,
        states: ALL_STATES,
        what,
    });
    dump(&queries)
}

/// Only TCP sockets in LISTEN state (IPv4 and IPv6).
///
/// The kernel filters by state, so this stays cheap enough to run on every poll.
pub fn dump_tcp_listeners() -> Result<Vec<DiagSocket>, SockDiagError> {
    let queries = [
        (libc::AF_INET, "TCP/IPv4 listening"),
        (libc::AF_INET6, "TCP/IPv6 listening"),
    ]
    .map(|(family, what)| Query {
        family: family as u8,
        protocol: libc::IPPROTO_TCP as u8,
        states: 1 << TCP_LISTEN,
        what,
    });
    dump(&queries)
}

/// Runs each query in turn on one netlink socket and collects the sockets.
fn dump(queries: &[Query]) -> Result<Vec<DiagSocket>, SockDiagError> {
    let fd = open_netlink().map_err(SockDiagError::Open)?;
    let mut buf = vec![0u8; RECV_BUF_LEN];
    let mut sockets = Vec::new();
    for (seq, query) in (1u32..).zip(queries) {
        send_request(&fd, query, seq).map_err(|error| SockDiagError::Send {
            what: query.what,
            error,
        })?;
        receive_dump(&fd, query, seq, &mut buf, &mut sockets)?;
    }
    Ok(sockets)
}

/// Opens a `NETLINK_SOCK_DIAG` socket; the kernel assigns its port id on the first send.
fn open_netlink() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call with constant arguments.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends one `SOCK_DIAG_BY_FAMILY` dump request.
fn send_request(fd: &OwnedFd, query: &Query, seq: u32) -> io::Result<()> {
    let request = Request {
        header: libc::nlmsghdr {
            nlmsg_len: size_of::<Request>() as u32,
            nlmsg_type: SOCK_DIAG_BY_FAMILY,
            nlmsg_flags: (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
            nlmsg_seq: seq,
            nlmsg_pid: 0,
        },
        body: InetDiagReqV2 {
            sdiag_family: query.family,
            sdiag_protocol: query.protocol,
            idiag_ext: 0, // no extra attributes wanted
            pad: 0,
            idiag_states: query.states,
            id: InetDiagSockId::default(), // a dump ignores the socket id
        },
    };
    // An unconnected netlink socket without a destination address sends to the kernel.
    // SAFETY: the pointer and length describe `request`, which lives across the call.
    let sent = unsafe {
        libc::send(
            fd.as_raw_fd(),
            (&raw const request).cast::<libc::c_void>(),
            size_of::<Request>(),
            0,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    if sent as usize != size_of::<Request>() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short send of the netlink request",
        ));
    }
    Ok(())
}

/// Reads the multi-part reply to request `seq` until `NLMSG_DONE`, appending to `out`.
fn receive_dump(
    fd: &OwnedFd,
    query: &Query,
    seq: u32,
    buf: &mut [u8],
    out: &mut Vec<DiagSocket>,
) -> Result<(), SockDiagError> {
    let what = query.what;
    let malformed = |detail| SockDiagError::Malformed { what, detail };
    loop {
        // MSG_TRUNC makes recv return the datagram's real length, so truncation is detectable.
        // SAFETY: the pointer and length describe `buf`, which is exclusively borrowed.
        let len = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast::<libc::c_void>(),
                buf.len(),
                libc::MSG_TRUNC,
            )
        };
        if len < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(SockDiagError::Recv { what, error });
        }
        let len = len as usize;
        if len > buf.len() {
            return Err(malformed("datagram larger than the receive buffer"));
        }

        let mut rest = &buf[..len];
        while !rest.is_empty() {
            let header: libc::nlmsghdr =
                read_plain(rest).ok_or_else(|| malformed("truncated netlink header"))?;
            let msg_len = header.nlmsg_len as usize;
            if msg_len < size_of::<libc::nlmsghdr>() || msg_len > rest.len() {
                return Err(malformed("bad netlink message length"));
            }
            let payload = &rest[size_of::<libc::nlmsghdr>()..msg_len];
            rest = &rest[nlmsg_align(msg_len).min(rest.len())..];

            // Replies to other requests cannot normally arrive on this private socket.
            if header.nlmsg_seq != seq {
                continue;
            }
            match i32::from(header.nlmsg_type) {
                libc::NLMSG_DONE => {
                    // A dump that failed part way reports a negative errno here.
                    let errno = read_plain::<i32>(payload).unwrap_or(0);
                    if errno < 0 {
                        let error = io::Error::from_raw_os_error(-errno);
                        return Err(SockDiagError::Kernel { what, error });
                    }
                    return Ok(());
                }
                libc::NLMSG_ERROR => {
                    let err: libc::nlmsgerr =
                        read_plain(payload).ok_or_else(|| malformed("truncated NLMSG_ERROR"))?;
                    if err.error == 0 {
                        continue; // an acknowledgement, not an error
                    }
                    let error = io::Error::from_raw_os_error(-err.error);
                    return Err(SockDiagError::Kernel { what, error });
                }
                t if t == i32::from(SOCK_DIAG_BY_FAMILY) => {
                    let msg: InetDiagMsg =
                        read_plain(payload).ok_or_else(|| malformed("truncated inet_diag_msg"))?;
                    if let Some(socket) = to_diag_socket(&msg, query.protocol) {
                        out.push(socket);
                    }
                }
                _ => {} // NLMSG_NOOP and anything unknown
            }
        }
    }
}

/// Converts a kernel reply to a [`DiagSocket`]; `None` for an unexpected address family.
fn to_diag_socket(msg: &InetDiagMsg, protocol: u8) -> Option<DiagSocket> {
    let id = &msg.id;
    let address = |words: &[u32; 4]| -> Option<IpAddr> {
        // The words hold network-order bytes, so their in-memory bytes are the address.
        let mut bytes = [0u8; 16];
        for (chunk, word) in bytes.chunks_exact_mut(4).zip(words) {
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        match i32::from(msg.idiag_family) {
            libc::AF_INET => Some(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).into()),
            libc::AF_INET6 => Some(Ipv6Addr::from(bytes).into()),
            _ => None,
        }
    };
    let socket_addr = |ip: IpAddr, port: u16| match ip {
        IpAddr::V4(ip) => SocketAddr::from((ip, port)),
        // Keep the interface for link-local addresses, as a scope id.
        IpAddr::V6(ip) => std::net::SocketAddrV6::new(ip, port, 0, id.idiag_if).into(),
    };
    Some(DiagSocket {
        cookie: u64::from(id.idiag_cookie[0]) | (u64::from(id.idiag_cookie[1]) << 32),
        inode: u64::from(msg.idiag_inode),
        uid: msg.idiag_uid,
        protocol,
        state: msg.idiag_state,
        local: socket_addr(address(&id.idiag_src)?, u16::from_be(id.idiag_sport)),
        remote: socket_addr(address(&id.idiag_dst)?, u16::from_be(id.idiag_dport)),
    })
}

/// Maps socket inode -> pid from the scan of [`process_socket_inodes`].
///
/// A socket shared by several processes (inherited across `fork`, as with pre-forking servers)
/// maps to the lowest pid, usually the parent.
pub fn socket_inode_owners() -> io::Result<HashMap<u64, u32>> {
    let mut owners = HashMap::new();
    for (pid, inodes) in process_socket_inodes()? {
        for inode in inodes {
            owners
                .entry(inode)
                .and_modify(|owner: &mut u32| *owner = (*owner).min(pid))
                .or_insert(pid);
        }
    }
    Ok(owners)
}

/// The one `/proc` scan for socket owners: every process, in `/proc` order, with the inodes of
/// its sockets, the `/proc/<pid>/fd/*` links of the form `socket:[INODE]`. The links are read
/// as the inner iterator is consumed, so a caller that found what it looks for reads no more.
/// `bitsecure check` uses it too, to name who holds the listen port.
///
/// Processes that vanish or cannot be read are skipped: such races are normal. Only an
/// unreadable `/proc` is an error.
pub fn process_socket_inodes() -> io::Result<impl Iterator<Item = (u32, impl Iterator<Item = u64>)>>
{
    Ok(std::fs::read_dir("/proc")?.flatten().filter_map(|entry| {
        // Not a process directory when not a number.
        let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
        let fds = std::fs::read_dir(entry.path().join("fd")).ok()?;
        let inodes = fds.flatten().filter_map(|fd| {
            let target = std::fs::read_link(fd.path()).ok()?;
            target
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse::<u64>()
                .ok()
        });
        Some((pid, inodes))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream, UdpSocket};
    use std::os::fd::{AsFd, AsRawFd};
    use std::os::unix::fs::MetadataExt;

    const TCP: u8 = 6;
    const UDP: u8 = 17;
    const ESTABLISHED: u8 = 1;
    const UDP_UNCONNECTED: u8 = 7;

    /// The cookie the kernel reports for `sock` through `getsockopt(SO_COOKIE)`.
    fn so_cookie(sock: &impl AsFd) -> u64 {
        let mut cookie: u64 = 0;
        let mut len = size_of::<u64>() as libc::socklen_t;
        // SAFETY: `cookie` and `len` are valid for writes and `len` is the size of `cookie`.
        let rc = unsafe {
            libc::getsockopt(
                sock.as_fd().as_raw_fd(),
                libc::SOL_SOCKET,
                57, // SO_COOKIE
                (&raw mut cookie).cast::<libc::c_void>(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "SO_COOKIE: {}", io::Error::last_os_error());
        assert_eq!(len as usize, size_of::<u64>());
        cookie
    }

    /// The inode of `sock`, from `fstat` through `/proc/self/fd`.
    fn inode(sock: &impl AsFd) -> u64 {
        let path = format!("/proc/self/fd/{}", sock.as_fd().as_raw_fd());
        std::fs::metadata(path).expect("stat socket").ino()
    }

    /// The only entry in `sockets` with this protocol, local and remote address.
    fn find(
        sockets: &[DiagSocket],
        protocol: u8,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> DiagSocket {
        let found: Vec<_> = sockets
            .iter()
            .filter(|s| s.protocol == protocol && s.local == local && s.remote == remote)
            .collect();
        assert_eq!(found.len(), 1, "{local} -> {remote} in {sockets:#?}");
        found[0].clone()
    }

    /// Checks that `diag` describes `sock`, against independent sources of truth.
    fn check_identity(diag: &DiagSocket, sock: &impl AsFd, owners: &HashMap<u64, u32>) {
        assert_ne!(diag.cookie, 0);
        assert_ne!(diag.inode, 0);
        assert_eq!(diag.cookie, so_cookie(sock), "cookie of {diag:?}");
        assert_eq!(diag.inode, inode(sock), "inode of {diag:?}");
        // SAFETY: geteuid has no preconditions.
        assert_eq!(diag.uid, unsafe { libc::geteuid() });
        assert_eq!(owners.get(&diag.inode), Some(&std::process::id()));
    }

    fn unspecified(local: SocketAddr) -> SocketAddr {
        match local {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        }
    }

    fn check_tcp(bind: &str) {
        let listener = TcpListener::bind(bind).expect("bind listener");
        let listen_addr = listener.local_addr().expect("listener address");
        let client = TcpStream::connect(listen_addr).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        let client_addr = client.local_addr().expect("client address");

        let listeners = dump_tcp_listeners().expect("dump listeners");
        assert!(
            listeners
                .iter()
                .all(|s| s.state == TCP_LISTEN && s.protocol == TCP),
            "non-listener in {listeners:#?}"
        );
        let all = dump_sockets().expect("dump sockets");
        let owners = socket_inode_owners().expect("scan /proc");

        let listening = find(&listeners, TCP, listen_addr, unspecified(listen_addr));
        check_identity(&listening, &listener, &owners);
        assert_eq!(
            find(&all, TCP, listen_addr, unspecified(listen_addr)),
            listening
        );

        let client_diag = find(&all, TCP, client_addr, listen_addr);
        let server_diag = find(&all, TCP, listen_addr, client_addr);
        assert_eq!(client_diag.state, ESTABLISHED);
        assert_eq!(server_diag.state, ESTABLISHED);
        check_identity(&client_diag, &client, &owners);
        check_identity(&server_diag, &server, &owners);
        assert_ne!(client_diag.cookie, server_diag.cookie);
    }

    #[test]
    fn tcp_ipv4() {
        check_tcp("127.0.0.1:0");
    }

    #[test]
    fn tcp_ipv6() {
        check_tcp("[::1]:0");
    }

    fn check_udp(bind: &str) {
        let sock = UdpSocket::bind(bind).expect("bind udp");
        let local = sock.local_addr().expect("udp address");
        let all = dump_sockets().expect("dump sockets");
        let owners = socket_inode_owners().expect("scan /proc");

        let diag = find(&all, UDP, local, unspecified(local));
        assert_eq!(diag.state, UDP_UNCONNECTED);
        check_identity(&diag, &sock, &owners);
        assert!(
            !dump_tcp_listeners()
                .expect("dump listeners")
                .iter()
                .any(|s| s.cookie == diag.cookie),
            "UDP socket among TCP listeners"
        );
    }

    #[test]
    fn udp_ipv4() {
        check_udp("127.0.0.1:0");
    }

    #[test]
    fn udp_ipv6() {
        check_udp("[::1]:0");
    }

    /// Enough sockets that the reply spans several datagrams, exercising the multi-part loop.
    #[test]
    fn many_sockets_multi_part() {
        let socks: Vec<_> = (0..400)
            .map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind udp"))
            .collect();
        let cookies: std::collections::HashSet<u64> = dump_sockets()
            .expect("dump")
            .iter()
            .map(|s| s.cookie)
            .collect();
        for sock in &socks {
            assert!(cookies.contains(&so_cookie(sock)));
        }
    }

    #[test]
    fn closed_socket_disappears() {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let cookie = so_cookie(&sock);
        assert!(
            dump_sockets()
                .expect("dump")
                .iter()
                .any(|s| s.cookie == cookie)
        );
        drop(sock);
        assert!(
            !dump_sockets()
                .expect("dump")
                .iter()
                .any(|s| s.cookie == cookie)
        );
    }
}
