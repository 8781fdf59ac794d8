//! A coarse application class of a flow, from its first payload bytes.
//!
//! [`classify`] looks at the first bytes of one direction; [`classify_flow`] at the first bytes
//! of both (a pool may speak first: a `mining.notify`, or the login result with the first job).
//! The checks are cheap prefix and keyword tests, meant to label traffic (`stratum` on a port a
//! baseline calls HTTPS is worth a look), not to prove anything: an encrypted stratum session
//! (`stratum+ssl`) is `tls`, and Stratum V2 (binary, Noise-encrypted) is `unknown`.

use super::http::looks_like_request;

use bitsecure_common::protocol::{TCP as PROTO_TCP, UDP as PROTO_UDP};

/// What a flow speaks.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum App {
    /// Stratum V1 (`mining.subscribe` ...) or the JSON-RPC stratum of xmrig and Monero pools
    /// (`login` / `job` / `submit`), newline-delimited JSON over TCP.
    Stratum,
    /// A TLS handshake record.
    Tls,
    /// An HTTP/1.x request or response.
    Http,
    /// An SSH version banner.
    Ssh,
    /// DNS on port 53, over UDP or TCP.
    Dns,
    /// Anything else, or no bytes.
    Unknown,
}

impl App {
    /// Every class, in declaration order.
    pub const ALL: [App; 6] = [
        App::Stratum,
        App::Tls,
        App::Http,
        App::Ssh,
        App::Dns,
        App::Unknown,
    ];

    /// Lowercase name, for labels and the JSON API.
    pub fn as_str(self) -> &'static str {
        match self {
            App::Stratum => "stratum",
            App::Tls => "tls",
            App::Http => "http",
            App::Ssh => "ssh",
            App::Dns => "dns",
            App::Unknown => "unknown",
        }
    }

    /// The class named `text` ([`App::as_str`] form).
    pub fn parse(text: &str) -> Option<App> {
        App::ALL.into_iter().find(|app| app.as_str() == text)
    }
}

/// Stratum V1 methods (client requests and pool notifications).
const STRATUM_V1_METHODS: &[&[u8]] = &[
    b"mining.subscribe",
    b"mining.authorize",
    b"mining.notify",
    b"mining.submit",
    b"mining.configure",
    b"mining.set_difficulty",
    b"mining.set_extranonce",
    b"mining.extranonce.subscribe",
    b"mining.suggest_difficulty",
];

/// Methods of the xmrig / Monero pool JSON-RPC stratum.
const JSONRPC_STRATUM_METHODS: &[&[u8]] = &[b"login", b"job", b"submit", b"keepalived"];

/// The class of a flow from the first payload bytes of one direction. `port` is the service port
/// (the remote port of connections this host opened, the local port of those it accepted);
/// `protocol` the IP protocol number. DNS is recognised by port 53 plus a sane header; the
/// other classes only on TCP.
pub fn classify(first_bytes: &[u8], port: Option<u16>, protocol: u8) -> App {
    if port == Some(53) && looks_like_dns(first_bytes, protocol) {
        return App::Dns;
    }
    if protocol != PROTO_TCP {
        return App::Unknown;
    }
    if first_bytes.starts_with(b"SSH-2.0-") || first_bytes.starts_with(b"SSH-1.99-") {
        App::Ssh
    } else if is_tls_record(first_bytes) {
        App::Tls
    } else if looks_like_request(first_bytes) || first_bytes.starts_with(b"HTTP/1.") {
        App::Http
    } else if is_stratum(first_bytes) {
        App::Stratum
    } else {
        App::Unknown
    }
}

/// The class of a flow from the first payload bytes of both directions: the first direction's
/// class if it has one, else the second's.
pub fn classify_flow(first: &[u8], second: &[u8], port: Option<u16>, protocol: u8) -> App {
    match classify(first, port, protocol) {
        App::Unknown => classify(second, port, protocol),
        app => app,
    }
}

/// A TLS record header: handshake (22), version 3.0 to 3.4.
fn is_tls_record(bytes: &[u8]) -> bool {
    matches!(bytes, [0x16, 0x03, minor, ..] if *minor <= 0x04)
}

/// A DNS header with one question and a known opcode; over TCP behind a length prefix that
/// holds at least a header.
fn looks_like_dns(bytes: &[u8], protocol: u8) -> bool {
    let header = match protocol {
        PROTO_UDP => bytes,
        PROTO_TCP => match bytes {
            [hi, lo, rest @ ..] if u16::from_be_bytes([*hi, *lo]) >= 12 => rest,
            _ => return false,
        },
        _ => return false,
    };
    let [_, _, flags_hi, flags_lo, qd_hi, qd_lo, ..] = *header else {
        return false;
    };
    let opcode = (flags_hi >> 3) & 0x0f;
    header.len() >= 12
        && u16::from_be_bytes([qd_hi, qd_lo]) == 1
        && matches!(opcode, 0 | 1 | 2 | 4 | 5)
        && flags_lo & 0x40 == 0 // the reserved Z bit
}

