//! The one network lab: a network namespace joined to the root namespace by a veth pair, with
//! addresses on both ends. The privileged tests ([`crate::testnet`], which adds nftables
//! counters), the simulated rig (one per remote site) and the benchmark build their traffic in
//! it. Dropping it removes the namespace, whatever still runs in it and so the veth pair; a lab
//! left over by a killed run is removed when one of the same name is created, or by
//! [`NetLab::remove_stale`].

use std::{ffi::OsStr, net::IpAddr, path::Path, process::Command};

use crate::process::run;

/// One subnet on the veth pair: `host` on the root namespace's end, `peer` on the namespace's.
#[derive(Debug, Clone, Copy)]
pub struct Subnet {
    pub host: IpAddr,
    pub peer: IpAddr,
    pub prefix_len: u8,
}

/// A namespace, its veth pair and addresses; removed on drop.
#[derive(Debug)]
pub struct NetLab {
    namespace: String,
    host_if: String,
    peer_if: String,
}

impl NetLab {
    /// Creates namespace `namespace` with the veth end `peer_if` in it and `host_if` in the
    /// root namespace, gives both ends their address of each subnet (IPv6 without duplicate
    /// address detection, so they are usable at once) and brings both ends and the
    /// namespace's loopback up. A namespace of the same name left by a killed run is removed
    /// first. Interface names are at most 15 bytes.
    pub fn create(
        namespace: &str,
        host_if: &str,
        peer_if: &str,
        subnets: &[Subnet],
    ) -> anyhow::Result<Self> {
        remove_namespace(namespace);
        run("ip", &["netns", "add", namespace])?;
        // From here on, dropping the lab undoes what was done, also on error.
        let lab = Self {
            namespace: namespace.to_owned(),
            host_if: host_if.to_owned(),
            peer_if: peer_if.to_owned(),
        };
        run(
            "ip",
            &[
                "link", "add", host_if, "type", "veth", "peer", "name", peer_if, "netns", namespace,
            ],
        )?;
        for subnet in subnets {
            let host = format!("{}/{}", subnet.host, subnet.prefix_len);
            run("ip", &address_args(&host, host_if, subnet.host))?;
        }
        run("ip", &["link", "set", host_if, "up"])?;
        for subnet in subnets {
            let peer = format!("{}/{}", subnet.peer, subnet.prefix_len);
            lab.ip(&address_args(&peer, peer_if, subnet.peer))?;
        }
        lab.ip(&["link", "set", peer_if, "up"])?;
        lab.ip(&["link", "set", "lo", "up"])?;
        Ok(lab)
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The veth end in the root namespace.
    pub fn host_if(&self) -> &str {
        &self.host_if
    }

    /// The veth end in the namespace.
    pub fn peer_if(&self) -> &str {
        &self.peer_if
    }

    /// Runs `ip ARGS` inside the namespace; returns its stdout.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        run("ip", &[&["-n", self.namespace.as_str()][..], args].concat())
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.namespace])
            .arg(program);
        command
    }

    /// Removes the namespaces named `prefix` + a suffix for which `stale(suffix)` holds (e.g.
    /// "the run whose pid this is has ended"), with what runs in them; returns their names.
    pub fn remove_stale(prefix: &str, stale: impl Fn(&str) -> bool) -> Vec<String> {
        let listing = run("ip", &["netns", "list"]).unwrap_or_default();
        let stale: Vec<String> = listing
            .lines()
            .filter_map(|line| line.split_whitespace().next())
            .filter(|name| name.strip_prefix(prefix).is_some_and(&stale))
            .map(str::to_owned)
            .collect();
        for name in &stale {
            remove_namespace(name);
        }
        stale
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        // Deleting the namespace destroys the veth pair with it; the explicit delete covers a
        // pair left in the root namespace (e.g. by an older, killed run).
        remove_namespace(&self.namespace);
        if Path::new("/sys/class/net").join(&self.host_if).exists() {
            let _ = run("ip", &["link", "del", &self.host_if]);
        }
    }
}

/// `addr add ADDRESS dev DEVICE`, with `nodad` for IPv6.
fn address_args<'a>(with_prefix: &'a str, device: &'a str, address: IpAddr) -> Vec<&'a str> {
    let mut args = vec!["addr", "add", with_prefix, "dev", device];
    if address.is_ipv6() {
        args.push("nodad");
    }
    args
}

/// Removes namespace `name` if it exists. Processes in it would keep it (and its veth pair)
/// alive after `ip netns del`: they are killed first.
fn remove_namespace(name: &str) {
    if !Path::new("/run/netns").join(name).exists() {
        return;
    }
    if let Ok(pids) = run("ip", &["netns", "pids", name]) {
        for pid in pids.split_whitespace() {
            if let Ok(pid) = pid.parse::<libc::pid_t>() {
                // SAFETY: kill(2) with a pid read from the namespace; no memory involved.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    let _ = run("ip", &["netns", "del", name]);
}
