//! What the agent learns from the payload bytes the kernel hands over: names of remotes and the
//! application of each flow.
//!
//! The kernel sends every DNS message to or from port 53 and the first payload of each flow
//! in each direction ([`PayloadEvent`]). Here DNS answers fill the address → name map, the
//! TLS server name and HTTP Host of connections this host opened name their remote, and the
//! first bytes classify the flow. Payload bytes are looked at once and never kept.
//!
//! A DNS answer is evidence only when it answers a question: it is taken only on the socket
//! that sent a query with the same ID and question, from the address and port the query went
//! to, within [`QUERY_TIMEOUT`]; anything else is *unsolicited* and names nothing (a datagram
//! from port 53 over loopback, a flood of forged answers). And what an answer names, it names
//! for whoever asked ([`Scope`]): the addresses a process resolved name that process's flows;
//! only a trusted system resolver's answers (`names.trusted_resolvers`, by executable) name
//! addresses for every process. A process that asks its own server cannot rename addresses
//! for the others.
//!
//! A producer: it answers the poller (a flow's app and name) and reports how many events it
//! took in ([`EventCounts`]); it names no metric. The parsers under [`parse`] are pure.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr},
    time::{Duration, Instant},
};

use bitsecure_common::{
    DIRECTION_EGRESS, DIRECTION_INGRESS, EVENT_DNS, EVENT_MORE_PAYLOAD, FlowKey, PayloadEvent,
    protocol,
};

use crate::{
    flow::RemoteName,
    naming::parse::{
        classify, dns, http,
        stratum::{self, StratumMessage},
        tls,
    },
};

pub mod name_map;
pub mod parse;

pub use name_map::{NameMap, NameMapConfig, Source, name_matches};
pub use parse::App;

/// How long a name from a TLS server name or an HTTP Host header is remembered for its
/// address (it has no TTL of its own); it is renewed by every new connection.
const OBSERVED_NAME_TTL: Duration = Duration::from_secs(3600);

/// Polls a new TCP or UDP flow waits for its first payload before it is counted as `unknown`.
const APP_DECISION_POLLS: u8 = 2;

/// How long a DNS query waits for its answer: resolvers retry after a few seconds (glibc: 5 s),
/// and a later answer is unsolicited.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Most DNS queries waiting for their answer; when full, the oldest are forgotten (their
/// answers then count as unsolicited: a query flood costs names, never lends them).
pub const MAX_PENDING_QUERIES: usize = 4096;

/// Whose flows a DNS answer names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// A trusted system resolver asked (or the name is a client's own claim, SNI or Host,
    /// which never overrides DNS): every process's flows.
    Everyone,
    /// One asker (a process identity, as the poller tells it apart): its own flows only.
    Asker(u64),
}

/// A name map key: an address, as a scope sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NameKey {
    pub scope: Scope,
    pub address: IpAddr,
}

/// Most DNS questions kept between two polls (a query flood beyond it is cut; the rate of
/// distinct names is far past any tunnelling threshold by then).
pub const MAX_QUESTIONS_PER_POLL: usize = 20_000;

/// A DNS query a socket sent: who asked (the socket), where, and for what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    pub cookie: u64,
    pub server: IpAddr,
    pub port: u16,
    pub protocol: u8,
    /// Lowercase, no trailing dot.
    pub name: String,
}

/// Most pool redirects (`client.reconnect`) kept between two polls.
const MAX_REDIRECTS_PER_POLL: usize = 64;

/// A pool sending a miner elsewhere, seen in a flow's first messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    pub flow: FlowKey,
    /// `host` or `host:port`, as the pool sent it.
    pub to: String,
}

/// Who received a DNS answer, as the poller knows it: the executable (to tell a trusted
/// resolver) and a number that tells processes apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asker {
    pub exe: Option<String>,
    pub id: u64,
}

/// A query sent and not answered yet.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct AskedQuestion {
    /// The socket that asked.
    cookie: u64,
    /// Where it asked.
    server: IpAddr,
    server_port: u16,
    question: dns::DnsQuestion,
}

/// Payload events taken in, by kind and DNS result: what naming reports to the exporter.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EventCounts {
    /// DNS answers received from port 53.
    pub dns: u64,
    /// First payloads of a flow.
    pub payload: u64,
    /// DNS answers parsed and answering a question of the socket (their addresses named).
    pub dns_ok: u64,
    pub dns_unparsable: u64,
    /// DNS answers no query of the socket asked for (ignored).
    pub dns_unsolicited: u64,
    /// DNS queries sent to port 53.
    pub dns_queries: u64,
}