/// Newline-delimited JSON-RPC of a mining pool, judged on its first line.
fn is_stratum(bytes: &[u8]) -> bool {
    let line = match bytes.iter().position(|&b| b == b'\n') {
        Some(end) => &bytes[..end],
        None => bytes,
    };
    let line = line.trim_ascii_start();
    if !line.starts_with(b"{") {
        return false;
    }
    if let Some(method) = string_value(line, b"method") {
        if STRATUM_V1_METHODS.contains(&method) {
            return true;
        }
        if JSONRPC_STRATUM_METHODS.contains(&method)
            && (value_start(line, b"jsonrpc").is_some() || value_start(line, b"params").is_some())
        {
            return true;
        }
    }
    // Pool replies: the xmrig login result carries the first job; the Stratum V1 subscribe
    // result lists the subscriptions (`[["mining.notify", "..."], ...]`).
    if let Some(result) = value_start(line, b"result") {
        let result = &line[result..];
        return value_start(result, b"job").is_some_and(|v| result[v..].starts_with(b"{"))
            || contains(result, b"\"mining.notify\"");
    }
    false
}

/// Where the value of the first `"key":` in `json` starts (after the colon and any spaces).
fn value_start(json: &[u8], key: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(found) = find(&json[from..], key) {
        let key_start = from + found;
        let key_end = key_start + key.len();
        from = key_end;
        // The key must be a whole string: `"key"`.
        if key_start == 0 || json[key_start - 1] != b'"' || json.get(key_end) != Some(&b'"') {
            continue;
        }
        let mut i = key_end + 1;
        while json.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        if json.get(i) != Some(&b':') {
            continue;
        }
        i += 1;
        while json.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        return Some(i);
    }
    None
}

/// The value of `"key": "value"` (without escapes: method names have none).
fn string_value<'a>(json: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let start = value_start(json, key)?;
    let rest = json.get(start..)?.strip_prefix(b"\"")?;
    let end = rest.iter().position(|&b| b == b'"' || b == b'\\')?;
    Some(&rest[..end])
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    find(haystack, needle).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::naming::tls::tests::{OPENSSL_CLIENT_HELLO, hex};
    use proptest::prelude::*;

    /// What xmrig 6.x sends first (wallet shortened).
    const XMRIG_LOGIN: &[u8] = br#"{"id":1,"jsonrpc":"2.0","method":"login","params":{"login":"44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A","pass":"x","agent":"XMRig/6.21.0 (Linux x86_64) libuv/1.44.2 gcc/12.2.0","algo":["rx/0","cn/r","rx/wow"]}}
"#;
    /// The pool's reply to it.
    const XMRIG_LOGIN_RESULT: &[u8] = br#"{"id":1,"jsonrpc":"2.0","error":null,"result":{"id":"7a6c2e7b","job":{"blob":"1010c1e9c4a206","job_id":"3Wq7","target":"b88d0600","algo":"rx/0","height":3123456,"seed_hash":"a1b2"},"extensions":["algo","nicehash","connect","tls","keepalive"],"status":"OK"}}
