//! Matching live traffic against rules: a rule's `remote` parsed into a [`RemoteMatcher`] (an
//! address, a network, a host name, a wildcard or `*`), the [`LiveFlow`] a rule is compared
//! with, [`Rule::matches`], a rule's normalized identity ([`Rule::identity`]) and the
//! baseline's lookups by them.
//!
//! Pure: no I/O and no file format. The types it works on are in [`model`](super::model); this
//! module adds behaviour to them and never changes their shape.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use super::model::{Baseline, Rule, RuleIdentity, protocol_number};
use crate::naming::{App, name_matches, parse::host_name};

/// What live traffic is matched against: the parsed form of a rule's `remote`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RemoteMatcher {
    /// `*`: any remote.
    Any,
    /// One address.
    Address(IpAddr),
    /// A CIDR network; `base` has no bits set beyond `prefix`.
    Network {
        /// First address of the network.
        base: IpAddr,
        /// Length of the network prefix in bits (≤ 32 for IPv4, ≤ 128 for IPv6).
        prefix: u8,
    },
    /// A host name (`pool.example.org`) or a wildcard for every name below a domain
    /// (`*.example.org`), lowercase, without a trailing dot: matched against the name this host
    /// learnt for the remote (see [`name_matches`]).
    Name(String),
}

/// Live traffic as rules see it (see [`Rule::matches`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveFlow<'a> {
    /// Process name.
    pub process: &'a str,
    /// Executable path, when known.
    pub exe: Option<&'a str>,
    /// cgroup v2 path the socket was created in, when known.
    pub cgroup: Option<&'a str>,
    /// Remote address.
    pub remote: IpAddr,
    /// What this host knows the remote as (lowercase, no trailing dot), if anything.
    pub name: Option<&'a str>,
    /// Remote port; `None` for protocols without ports.
    pub port: Option<u16>,
    /// IP protocol number.
    pub protocol: u8,
    /// Application protocol of the flow.
    pub app: App,
}

/// Why a rule's `remote` is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoteError {
    /// The text is empty.
    #[error(
        "`remote` is empty: use an IP address, a CIDR network, a host name or \"*\" for any \
         remote"
    )]
    Empty,
    /// Neither an address, nor a network, nor a name, nor `*`.
    #[error(
        "remote {text:?} is not an IP address, a CIDR network (like 10.0.0.0/24 or fd00::/64), \
         a host name (like pool.example.org or *.example.org) or \"*\""
    )]
    NotAnAddress {
        /// The text of the remote.
        text: String,
    },
    /// Looks like a host name, but is not a valid one.
    #[error("remote {text:?} is not a valid host name: {problem}")]
    BadName {
        /// The text of the remote.
        text: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A `*` that is not the whole first label of a name (`*example.org`, `a.*.org`, `*.`).
    #[error(
        "remote {text:?}: a wildcard is \"*.\" followed by a domain, like \"*.example.org\" \
         (it matches every name below that domain); \"*\" alone matches any remote"
    )]
    BadWildcard {
        /// The text of the remote.
        text: String,
    },
    /// The part after `/` is not a number.
    #[error("remote {text:?}: the prefix length after '/' must be a number of bits")]
    BadPrefix {
        /// The text of the remote.
        text: String,
    },
    /// The prefix is longer than the address.
    #[error(
        "remote {text:?}: prefix /{prefix} is longer than the {bits} bits of an {family} address"
    )]
    PrefixTooLong {
        /// The text of the remote.
        text: String,
        /// The prefix length written.
        prefix: u32,
        /// Bits in an address of the family (32 or 128).
        bits: u8,
        /// "IPv4" or "IPv6".
        family: &'static str,
    },
    /// The address has bits set beyond the prefix (`10.0.0.5/24`): probably a typo.
    #[error("remote {text:?} has bits set beyond the /{prefix} prefix: did you mean {suggestion}?")]
    HostBitsSet {
        /// The text of the remote.
        text: String,
        /// The prefix length written.
        prefix: u8,
        /// The network the text probably meant.
        suggestion: String,
    },
}

impl Baseline {
    /// The position (0-based) of the rule with this identity.
    pub fn position_of(&self, identity: &RuleIdentity) -> Option<usize> {
        self.rules
            .iter()
            .position(|rule| rule.identity() == *identity)
    }