/// What the first payloads of a flow told so far.
#[derive(Debug, Default)]
struct FlowInsight {
    /// Directions whose first payload was looked at (bit mask of `DIRECTION_*`).
    directions: u8,
    /// The first class other than `unknown`, if any.
    app: Option<App>,
    /// Server name or Host the flow asked for.
    name: Option<RemoteName>,
    /// Polls this flow has waited for its application to be known.
    waited: u8,
}

/// The application of a new flow, as far as it can be decided now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppDecision {
    Decided(App),
    /// Its first payloads are not in yet: keep its bytes in the kernel counter one more poll.
    Wait,
}

pub struct Naming {
    names: NameMap<NameKey>,
    /// Insights of flows the poller has not decided yet. The poller drops the others.
    flows: HashMap<FlowKey, FlowInsight>,
    /// DNS queries waiting for their answer, and when they were sent.
    pending: HashMap<AskedQuestion, Instant>,
    /// Executables whose DNS answers name addresses for every process.
    trusted_resolvers: Vec<String>,
    /// The account each Stratum flow logged in with (the latest), while its flow lives.
    accounts: HashMap<FlowKey, String>,
    /// Pool redirects seen since the poller last took them.
    redirects: Vec<Redirect>,
    /// DNS questions asked since the poller last took them.
    questions: Vec<Question>,
}

impl Naming {
    pub fn new(max_entries: usize, trusted_resolvers: Vec<String>) -> Self {
        Self {
            names: NameMap::new(NameMapConfig {
                max_entries,
                ..NameMapConfig::default()
            }),
            flows: HashMap::new(),
            pending: HashMap::new(),
            trusted_resolvers,
            accounts: HashMap::new(),
            redirects: Vec::new(),
            questions: Vec::new(),
        }
    }

    /// The DNS questions asked since the last call.
    pub fn take_questions(&mut self) -> Vec<Question> {
        std::mem::take(&mut self.questions)
    }

    /// The account a Stratum flow logged in with, if its login was seen.
    pub fn account_of(&self, key: &FlowKey) -> Option<&String> {
        self.accounts.get(key)
    }

    /// The pool redirects seen since the last call.
    pub fn take_redirects(&mut self) -> Vec<Redirect> {
        std::mem::take(&mut self.redirects)
    }

    /// Logins (sent) and redirects (received) among a JSON flow's first messages.
    fn on_stratum(&mut self, key: &FlowKey, direction: u8, payload: &[u8]) {
        if payload.first() != Some(&b'{') {
            return;
        }
        for message in stratum::messages(payload) {
            match message {
                StratumMessage::Login { account } if direction == DIRECTION_EGRESS => {
                    self.accounts.insert(*key, account);
                }
                StratumMessage::Reconnect { host, port }
                    if direction == DIRECTION_INGRESS
                        && self.redirects.len() < MAX_REDIRECTS_PER_POLL =>
                {
                    let to = match port {
                        Some(port) => format!("{host}:{port}"),
                        None => host,
                    };
                    self.redirects.push(Redirect { flow: *key, to });
                }
                _ => {}
            }
        }
    }

    /// The scope of the answers a process receives: everyone's for a trusted resolver (by
    /// executable), else the process's own (`asker` tells processes apart).
    pub fn scope_of(&self, exe: Option<&str>, asker: u64) -> Scope {
        match exe {
            Some(exe) if self.trusted_resolvers.iter().any(|trusted| trusted == exe) => {
                Scope::Everyone
            }
            _ => Scope::Asker(asker),
        }
    }

    /// Takes in one event (raw bytes from the ring buffer) and counts it in `counts`.
    /// `asker_of_socket` says who owns a socket (by cookie), for the answers it receives.
    pub fn on_event(
        &mut self,
        bytes: &[u8],
        counts: &mut EventCounts,
        now: Instant,
        asker_of_socket: impl FnOnce(u64) -> Asker,
    ) {
        // The kernel only writes whole events; anything shorter is not ours to read.
        if bytes.len() < size_of::<PayloadEvent>() {
            return;
        }
        // SAFETY: PayloadEvent is plain old data (integers and byte arrays only) and `bytes`
        // holds at least size_of::<PayloadEvent>() bytes; read_unaligned copes with alignment.
        let event: PayloadEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        let captured = (event.captured_len as usize).min(event.data.len());
        let payload = &event.data[..captured];
        if event.kind == EVENT_DNS && event.direction == DIRECTION_EGRESS {
            counts.dns_queries += 1;
            self.on_dns_query(&event.key, payload, now);
        } else if event.kind == EVENT_DNS {
            counts.dns += 1;
            match self.on_dns_answer(&event.key, payload, now, asker_of_socket) {
                Ok(true) => counts.dns_ok += 1,
                Ok(false) => counts.dns_unsolicited += 1,
                Err(error) => {
                    log::debug!("DNS message from port 53 not used: {error}");
                    counts.dns_unparsable += 1;
                }
            }
        } else {
            counts.payload += 1;
            self.on_stratum(&event.key, event.direction, payload);
        }
        // Later payloads of a JSON flow are for the Stratum messages only.
        if event.kind != EVENT_MORE_PAYLOAD {
            self.on_first_payload(&event, payload, now);
        }
    }

