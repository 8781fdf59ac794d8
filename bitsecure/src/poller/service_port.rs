//! The service port of a flow: the `port` label, from the flow's key, what the kernel told
//! about who opened it, the local TCP listeners and the ephemeral port range.
//!
//! Pure decision apart from two reads (the listeners through sock_diag, the port range from
//! /proc/sys); it touches no kernel map and keeps no state.

use std::collections::HashSet;

use bitsecure_common::{FlowKey, protocol};
use log::warn;

use crate::poller::sock_diag;

/// What the kernel told about who opened a flow.
pub struct Role {
    /// The socket is a TCP listener or was accepted by one (sock_ops).
    pub passive: bool,
    /// Some CPU saw the flow's first packet leave this host.
    pub egress_first: bool,
}

/// The `port` label: the remote port of connections this host opened, the local port of
/// connections it accepted; `None` for protocols without ports.
///
/// TCP: the kernel flags listeners and accepted sockets; for sockets older than the agent, a
/// local listening port says "accepted". Datagram protocols have no listen state: a port in
/// the ephemeral range is the client side; if that does not decide, the side that sent first
/// is the client.
pub fn service_port(
    key: &FlowKey,
    role: &Role,
    listening_ports: &HashSet<u16>,
    ephemeral: (u16, u16),
) -> Option<u16> {
    let in_ephemeral = |port: u16| (ephemeral.0..=ephemeral.1).contains(&port);
    match key.protocol {
        protocol::TCP if role.passive || listening_ports.contains(&key.local_port) => {
            Some(key.local_port)
        }
        protocol::TCP => Some(key.remote_port),
        protocol::UDP | protocol::UDPLITE | protocol::SCTP => {
            let local_client = in_ephemeral(key.local_port);
            let remote_client = in_ephemeral(key.remote_port);
            if local_client != remote_client {
                Some(if local_client {
                    key.remote_port
                } else {
                    key.local_port
                })
            } else if role.egress_first {
                Some(key.remote_port)
            } else {
                Some(key.local_port)
            }
        }
        _ => None,
    }
}

/// The kernel's ephemeral port range (Linux's default if it cannot be read).
pub(super) fn read_ephemeral_port_range() -> (u16, u16) {
    let text =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    parse_port_range(&text).unwrap_or((32768, 60999))
}

fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let mut parts = text.split_whitespace().map(str::parse::<u16>);
    Some((parts.next()?.ok()?, parts.next()?.ok()?))
}

/// The local ports TCP sockets listen on (a sock_diag dump); empty, with a warning, if the
/// dump fails.
pub(super) fn listening_ports() -> HashSet<u16> {
    match sock_diag::dump_tcp_listeners() {
        Ok(listeners) => listeners.iter().map(|socket| socket.local.port()).collect(),
        Err(error) => {
            warn!("cannot list TCP listeners, service ports may be wrong: {error}");
            HashSet::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(protocol: u8, local_port: u16, remote_port: u16) -> FlowKey {
        FlowKey {
            protocol,
            local_port,
            remote_port,
            ..FlowKey::default()
        }
    }

    const EPHEMERAL: (u16, u16) = (32768, 60999);
    const ACTIVE: Role = Role {
        passive: false,
        egress_first: true,
    };
    const PASSIVE: Role = Role {
        passive: true,
        egress_first: false,
    };

    #[test]
    fn tcp_service_port_is_local_for_accepted_connections() {
        let listening = HashSet::from([9977]);
        let port =
            |local, remote, role| service_port(&key(6, local, remote), role, &listening, EPHEMERAL);
        // A socket older than the agent on a listening port: accepted.
        assert_eq!(port(9977, 40000, &ACTIVE), Some(9977));
        assert_eq!(port(40000, 3333, &ACTIVE), Some(3333));
        // The kernel's passive flag decides even when the listener is gone.
        assert_eq!(port(6000, 51000, &PASSIVE), Some(6000));
        assert_eq!(port(51000, 6000, &ACTIVE), Some(6000));
    }

    #[test]
    fn udp_service_port_uses_ephemeral_range_then_first_direction() {
        let none = HashSet::new();
        let port =
            |local, remote, role| service_port(&key(17, local, remote), role, &none, EPHEMERAL);
        // DNS client: local port ephemeral, remote 53, whatever was seen first.
        assert_eq!(port(45000, 53, &PASSIVE), Some(53));
        // DNS server: remote port ephemeral.
        assert_eq!(port(53, 45000, &ACTIVE), Some(53));
        // NTP 123 <-> 124: whoever sent first is the client.
        assert_eq!(port(123, 124, &ACTIVE), Some(124));
        assert_eq!(port(123, 124, &PASSIVE), Some(123));
    }

    #[test]
    fn portless_protocols_have_no_port() {
        let none = HashSet::new();
        assert_eq!(service_port(&key(1, 0, 0), &ACTIVE, &none, EPHEMERAL), None);
        assert_eq!(
            service_port(&key(253, 0, 0), &ACTIVE, &none, EPHEMERAL),
            None
        );
    }

    #[test]
    fn port_range_parses() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_port_range("x"), None);
    }
}