    /// The rules matching live traffic, with their positions (0-based), in file order.
    pub fn matching_rules<'a>(
        &'a self,
        flow: LiveFlow<'a>,
    ) -> impl Iterator<Item = (usize, &'a Rule)> + 'a {
        self.rules
            .iter()
            .enumerate()
            .filter(move |(_, rule)| rule.matches(&flow))
    }
}

impl Rule {
    /// The parsed `remote`.
    pub fn remote_matcher(&self) -> Result<RemoteMatcher, RemoteError> {
        RemoteMatcher::parse(&self.remote)
    }

    /// Whether live traffic belongs to this rule: same process name (and executable and
    /// cgroup, when the rule names them: see [`Rule::same_holder`]), remote within `remote`
    /// (by address, or by the flow's name for a name rule), same port unless the rule has
    /// none, same protocol (by number: `6` = `tcp`), same application unless the rule has
    /// none. A rule with an invalid remote, protocol or app matches nothing. For many checks,
    /// parse the remote once with [`Rule::remote_matcher`] and use [`Rule::matches_with`].
    pub fn matches(&self, flow: &LiveFlow<'_>) -> bool {
        self.remote_matcher()
            .is_ok_and(|remote| self.matches_with(&remote, flow))
    }

    /// [`Rule::matches`] with the rule's remote already parsed.
    pub fn matches_with(&self, remote: &RemoteMatcher, flow: &LiveFlow<'_>) -> bool {
        self.same_holder(flow) && self.matches_traffic(remote, flow)
    }

    /// Whether the flow's process is the one the rule expects: the same name, started from
    /// the rule's executable and creating its sockets in the rule's cgroup (each when the rule
    /// names it). A cgroup the agent could not tell never matches one named; nor does an
    /// unknown executable, unless the rule also pins a cgroup and the kernel recorded the
    /// socket in it: a process gone before its executable could be read (a job of a few
    /// milliseconds) is vouched for by the cgroup, which a process cannot choose.
    pub fn same_holder(&self, flow: &LiveFlow<'_>) -> bool {
        let cgroup_matches = self
            .cgroup
            .as_deref()
            .is_none_or(|cgroup| flow.cgroup == Some(cgroup));
        let exe_matches = match (self.exe.as_deref(), flow.exe) {
            (None, _) => true,
            (Some(exe), Some(seen)) => exe == seen,
            (Some(_), None) => self.cgroup.is_some() && cgroup_matches,
        };
        self.process == flow.process && exe_matches && cgroup_matches
    }

    /// Whether the flow's traffic is the rule's, whoever sends it: an impostor of the rule's
    /// process is a flow that matches this but not [`Rule::same_holder`].
    pub fn matches_traffic(&self, remote: &RemoteMatcher, flow: &LiveFlow<'_>) -> bool {
        self.port.is_none_or(|wanted| flow.port == Some(wanted))
            && protocol_number(&self.protocol) == Some(flow.protocol)
            && self
                .app
                .as_deref()
                .is_none_or(|app| App::parse(app) == Some(flow.app))
            && remote.matches(flow.remote, flow.name)
    }

    /// The identity of the rule, normalized (see [`RuleIdentity`]).
    pub fn identity(&self) -> RuleIdentity {
        let remote = match self.remote_matcher() {
            Ok(matcher) => matcher.canonical().to_string(),
            Err(_) => self.remote.clone(),
        };
        let protocol = match protocol_number(&self.protocol) {
            Some(number) => crate::flow::protocol_label(number),
            None => self.protocol.to_ascii_lowercase(),
        };
        RuleIdentity {
            process: self.process.clone(),
            exe: self.exe.clone(),
            cgroup: self.cgroup.clone(),
            remote,
            port: self.port,
            protocol,
            app: self.app.clone(),
        }
    }
}