    /// Remembers the question a socket asked, for its answer.
    fn on_dns_query(&mut self, key: &FlowKey, message: &[u8], now: Instant) {
        let question = if key.protocol == protocol::TCP {
            dns::parse_tcp_query(message)
        } else {
            dns::parse_query(message)
        };
        let Ok(question) = question else {
            return;
        };
        if self.pending.len() >= MAX_PENDING_QUERIES {
            self.pending
                .retain(|_, asked| now.saturating_duration_since(*asked) < QUERY_TIMEOUT);
        }
        if self.pending.len() >= MAX_PENDING_QUERIES {
            // Still full of live queries (a flood): the oldest goes.
            if let Some(oldest) = self
                .pending
                .iter()
                .min_by_key(|(_, asked)| **asked)
                .map(|(question, _)| question.clone())
            {
                self.pending.remove(&oldest);
            }
        }
        if self.questions.len() < MAX_QUESTIONS_PER_POLL {
            self.questions.push(Question {
                cookie: key.cookie,
                server: remote_address(key),
                port: key.remote_port,
                protocol: key.protocol,
                name: question.name.clone(),
            });
        }
        let asked = AskedQuestion {
            cookie: key.cookie,
            server: remote_address(key),
            server_port: key.remote_port,
            question,
        };
        self.pending.insert(asked, now);
    }

    /// Names the addresses of a DNS answer to a question this socket asked that server, for
    /// the asker's scope. `Ok(false)`: unsolicited, ignored.
    fn on_dns_answer(
        &mut self,
        key: &FlowKey,
        message: &[u8],
        now: Instant,
        asker_of_socket: impl FnOnce(u64) -> Asker,
    ) -> Result<bool, dns::DnsError> {
        let (question, answers) = if key.protocol == protocol::TCP {
            dns::parse_tcp_response_to(message)?
        } else {
            dns::parse_response_to(message)?
        };
        let asked = AskedQuestion {
            cookie: key.cookie,
            server: remote_address(key),
            server_port: key.remote_port,
            question,
        };
        let solicited = self
            .pending
            .remove(&asked)
            .is_some_and(|sent| now.saturating_duration_since(sent) < QUERY_TIMEOUT);
        if !solicited {
            log::debug!(
                "unsolicited DNS answer on socket {:#x} from {}:{} for {} (id {:#x})",
                asked.cookie,
                asked.server,
                asked.server_port,
                asked.question.name,
                asked.question.id
            );
            return Ok(false);
        }
        let asker = asker_of_socket(key.cookie);
        let scope = self.scope_of(asker.exe.as_deref(), asker.id);
        log::debug!(
            "DNS answer for {} on socket {:#x} ({}) names {} address(es) for {scope:?}",
            asked.question.name,
            asked.cookie,
            asker.exe.as_deref().unwrap_or("executable unknown"),
            answers.len()
        );
        for answer in answers {
            self.names.insert(
                NameKey {
                    scope,
                    address: answer.address.to_canonical(),
                },
                &answer.name,
                Source::Dns,
                Duration::from_secs(answer.ttl.into()),
                now,
            );
        }
        Ok(true)
    }

