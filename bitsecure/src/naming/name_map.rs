//! Address → name, learnt from DNS answers, TLS SNI and HTTP Host headers.
//!
//! An entry lives for its TTL, clamped to [`NameMapConfig::min_ttl`, `max_ttl`] (default 60 s
//! to 24 h: a 0-second TTL still names the connection that follows it, and a week-long TTL
//! does not pin a stale name), plus a grace period (default 1 h): clients keep using an address
//! after its TTL ran out (long-lived pool connections, cached resolutions), and the name should
//! stay on it. The map holds at most `max_entries` addresses; when a new address comes and the
//! map is full, expired entries go first, then the entry that expires soonest.
//!
//! Time is passed in (`now: Instant`), never read here, so tests are deterministic.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Where a name was learnt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// A DNS response the host received.
    Dns,
    /// The server name of a TLS ClientHello the host sent.
    Sni,
    /// The Host header of an HTTP request the host sent.
    Http,
}

impl Source {
    /// Lowercase name, for labels and the JSON API.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Dns => "dns",
            Source::Sni => "sni",
            Source::Http => "http",
        }
    }
}

/// Limits of a [`NameMap`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameMapConfig {
    /// Most addresses held (0: the map holds nothing).
    pub max_entries: usize,
    /// Shortest TTL honoured.
    pub min_ttl: Duration,
    /// Longest TTL honoured.
    pub max_ttl: Duration,
    /// Added to the clamped TTL.
    pub grace: Duration,
}

impl Default for NameMapConfig {
    fn default() -> Self {
        Self {
            max_entries: 65_536,
            min_ttl: Duration::from_secs(60),
            max_ttl: Duration::from_secs(24 * 3600),
            grace: Duration::from_secs(3600),
        }
    }
}

/// The name of one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Lowercase name, no trailing dot.
    pub name: String,
    /// Where it was learnt.
    pub source: Source,
    /// From this instant on the entry is gone.
    pub expires_at: Instant,
}

/// Address → name with expiry and a bounded size. The key is an address, or anything that
/// says whose address it is (naming keys DNS names by who asked: [`NameKey`](super::NameKey)).
#[derive(Debug, Clone)]
pub struct NameMap<K = IpAddr> {
    config: NameMapConfig,
    entries: HashMap<K, Entry>,
    /// The same entries ordered by expiry, for `expire` and eviction.
    by_expiry: BTreeSet<(Instant, K)>,
}

impl<K: Copy + Eq + Hash + Ord> NameMap<K> {
    /// An empty map. `min_ttl` above `max_ttl` is treated as `max_ttl`.
    pub fn new(config: NameMapConfig) -> Self {
        Self {
            config,
            entries: HashMap::new(),
            by_expiry: BTreeSet::new(),
        }
    }

    /// The limits this map was made with.
    pub fn config(&self) -> &NameMapConfig {
        &self.config
    }

    /// Number of addresses held (expired ones included until [`NameMap::expire`]).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the map holds no address.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// When an entry inserted at `now` with `ttl` expires.
    pub fn expiry(&self, ttl: Duration, now: Instant) -> Instant {
        let min = self.config.min_ttl.min(self.config.max_ttl);
        let lifetime = ttl
            .clamp(min, self.config.max_ttl)
            .saturating_add(self.config.grace);
        // Instants are bounded by the platform; an absurd config saturates instead of panicking.
        now.checked_add(lifetime).unwrap_or(now)
    }

    /// Names `addr` `name` for `ttl` (clamped, plus grace) from `now`. A new name for an address
    /// replaces the old one (the latest answer wins); the same name again only ever extends the
    /// entry's life. When a new address comes to a full map, expired entries are dropped, then
    /// the entry that expires soonest.
    pub fn insert(&mut self, addr: K, name: &str, source: Source, ttl: Duration, now: Instant) {
        if self.config.max_entries == 0 {
            return;
        }
        let mut expires_at = self.expiry(ttl, now);
        if let Some(old) = self.entries.remove(&addr) {
            self.by_expiry.remove(&(old.expires_at, addr));
            if old.name == name && old.expires_at > expires_at {
                expires_at = old.expires_at;
            }
        } else if self.entries.len() >= self.config.max_entries {
            self.expire(now);
            while self.entries.len() >= self.config.max_entries {
                let Some((_, victim)) = self.by_expiry.pop_first() else {
                    break;
                };
                self.entries.remove(&victim);
            }
        }
        self.by_expiry.insert((expires_at, addr));
        self.entries.insert(
            addr,
            Entry {
                name: name.to_string(),
                source,
                expires_at,
            },
        );
    }

