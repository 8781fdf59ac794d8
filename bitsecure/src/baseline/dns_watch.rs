//! The names processes ask for: a name a process never asked before (its DNS rule lists the
//! names it asked while learning), and a burst of distinct names under one domain, the mark of
//! data leaving through DNS queries (`<encoded data>.t.example.net`, thousands a minute).
//!
//! Pure bookkeeping with bounded memory: which DNS rule a question belongs to is the monitor's
//! business; it hands each question over with that rule's names.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use crate::naming::name_matches;

/// The window over which distinct names are counted.
const WINDOW_SECONDS: f64 = 60.0;
/// Most (process, domain) windows followed at once; beyond it new ones wait for old ones to
/// end (a query flood over many domains still trips the domains already followed).
const MAX_WINDOWS: usize = 10_000;

/// A name a process asked for that its DNS rule does not list (served as JSON).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct NewName {
    pub process: String,
    pub exe: Option<String>,
    pub name: String,
    /// The DNS server asked.
    pub server: String,
    /// Queries for it since it was first seen.
    pub queries: u64,
    /// RFC 3339, UTC.
    pub first_seen: String,
    pub last_seen: String,
}

/// Many distinct names under one domain from one process within a minute (served as JSON;
/// exported as `bitsecure_dns_tunnel_names_per_minute`).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Tunnel {
    pub process: String,
    /// The names' parent domain (`t.example.net` for `x1f3.t.example.net`).
    pub domain: String,
    /// Distinct names in the busiest minute seen (counted up to the threshold + 1 and on).
    pub names_per_minute: u64,
    /// RFC 3339, UTC.
    pub first_seen: String,
    pub last_seen: String,
    #[serde(skip)]
    last_seen_unix: f64,
}

/// Distinct names of one (process, domain) in the current minute.
#[derive(Debug)]
struct Window {
    start_unix: f64,
    /// Capped at the threshold + 1: past it the count alone matters.
    names: HashSet<String>,
    /// Distinct names in this window (keeps counting past the cap).
    distinct: u64,
}

pub struct DnsWatch {
    names_per_minute_threshold: u64,
    max_new_names: usize,
    new_names: BTreeMap<(String, Option<String>, String), NewName>,
    windows: HashMap<(String, String), Window>,
    tunnels: BTreeMap<(String, String), Tunnel>,
}

impl DnsWatch {
    /// More than `names_per_minute_threshold` distinct names under one domain in a minute is a
    /// tunnel; at most `max_new_names` new names are listed.
    pub fn new(names_per_minute_threshold: u64, max_new_names: usize) -> Self {
        Self {
            names_per_minute_threshold,
            max_new_names,
            new_names: BTreeMap::new(),
            windows: HashMap::new(),
            tunnels: BTreeMap::new(),
        }
    }

    /// One question of `process` (`exe`) to `server` for `name`; `expected`: the names its DNS
    /// rule lists (`None`: no rule lists names for it, so no name is new).
    #[allow(clippy::too_many_arguments)]
    pub fn observe(
        &mut self,
        process: &str,
        exe: Option<&str>,
        server: &str,
        name: &str,
        expected: Option<&[String]>,
        now_unix: f64,
        now_text: &str,
    ) {
        if let Some(expected) = expected
            && !expected.iter().any(|pattern| name_matches(pattern, name))
        {
            self.note_new(process, exe, server, name, now_text);
        }
        self.count(process, name, now_unix, now_text);
    }

    fn note_new(
        &mut self,
        process: &str,
        exe: Option<&str>,
        server: &str,
        name: &str,
        now_text: &str,
    ) {
        let key = (process.to_owned(), exe.map(str::to_owned), name.to_owned());
        if let Some(entry) = self.new_names.get_mut(&key) {
            entry.queries += 1;
            entry.last_seen = now_text.to_owned();
            return;
        }
        if self.new_names.len() >= self.max_new_names {
            return;
        }
        self.new_names.insert(
            key,
            NewName {
                process: process.to_owned(),
                exe: exe.map(str::to_owned),
                name: name.to_owned(),
                server: server.to_owned(),
                queries: 1,
                first_seen: now_text.to_owned(),
                last_seen: now_text.to_owned(),
            },
        );
    }

    fn count(&mut self, process: &str, name: &str, now_unix: f64, now_text: &str) {
        let domain = parent_domain(name);
        let key = (process.to_owned(), domain.to_owned());
        if !self.windows.contains_key(&key) && self.windows.len() >= MAX_WINDOWS {
            self.windows
                .retain(|_, window| now_unix - window.start_unix < WINDOW_SECONDS);
            if self.windows.len() >= MAX_WINDOWS {
                return;
            }
        }
        let cap = usize::try_from(self.names_per_minute_threshold)
            .unwrap_or(usize::MAX)
            .saturating_add(1);
        let window = self.windows.entry(key.clone()).or_insert_with(|| Window {
            start_unix: now_unix,
            names: HashSet::new(),
            distinct: 0,
        });
        if now_unix - window.start_unix >= WINDOW_SECONDS {
            *window = Window {
                start_unix: now_unix,
                names: HashSet::new(),
                distinct: 0,
            };
        }
        if window.names.len() < cap {
            if window.names.insert(name.to_owned()) {
                window.distinct += 1;
            }
        } else if !window.names.contains(name) {
            // Past the cap every unseen name is taken as new: the count only grows.
            window.distinct += 1;
        }
        if window.distinct <= self.names_per_minute_threshold {
            return;
        }
        let distinct = window.distinct;
        let tunnel = self.tunnels.entry(key).or_insert_with(|| Tunnel {
            process: process.to_owned(),
            domain: domain.to_owned(),
            names_per_minute: 0,
            first_seen: now_text.to_owned(),
            last_seen: now_text.to_owned(),
            last_seen_unix: now_unix,
        });
        tunnel.names_per_minute = tunnel.names_per_minute.max(distinct);
        tunnel.last_seen = now_text.to_owned();
        tunnel.last_seen_unix = now_unix;
    }