impl RemoteMatcher {
    /// Parses `*`, an IP address, a CIDR network, a host name or a wildcard (`*.example.org`).
    /// A network's address must have no bits set beyond the prefix (`10.0.0.5/24` is refused
    /// as a probable typo for `10.0.0.0/24`). A name is stored lowercase without a trailing
    /// dot; it needs at least two labels, and its last label must not be a number (both are
    /// likely typos: `"any"` for `"*"`, `10.0.0.256` for an address).
    pub fn parse(text: &str) -> Result<Self, RemoteError> {
        if text == "*" {
            return Ok(Self::Any);
        }
        if text.is_empty() {
            return Err(RemoteError::Empty);
        }
        if text.starts_with('*') {
            return parse_wildcard(text);
        }
        let not_an_address = || RemoteError::NotAnAddress {
            text: text.to_owned(),
        };
        let Some((base, prefix)) = text.split_once('/') else {
            if let Ok(address) = text.parse() {
                return Ok(Self::Address(address));
            }
            // Only digits and dots, or IPv6 punctuation: a mistyped address, not a name.
            let address_like = text.bytes().all(|b| b.is_ascii_digit() || b == b'.')
                || text.contains([':', '[', ']']);
            if address_like {
                return Err(not_an_address());
            }
            return parse_host_name(text, text, true).map(Self::Name);
        };
        let base: IpAddr = base.parse().map_err(|_| not_an_address())?;
        let digits_only = !prefix.is_empty() && prefix.bytes().all(|b| b.is_ascii_digit());
        let prefix: u32 = match prefix.parse() {
            Ok(prefix) if digits_only => prefix,
            // Only digits, yet too big for u32: surely too long.
            Err(_) if digits_only => u32::MAX,
            _ => {
                return Err(RemoteError::BadPrefix {
                    text: text.to_owned(),
                });
            }
        };
        let (bits, family) = match base {
            IpAddr::V4(_) => (32, "IPv4"),
            IpAddr::V6(_) => (128, "IPv6"),
        };
        let Some(prefix) = u8::try_from(prefix).ok().filter(|p| *p <= bits) else {
            return Err(RemoteError::PrefixTooLong {
                text: text.to_owned(),
                prefix,
                bits,
                family,
            });
        };
        let network = mask(base, prefix);
        if network != base {
            return Err(RemoteError::HostBitsSet {
                text: text.to_owned(),
                prefix,
                suggestion: format!("{network}/{prefix}"),
            });
        }
        Ok(Self::Network { base, prefix })
    }

    /// Whether a live remote is covered: by its address for `*`, address and network
    /// matchers, by the name this host knows it as for a name matcher (never when it knows
    /// none). IPv4-mapped IPv6 addresses (`::ffff:10.0.0.2`, as seen on dual-stack sockets)
    /// count as the IPv4 address, on either side; otherwise an IPv4 address never matches an
    /// IPv6 rule and vice versa (`::/0` does not match IPv4 traffic).
    pub fn matches(&self, remote: IpAddr, name: Option<&str>) -> bool {
        let remote = canonical_address(remote);
        match self {
            Self::Any => true,
            Self::Address(address) => canonical_address(*address) == remote,
            Self::Network { base, prefix } => {
                let (base, prefix) = canonical_network(*base, *prefix);
                base.is_ipv4() == remote.is_ipv4() && mask(remote, prefix) == base
            }
            Self::Name(pattern) => name.is_some_and(|name| name_matches(pattern, name)),
        }
    }

    /// The same set of remotes in canonical form: IPv4-mapped addresses and networks as
    /// IPv4, a network of one address as that address (names are canonical when parsed).
    pub fn canonical(&self) -> Self {
        match self {
            Self::Any => Self::Any,
            Self::Address(address) => Self::Address(canonical_address(*address)),
            Self::Network { base, prefix } => {
                let (base, prefix) = canonical_network(*base, *prefix);
                let full = if base.is_ipv4() { 32 } else { 128 };
                if prefix >= full {
                    Self::Address(base)
                } else {
                    Self::Network { base, prefix }
                }
            }
            Self::Name(name) => Self::Name(name.clone()),
        }
    }
}

/// A wildcard remote, `*.` and a domain, as a [`RemoteMatcher::Name`].
fn parse_wildcard(text: &str) -> Result<RemoteMatcher, RemoteError> {
    let domain = text
        .strip_prefix("*.")
        .filter(|domain| !domain.is_empty() && *domain != ".")
        .ok_or_else(|| RemoteError::BadWildcard {
            text: text.to_owned(),
        })?;
    // `*.lan` is a fair wildcard: one label is enough below the star.
    let domain = parse_host_name(text, domain, false)?;
    Ok(RemoteMatcher::Name(format!("*.{domain}")))
}