    fn on_first_payload(&mut self, event: &PayloadEvent, payload: &[u8], now: Instant) {
        let (key, direction) = (&event.key, event.direction);
        let insight = self.flows.entry(*key).or_default();
        // Per-CPU sampling can hand a direction over more than once: the first one counts.
        if insight.directions & direction != 0 {
            return;
        }
        insight.directions |= direction;
        // The port that tells the service: the remote one for what this host sends, and for
        // DNS responses (from port 53, even when the query went unseen); else the local one.
        let port = Some(
            if direction == DIRECTION_EGRESS || event.kind == EVENT_DNS {
                key.remote_port
            } else {
                key.local_port
            },
        );
        let app = classify(payload, port, key.protocol);
        if app != App::Unknown && insight.app.is_none() {
            insight.app = Some(app);
        }
        // Only a connection this host opened names its remote: in an accepted one, the server
        // name is this host's own.
        if direction != DIRECTION_EGRESS {
            return;
        }
        let observed = match app {
            App::Tls => tls::client_hello_sni(payload)
                .ok()
                .map(|name| (name, Source::Sni)),
            App::Http => http::request_host(payload)
                .ok()
                .map(|name| (name, Source::Http)),
            _ => None,
        };
        // `Host: 10.0.0.2` names nothing: the address is already the remote label.
        let observed = observed.filter(|(name, _)| !is_address(name));
        if let Some((name, source)) = observed {
            // A server name or Host is only what the client claims; what this machine
            // resolved the address as stays the address's name.
            let address = NameKey {
                scope: Scope::Everyone,
                address: remote_address(key),
            };
            let resolved = self
                .names
                .lookup(&address, now)
                .is_some_and(|entry| entry.source == Source::Dns);
            if !resolved {
                self.names
                    .insert(address, &name, source, OBSERVED_NAME_TTL, now);
            }
            insight.name = Some(RemoteName { name, source });
        }
    }

    /// The application of a flow seen for the first time, or `Wait`. `closing`: the socket is
    /// closed, so no more payload will come.
    pub fn decide_app(&mut self, key: &FlowKey, closing: bool) -> AppDecision {
        let two_way = DIRECTION_EGRESS | DIRECTION_INGRESS;
        // Only TCP and UDP flows get first-payload events.
        let waits_for_payload = matches!(key.protocol, protocol::TCP | protocol::UDP);
        let insight = self.flows.entry(*key).or_default();
        if let Some(app) = insight.app {
            return AppDecision::Decided(app);
        }
        // A closed socket sends nothing more, but its last payload event may have raced this
        // poll's snapshot (events are read first): it is read at the start of the next poll.
        if !waits_for_payload
            || (closing && insight.waited >= 1)
            || insight.directions == two_way
            || insight.waited >= APP_DECISION_POLLS
        {
            return AppDecision::Decided(App::Unknown);
        }
        insight.waited += 1;
        AppDecision::Wait
    }

    /// The name a flow's remote goes by for a process of `scope`: what that process resolved
    /// its address as, or a trusted resolver did (DNS), else the name the flow itself asked
    /// for (TLS server name, HTTP Host: only a claim of the client, so it never overrides DNS),
    /// else what the name map says for everyone.
    pub fn name_of(&self, key: &FlowKey, scope: Scope, now: Instant) -> Option<RemoteName> {
        let mapped = self.name_for(remote_address(key), scope, now);
        if let Some(resolved) = mapped.as_ref().filter(|name| name.source == Source::Dns) {
            return Some(resolved.clone());
        }
        self.flows
            .get(key)
            .and_then(|insight| insight.name.clone())
            .or(mapped)
    }

    /// What a process of `scope` knows the address as: its own DNS answers first, then
    /// everyone's names.
    pub fn name_for(&self, address: IpAddr, scope: Scope, now: Instant) -> Option<RemoteName> {
        let address = address.to_canonical();
        let own = NameKey { scope, address };
        let everyone = NameKey {
            scope: Scope::Everyone,
            address,
        };
        self.names
            .lookup(&own, now)
            .or_else(|| self.names.lookup(&everyone, now))
            .map(|entry| RemoteName {
                name: entry.name.clone(),
                source: entry.source,
            })
    }

    /// What the address is called for everyone (trusted resolvers' answers, clients' claims).
    pub fn name_of_address(&self, address: IpAddr, now: Instant) -> Option<RemoteName> {
        self.name_for(address, Scope::Everyone, now)
    }

    /// Drops what is known of flows that are decided or gone (the accounts of flows gone),
    /// expired names and queries no answer came for.
    pub fn forget(
        &mut self,
        mut undecided: impl FnMut(&FlowKey) -> bool,
        mut present: impl FnMut(&FlowKey) -> bool,
        now: Instant,
    ) {
        self.flows.retain(|key, _| undecided(key));
        self.accounts.retain(|key, _| present(key));
        self.names.expire(now);
        self.pending
            .retain(|_, asked| now.saturating_duration_since(*asked) < QUERY_TIMEOUT);
    }

    /// Addresses named.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Flows with insights kept (bounded by the kernel's flow map: the poller drops the rest).
    pub fn pending_flows(&self) -> usize {
        self.flows.len()
    }
}

/// An IP address literal (`10.0.0.2`, `::1`, `[::1]`) rather than a host name.
fn is_address(host: &str) -> bool {
    let unbracketed = host.trim_start_matches('[').trim_end_matches(']');
    unbracketed.parse::<IpAddr>().is_ok()
}