    /// Forgets tunnels quiet for a minute and windows that ended.
    pub fn expire(&mut self, now_unix: f64) {
        self.tunnels
            .retain(|_, tunnel| now_unix - tunnel.last_seen_unix < WINDOW_SECONDS);
        self.windows
            .retain(|_, window| now_unix - window.start_unix < WINDOW_SECONDS);
    }

    /// Drops the new names a (reloaded) baseline now lists: `lists(process, exe, name)`.
    pub fn retain_new(&mut self, mut still_new: impl FnMut(&NewName) -> bool) {
        self.new_names.retain(|_, entry| still_new(entry));
    }

    pub fn new_names(&self) -> Vec<NewName> {
        self.new_names.values().cloned().collect()
    }

    /// How many new names and tunnels are listed (for counting what each step adds).
    pub fn counts(&self) -> (usize, usize) {
        (self.new_names.len(), self.tunnels.len())
    }

    pub fn tunnels(&self) -> Vec<Tunnel> {
        self.tunnels.values().cloned().collect()
    }
}

/// The domain a name sits under: the name without its first label (`t.example.net` for
/// `x1f3.t.example.net`); a name of one or two labels is its own domain.
pub fn parent_domain(name: &str) -> &str {
    match name.split_once('.') {
        Some((_, parent)) if parent.contains('.') => parent,
        _ => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: f64 = 1_800_000_000.0;

    #[test]
    fn a_name_the_rule_does_not_list_is_new_once() {
        let mut watch = DnsWatch::new(100, 10);
        let listed = vec!["pool.example.org".to_owned(), "*.ntp.org".to_owned()];
        for name in [
            "pool.example.org",
            "0.pool.ntp.org",
            "c2.evil.net",
            "c2.evil.net",
        ] {
            watch.observe("xmrig", None, "10.0.0.53", name, Some(&listed), NOW, "t");
        }
        // No list: nothing is new.
        watch.observe(
            "curl",
            None,
            "10.0.0.53",
            "anything.example",
            None,
            NOW,
            "t",
        );
        let new = watch.new_names();
        assert_eq!(new.len(), 1);
        assert_eq!(new[0].name, "c2.evil.net");
        assert_eq!(new[0].queries, 2);
        watch.retain_new(|entry| entry.name != "c2.evil.net");
        assert!(watch.new_names().is_empty());
    }

    #[test]
    fn many_distinct_names_under_one_domain_in_a_minute_is_a_tunnel() {
        let mut watch = DnsWatch::new(100, 10);
        // 100 distinct names: at the threshold, not over it; repeats do not count.
        for i in 0..100 {
            watch.observe(
                "evil",
                None,
                "r",
                &format!("{i:x}.t.example.net"),
                None,
                NOW,
                "t",
            );
            watch.observe("evil", None, "r", "0.t.example.net", None, NOW, "t");
        }
        assert!(watch.tunnels().is_empty());
        // 3,000 more within the minute.
        for i in 100..3100 {
            let at = NOW + f64::from(i) / 100.0;
            watch.observe(
                "evil",
                None,
                "r",
                &format!("{i:x}.t.example.net"),
                None,
                at,
                "t",
            );
        }
        let tunnels = watch.tunnels();
        assert_eq!(tunnels.len(), 1);
        assert_eq!(tunnels[0].domain, "t.example.net");
        assert_eq!(tunnels[0].names_per_minute, 3100);
        // The same names spread over a day never trip it (a new window every minute).
        let mut slow = DnsWatch::new(100, 10);
        for i in 0..3000 {
            let at = NOW + f64::from(i) * 30.0;
            slow.observe(
                "cdn-user",
                None,
                "r",
                &format!("{i}.cdn.example"),
                None,
                at,
                "t",
            );
        }
        assert!(slow.tunnels().is_empty());
        // A quiet minute ends it.
        watch.expire(NOW + 31.0 + 60.0);
        assert!(watch.tunnels().is_empty());
    }

    #[test]
    fn parent_domains() {
        assert_eq!(parent_domain("x1.t.example.net"), "t.example.net");
        assert_eq!(parent_domain("pool.example.org"), "example.org");
        assert_eq!(parent_domain("example.org"), "example.org");
        assert_eq!(parent_domain("localhost"), "localhost");
    }
}
