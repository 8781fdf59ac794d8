//! Sockets of the other network namespaces on the host (containers), from
//! `/proc/<pid>/net/{tcp,tcp6,udp,udp6}`.
//!
//! sock_diag answers for the agent's own namespace only, and entering another one (`setns`)
//! needs CAP_SYS_ADMIN, which the hardened service does not have. The `/proc/<pid>/net` files
//! list the sockets of `<pid>`'s namespace with their inode, readable from here. They carry no
//! socket cookie, so a socket is found by its endpoints (see [`SocketsByEndpoint::find`]),
//! among those of every namespace, the agent's own (from sock_diag) included.

use std::{
    collections::HashSet,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use bitsecure_common::{FlowKey, protocol};

use crate::poller::sock_diag::DiagSocket;

/// One socket as a `/proc/<pid>/net` file lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcNetSocket {
    pub protocol: u8,
    /// Kernel TCP state number (10 = LISTEN; 7 = CLOSE for unconnected UDP).
    pub state: u8,
    pub local_port: u16,
    /// Remote address as IPv6 (IPv4-mapped for IPv4), as in [`FlowKey::remote_addr`];
    /// unspecified for a listener or an unconnected socket.
    pub remote_addr: [u8; 16],
    /// 0 for a listener or an unconnected socket.
    pub remote_port: u16,
    pub inode: u64,
}

/// Sockets with a file, to find a flow's socket by its endpoints.
#[derive(Debug, Default)]
pub struct SocketsByEndpoint(Vec<ProcNetSocket>);

impl SocketsByEndpoint {
    /// The sockets of the agent's own namespace, as sock_diag reported them.
    pub fn from_diag(sockets: &[DiagSocket]) -> Self {
        Self(
            sockets
                .iter()
                .filter(|socket| socket.inode != 0)
                .map(|socket| ProcNetSocket {
                    protocol: socket.protocol,
                    state: socket.state,
                    local_port: socket.local.port(),
                    remote_addr: mapped(socket.remote.ip()),
                    remote_port: socket.remote.port(),
                    inode: socket.inode,
                })
                .collect(),
        )
    }

    /// Adds the sockets of every other network namespace, read below `proc_root` (normally
    /// `/proc`): one process per namespace.
    pub fn add_other_namespaces(&mut self, proc_root: &Path) -> io::Result<()> {
        // The first is the agent's own namespace.
        for process in namespace_processes(proc_root)?.into_iter().skip(1) {
            for (file, protocol) in [
                ("tcp", protocol::TCP),
                ("tcp6", protocol::TCP),
                ("udp", protocol::UDP),
                ("udp6", protocol::UDP),
            ] {
                if let Ok(text) = std::fs::read_to_string(process.join("net").join(file)) {
                    self.0.extend(parse_table(&text, protocol));
                }
            }
        }
        Ok(())
    }

    /// The inode of the one socket a flow can belong to: the connected socket with its
    /// endpoints, else the listener or unconnected socket on its local port — for a
    /// connection its listener has not accepted yet (no file of its own), the listener, whose
    /// process is the one to accept it. `None` when no socket or more than one (the same
    /// endpoints in two namespaces) matches: a guess could credit one container's traffic to
    /// another.
    pub fn find(&self, key: &FlowKey) -> Option<u64> {
        let same_socket = |socket: &&ProcNetSocket| {
            socket.protocol == key.protocol && socket.local_port == key.local_port
        };
        let connected: HashSet<u64> = self
            .0
            .iter()
            .filter(same_socket)
            .filter(|socket| {
                socket.remote_port == key.remote_port && socket.remote_addr == key.remote_addr
            })
            .map(|socket| socket.inode)
            .collect();
        let candidates = if connected.is_empty() {
            self.0
                .iter()
                .filter(same_socket)
                .filter(|socket| socket.remote_port == 0)
                .map(|socket| socket.inode)
                .collect()
        } else {
            connected
        };
        match candidates.len() {
            1 => candidates.into_iter().next(),
            _ => None,
        }
    }
}

/// One process directory below `proc_root` per network namespace on the host, the agent's
/// own namespace first (through `self`). Processes that vanish or hide their namespace are
/// skipped: normal races.
pub fn namespace_processes(proc_root: &Path) -> io::Result<Vec<PathBuf>> {
    let own = proc_root.join("self");
    let mut seen: HashSet<String> = namespace_of(&own).into_iter().collect();
    let mut processes = vec![own];
    for entry in std::fs::read_dir(proc_root)?.flatten() {
        if entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
            .is_none()
        {
            continue;
        }
        let process = entry.path();
        if namespace_of(&process).is_some_and(|namespace| seen.insert(namespace)) {
            processes.push(process);
        }
    }
    Ok(processes)
}

/// The network namespace of a process (`net:[inode]`).
fn namespace_of(process: &Path) -> Option<String> {
    Some(
        std::fs::read_link(process.join("ns/net"))
            .ok()?
            .to_str()?
            .to_owned(),
    )
}

/// The sockets of a `/proc/net/{tcp,tcp6,udp,udp6}` text of `protocol`.
pub fn parse_table(text: &str, protocol: u8) -> impl Iterator<Item = ProcNetSocket> + '_ {
    text.lines()
        .skip(1)
        .filter_map(move |line| parse(line, protocol))
}

