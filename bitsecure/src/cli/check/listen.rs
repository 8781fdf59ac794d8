//! The listen check: is `agent.listen` free for `/metrics`, and if not, who holds it? The probe
//! binds the address and lets it go at once, asks a holder `GET /metrics` (is it a bitsecure
//! agent?) and reads `/proc` to name it; it never signals or stops the holder.

use std::{
    io::{self, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use bitsecure_common::protocol;

use super::Check;
use crate::{
    export::metrics::BUILD_INFO,
    poller::{
        proc_net,
        sock_diag::{self, TCP_LISTEN},
    },
};

/// What trying to listen on `agent.listen` found.
#[derive(Debug)]
pub enum ListenProbe {
    Free,
    InUse {
        /// Who holds it: `pid 123 (nginx)`; empty when it cannot be told (not root).
        owners: Vec<String>,
        /// It answers `/metrics` with `bitsecure_build_info`.
        bitsecure_agent: bool,
    },
    Error(io::Error),
}

/// `agent.listen` is free, taken by a running agent (a warning), or unusable.
pub fn check_listen(listen: SocketAddr, probe: &ListenProbe) -> Check {
    let fix = {
        let mut other = listen;
        other.set_port(listen.port().wrapping_add(1).max(1));
        format!("change agent.listen in the config (e.g. \"{other}\")")
    };
    match probe {
        ListenProbe::Free => Check::ok("listen", format!("{listen} is free for /metrics")),
        ListenProbe::InUse {
            owners,
            bitsecure_agent,
        } => {
            let by = if owners.is_empty() {
                String::new()
            } else {
                format!(" by {}", owners.join(", "))
            };
            if *bitsecure_agent {
                Check::warn(
                    "listen",
                    format!(
                        "port {} of {listen} is in use{by}: a bitsecure agent is already running \
                         there",
                        listen.port()
                    ),
                    format!("stop that agent before starting another one, or {fix}"),
                )
            } else {
                let by = if by.is_empty() {
                    " by another program (run as root to see which)".to_owned()
                } else {
                    by
                };
                Check::fail(
                    "listen",
                    format!(
                        "port {} of {listen} is already in use{by}: the agent could not serve \
                         /metrics",
                        listen.port()
                    ),
                    fix,
                )
            }
        }
        ListenProbe::Error(error) => {
            let why = match error.kind() {
                io::ErrorKind::AddrNotAvailable => " (not an address of this host)",
                io::ErrorKind::PermissionDenied => {
                    " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
                }
                _ => "",
            };
            Check::fail(
                "listen",
                format!("cannot listen on {listen}: {error}{why}"),
                fix,
            )
        }
    }
}

/// Inodes of the listening TCP sockets on `port` in a `/proc/net/tcp` or `/proc/net/tcp6`
/// text.
pub fn listening_socket_inodes(proc_net_tcp: &str, port: u16) -> Vec<u64> {
    proc_net::parse_table(proc_net_tcp, protocol::TCP)
        .filter(|socket| socket.state == TCP_LISTEN && socket.local_port == port)
        .map(|socket| socket.inode)
        .collect()
}

/// Tries to listen on `listen`; when taken, who holds it and whether it is a bitsecure agent.
pub fn probe_listen(listen: SocketAddr) -> ListenProbe {
    match TcpListener::bind(listen) {
        Ok(_) => ListenProbe::Free,
        Err(error) if error.kind() == io::ErrorKind::AddrInUse => ListenProbe::InUse {
            owners: socket_owners(listen.port()),
            bitsecure_agent: answers_as_bitsecure(listen),
        },
        Err(error) => ListenProbe::Error(error),
    }
}

/// Whether `GET /metrics` at `listen` answers with `bitsecure_build_info`, within a few seconds
/// (whatever holds the port may accept and never answer).
fn answers_as_bitsecure(listen: SocketAddr) -> bool {
    const MARKER: &[u8] = BUILD_INFO.as_bytes();
    let mut address = listen;
    if address.ip().is_unspecified() {
        address.set_ip(match address.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_secs(1)) else {
        return false;
    };
    if stream
        .set_write_timeout(Some(Duration::from_secs(1)))
        .is_err()
        || stream
            .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes())
            .is_err()
    {
        return false;
    }
    let mut answer = Vec::new();
    let mut buffer = [0; 16 * 1024];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            break;
        }
        let searched = answer.len().saturating_sub(MARKER.len());
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(read) => answer.extend_from_slice(&buffer[..read]),
        }
        if answer[searched..]
            .windows(MARKER.len())
            .any(|window| window == MARKER)
        {
            return true;
        }
        if answer.len() > 16 << 20 {
            break;
        }
    }
    false
}

