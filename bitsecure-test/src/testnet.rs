//! The privileged tests' network: a [`NetLab`] whose namespace counts, with nftables, what
//! crosses the peer's interface per protocol — the independent truth the agent's numbers are
//! compared with — and runs the tests' servers.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use crate::{
    exposition::Exported,
    lab::{NetLab, Subnet},
    process::{Spawned, require_root, scratch_dir, sh, spawn_until},
};

static NEXT_NET: AtomicU32 = AtomicU32::new(1);

/// A network namespace joined to the root namespace by a veth pair ([`NetLab`]), with
/// nftables counters in the namespace counting what crosses the peer's interface, per
/// protocol. Servers started in it are stopped on drop.
pub struct TestNet {
    pub ns: String,
    lab: NetLab,
    pub host_v4: Ipv4Addr,
    pub peer_v4: Ipv4Addr,
    pub host_v6: Ipv6Addr,
    pub peer_v6: Ipv6Addr,
    children: Vec<Spawned>,
}

/// Protocols the namespace's nftables counters tell apart.
/// `loopback` counts TCP over the namespace's own lo to/from port [`LOOPBACK_PORT`].
pub const COUNTED_PROTOCOLS: [&str; 6] = ["tcp", "udp", "icmp", "icmpv6", "raw253", "loopback"];
/// The TCP port whose loopback traffic the `loopback` counters count.
pub const LOOPBACK_PORT: u16 = 7000;