/// One line of `/proc/net/{tcp,tcp6,udp,udp6}`:
/// `sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...`, addresses
/// as `HEX:PORT`. Sockets without a file (TIME_WAIT, SYN_RECV: inode 0) are left out.
fn parse(line: &str, protocol: u8) -> Option<ProcNetSocket> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (_, local_port) = endpoint(fields.get(1)?)?;
    let (remote_addr, remote_port) = endpoint(fields.get(2)?)?;
    let state = u8::from_str_radix(fields.get(3)?, 16).ok()?;
    let inode = fields.get(9)?.parse().ok().filter(|inode| *inode != 0)?;
    Some(ProcNetSocket {
        protocol,
        state,
        local_port,
        remote_addr,
        remote_port,
        inode,
    })
}

/// `HEX:PORT`: the address as the kernel's 32-bit words printed in host order (one for IPv4,
/// four for IPv6), the port in hex.
fn endpoint(text: &str) -> Option<([u8; 16], u16)> {
    let (address, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let mut bytes = Vec::with_capacity(16);
    for word in 0..address.len() / 8 {
        let word = u32::from_str_radix(address.get(word * 8..word * 8 + 8)?, 16).ok()?;
        // The word holds network-order bytes, printed as a host-order integer.
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    let address = match bytes.len() {
        4 => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
        16 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => return None,
    };
    Some((mapped(address), port))
}

/// An address as [`FlowKey::remote_addr`] holds it: IPv4 mapped into IPv6, except the
/// unspecified address, all zeros as the kernel keys an unconnected socket's remote.
fn mapped(address: IpAddr) -> [u8; 16] {
    match address {
        IpAddr::V4(v4) if v4.is_unspecified() => Ipv6Addr::UNSPECIFIED,
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
    .octets()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(remote: &str, local_port: u16, remote_port: u16, protocol: u8) -> FlowKey {
        let remote: IpAddr = remote.parse().unwrap();
        let remote = match remote {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        FlowKey {
            remote_addr: remote.octets(),
            local_port,
            remote_port,
            protocol,
            ..FlowKey::default()
        }
    }

    #[test]
    fn proc_net_lines_parse_as_the_kernel_keys_flows() {
        // 127.0.0.1:8080 listening; 10.0.0.2:40000 connected to 10.0.0.1:5201.
        let listener = "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 \
                        00000000     0        0 4242 1 0000000000000000 100 0 0 10 0";
        let socket = parse(listener, protocol::TCP).unwrap();
        assert_eq!(
            (socket.local_port, socket.remote_port, socket.inode),
            (8080, 0, 4242)
        );
        assert_eq!(socket.remote_addr, [0; 16]);
        let connected = "   1: 0200000A:9C40 0100000A:1451 01 00000000:00000000 00:00000000 \
                         00000000     0        0 777 1 0000000000000000 20 4 30 10 -1";
        let socket = parse(connected, protocol::TCP).unwrap();
        assert_eq!(socket.remote_addr, key("10.0.0.1", 0, 0, 0).remote_addr);
        assert_eq!((socket.local_port, socket.remote_port), (40000, 5201));
        // ::1 port 53, as /proc/net/udp6 prints it; TIME_WAIT (inode 0) left out.
        let v6 = "  5: 00000000000000000000000001000000:0035 00000000000000000000000000000000:0000 \
                  07 00000000:00000000 00:00000000 00000000   101        0 99 2 0 0";
        let socket = parse(v6, protocol::UDP).unwrap();
        assert_eq!(socket.remote_addr, [0; 16]);
        assert_eq!((socket.local_port, socket.inode), (53, 99));
        let time_wait = "   2: 0200000A:9C41 0100000A:1451 06 00000000:00000000 03:00000F9C \
                         00000000     0        0 0 3 0000000000000000";
        assert_eq!(parse(time_wait, protocol::TCP), None);
    }

    #[test]
    fn a_flow_finds_its_connected_socket_else_the_only_listener_on_its_port() {
        let socket = |remote: &str, local_port, remote_port, inode| ProcNetSocket {
            protocol: protocol::TCP,
            state: 1,
            local_port,
            remote_addr: key(remote, 0, 0, 0).remote_addr,
            remote_port,
            inode,
        };
        let mut sockets = SocketsByEndpoint(vec![
            socket("0.0.0.0", 5201, 0, 1),
            socket("10.0.0.2", 5201, 40000, 2),
        ]);
        sockets.0[0].remote_addr = [0; 16];
        assert_eq!(
            sockets.find(&key("10.0.0.2", 5201, 40000, protocol::TCP)),
            Some(2)
        );
        assert_eq!(
            sockets.find(&key("10.0.0.3", 5201, 40001, protocol::TCP)),
            Some(1)
        );
        assert_eq!(
            sockets.find(&key("10.0.0.3", 5201, 40001, protocol::UDP)),
            None
        );
        assert_eq!(
            sockets.find(&key("10.0.0.3", 5202, 40001, protocol::TCP)),
            None
        );
        // The same listener port in a second namespace: no guess.
        let mut other = sockets.0[0].clone();
        other.inode = 3;
        sockets.0.push(other);
        assert_eq!(
            sockets.find(&key("10.0.0.3", 5201, 40001, protocol::TCP)),
            None
        );
        assert_eq!(
            sockets.find(&key("10.0.0.2", 5201, 40000, protocol::TCP)),
            Some(2)
        );
    }
}