/// `pid N (comm)` of the processes holding a listening TCP socket on `port`, in `/proc` order
/// (needs root to see other users' processes).
fn socket_owners(port: u16) -> Vec<String> {
    let inodes: Vec<u64> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .flat_map(|text| listening_socket_inodes(&text, port))
        .collect();
    if inodes.is_empty() {
        return Vec::new();
    }
    let Ok(processes) = sock_diag::process_socket_inodes() else {
        return Vec::new();
    };
    processes
        .filter_map(|(pid, mut sockets)| {
            sockets.any(|inode| inodes.contains(&inode)).then(|| {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                format!("pid {pid} ({})", comm.trim())
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::check::testing::{Status, assert_status, fix};

    #[test]
    fn free_port_passes() {
        let listen: SocketAddr = "127.0.0.1:9977".parse().unwrap();
        let check = check_listen(listen, &ListenProbe::Free);
        assert_status(&check, Status::Ok);
        assert!(check.message.contains("127.0.0.1:9977"), "{check}");
    }

    #[test]
    fn port_taken_by_another_program_fails_naming_it() {
        let listen: SocketAddr = "127.0.0.1:9977".parse().unwrap();
        let probe = ListenProbe::InUse {
            owners: vec!["pid 42 (nginx)".into()],
            bitsecure_agent: false,
        };
        let check = check_listen(listen, &probe);
        assert_status(&check, Status::Fail);
        assert!(check.message.contains("port 9977"), "{check}");
        assert!(check.message.contains("pid 42 (nginx)"), "{check}");
        assert!(fix(&check).contains("agent.listen"), "{check}");
        assert!(fix(&check).contains("127.0.0.1:9978"), "{check}");
    }

    #[test]
    fn port_taken_by_a_bitsecure_agent_warns() {
        let listen: SocketAddr = "[::1]:9977".parse().unwrap();
        let probe = ListenProbe::InUse {
            owners: vec![],
            bitsecure_agent: true,
        };
        let check = check_listen(listen, &probe);
        assert_status(&check, Status::Warn);
        assert!(
            check
                .message
                .contains("a bitsecure agent is already running there"),
            "{check}"
        );
    }

    #[test]
    fn unusable_listen_address_fails() {
        let listen: SocketAddr = "192.0.2.1:9977".parse().unwrap();
        let probe = ListenProbe::Error(io::Error::from(io::ErrorKind::AddrNotAvailable));
        let check = check_listen(listen, &probe);
        assert_status(&check, Status::Fail);
        assert!(
            check.message.contains("not an address of this host"),
            "{check}"
        );
    }

    #[test]
    fn real_probe_sees_a_held_port_and_its_owner() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let listen = held.local_addr().unwrap();
        let ListenProbe::InUse {
            owners,
            bitsecure_agent,
        } = probe_listen(listen)
        else {
            panic!("port {listen} held but not reported in use");
        };
        // The listener never answers: the probe gives up quickly.
        assert!(!bitsecure_agent);
        let me = format!("pid {} ", std::process::id());
        assert!(
            owners.iter().any(|owner| owner.starts_with(&me)),
            "{owners:?}"
        );
        drop(held);
        assert!(matches!(probe_listen(listen), ListenProbe::Free));
    }

    #[test]
    fn listening_inodes_from_proc_net_tcp() {
        let text = "\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:26F9 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0 100 0 0 10 0
   1: 0100007F:26F9 0100007F:A000 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0 20 4 30 10 -1
   2: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 99 1 0 100 0 0 10 0
";
        assert_eq!(listening_socket_inodes(text, 9977), [4242]);
        assert_eq!(listening_socket_inodes(text, 22), [99]);
        assert!(listening_socket_inodes(text, 80).is_empty());
    }
}