/// `name` (part of the remote `text`) checked and made canonical (lowercase, no trailing dot).
fn parse_host_name(text: &str, name: &str, need_two_labels: bool) -> Result<String, RemoteError> {
    let bad = |problem| RemoteError::BadName {
        text: text.to_owned(),
        problem,
    };
    let name = host_name(name.as_bytes()).ok_or_else(|| {
        bad(
            "use labels of 1 to 63 letters, digits, '-' or '_' separated by single dots, 253 \
             characters at most (like pool.example.org)",
        )
    })?;
    if need_two_labels && !name.contains('.') {
        return Err(bad(
            "a single word names no remote: write the full name (like pool.example.org), or \"*\" \
             for any remote",
        ));
    }
    let last_label = name.rsplit('.').next().unwrap_or_default();
    if last_label.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(
            "its last label is a number, which no host name has: a mistyped IP address?",
        ));
    }
    Ok(name)
}

impl FromStr for RemoteMatcher {
    type Err = RemoteError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

impl fmt::Display for RemoteMatcher {
    /// The form [`RemoteMatcher::parse`] reads: `*`, `10.0.0.2`, `10.0.0.0/24`,
    /// `pool.example.org` or `*.example.org`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::Address(address) => write!(f, "{address}"),
            Self::Network { base, prefix } => write!(f, "{base}/{prefix}"),
            Self::Name(name) => f.write_str(name),
        }
    }
}

/// IPv4-mapped IPv6 addresses as IPv4; others unchanged.
fn canonical_address(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        IpAddr::V4(_) => address,
    }
}

/// How wide the networks are that a rule by name remembers its addresses in (`prefixes`):
/// `baseline.name_network_v4` / `_v6`. A name answered outside them has moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameNetworks {
    /// Prefix length for IPv4 addresses (default /24).
    pub v4: u8,
    /// Prefix length for IPv6 addresses (default /48).
    pub v6: u8,
}

impl Default for NameNetworks {
    fn default() -> Self {
        Self { v4: 24, v6: 48 }
    }
}

impl NameNetworks {
    /// The network a name's address is remembered in (e.g. its /24 or /48), as text.
    pub fn of(&self, address: IpAddr) -> String {
        let address = canonical_address(address);
        let prefix = if address.is_ipv4() {
            self.v4.min(32)
        } else {
            self.v6.min(128)
        };
        format!("{}/{prefix}", mask(address, prefix))
    }
}

impl super::model::Normal {
    /// What the rule's traffic looked like over time while learning, for the silence check.
    pub fn rhythm(&self) -> super::stats::Rhythm {
        super::stats::Rhythm {
            cadence_seconds: self.cadence_seconds,
            bursts: self.bursts,
            longest_gap_seconds: self.longest_gap_seconds,
            active_fraction: self.active_fraction,
        }
    }
}

impl Rule {
    /// Whether `address` lies in the networks the rule's name resolved to while learning
    /// (always, for a rule without `prefixes`; never for a prefix that does not parse).
    pub fn prefixes_cover(&self, address: IpAddr) -> bool {
        self.prefixes.as_ref().is_none_or(|prefixes| {
            prefixes.iter().any(|prefix| {
                RemoteMatcher::parse(prefix).is_ok_and(|network| network.matches(address, None))
            })
        })
    }
}

/// A network within the IPv4-mapped range (`::ffff:10.0.0.0/120`) as the IPv4 network.
fn canonical_network(base: IpAddr, prefix: u8) -> (IpAddr, u8) {
    match base {
        IpAddr::V6(v6) if prefix >= 96 => match v6.to_ipv4_mapped() {
            Some(v4) => (IpAddr::V4(v4), prefix - 96),
            None => (base, prefix),
        },
        _ => (base, prefix),
    }
}

