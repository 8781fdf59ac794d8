//! Paths the counters cannot follow, reported as conditions instead of staying silent:
//! forwarding (packets this host routes for others pass no socket; their bytes show only as
//! unattributed interface bytes), XDP programs (which can drop, answer or redirect packets
//! in the driver, before every other program sees them) and NAT chains (which rewrite the
//! addresses of what they forward).
//!
//! Forwarding and XDP are read each poll: two sysctl files, and one rtnetlink link dump
//! (`RTM_GETLINK`, which needs no privilege and reports each interface's XDP program). NAT
//! chains come from an nftables chain dump, which needs CAP_NET_ADMIN: the guard thread asks.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

/// What the counters cannot see, now.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BlindSpots {
    /// `(family, enabled)`: whether this host forwards IPv4 / IPv6 packets.
    pub forwarding: Vec<(&'static str, bool)>,
    /// `(interface, mode)` of every interface with an XDP program attached.
    pub xdp: Vec<(String, &'static str)>,
}

/// The sysctls that say whether this host routes packets for others.
const FORWARDING: [(&str, &str); 2] = [
    ("ipv4", "/proc/sys/net/ipv4/ip_forward"),
    ("ipv6", "/proc/sys/net/ipv6/conf/all/forwarding"),
];

/// Reads both; a part that cannot be read is left out (and logged by the caller's metrics
/// simply not having it).
pub fn read() -> BlindSpots {
    BlindSpots {
        forwarding: FORWARDING
            .iter()
            .filter_map(|(family, path)| Some((*family, read_flag(Path::new(path))?)))
            .collect(),
        xdp: xdp_programs().unwrap_or_else(|error| {
            log::debug!("cannot list XDP programs: {error}");
            Vec::new()
        }),
    }
}

fn read_flag(path: &Path) -> Option<bool> {
    Some(std::fs::read_to_string(path).ok()?.trim() != "0")
}

const RTM_GETLINK: u16 = 18;
const IFLA_IFNAME: u16 = 3;
const IFLA_XDP: u16 = 43;
const IFLA_XDP_ATTACHED: u16 = 2;
/// `NLA_F_NESTED`: set on nested attributes; the type is in the low bits.
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLMSG_HEADER: usize = 16;
const IFINFOMSG: usize = 16;

/// `XDP_ATTACHED_*` (linux/if_link.h) as a label.
fn xdp_mode(attached: u8) -> Option<&'static str> {
    match attached {
        1 => Some("driver"),
        2 => Some("generic"),
        3 => Some("offload"),
        4 => Some("multi"),
        _ => None,
    }
}

/// Interfaces of this network namespace with an XDP program attached.
fn xdp_programs() -> io::Result<Vec<(String, &'static str)>> {
    let mut found = Vec::new();
    dump(
        libc::NETLINK_ROUTE,
        RTM_GETLINK,
        &[0; IFINFOMSG],
        |message| {
            if let Some(link) = message.get(IFINFOMSG..).and_then(xdp_of_link) {
                found.push(link);
            }
        },
    )?;
    Ok(found)
}

/// `NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETCHAIN`.
const NFT_GET_CHAIN: u16 = (10 << 8) | 4;
/// `struct nfgenmsg`: family, version, resource id.
const NFGENMSG: usize = 4;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_TYPE: u16 = 7;

/// One nftables chain that rewrites addresses (`type nat`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NatChain {
    /// `ip`, `ip6`, `inet`, ... (the table's family).
    pub family: &'static str,
    pub table: String,
    pub chain: String,
}

/// The nftables chains of type `nat` in this network namespace (iptables-nft's too). Asking
/// nftables needs CAP_NET_ADMIN: the agent's guard thread calls this.
pub fn nat_chains() -> io::Result<Vec<NatChain>> {
    let mut found = Vec::new();
    dump(
        libc::NETLINK_NETFILTER,
        NFT_GET_CHAIN,
        &[0; NFGENMSG],
        |message| {
            if let Some(chain) = nat_chain(message) {
                found.push(chain);
            }
        },
    )?;
    found.sort();
    Ok(found)
}