/// The flow's remote address, IPv4-mapped addresses as IPv4.
pub fn remote_address(key: &FlowKey) -> IpAddr {
    IpAddr::V6(Ipv6Addr::from(key.remote_addr)).to_canonical()
}

#[cfg(test)]
mod tests {
    use bitsecure_common::{EVENT_FIRST_PAYLOAD, EVENT_PAYLOAD_MAX};

    use super::*;

    fn key(remote: [u8; 4], remote_port: u16, protocol: u8) -> FlowKey {
        let mut remote_addr = [0; 16];
        remote_addr[10] = 0xff;
        remote_addr[11] = 0xff;
        remote_addr[12..].copy_from_slice(&remote);
        FlowKey {
            cookie: 7,
            remote_addr,
            local_port: 40000,
            remote_port,
            protocol,
            _pad: [0; 3],
        }
    }

    /// The executable of the trusted resolver of these tests.
    const TRUSTED: &str = "/usr/lib/systemd/systemd-resolved";

    /// Every socket's owner: the trusted resolver.
    fn trusted(_cookie: u64) -> Asker {
        Asker {
            exe: Some(TRUSTED.to_owned()),
            id: 1,
        }
    }

    impl Naming {
        /// The name a flow of an unrelated process (one that asked nothing) gets.
        fn name_of_flow(&self, key: &FlowKey, now: Instant) -> Option<RemoteName> {
            self.name_of(key, Scope::Asker(999), now)
        }
    }

    fn event(key: FlowKey, kind: u8, direction: u8, payload: &[u8]) -> Vec<u8> {
        let mut event = PayloadEvent {
            key,
            payload_len: payload.len() as u32,
            captured_len: payload.len().min(EVENT_PAYLOAD_MAX) as u32,
            kind,
            direction,
            _pad: [0; 6],
            data: [0; EVENT_PAYLOAD_MAX],
        };
        let captured = payload.len().min(EVENT_PAYLOAD_MAX);
        event.data[..captured].copy_from_slice(&payload[..captured]);
        // SAFETY: PayloadEvent is plain old data.
        unsafe {
            std::slice::from_raw_parts((&raw const event).cast::<u8>(), size_of::<PayloadEvent>())
        }
        .to_vec()
    }

    #[test]
    fn a_stratum_login_decides_the_flow_and_later_samples_do_not_change_it() {
        let mut counts = EventCounts::default();
        let mut naming = Naming::new(16, vec![TRUSTED.to_owned()]);
        let flow = key([10, 0, 0, 2], 3333, 6);
        let now = Instant::now();
        assert_eq!(naming.decide_app(&flow, false), AppDecision::Wait);
        let login = br#"{"id":1,"jsonrpc":"2.0","method":"login","params":{"login":"x"}}"#;
        naming.on_event(
            &event(flow, EVENT_FIRST_PAYLOAD, DIRECTION_EGRESS, login),
            &mut counts,
            now,
            trusted,
        );
        // Another CPU's first egress payload, mid-stream: ignored.
        naming.on_event(
            &event(
                flow,
                EVENT_FIRST_PAYLOAD,
                DIRECTION_EGRESS,
                b"GET / HTTP/1.1\r\n",
            ),
            &mut counts,
            now,
            trusted,
        );
        assert_eq!(
            naming.decide_app(&flow, false),
            AppDecision::Decided(App::Stratum)
        );
        assert_eq!(counts.payload, 2);
    }

    #[test]
    fn an_unknown_first_payload_waits_for_the_other_direction_then_gives_up() {
        let mut counts = EventCounts::default();
        let mut naming = Naming::new(16, vec![TRUSTED.to_owned()]);
        let now = Instant::now();
        let flow = key([10, 0, 0, 2], 8000, 6);
        naming.on_event(
            &event(
                flow,
                EVENT_FIRST_PAYLOAD,
                DIRECTION_EGRESS,
                b"\x00\x01hello",
            ),
            &mut counts,
            now,
            trusted,
        );
        assert_eq!(naming.decide_app(&flow, false), AppDecision::Wait);
        // The server answers with an SSH banner: the flow is SSH.
        naming.on_event(
            &event(
                flow,
                EVENT_FIRST_PAYLOAD,
                DIRECTION_INGRESS,
                b"SSH-2.0-OpenSSH_9.2\r\n",
            ),
            &mut counts,
            now,
            trusted,
        );
        assert_eq!(
            naming.decide_app(&flow, false),
            AppDecision::Decided(App::Ssh)
        );

        let silent = key([10, 0, 0, 3], 8000, 6);
        assert_eq!(naming.decide_app(&silent, false), AppDecision::Wait);
        assert_eq!(naming.decide_app(&silent, false), AppDecision::Wait);
        assert_eq!(
            naming.decide_app(&silent, false),
            AppDecision::Decided(App::Unknown)
        );
        // A closed socket sends nothing more: one poll's wait, for an event racing the
        // snapshot, then no more.
        let closed = key([10, 0, 0, 4], 8000, 6);
        assert_eq!(naming.decide_app(&closed, true), AppDecision::Wait);
        assert_eq!(
            naming.decide_app(&closed, true),
            AppDecision::Decided(App::Unknown)
        );
        // ICMP carries no payload sample at all.
        let ping = key([10, 0, 0, 5], 0, 1);
        assert_eq!(
            naming.decide_app(&ping, false),
            AppDecision::Decided(App::Unknown)
        );
    }