"#;
    /// cgminer / bmminer / cpuminer first lines.
    const STRATUM_SUBSCRIBE: &[u8] =
        b"{\"id\": 1, \"method\": \"mining.subscribe\", \"params\": [\"cgminer/4.12.1\"]}\n";
    const STRATUM_CONFIGURE: &[u8] = b"{\"id\":1,\"method\":\"mining.configure\",\"params\":[[\"version-rolling\"],{\"version-rolling.mask\":\"1fffe000\"}]}\n";
    /// A pool that speaks first.
    const STRATUM_NOTIFY: &[u8] = b"{\"id\":null,\"method\":\"mining.notify\",\"params\":[\"bf\",\"4d16b6f85af6e2198f44ae2a6de67f78487ae5611b77c6c0440b921e00000000\",\"01000000010000\",\"072f736c7573682f\",[],\"00000002\",\"1c2ac4af\",\"504e86b9\",false]}\n";
    const STRATUM_SUBSCRIBE_RESULT: &[u8] = b"{\"id\":1,\"result\":[[[\"mining.set_difficulty\",\"b4b6693b\"],[\"mining.notify\",\"ae6812eb\"]],\"08000002\",4],\"error\":null}\n";

    fn tcp(bytes: &[u8]) -> App {
        classify(bytes, Some(3333), PROTO_TCP)
    }

    #[test]
    fn names() {
        let names: Vec<&str> = App::ALL.iter().map(|a| a.as_str()).collect();
        assert_eq!(names, ["stratum", "tls", "http", "ssh", "dns", "unknown"]);
    }

    #[test]
    fn stratum_flavours() {
        for bytes in [
            XMRIG_LOGIN,
            XMRIG_LOGIN_RESULT,
            STRATUM_SUBSCRIBE,
            STRATUM_CONFIGURE,
            STRATUM_NOTIFY,
            STRATUM_SUBSCRIBE_RESULT,
            b"{\"jsonrpc\":\"2.0\",\"method\":\"job\",\"params\":{\"blob\":\"0707\",\"job_id\":\"1\"}}\n",
            b"{\"params\":[\"worker.1\",\"x\"],\"id\":2,\"method\":\"mining.authorize\"}\n",
            b"{\"id\":4,\"method\":\"mining.submit\",\"params\":[\"w\",\"bf\",\"00\",\"504e86ed\",\"b2957c02\"]}\n",
        ] {
            assert_eq!(tcp(bytes), App::Stratum, "{}", String::from_utf8_lossy(bytes));
        }
    }

    /// A first line cut off by the 512-byte limit still tells.
    #[test]
    fn truncated_stratum() {
        assert_eq!(tcp(&STRATUM_NOTIFY[..40]), App::Stratum);
        assert_eq!(tcp(&XMRIG_LOGIN[..60]), App::Stratum);
        // ... but not before the method name is complete.
        assert_eq!(tcp(&STRATUM_SUBSCRIBE[..30]), App::Unknown);
        assert_eq!(tcp(b""), App::Unknown);
    }

    #[test]
    fn oversized_first_bytes() {
        // 2 KiB of a stratum line: the decision is made on the same keywords.
        let mut long = STRATUM_NOTIFY[..STRATUM_NOTIFY.len() - 3].to_vec();
        long.resize(2048, b'0');
        assert_eq!(tcp(&long), App::Stratum);
        let mut junk = vec![b'{'; 2048];
        junk[1000] = b'"';
        assert_eq!(tcp(&junk), App::Unknown);
    }

    #[test]
    fn malformed_not_stratum() {
        for bytes in [
            // JSON-RPC, but not mining.
            &b"{\"jsonrpc\":\"2.0\",\"method\":\"eth_blockNumber\",\"params\":[],\"id\":1}\n"[..],
            // `login` without jsonrpc or params.
            b"{\"method\":\"login\"}\n",
            // The keyword in a value, not as the method.
            b"{\"note\":\"method\",\"x\":\"mining.subscribe\"}\n",
            // Not an object.
            b"[\"mining.subscribe\"]\n",
            // A second line does not count.
            b"hello\n{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[]}\n",
            // A result without a job.
            b"{\"id\":1,\"jsonrpc\":\"2.0\",\"result\":{\"status\":\"OK\"}}\n",
            b"{\"id\":1,\"jsonrpc\":\"2.0\",\"result\":{\"job\":null}}\n",
        ] {
            assert_eq!(
                tcp(bytes),
                App::Unknown,
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn tls() {
        assert_eq!(tcp(&hex(OPENSSL_CLIENT_HELLO)), App::Tls);
        assert_eq!(tcp(&[0x16, 0x03, 0x03, 0x00, 0x7a, 0x02]), App::Tls); // ServerHello
        assert_eq!(tcp(&[0x16, 0x03, 0x01]), App::Tls);
        assert_eq!(tcp(&[0x16, 0x03, 0x05]), App::Unknown);
        assert_eq!(tcp(&[0x17, 0x03, 0x03]), App::Unknown);
        assert_eq!(tcp(&[0x16, 0x03]), App::Unknown);
        // Not on UDP (DTLS and QUIC look different anyway).
        assert_eq!(
            classify(&[0x16, 0x03, 0x03], Some(443), PROTO_UDP),
            App::Unknown
        );
    }

    #[test]
    fn http() {
        assert_eq!(
            tcp(b"GET /stats HTTP/1.1\r\nHost: pool.example.org:8080\r\n\r\n"),
            App::Http
        );
        assert_eq!(tcp(b"POST /api HTTP/1.1\r\n"), App::Http);
        assert_eq!(tcp(b"HTTP/1.1 200 OK\r\n"), App::Http);
        assert_eq!(tcp(b"HTTP/2.0 200 OK\r\n"), App::Unknown);
        assert_eq!(tcp(b"GET"), App::Unknown);
        assert_eq!(tcp(b"get / HTTP/1.1\r\n"), App::Unknown);
    }

    #[test]
    fn ssh() {
        assert_eq!(tcp(b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n"), App::Ssh);
        assert_eq!(tcp(b"SSH-1.99-Cisco-1.25\r\n"), App::Ssh);
        assert_eq!(tcp(b"SSH-1.5-old\r\n"), App::Unknown);
        assert_eq!(tcp(b"SSH-2.0"), App::Unknown);
    }

    #[test]
    fn dns() {
        // A query for pool.example.org A, with recursion desired.
        let query = b"\xab\xcd\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x04pool\x07example\x03org\x00\x00\x01\x00\x01";
        assert_eq!(classify(query, Some(53), PROTO_UDP), App::Dns);
        let mut over_tcp = (query.len() as u16).to_be_bytes().to_vec();
        over_tcp.extend_from_slice(query);
        assert_eq!(classify(&over_tcp, Some(53), PROTO_TCP), App::Dns);
        // The TCP form needs its prefix; the UDP form has none.
        assert_eq!(classify(query, Some(53), PROTO_TCP), App::Unknown);
        // Only on port 53.
        assert_eq!(classify(query, Some(5353), PROTO_UDP), App::Unknown);
        assert_eq!(classify(query, None, PROTO_UDP), App::Unknown);
        // A truncated header, a bad opcode, two questions, the Z bit: not DNS.
        assert_eq!(classify(&query[..11], Some(53), PROTO_UDP), App::Unknown);
        let mut bad = query.to_vec();
        bad[2] = 0x18; // opcode 3
        assert_eq!(classify(&bad, Some(53), PROTO_UDP), App::Unknown);
        let mut two = query.to_vec();
        two[5] = 2;
        assert_eq!(classify(&two, Some(53), PROTO_UDP), App::Unknown);
        let mut z = query.to_vec();
        z[3] = 0x40;
        assert_eq!(classify(&z, Some(53), PROTO_UDP), App::Unknown);
        // Something else on TCP port 53 falls through to the other checks.
        assert_eq!(classify(b"SSH-2.0-x\r\n", Some(53), PROTO_TCP), App::Ssh);
    }

    #[test]
    fn other_protocols_unknown() {
        assert_eq!(
            classify(STRATUM_SUBSCRIBE, Some(3333), PROTO_UDP),
            App::Unknown
        );
        assert_eq!(classify(b"SSH-2.0-x\r\n", None, 1), App::Unknown);
    }

    #[test]
    fn flow_uses_either_direction() {
        // The pool speaks first; this host's first bytes say nothing.
        assert_eq!(
            classify_flow(b"", STRATUM_NOTIFY, Some(3333), PROTO_TCP),
            App::Stratum
        );
        assert_eq!(
            classify_flow(XMRIG_LOGIN, XMRIG_LOGIN_RESULT, Some(3333), PROTO_TCP),
            App::Stratum
        );
        assert_eq!(
            classify_flow(b"\x00\x01", b"SSH-2.0-OpenSSH_9.2\r\n", Some(22), PROTO_TCP),
            App::Ssh
        );
        // When both tell, the first direction wins.
        assert_eq!(
            classify_flow(b"GET / HTTP/1.1\r\n", b"SSH-2.0-x\r\n", Some(80), PROTO_TCP),
            App::Http
        );
        assert_eq!(classify_flow(b"", b"", None, PROTO_TCP), App::Unknown);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(
            data in prop::collection::vec(any::<u8>(), 0..2048),
            port in proptest::option::of(any::<u16>()),
            protocol in prop_oneof![Just(PROTO_TCP), Just(PROTO_UDP), any::<u8>()],
        ) {
            let _ = classify(&data, port, protocol);
            let _ = classify(&data, Some(53), protocol);
            let _ = classify_flow(&data, &data, port, protocol);
        }

        /// JSON-ish junk (the alphabet of stratum lines) never panics the keyword scanner.
        #[test]
        fn json_like_never_panics(line in "[{}\\[\\]\":, a-z.0-9]{0,512}") {
            let _ = classify(line.as_bytes(), Some(3333), PROTO_TCP);
        }

        /// A stratum line with any id and params stays stratum.
        #[test]
        fn generated_stratum_lines(
            id in 0u32..1_000_000,
            method in prop::sample::select(STRATUM_V1_METHODS.to_vec()),
            params in prop::collection::vec("[a-f0-9]{0,16}", 0..6),
        ) {
            let params: Vec<String> = params.iter().map(|p| format!("\"{p}\"")).collect();
            let line = format!(
                "{{\"id\":{id},\"method\":\"{}\",\"params\":[{}]}}\n",
                String::from_utf8_lossy(method),
                params.join(","),
            );
            prop_assert_eq!(tcp(line.as_bytes()), App::Stratum);
        }
    }
}