/// The address with the bits beyond `prefix` cleared.
fn mask(address: IpAddr, prefix: u8) -> IpAddr {
    match address {
        IpAddr::V4(v4) => {
            let shift = 32u32.saturating_sub(u32::from(prefix));
            let mask = u32::MAX.checked_shl(shift).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
        }
        IpAddr::V6(v6) => {
            let shift = 128u32.saturating_sub(u32::from(prefix));
            let mask = u128::MAX.checked_shl(shift).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::baseline::{
        file::BaselineError,
        test_support::{ip, live, parse_error, sample},
    };

    #[test]
    fn remote_matchers_parse_and_print() {
        assert_eq!(RemoteMatcher::parse("*"), Ok(RemoteMatcher::Any));
        assert_eq!(
            RemoteMatcher::parse("10.0.0.2"),
            Ok(RemoteMatcher::Address(ip("10.0.0.2")))
        );
        assert_eq!(
            "fd00::/64".parse::<RemoteMatcher>(),
            Ok(RemoteMatcher::Network {
                base: ip("fd00::"),
                prefix: 64
            })
        );
        assert_eq!(
            RemoteMatcher::parse("0.0.0.0/0").map(|m| m.to_string()),
            Ok("0.0.0.0/0".to_owned())
        );
        assert_eq!(
            RemoteMatcher::parse("::ffff:10.0.0.0/120").map(|m| m.canonical()),
            Ok(RemoteMatcher::Network {
                base: ip("10.0.0.0"),
                prefix: 24
            })
        );
        assert_eq!(
            RemoteMatcher::parse("10.0.0.2/32").map(|m| m.canonical()),
            Ok(RemoteMatcher::Address(ip("10.0.0.2")))
        );
        assert!(matches!(
            RemoteMatcher::parse("10.1.2.3/8"),
            Err(RemoteError::HostBitsSet { prefix: 8, ref suggestion, .. }) if suggestion == "10.0.0.0/8"
        ));
    }

    #[test]
    fn rules_match_exact_addresses_and_networks() {
        let exact = Rule::new("xmrig", "10.0.0.2", Some(3333), "tcp");
        assert!(exact.matches(&live("xmrig", "10.0.0.2", Some(3333), "tcp")));
        assert!(!exact.matches(&live("xmrig", "10.0.0.3", Some(3333), "tcp")));

        let v4_network = Rule::new("xmrig", "10.0.0.0/24", Some(3333), "tcp");
        assert!(v4_network.matches(&live("xmrig", "10.0.0.0", Some(3333), "tcp")));
        assert!(v4_network.matches(&live("xmrig", "10.0.0.255", Some(3333), "tcp")));
        assert!(!v4_network.matches(&live("xmrig", "10.0.1.0", Some(3333), "tcp")));
        assert!(!v4_network.matches(&live("xmrig", "9.255.255.255", Some(3333), "tcp")));

        let odd_prefix = Rule::new("xmrig", "192.168.4.0/22", None, "tcp");
        assert!(odd_prefix.matches(&live("xmrig", "192.168.7.200", Some(1), "tcp")));
        assert!(!odd_prefix.matches(&live("xmrig", "192.168.8.1", Some(1), "tcp")));

        let v6_network = Rule::new("xmrig", "fd00:1::/64", Some(3333), "tcp");
        assert!(v6_network.matches(&live("xmrig", "fd00:1::abcd", Some(3333), "tcp")));
        assert!(v6_network.matches(&live(
            "xmrig",
            "fd00:1:0:0:ffff:ffff:ffff:ffff",
            Some(3333),
            "tcp"
        )));
        assert!(!v6_network.matches(&live("xmrig", "fd00:1:0:1::1", Some(3333), "tcp")));
        assert!(!v6_network.matches(&live("xmrig", "10.0.0.2", Some(3333), "tcp")));

        let v6_exact = Rule::new("xmrig", "fd00::2", Some(3333), "tcp");
        assert!(v6_exact.matches(&live("xmrig", "fd00:0::0:2", Some(3333), "tcp")));
        assert!(!v6_exact.matches(&live("xmrig", "fd00::3", Some(3333), "tcp")));
    }

    #[test]
    fn rules_match_any_remote_port_protocol_and_process() {
        let any = Rule::new("xmrig", "*", None, "tcp");
        assert!(any.matches(&live("xmrig", "1.2.3.4", Some(80), "tcp")));
        assert!(any.matches(&live("xmrig", "2001:db8::1", None, "tcp")));

        let port = Rule::new("xmrig", "*", Some(3333), "tcp");
        assert!(port.matches(&live("xmrig", "1.2.3.4", Some(3333), "tcp")));
        assert!(!port.matches(&live("xmrig", "1.2.3.4", Some(3334), "tcp")));
        assert!(!port.matches(&live("xmrig", "1.2.3.4", None, "tcp")));

        // Protocols compare by number, names in any case.
        assert!(port.matches(&live("xmrig", "1.2.3.4", Some(3333), "6")));
        assert!(port.matches(&live("xmrig", "1.2.3.4", Some(3333), "TCP")));
        assert!(!port.matches(&live("xmrig", "1.2.3.4", Some(3333), "udp")));
        let numeric = Rule::new("gre-tunnel", "*", None, "47");
        assert!(numeric.matches(&live("gre-tunnel", "1.2.3.4", None, "47")));
        assert!(!numeric.matches(&live("gre-tunnel", "1.2.3.4", None, "tcp")));

        // Process names compare exactly.
        assert!(!port.matches(&live("xmrig2", "1.2.3.4", Some(3333), "tcp")));
        assert!(!port.matches(&live("XMRIG", "1.2.3.4", Some(3333), "tcp")));
        assert!(!port.matches(&live("", "1.2.3.4", Some(3333), "tcp")));

        // An invalid rule matches nothing.
        let invalid = Rule::new("xmrig", "10.0.0.0/99", None, "tcp");
        assert!(!invalid.matches(&live("xmrig", "10.0.0.1", None, "tcp")));
    }

    #[test]
    fn ipv4_mapped_ipv6_addresses_match_ipv4_rules() {
        let exact = Rule::new("xmrig", "10.0.0.2", Some(3333), "tcp");
        assert!(exact.matches(&live("xmrig", "::ffff:10.0.0.2", Some(3333), "tcp")));
        assert!(!exact.matches(&live("xmrig", "::ffff:10.0.0.3", Some(3333), "tcp")));
        // ::10.0.0.2 (deprecated IPv4-compatible) is not the IPv4 address.
        assert!(!exact.matches(&live("xmrig", "::10.0.0.2", Some(3333), "tcp")));

        let network = Rule::new("xmrig", "10.0.0.0/24", Some(3333), "tcp");
        assert!(network.matches(&live("xmrig", "::ffff:10.0.0.77", Some(3333), "tcp")));

        // A mapped rule matches plain IPv4 traffic.
        let mapped = Rule::new("xmrig", "::ffff:10.0.0.0/120", None, "tcp");
        assert!(mapped.matches(&live("xmrig", "10.0.0.9", None, "tcp")));
        assert!(!mapped.matches(&live("xmrig", "10.0.1.9", None, "tcp")));

        // All of IPv6 is not all of IPv4.
        let all_v6 = Rule::new("xmrig", "::/0", None, "tcp");
        assert!(all_v6.matches(&live("xmrig", "2001:db8::1", None, "tcp")));
        assert!(!all_v6.matches(&live("xmrig", "10.0.0.9", None, "tcp")));
        assert!(!all_v6.matches(&live("xmrig", "::ffff:10.0.0.9", None, "tcp")));
        let all_v4 = Rule::new("xmrig", "0.0.0.0/0", None, "tcp");
        assert!(all_v4.matches(&live("xmrig", "::ffff:10.0.0.9", None, "tcp")));
        assert!(!all_v4.matches(&live("xmrig", "2001:db8::1", None, "tcp")));
    }

    /// `flow` with the remote known as `name`.
    fn named<'a>(flow: LiveFlow<'a>, name: &'a str) -> LiveFlow<'a> {
        LiveFlow {
            name: Some(name),
            ..flow
        }
    }

    #[test]
    fn name_remotes_parse_to_a_canonical_form() {
        for (text, canonical) in [
            ("pool.example.org", "pool.example.org"),
            ("Pool.Example.ORG.", "pool.example.org"),
            ("*.Example.org", "*.example.org"),
            ("*.example.org.", "*.example.org"),
            ("*.lan", "*.lan"),
            ("_stratum.pool-1.example.org", "_stratum.pool-1.example.org"),
            ("10.0.0.2a", "10.0.0.2a"),
        ] {
            let parsed = RemoteMatcher::parse(text);
            assert_eq!(
                parsed,
                Ok(RemoteMatcher::Name(canonical.to_owned())),
                "{text}"
            );
            assert_eq!(
                parsed.map(|matcher| matcher.canonical().to_string()),
                Ok(canonical.to_owned())
            );
        }
        // 253 characters is the longest host name; the wildcard may add its "*." to it.
        let longest = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61),
        ]
        .join(".");
        assert_eq!(longest.len(), 253);
        assert!(RemoteMatcher::parse(&longest).is_ok());
        assert!(RemoteMatcher::parse(&format!("*.{longest}")).is_ok());
        assert!(matches!(
            RemoteMatcher::parse(&format!("x{longest}")),
            Err(RemoteError::BadName { .. })
        ));
        assert!(matches!(
            RemoteMatcher::parse("a.b-.c d"),
            Err(RemoteError::BadName { ref text, .. }) if text == "a.b-.c d"
        ));
        assert!(matches!(
            RemoteMatcher::parse("*x.example.org"),
            Err(RemoteError::BadWildcard { .. })
        ));

        // Identity: the same name however it is written.
        assert_eq!(
            Rule::new("xmrig", "POOL.example.org.", Some(3333), "tcp").identity(),
            Rule::new("xmrig", "pool.example.org", Some(3333), "6").identity()
        );
        assert_eq!(
            Rule::new("xmrig", "*.EXAMPLE.org", None, "tcp")
                .identity()
                .remote,
            "*.example.org"
        );
        let text = "format_version = 1\n[[rule]]\nprocess = \"x\"\nremote = \"pool.example.org\"\n\
                    protocol = \"tcp\"\n[[rule]]\nprocess = \"x\"\nremote = \"Pool.Example.Org.\"\n\
                    protocol = \"tcp\"\n";
        let error = parse_error(text);
        assert!(
            matches!(
                error,
                BaselineError::DuplicateRule {
                    index: 2,
                    first: 1,
                    ..
                }
            ),
            "{error:?}"
        );
    }

    #[test]
    fn name_rules_match_the_name_the_flow_is_known_by() {
        let exact = Rule::new("xmrig", "Pool.Example.org", Some(3333), "tcp");
        let flow = live("xmrig", "10.0.0.2", Some(3333), "tcp");
        // Any address the name resolved to.
        assert!(exact.matches(&named(flow, "pool.example.org")));
        let rotated = live("xmrig", "192.0.2.77", Some(3333), "tcp");
        assert!(exact.matches(&named(rotated, "pool.example.org")));
        assert!(exact.matches(&named(flow, "pool.example.org.")));
        // Other names, and no name at all, do not match.
        for other in [
            "eu.pool.example.org",
            "example.org",
            "pool.example.org.evil.net",
        ] {
            assert!(!exact.matches(&named(flow, other)), "{other}");
        }
        assert!(!exact.matches(&flow));
        // Everything else still counts.
        let wrong_port = live("xmrig", "10.0.0.2", Some(80), "tcp");
        assert!(!exact.matches(&named(wrong_port, "pool.example.org")));
        let wrong_process = live("curl", "10.0.0.2", Some(3333), "tcp");
        assert!(!exact.matches(&named(wrong_process, "pool.example.org")));

        let wildcard = Rule::new("xmrig", "*.Example.ORG", None, "tcp");
        for (name, expected) in [
            ("a.example.org", true),
            ("a.b.example.org", true),
            ("A.EXAMPLE.org", true),
            ("example.org", false),
            ("badexample.org", false),
            ("a.example.org.evil.net", false),
            ("a.example.com", false),
        ] {
            assert_eq!(wildcard.matches(&named(flow, name)), expected, "{name}");
        }
        assert!(!wildcard.matches(&flow));

        // Address rules go by the address, whatever the name; `*` matches unnamed traffic.
        let address = Rule::new("xmrig", "10.0.0.2", Some(3333), "tcp");
        assert!(address.matches(&named(flow, "pool.example.org")));
        assert!(!address.matches(&named(rotated, "pool.example.org")));
        assert!(Rule::new("xmrig", "*", None, "tcp").matches(&flow));

        // A baseline finds name rules too.
        let baseline = Baseline::new(None, vec![address, exact, wildcard]);
        let found: Vec<usize> = baseline
            .matching_rules(named(rotated, "pool.example.org"))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(found, [1, 2]);
    }

    #[test]
    fn a_rule_with_an_app_matches_only_that_app() {
        let stratum = Rule {
            app: Some("stratum".to_owned()),
            ..Rule::new("xmrig", "10.0.0.2", Some(3333), "tcp")
        };
        let any = Rule::new("xmrig", "10.0.0.2", Some(3333), "tcp");
        let flow = live("xmrig", "10.0.0.2", Some(3333), "tcp");
        for app in App::ALL {
            let flow = LiveFlow { app, ..flow };
            assert_eq!(stratum.matches(&flow), app == App::Stratum, "{app:?}");
            assert!(any.matches(&flow), "{app:?}");
        }
        // An app that is not one (only possible in memory: parsing refuses it) matches nothing.
        let invalid = Rule {
            app: Some("Stratum".to_owned()),
            ..any.clone()
        };
        for app in App::ALL {
            assert!(!invalid.matches(&LiveFlow { app, ..flow }), "{app:?}");
        }
    }

    #[test]
    fn a_rule_naming_an_executable_or_cgroup_matches_only_that_program() {
        let rule = Rule {
            exe: Some("/usr/bin/xmrig".to_owned()),
            cgroup: Some("/system.slice/xmrig.service".to_owned()),
            ..Rule::new("xmrig", "10.0.0.2", Some(3333), "tcp")
        };
        let remote = rule.remote_matcher().unwrap();
        let miner = LiveFlow {
            exe: Some("/usr/bin/xmrig"),
            cgroup: Some("/system.slice/xmrig.service"),
            ..live("xmrig", "10.0.0.2", Some(3333), "tcp")
        };
        assert!(rule.matches(&miner));
        // A process of the miner's cgroup gone before its executable could be read: the
        // kernel-recorded cgroup vouches for it.
        assert!(rule.matches(&LiveFlow { exe: None, ..miner }));
        // The same name from another file, an unknown file in another cgroup, another cgroup
        // (a user's own `xmrig.service` lives below user@UID.service) or an unknown cgroup:
        // an impostor.
        for impostor in [
            LiveFlow {
                exe: Some("/tmp/xmrig"),
                ..miner
            },
            LiveFlow {
                exe: None,
                cgroup: Some("/user.slice/user-1000.slice/session-4.scope"),
                ..miner
            },
            LiveFlow {
                cgroup: Some("/user.slice/user-1000.slice/user@1000.service/xmrig.service"),
                ..miner
            },
            LiveFlow {
                cgroup: None,
                ..miner
            },
        ] {
            assert!(!rule.matches(&impostor), "{impostor:?}");
            assert!(!rule.same_holder(&impostor), "{impostor:?}");
            assert!(rule.matches_traffic(&remote, &impostor), "{impostor:?}");
        }
        // Its traffic elsewhere is not the rule's traffic, whoever sends it.
        let elsewhere = LiveFlow {
            port: Some(4444),
            ..miner
        };
        assert!(!rule.matches_traffic(&remote, &elsewhere));
        // A rule naming only an executable has nothing to vouch for an unknown one.
        let exe_only = Rule {
            cgroup: None,
            ..rule.clone()
        };
        assert!(!exe_only.matches(&LiveFlow { exe: None, ..miner }));
        // A rule without them matches the name from anywhere (old baselines keep working).
        let any = Rule::new("xmrig", "10.0.0.2", Some(3333), "tcp");
        assert!(any.matches(&LiveFlow {
            exe: None,
            cgroup: None,
            ..miner
        }));
    }

    #[test]
    fn baseline_finds_matching_rules_and_positions() {
        let baseline = sample();
        let miner = LiveFlow {
            exe: Some("/usr/bin/xmrig"),
            ..live("xmrig", "10.0.0.2", Some(3333), "tcp")
        };
        let found: Vec<usize> = baseline.matching_rules(miner).map(|(i, _)| i).collect();
        assert_eq!(found, [0]);
        let identity = Rule::new("ping", "10.0.0.0/8", None, "1").identity();
        assert_eq!(baseline.position_of(&identity), Some(3));
        assert_eq!(identity.to_string(), "ping → 10.0.0.0/8/icmp");
    }
}