    #[test]
    fn dns_answers_name_addresses_and_garbage_is_counted() {
        let mut counts = EventCounts::default();
        let mut naming = Naming::new(16, vec![TRUSTED.to_owned()]);
        let now = Instant::now();
        let response = dns::tests::a_response("pool.example.org", [10, 0, 0, 9], 300);
        let resolver = key([10, 0, 0, 53], 53, 17);
        let query = dns::tests::a_query("pool.example.org");
        naming.on_event(
            &event(resolver, EVENT_DNS, DIRECTION_EGRESS, &query),
            &mut counts,
            now,
            trusted,
        );
        naming.on_event(
            &event(resolver, EVENT_DNS, DIRECTION_INGRESS, &response),
            &mut counts,
            now,
            trusted,
        );
        naming.on_event(
            &event(resolver, EVENT_DNS, DIRECTION_INGRESS, b"\xff\xffgarbage"),
            &mut counts,
            now,
            trusted,
        );
        // The resolver's flow is DNS from its response alone.
        assert_eq!(
            naming.decide_app(&resolver, false),
            AppDecision::Decided(App::Dns)
        );
        let pool = key([10, 0, 0, 9], 3333, 6);
        assert_eq!(
            naming.name_of_flow(&pool, now),
            Some(RemoteName {
                name: "pool.example.org".into(),
                source: Source::Dns
            })
        );
        assert_eq!(counts.dns_ok, 1);
        assert_eq!(counts.dns_unparsable, 1);
        assert_eq!(counts.dns, 2);
        assert_eq!(counts.dns_queries, 1);
        // The name outlives neither its TTL nor the grace period.
        let later = now + Duration::from_secs(300 + 3600 + 1);
        naming.forget(|_| true, |_| true, later);
        assert_eq!(naming.name_of_flow(&pool, later), None);
    }

    #[test]
    fn only_connections_this_host_opened_name_their_remote() {
        let mut counts = EventCounts::default();
        let mut naming = Naming::new(16, vec![TRUSTED.to_owned()]);
        let now = Instant::now();
        let request = b"GET /stats HTTP/1.1\r\nHost: monitor.example.org:8080\r\n\r\n";
        let outgoing = key([10, 0, 0, 7], 8080, 6);
        naming.on_event(
            &event(outgoing, EVENT_FIRST_PAYLOAD, DIRECTION_EGRESS, request),
            &mut counts,
            now,
            trusted,
        );
        assert_eq!(
            naming.name_of_flow(&outgoing, now),
            Some(RemoteName {
                name: "monitor.example.org".into(),
                source: Source::Http
            })
        );
        // An address in Host names nothing.
        let by_address = key([10, 0, 0, 6], 80, 6);
        naming.on_event(
            &event(
                by_address,
                EVENT_FIRST_PAYLOAD,
                DIRECTION_EGRESS,
                b"GET / HTTP/1.1\r\nHost: 10.0.0.6\r\n\r\n",
            ),
            &mut counts,
            now,
            trusted,
        );
        assert_eq!(naming.name_of_flow(&by_address, now), None);
        let incoming = key([10, 0, 0, 8], 50000, 6);
        naming.on_event(
            &event(incoming, EVENT_FIRST_PAYLOAD, DIRECTION_INGRESS, request),
            &mut counts,
            now,
            trusted,
        );
        assert_eq!(naming.name_of_flow(&incoming, now), None);
        assert_eq!(
            naming.decide_app(&incoming, false),
            AppDecision::Decided(App::Http)
        );
    }