impl TestNet {
    #[expect(
        clippy::new_without_default,
        reason = "it creates a namespace and a veth pair as root: not a default value"
    )]
    pub fn new() -> Self {
        require_root();
        let index = NEXT_NET.fetch_add(1, Ordering::SeqCst);
        assert!(index < 250, "too many test namespaces");
        let pid = std::process::id() % 100_000;
        let ns = format!("bstest{pid}n{index}");
        // Subnets keyed by pid and index so parallel test runs do not collide.
        let subnet = ((pid % 200) as u8, index as u8);
        let host_v4 = Ipv4Addr::new(10, 200 + (subnet.0 % 50), subnet.1, 1);
        let peer_v4 = Ipv4Addr::new(10, 200 + (subnet.0 % 50), subnet.1, 2);
        let host_v6: Ipv6Addr = format!("fd00:b5:{pid:x}:{index:x}::1").parse().unwrap();
        let peer_v6: Ipv6Addr = format!("fd00:b5:{pid:x}:{index:x}::2").parse().unwrap();
        let subnets = [
            Subnet {
                host: host_v4.into(),
                peer: peer_v4.into(),
                prefix_len: 24,
            },
            Subnet {
                host: host_v6.into(),
                peer: peer_v6.into(),
                prefix_len: 64,
            },
        ];
        let lab = NetLab::create(
            &ns,
            &format!("bsh{pid}n{index}"),
            &format!("bsp{pid}n{index}"),
            &subnets,
        )
        .unwrap_or_else(|error| panic!("cannot create the test network {ns}: {error:#}"));
        let net = Self {
            ns,
            lab,
            host_v4,
            peer_v4,
            host_v6,
            peer_v6,
            children: Vec::new(),
        };
        let (host_if, peer_if) = (net.lab.host_if(), net.lab.peer_if());
        // The host segments its GSO super-packets in software at the veth (TSO off), so the
        // agent's GSO correction is exercised and the peer receives real wire packets; GRO on
        // the host side merges what it receives. The peer sends wire-sized packets only
        // (gso_max_segs 1): nftables' output hook sees packets before segmentation, so only
        // then do its counters equal what crosses the wire.
        sh("ethtool", &["-K", host_if, "tso", "off", "gro", "on"]);
        sh(
            "ip",
            &["-n", &net.ns, "link", "set", peer_if, "gso_max_segs", "1"],
        );
        net.install_counters();
        net
    }

    fn install_counters(&self) {
        let (h4, h6) = (self.host_v4, self.host_v6);
        let mut rules = String::from("table inet bitsecure_test {\n");
        for protocol in COUNTED_PROTOCOLS {
            rules += &format!(
                "  counter host_sent_{protocol} {{}}\n  counter host_received_{protocol} {{}}\n"
            );
        }
        // Seen from the host: what the peer receives the host sent, and vice versa. ICMP
        // counts echo messages only (not neighbour discovery or errors).
        let matches = [
            ("tcp", "meta l4proto tcp"),
            ("udp", "meta l4proto udp"),
            ("raw253", "meta l4proto 253"),
        ];
        rules += "  chain input {\n    type filter hook input priority 0; policy accept;\n";
        for (name, matcher) in matches {
            rules += &format!("    ip saddr {h4} {matcher} counter name host_sent_{name}\n");
            rules += &format!("    ip6 saddr {h6} {matcher} counter name host_sent_{name}\n");
        }
        rules += &format!("    ip saddr {h4} icmp type echo-request counter name host_sent_icmp\n");
        rules +=
            &format!("    ip6 saddr {h6} icmpv6 type echo-request counter name host_sent_icmpv6\n");
        rules += &format!(
            "    iifname \"lo\" ip saddr 127.0.0.1 tcp sport {LOOPBACK_PORT} counter name host_received_loopback\n"
        );
        rules += "  }\n  chain output {\n    type filter hook output priority 0; policy accept;\n";
        for (name, matcher) in matches {
            rules += &format!("    ip daddr {h4} {matcher} counter name host_received_{name}\n");
            rules += &format!("    ip6 daddr {h6} {matcher} counter name host_received_{name}\n");
        }
        rules +=
            &format!("    ip daddr {h4} icmp type echo-reply counter name host_received_icmp\n");
        rules += &format!(
            "    ip6 daddr {h6} icmpv6 type echo-reply counter name host_received_icmpv6\n"
        );
        rules += &format!(
            "    oifname \"lo\" ip daddr 127.0.0.1 tcp dport {LOOPBACK_PORT} counter name host_sent_loopback\n"
        );
        rules += "  }\n}\n";
        self.nft_script("counters", &rules);
    }

    /// Runs the nftables script `rules` in the namespace (`tag` names its file).
    pub fn nft_script(&self, tag: &str, rules: &str) {
        let rules_file = scratch_dir().join(format!("{}-{tag}.nft", self.ns));
        std::fs::write(&rules_file, rules).expect("write nft rules");
        sh(
            "ip",
            &[
                "netns",
                "exec",
                &self.ns,
                "nft",
                "-f",
                rules_file.to_str().unwrap(),
            ],
        );
    }

    /// Turns IPv6 off on both ends of the veth pair: no neighbour discovery or MLD crosses it.
    pub fn disable_ipv6(&self) {
        let setting = |interface: &str| format!("net.ipv6.conf.{interface}.disable_ipv6=1");
        sh("sysctl", &["-qw", &setting(self.lab.host_if())]);
        sh(
            "ip",
            &[
                "netns",
                "exec",
                &self.ns,
                "sysctl",
                "-qw",
                &setting(self.lab.peer_if()),
            ],
        );
    }

    /// The host side of the veth pair.
    pub fn host_interface(&self) -> &str {
        self.lab.host_if()
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: &Path) -> Command {
        self.lab.command(program)
    }

    /// Starts `program args` in the namespace, waits for its `ready`, and stops it on drop.
    pub fn spawn_server(&mut self, program: &Path, args: &[&str]) {
        self.spawn_server_until(program, args, "ready");
    }

    /// [`TestNet::spawn_server`] for a program that says `marker` when it is ready.
    pub fn spawn_server_until(&mut self, program: &Path, args: &[&str], marker: &str) {
        let child = spawn_until(self.command(program).args(args), marker);
        self.children.push(child);
    }

    /// Address `host` of the peer's IPv4 subnet (the peer itself is .2, the host side .1).
    pub fn peer_v4_host(&self, host: u8) -> Ipv4Addr {
        let [a, b, c, _] = self.peer_v4.octets();
        Ipv4Addr::new(a, b, c, host)
    }

    /// Address `host` of the peer's IPv6 subnet (the peer itself is ::2, the host side ::1).
    pub fn peer_v6_host(&self, host: u16) -> Ipv6Addr {
        let mut segments = self.peer_v6.segments();
        segments[7] = host;
        Ipv6Addr::from(segments)
    }

    /// Gives the peer one more address (of its subnet, e.g. [`TestNet::peer_v4_host`]), so a
    /// test can have several remotes. Checks that the host routes it into the veth: traffic
    /// to an address that is not on the link would leave by the default route.
    pub fn add_peer_address(&self, address: IpAddr) {
        let (family, prefix) = match address {
            IpAddr::V4(_) => ("-4", 32),
            IpAddr::V6(_) => ("-6", 128),
        };
        let with_prefix = format!("{address}/{prefix}");
        let mut args = vec![
            "-n",
            &self.ns,
            family,
            "addr",
            "add",
            &with_prefix,
            "dev",
            self.lab.peer_if(),
        ];
        if address.is_ipv6() {
            args.push("nodad");
        }
        sh("ip", &args);
        let route = sh("ip", &[family, "route", "get", &address.to_string()]);
        assert!(
            route
                .split_whitespace()
                .collect::<Vec<_>>()
                .windows(2)
                .any(|w| w == ["dev", self.lab.host_if()])
                && !route.contains(" via "),
            "{address} is not routed straight into the test veth {}: {route}",
            self.lab.host_if()
        );
    }

    /// Counts, on their own, the IPv4 TCP packets between the host and the peer namespace
    /// that have `port` as source or destination port (a server's traffic, whichever side it
    /// is on): read them with [`TestNet::counter`]`(direction, "port{port}")`.
    pub fn count_tcp_port(&self, port: u16) {
        let h4 = self.host_v4;
        let name = format!("port{port}");
        let mut rules = format!(
            "add counter inet bitsecure_test host_sent_{name}\n\
             add counter inet bitsecure_test host_received_{name}\n"
        );
        for side in ["sport", "dport"] {
            rules += &format!(
                "add rule inet bitsecure_test input ip saddr {h4} tcp {side} {port} counter name host_sent_{name}\n\
                 add rule inet bitsecure_test output ip daddr {h4} tcp {side} {port} counter name host_received_{name}\n"
            );
        }
        self.nft_script(&name, &rules);
    }

    /// Routes the IPv4 block `block`/`prefix_len` from the host to the peer, where it is
    /// local (an AnyIP route): the host can talk to any address of it, and what it sends there
    /// reaches the namespace's nftables input hook. Gone with the veth pair on drop.
    pub fn route_block_to_peer(&self, block: Ipv4Addr, prefix_len: u8) {
        let cidr = format!("{block}/{prefix_len}");
        sh(
            "ip",
            &["route", "replace", &cidr, "via", &self.peer_v4.to_string()],
        );
        sh(
            "ip",
            &["-n", &self.ns, "route", "add", "local", &cidr, "dev", "lo"],
        );
    }

    /// The nftables counter `host_{direction}_{protocol}`: (packets, bytes).
    pub fn counter(&self, direction: &str, protocol: &str) -> (u64, u64) {
        nft_counter(
            &self.ns,
            "inet",
            "bitsecure_test",
            &format!("host_{direction}_{protocol}"),
        )
    }

    /// Starts `packet-send` from `program` (a generator): `frames` hand-built
    /// Ethernet/IPv4/UDP frames of 1,000 payload bytes from the host's address to the peer's,
    /// through a packet socket on the host's veth (`extra`: more options, e.g.
    /// `--qdisc-bypass`). The generator then holds its packet socket until dropped.
    pub fn send_frames(&self, program: &Path, frames: u32, extra: &[&str]) -> Spawned {
        spawn_until(
            Command::new(program)
                .args([
                    "packet-send",
                    "--interface",
                    self.lab.host_if(),
                    "--from",
                    &self.host_v4.to_string(),
                    "--to",
                    &self.peer_v4.to_string(),
                    "--frames",
                    &frames.to_string(),
                    "--size",
                    "1000",
                ])
                .args(extra),
            "ready",
        )
    }

    /// The counter pair `host_{sent,received}_{protocol}` as the host's traffic.
    pub fn traffic(&self, protocol: &str) -> Exported {
        let (sent_packets, sent_bytes) = self.counter("sent", protocol);
        let (received_packets, received_bytes) = self.counter("received", protocol);
        Exported {
            sent_bytes,
            received_bytes,
            sent_packets,
            received_packets,
        }
    }

    /// The `loopback` counter: what a client in the namespace sent to / received from
    /// 127.0.0.1:[`LOOPBACK_PORT`].
    pub fn loopback_counter(&self, direction: &str) -> (u64, u64) {
        self.counter(direction, "loopback")
    }

    /// Zeroes every counter (after the agent starts, for traffic on pre-existing sockets).
    pub fn reset_counters(&self) {
        sh(
            "ip",
            &[
                "netns",
                "exec",
                &self.ns,
                "nft",
                "reset",
                "counters",
                "table",
                "inet",
                "bitsecure_test",
            ],
        );
    }
}

/// The nftables counter `name` of table `family table` in network namespace `netns`:
/// (packets, bytes).
pub fn nft_counter(netns: &str, family: &str, table: &str, name: &str) -> (u64, u64) {
    let text = sh(
        "ip",
        &[
            "netns", "exec", netns, "nft", "list", "counter", family, table, name,
        ],
    );
    let number = |key: &str| -> u64 {
        let mut words = text.split_whitespace();
        words.find(|word| *word == key);
        words
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{table} {name}: {text}"))
    };
    (number("packets"), number("bytes"))
}

/// An nftables table of the root namespace (`ip` family), deleted on drop.
pub struct HostNftTable(pub String);

impl Drop for HostNftTable {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "ip", &self.0])
            .output();
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        for spawned in &mut self.children {
            let _ = spawned.child.kill();
            let _ = spawned.child.wait();
        }
        // Then the lab goes: the namespace, and with it the veth pair.
    }
}