    /// The name of `addr`, unless it expired at or before `now`.
    pub fn lookup(&self, addr: &K, now: Instant) -> Option<&Entry> {
        self.entries.get(addr).filter(|e| e.expires_at > now)
    }

    /// Drops the entries expired at `now`; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let mut removed = 0;
        while let Some(&(expires_at, addr)) = self.by_expiry.first() {
            if expires_at > now {
                break;
            }
            self.by_expiry.pop_first();
            self.entries.remove(&addr);
            removed += 1;
        }
        removed
    }

    /// The live entries at `now`, in no particular order.
    pub fn iter(&self, now: Instant) -> impl Iterator<Item = (&K, &Entry)> {
        self.entries.iter().filter(move |(_, e)| e.expires_at > now)
    }
}

/// Whether a baseline rule's name `pattern` covers `name`: equal ignoring ASCII case, or, for a
/// pattern `*.example.org`, any name below `example.org` at any depth (`a.example.org`,
/// `a.b.example.org`) but not `example.org` itself. A trailing dot on either is ignored. `*`
/// anywhere but as the whole first label is an ordinary character; an empty pattern or name
/// matches nothing.
pub fn name_matches(pattern: &str, name: &str) -> bool {
    let pattern = pattern.strip_suffix('.').unwrap_or(pattern);
    let name = name.strip_suffix('.').unwrap_or(name);
    if pattern.is_empty() || name.is_empty() {
        return false;
    }
    match pattern.strip_prefix("*.") {
        Some(suffix) if !suffix.is_empty() => {
            // `name` must end in `.suffix`, with at least one character before the dot.
            let (name, suffix) = (name.as_bytes(), suffix.as_bytes());
            name.len() > suffix.len() + 1
                && name[name.len() - suffix.len() - 1] == b'.'
                && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
        }
        _ => pattern.eq_ignore_ascii_case(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const MIN: Duration = Duration::from_secs(60);
    const HOUR: Duration = Duration::from_secs(3600);
    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(n))
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn source_names() {
        assert_eq!(Source::Dns.as_str(), "dns");
        assert_eq!(Source::Sni.as_str(), "sni");
        assert_eq!(Source::Http.as_str(), "http");
    }

    #[test]
    fn lookup_within_ttl_and_grace() {
        let t0 = Instant::now();
        let mut map = NameMap::new(NameMapConfig::default());
        map.insert(ip(1), "pool.example.org", Source::Dns, secs(300), t0);
        let entry = map.lookup(&ip(1), t0).unwrap();
        assert_eq!(entry.name, "pool.example.org");
        assert_eq!(entry.source, Source::Dns);
        assert_eq!(entry.expires_at, t0 + secs(300) + HOUR);
        // Past the TTL, inside the grace period.
        assert!(map.lookup(&ip(1), t0 + secs(301)).is_some());
        assert!(
            map.lookup(&ip(1), t0 + secs(300) + HOUR - secs(1))
                .is_some()
        );
        // Expired exactly at TTL + grace.
        assert!(map.lookup(&ip(1), t0 + secs(300) + HOUR).is_none());
        assert!(map.lookup(&ip(2), t0).is_none());
    }

    #[test]
    fn ttl_clamped() {
        let t0 = Instant::now();
        let mut map = NameMap::new(NameMapConfig::default());
        map.insert(ip(1), "zero.example", Source::Dns, secs(0), t0);
        map.insert(ip(2), "week.example", Source::Dns, 7 * DAY, t0);
        assert_eq!(map.lookup(&ip(1), t0).unwrap().expires_at, t0 + MIN + HOUR);
        assert_eq!(map.lookup(&ip(2), t0).unwrap().expires_at, t0 + DAY + HOUR);
        assert!(map.lookup(&ip(1), t0 + MIN + HOUR - secs(1)).is_some());
        assert!(map.lookup(&ip(2), t0 + DAY + HOUR).is_none());
    }

    #[test]
    fn expire_removes_only_expired() {
        let t0 = Instant::now();
        let mut map = NameMap::new(NameMapConfig::default());
        map.insert(ip(1), "a.example", Source::Dns, secs(60), t0);
        map.insert(ip(2), "b.example", Source::Sni, secs(600), t0);
        map.insert(ip(3), "c.example", Source::Http, secs(6000), t0);
        assert_eq!(map.expire(t0 + secs(60) + HOUR), 1);
        assert_eq!(map.len(), 2);
        assert_eq!(map.expire(t0 + secs(60) + HOUR), 0);
        assert_eq!(map.expire(t0 + 2 * DAY), 2);
        assert!(map.is_empty());
    }

    #[test]
    fn new_name_replaces_same_name_extends() {
        let t0 = Instant::now();
        let mut map = NameMap::new(NameMapConfig::default());
        map.insert(ip(1), "a.example", Source::Dns, secs(3600), t0);
        // The same name with a shorter TTL later does not shorten the entry.
        map.insert(ip(1), "a.example", Source::Sni, secs(60), t0 + secs(10));
        let entry = map.lookup(&ip(1), t0).unwrap();
        assert_eq!(entry.expires_at, t0 + secs(3600) + HOUR);
        assert_eq!(entry.source, Source::Sni);
        // Another name replaces it, with its own expiry.
        map.insert(ip(1), "b.example", Source::Dns, secs(60), t0 + secs(20));
        let entry = map.lookup(&ip(1), t0).unwrap();
        assert_eq!(entry.name, "b.example");
        assert_eq!(entry.expires_at, t0 + secs(20) + MIN + HOUR);
        assert_eq!(map.len(), 1);
        // The index follows: expiring at the new time removes it, nothing is left behind.
        assert_eq!(map.expire(t0 + secs(20) + MIN + HOUR), 1);
        assert!(map.is_empty());
        assert!(map.by_expiry.is_empty());
    }

    #[test]
    fn full_map_evicts_soonest_expiring() {
        let t0 = Instant::now();
        let mut map = NameMap::new(NameMapConfig {
            max_entries: 3,
            ..NameMapConfig::default()
        });
        map.insert(ip(1), "long.example", Source::Dns, secs(5000), t0);
        map.insert(ip(2), "short.example", Source::Dns, secs(100), t0);
        map.insert(ip(3), "mid.example", Source::Dns, secs(1000), t0);
        map.insert(ip(4), "new.example", Source::Dns, secs(300), t0);
        assert_eq!(map.len(), 3);
        assert!(map.lookup(&ip(2), t0).is_none());
        for n in [1, 3, 4] {
            assert!(map.lookup(&ip(n), t0).is_some(), "{n}");
        }
        // Updating a present address in a full map evicts nothing.
        map.insert(ip(4), "renamed.example", Source::Dns, secs(300), t0);
        assert_eq!(map.len(), 3);
        assert!(map.lookup(&ip(1), t0).is_some());
    }

    /// Expired entries make room before any live one is evicted.
    #[test]
    fn full_map_drops_expired_first() {
        let t0 = Instant::now();
        let mut map = NameMap::new(NameMapConfig {
            max_entries: 2,
            ..NameMapConfig::default()
        });
        map.insert(ip(1), "old.example", Source::Dns, secs(60), t0);
        map.insert(ip(2), "live.example", Source::Dns, DAY, t0);
        let later = t0 + 2 * HOUR;
        map.insert(ip(3), "new.example", Source::Dns, secs(60), later);
        assert_eq!(map.len(), 2);
        assert!(map.lookup(&ip(2), later).is_some());
        assert!(map.lookup(&ip(3), later).is_some());
    }

    #[test]
    fn bounded_size_under_many_inserts() {
        let t0 = Instant::now();
        let mut map = NameMap::new(NameMapConfig {
            max_entries: 1000,
            ..NameMapConfig::default()
        });
        for n in 0..100_000u32 {
            let now = t0 + Duration::from_millis(u64::from(n));
            map.insert(
                ip(n),
                "x.example",
                Source::Dns,
                secs(u64::from(n % 3600)),
                now,
            );
            assert!(map.len() <= 1000);
        }
        assert_eq!(map.len(), 1000);
        assert_eq!(map.by_expiry.len(), 1000);
        // Eviction happens before the insert: the newest address is always there.
        let end = t0 + Duration::from_millis(100_000);
        assert!(map.lookup(&ip(99_999), end).is_some());
    }

    #[test]
    fn zero_capacity_holds_nothing() {
        let t0 = Instant::now();
        let mut map = NameMap::new(NameMapConfig {
            max_entries: 0,
            ..NameMapConfig::default()
        });
        map.insert(ip(1), "a.example", Source::Dns, secs(60), t0);
        assert!(map.is_empty());
        assert!(map.lookup(&ip(1), t0).is_none());
    }

    #[test]
    fn ipv6_and_ipv4_are_distinct_keys() {
        let t0 = Instant::now();
        let mut map = NameMap::new(NameMapConfig::default());
        let v6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
        map.insert(v6, "six.example", Source::Dns, secs(60), t0);
        map.insert(ip(1), "four.example", Source::Dns, secs(60), t0);
        assert_eq!(map.lookup(&v6, t0).unwrap().name, "six.example");
        assert_eq!(map.iter(t0).count(), 2);
    }

    #[test]
    fn wildcard_matching() {
        assert!(name_matches("pool.example.org", "pool.example.org"));
        assert!(name_matches("Pool.Example.ORG", "pool.example.org."));
        assert!(name_matches("pool.example.org.", "POOL.example.org"));
        assert!(!name_matches("pool.example.org", "eu.pool.example.org"));
        assert!(name_matches("*.example.org", "a.example.org"));
        assert!(name_matches("*.example.org", "a.b.c.example.org"));
        assert!(name_matches("*.Example.org", "A.EXAMPLE.ORG"));
        assert!(!name_matches("*.example.org", "example.org"));
        assert!(!name_matches("*.example.org", ".example.org"));
        assert!(!name_matches("*.example.org", "badexample.org"));
        assert!(!name_matches("*.example.org", "a.example.org.evil"));
        assert!(!name_matches("*.example.org", "a.example.com"));
        // Only a leading `*.` label is a wildcard.
        assert!(!name_matches("a.*.org", "a.example.org"));
        assert!(name_matches("a.*.org", "a.*.org"));
        assert!(!name_matches("*", "example.org"));
        assert!(!name_matches("*.", "example.org"));
        assert!(!name_matches("", ""));
        assert!(!name_matches("example.org", ""));
        // Non-ASCII names do not panic on char boundaries.
        assert!(!name_matches("*.é", "aé"));
        assert!(name_matches("*.é", "a.é"));
    }

    proptest! {
        /// Any sequence of inserts, lookups and expiries keeps the map within its bound and its
        /// two indexes in step, and never returns an expired entry.
        #[test]
        fn bounded_and_consistent(
            max_entries in 0usize..20,
            ops in prop::collection::vec((0u32..40, 0u64..100_000, 0u64..5000, any::<bool>()), 0..200),
        ) {
            let t0 = Instant::now();
            let mut map = NameMap::new(NameMapConfig { max_entries, ..NameMapConfig::default() });
            let mut now = t0;
            for (addr, ttl, step, expire) in ops {
                now += secs(step);
                if expire {
                    map.expire(now);
                }
                map.insert(ip(addr), "n.example", Source::Dns, secs(ttl), now);
                prop_assert!(map.len() <= max_entries);
                prop_assert_eq!(map.len(), map.by_expiry.len());
                for (a, e) in &map.entries {
                    prop_assert!(map.by_expiry.contains(&(e.expires_at, *a)));
                }
                if let Some(e) = map.lookup(&ip(addr), now) {
                    prop_assert!(e.expires_at > now);
                }
            }
        }

        #[test]
        fn arbitrary_names_never_panic(pattern in ".{0,40}", name in ".{0,40}") {
            let _ = name_matches(&pattern, &name);
        }

        /// A wildcard covers exactly the names with at least one more label.
        #[test]
        fn wildcard_is_subdomain(
            labels in prop::collection::vec("[a-z0-9]{1,8}", 1..6),
            split in any::<prop::sample::Index>(),
        ) {
            let name = labels.join(".");
            let at = split.index(labels.len());
            let suffix = labels[at..].join(".");
            prop_assert_eq!(name_matches(&format!("*.{suffix}"), &name), at > 0);
            prop_assert!(name_matches(&name.to_uppercase(), &name));
        }
    }
}