    #[test]
    fn a_claimed_name_never_overrides_what_dns_resolved() {
        let mut counts = EventCounts::default();
        let mut naming = Naming::new(16, vec![TRUSTED.to_owned()]);
        let now = Instant::now();
        let resolver = key([10, 0, 0, 53], 53, 17);
        let response = dns::tests::a_response("pool.example.org", [10, 0, 0, 9], 300);
        let query = dns::tests::a_query("pool.example.org");
        naming.on_event(
            &event(resolver, EVENT_DNS, DIRECTION_EGRESS, &query),
            &mut counts,
            now,
            trusted,
        );
        naming.on_event(
            &event(resolver, EVENT_DNS, DIRECTION_INGRESS, &response),
            &mut counts,
            now,
            trusted,
        );
        let request = b"GET / HTTP/1.1\r\nHost: trusted.example.org\r\n\r\n";
        let flow = key([10, 0, 0, 9], 80, 6);
        naming.on_event(
            &event(flow, EVENT_FIRST_PAYLOAD, DIRECTION_EGRESS, request),
            &mut counts,
            now,
            trusted,
        );
        let resolved = Some(RemoteName {
            name: "pool.example.org".into(),
            source: Source::Dns,
        });
        assert_eq!(naming.name_of_flow(&flow, now), resolved);
        assert_eq!(
            naming.name_of_address("10.0.0.9".parse().unwrap(), now),
            resolved
        );
    }

    /// A forged answer: sent to a socket that asked nothing, to one that asked another
    /// server, another question or with another ID, or after the query timed out.
    #[test]
    fn an_answer_counts_only_when_it_answers_a_question_of_that_socket() {
        let now = Instant::now();
        let pool = key([10, 0, 0, 9], 3333, 6);
        let answer = dns::tests::a_response("pool.example.org", [10, 0, 0, 9], 300);
        let query = dns::tests::a_query("pool.example.org");
        let resolver = key([10, 0, 0, 53], 53, 17);
        let other_server = key([10, 0, 0, 54], 53, 17);
        let other_socket = FlowKey {
            cookie: 8,
            ..resolver
        };
        let mut other_id = query.clone();
        other_id[1] ^= 1;
        let other_question = dns::tests::a_query("c2.example.net");
        let cases: [(&str, Option<&[u8]>, FlowKey, Duration); 6] = [
            ("no query", None, resolver, Duration::ZERO),
            ("another server", Some(&query), other_server, Duration::ZERO),
            ("another socket", Some(&query), other_socket, Duration::ZERO),
            ("another ID", Some(&other_id), resolver, Duration::ZERO),
            (
                "another question",
                Some(&other_question),
                resolver,
                Duration::ZERO,
            ),
            ("too late", Some(&query), resolver, QUERY_TIMEOUT),
        ];
        for (case, asked, answered_on, delay) in cases {
            let mut counts = EventCounts::default();
            let mut naming = Naming::new(16, vec![TRUSTED.to_owned()]);
            if let Some(asked) = asked {
                naming.on_event(
                    &event(resolver, EVENT_DNS, DIRECTION_EGRESS, asked),
                    &mut counts,
                    now,
                    trusted,
                );
            }
            naming.on_event(
                &event(answered_on, EVENT_DNS, DIRECTION_INGRESS, &answer),
                &mut counts,
                now + delay,
                trusted,
            );
            assert_eq!(naming.name_of_flow(&pool, now + delay), None, "{case}");
            assert_eq!((counts.dns_unsolicited, counts.dns_ok), (1, 0), "{case}");
            assert_eq!(naming.len(), 0, "{case}");
        }
        // The same answer to the question asked: taken, once.
        let mut counts = EventCounts::default();
        let mut naming = Naming::new(16, vec![TRUSTED.to_owned()]);
        for (direction, payload) in [
            (DIRECTION_EGRESS, &query),
            (DIRECTION_INGRESS, &answer),
            (DIRECTION_INGRESS, &answer),
        ] {
            naming.on_event(
                &event(resolver, EVENT_DNS, direction, payload),
                &mut counts,
                now,
                trusted,
            );
        }
        assert!(naming.name_of_flow(&pool, now).is_some());
        assert_eq!((counts.dns_ok, counts.dns_unsolicited), (1, 1));
    }