/// The chain described by one `NFT_MSG_NEWCHAIN` message, if it is of type `nat`.
fn nat_chain(message: &[u8]) -> Option<NatChain> {
    let family = match *message.first()? {
        1 => "inet",
        2 => "ip",
        3 => "arp",
        5 => "netdev",
        7 => "bridge",
        10 => "ip6",
        _ => "other",
    };
    let text = |value: &[u8]| {
        let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
        String::from_utf8_lossy(&value[..end]).into_owned()
    };
    let (mut table, mut chain, mut kind) = (None, None, None);
    for (attribute, value) in attributes_of(message.get(NFGENMSG..)?) {
        match attribute {
            NFTA_CHAIN_TABLE => table = Some(text(value)),
            NFTA_CHAIN_NAME => chain = Some(text(value)),
            NFTA_CHAIN_TYPE => kind = Some(text(value)),
            _ => {}
        }
    }
    (kind.as_deref() == Some("nat")).then_some(NatChain {
        family,
        table: table?,
        chain: chain?,
    })
}

/// Sends one netlink dump request (`message_type` with the family header `header`) and hands
/// each reply message's body (after the netlink header) to `each`.
fn dump(
    protocol: libc::c_int,
    message_type: u16,
    header: &[u8],
    mut each: impl FnMut(&[u8]),
) -> io::Result<()> {
    // SAFETY: plain socket(2) call with constant arguments.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            protocol,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // A dump that never ends (an answer lost under memory pressure) must not hang the thread
    // that asked: the guard checks the programs' attachments on the same thread.
    let timeout = libc::timeval {
        tv_sec: 2,
        tv_usec: 0,
    };
    // SAFETY: the option value is a timeval of the size given.
    let set = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if set < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut request = vec![0u8; NLMSG_HEADER];
    request.extend_from_slice(header);
    let length = request.len() as u32;
    request[0..4].copy_from_slice(&length.to_ne_bytes());
    request[4..6].copy_from_slice(&message_type.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    request[6..8].copy_from_slice(&flags.to_ne_bytes());
    request[8..12].copy_from_slice(&1u32.to_ne_bytes());
    // SAFETY: the pointer and length describe `request`.
    let sent = unsafe {
        libc::send(
            socket.as_raw_fd(),
            request.as_ptr().cast(),
            request.len(),
            0,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: the pointer and length describe `buffer`.
        let len = unsafe {
            libc::recv(
                socket.as_raw_fd(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                0,
            )
        };
        if len < 0 {
            return Err(io::Error::last_os_error());
        }
        if parse_messages(&buffer[..len as usize], &mut each)? {
            return Ok(());
        }
    }
}

/// Parses one datagram of a dump, handing each message's body to `each`; true once
/// `NLMSG_DONE` is seen.
fn parse_messages(mut data: &[u8], each: &mut impl FnMut(&[u8])) -> io::Result<bool> {
    let malformed = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    while data.len() >= NLMSG_HEADER {
        let len = u32::from_ne_bytes(data[0..4].try_into().unwrap()) as usize;
        let kind = u16::from_ne_bytes(data[4..6].try_into().unwrap());
        if len < NLMSG_HEADER || len > data.len() {
            return Err(malformed("a netlink message overruns its datagram"));
        }
        match kind {
            _ if kind == libc::NLMSG_DONE as u16 => return Ok(true),
            _ if kind == libc::NLMSG_ERROR as u16 => {
                // The error code (negative errno) follows the header.
                let code = data
                    .get(NLMSG_HEADER..NLMSG_HEADER + 4)
                    .map_or(0, |bytes| i32::from_ne_bytes(bytes.try_into().unwrap()));
                return Err(io::Error::from_raw_os_error(-code));
            }
            _ => each(&data[NLMSG_HEADER..len]),
        }
        data = &data[align(len).min(data.len())..];
    }
    Ok(false)
}

/// The name and XDP mode of one link's attributes, if it has an XDP program.
fn xdp_of_link(attributes: &[u8]) -> Option<(String, &'static str)> {
    let mut name = None;
    let mut mode = None;
    for (kind, value) in attributes_of(attributes) {
        match kind {
            IFLA_IFNAME => {
                let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
                name = Some(String::from_utf8_lossy(&value[..end]).into_owned());
            }
            IFLA_XDP => {
                mode = attributes_of(value)
                    .find(|(kind, _)| *kind == IFLA_XDP_ATTACHED)
                    .and_then(|(_, value)| xdp_mode(*value.first()?));
            }
            _ => {}
        }
    }
    Some((name?, mode?))
}

/// The `(type, value)` of each netlink attribute in `data`; stops at a malformed one.
fn attributes_of(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if data.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([data[0], data[1]]));
        let kind = u16::from_ne_bytes([data[2], data[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > data.len() {
            return None;
        }
        let value = &data[4..len];
        data = &data[align(len).min(data.len())..];
        Some((kind, value))
    })
}

fn align(len: usize) -> usize {
    (len + 3) & !3
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attribute(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut out = ((4 + value.len()) as u16).to_ne_bytes().to_vec();
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(value);
        out.resize(align(out.len()), 0);
        out
    }

    fn link_message(name: &str, xdp: Option<u8>) -> Vec<u8> {
        let mut body = vec![0u8; IFINFOMSG];
        body.extend(attribute(IFLA_IFNAME, format!("{name}\0").as_bytes()));
        if let Some(attached) = xdp {
            body.extend(attribute(
                IFLA_XDP | 0x8000,
                &attribute(IFLA_XDP_ATTACHED, &[attached]),
            ));
        }
        let mut message = ((NLMSG_HEADER + body.len()) as u32).to_ne_bytes().to_vec();
        message.extend_from_slice(&16u16.to_ne_bytes()); // RTM_NEWLINK
        message.extend_from_slice(&[0; 10]);
        message.extend(body);
        message
    }

    fn links(datagram: &[u8]) -> (bool, Vec<(String, &'static str)>) {
        let mut found = Vec::new();
        let done = parse_messages(datagram, &mut |message: &[u8]| {
            if let Some(link) = message.get(IFINFOMSG..).and_then(xdp_of_link) {
                found.push(link);
            }
        })
        .unwrap();
        (done, found)
    }

    #[test]
    fn links_with_an_xdp_program_are_found() {
        let mut datagram = link_message("eth0", Some(0));
        datagram.extend(link_message("veth1", Some(2)));
        datagram.extend(link_message("wg0", None));
        assert_eq!(
            links(&datagram),
            (false, vec![("veth1".to_owned(), "generic")])
        );
        let mut done = vec![0u8; NLMSG_HEADER];
        done[0..4].copy_from_slice(&(NLMSG_HEADER as u32).to_ne_bytes());
        done[4..6].copy_from_slice(&(libc::NLMSG_DONE as u16).to_ne_bytes());
        assert_eq!(links(&done), (true, Vec::new()));
    }

    #[test]
    fn nat_chains_are_told_from_others() {
        let chain = |family: u8, table: &str, name: &str, kind: &str| {
            let mut message = vec![family, 0, 0, 0];
            message.extend(attribute(NFTA_CHAIN_TABLE, format!("{table}\0").as_bytes()));
            message.extend(attribute(NFTA_CHAIN_NAME, format!("{name}\0").as_bytes()));
            message.extend(attribute(NFTA_CHAIN_TYPE, format!("{kind}\0").as_bytes()));
            message
        };
        assert_eq!(
            nat_chain(&chain(2, "nat", "POSTROUTING", "nat")),
            Some(NatChain {
                family: "ip",
                table: "nat".to_owned(),
                chain: "POSTROUTING".to_owned(),
            })
        );
        assert_eq!(nat_chain(&chain(1, "filter", "input", "filter")), None);
        assert_eq!(nat_chain(&[2]), None);
    }

    #[test]
    fn truncated_messages_are_errors_not_panics() {
        let datagram = link_message("veth1", Some(1));
        for cut in 0..datagram.len() {
            let _ = parse_messages(&datagram[..cut], &mut |message: &[u8]| {
                let _ = message.get(IFINFOMSG..).and_then(xdp_of_link);
                let _ = nat_chain(message);
            });
        }
    }
}