    /// What a process resolved names that process's flows; only a trusted resolver's answers
    /// name everyone's.
    #[test]
    fn names_belong_to_whoever_asked_unless_a_trusted_resolver_did() {
        let now = Instant::now();
        let pool = key([10, 0, 0, 9], 3333, 6);
        let resolver = key([10, 0, 0, 53], 53, 17);
        let mut naming = Naming::new(16, vec![TRUSTED.to_owned()]);
        let mut counts = EventCounts::default();
        let untrusted = |_: u64| Asker {
            exe: Some("/tmp/.x/evil".to_owned()),
            id: 7,
        };
        let query = dns::tests::a_query("pool.example.org");
        let answer = dns::tests::a_response("pool.example.org", [10, 0, 0, 9], 300);
        naming.on_event(
            &event(resolver, EVENT_DNS, DIRECTION_EGRESS, &query),
            &mut counts,
            now,
            untrusted,
        );
        naming.on_event(
            &event(resolver, EVENT_DNS, DIRECTION_INGRESS, &answer),
            &mut counts,
            now,
            untrusted,
        );
        assert_eq!(counts.dns_ok, 1);
        let named = Some(RemoteName {
            name: "pool.example.org".into(),
            source: Source::Dns,
        });
        assert_eq!(naming.name_of(&pool, Scope::Asker(7), now), named);
        assert_eq!(naming.name_of(&pool, Scope::Asker(8), now), None);
        assert_eq!(naming.name_of_address(remote_address(&pool), now), None);
        assert_eq!(naming.scope_of(Some(TRUSTED), 3), Scope::Everyone);
        assert_eq!(naming.scope_of(Some("/tmp/.x/evil"), 3), Scope::Asker(3));
        assert_eq!(naming.scope_of(None, 3), Scope::Asker(3));
    }

    #[test]
    fn a_query_flood_keeps_the_pending_queries_bounded() {
        let now = Instant::now();
        let mut naming = Naming::new(16, vec![]);
        let mut counts = EventCounts::default();
        for i in 0..MAX_PENDING_QUERIES + 100 {
            let query = dns::tests::a_query(&format!("r{i}.tunnel.example"));
            naming.on_event(
                &event(
                    key([10, 0, 0, 53], 53, 17),
                    EVENT_DNS,
                    DIRECTION_EGRESS,
                    &query,
                ),
                &mut counts,
                now,
                trusted,
            );
        }
        assert_eq!(naming.pending.len(), MAX_PENDING_QUERIES);
        assert_eq!(counts.dns_queries, (MAX_PENDING_QUERIES + 100) as u64);
        naming.forget(|_| false, |_| false, now + QUERY_TIMEOUT);
        assert!(naming.pending.is_empty());
    }

    /// The Stratum V1 login comes in the second message (after the subscribe): the kernel hands
    /// over the next payloads of a flow that opened with JSON too.
    #[test]
    fn the_account_of_a_stratum_login_and_a_pool_redirect() {
        let now = Instant::now();
        let mut naming = Naming::new(16, vec![]);
        let mut counts = EventCounts::default();
        let pool = key([10, 0, 0, 2], 3333, 6);
        let messages: [(u8, u8, &[u8]); 3] = [
            (
                EVENT_FIRST_PAYLOAD,
                DIRECTION_EGRESS,
                b"{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[]}\n",
            ),
            (
                EVENT_MORE_PAYLOAD,
                DIRECTION_EGRESS,
                b"{\"id\":2,\"method\":\"mining.authorize\",\"params\":[\"wallet.rig01\",\"x\"]}\n",
            ),
            (
                EVENT_MORE_PAYLOAD,
                DIRECTION_INGRESS,
                b"{\"id\":null,\"method\":\"client.reconnect\",\"params\":[\"evil.example.net\",4444,0]}\n",
            ),
        ];
        for (kind, direction, payload) in messages {
            naming.on_event(
                &event(pool, kind, direction, payload),
                &mut counts,
                now,
                trusted,
            );
        }
        assert_eq!(
            naming.account_of(&pool).map(String::as_str),
            Some("wallet.rig01")
        );
        assert_eq!(
            naming.take_redirects(),
            [Redirect {
                flow: pool,
                to: "evil.example.net:4444".into()
            }]
        );
        assert!(naming.take_redirects().is_empty());
        // A login received (a server's view) or a redirect sent are not the miner's.
        let other = key([10, 0, 0, 3], 3333, 6);
        naming.on_event(
            &event(other, EVENT_FIRST_PAYLOAD, DIRECTION_INGRESS, messages[1].2),
            &mut counts,
            now,
            trusted,
        );
        assert_eq!(naming.account_of(&other), None);
        // Gone with its flow.
        naming.forget(|_| false, |key| *key != pool, now);
        assert_eq!(naming.account_of(&pool), None);
    }

    #[test]
    fn short_events_are_ignored() {
        let mut counts = EventCounts::default();
        let mut naming = Naming::new(16, vec![TRUSTED.to_owned()]);
        naming.on_event(&[0; 10], &mut counts, Instant::now(), trusted);
        assert_eq!(counts, EventCounts::default());
        assert_eq!(naming.pending_flows(), 0);
    }
}
