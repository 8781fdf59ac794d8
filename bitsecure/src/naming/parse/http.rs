//! The Host of the first HTTP/1.x request in a flow's first bytes.
//!
//! [`request_host`] reads the request line (method token, target, `HTTP/1.x`) and the header
//! lines up to the empty line that ends them, or up to the end of the bytes (the kernel hands
//! over at most 512). The name comes from the target when it is in absolute form
//! (`GET http://host/ HTTP/1.1`, proxies) or authority form (`CONNECT host:443 HTTP/1.1`), as
//! RFC 9112 §3.2.2 says, else from the first `Host` header (name matched case-insensitively).
//! The port is dropped; the name is checked (no control characters or other junk) and lowercased.
//! Lines may end in CRLF or a bare LF (RFC 9112 §2.2).

use std::net::Ipv6Addr;

use super::host_name;

/// How far into the bytes a request head is looked for (larger heads are not expected: the
/// kernel hands over 512 bytes, and real requests name their host in the first few lines).
pub const MAX_HEAD_LEN: usize = 8192;
/// Longest method token accepted.
const MAX_METHOD_LEN: usize = 20;

/// Why no host came out of the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The bytes do not start with an HTTP/1.x request line.
    #[error("not an HTTP/1.x request")]
    NotHttp,
    /// The bytes end before the host is known (within the request line or the headers).
    #[error("HTTP request head is cut off before its Host header")]
    Truncated,
    /// The request head is complete and names no host (HTTP/1.0 without Host, or an empty Host).
    #[error("HTTP request has no Host")]
    NoHost,
    /// The Host (or the authority of the target) is not a host name or address, with an optional
    /// port.
    #[error("HTTP request has an invalid Host")]
    BadHost,
    /// The request head does not end within [`MAX_HEAD_LEN`] bytes.
    #[error("HTTP request head longer than {MAX_HEAD_LEN} bytes")]
    TooLong,
    /// A request line but broken headers.
    #[error("malformed HTTP request: {0}")]
    Malformed(&'static str),
}

/// The lines of the bytes, each without its line ending; the last item is the unterminated rest
/// (possibly empty), marked `false`.
fn lines(bytes: &[u8]) -> impl Iterator<Item = (&[u8], bool)> {
    let mut rest = Some(bytes);
    std::iter::from_fn(move || {
        let current = rest?;
        match current.iter().position(|&b| b == b'\n') {
            Some(lf) => {
                rest = Some(&current[lf + 1..]);
                let line = &current[..lf];
                Some((line.strip_suffix(b"\r").unwrap_or(line), true))
            }
            None => {
                rest = None;
                Some((current, false))
            }
        }
    })
}

/// A method token: uppercase letters, `-` or `_` (all registered methods look like this).
fn is_method(token: &[u8]) -> bool {
    (1..=MAX_METHOD_LEN).contains(&token.len())
        && token
            .iter()
            .all(|&b| b.is_ascii_uppercase() || b == b'-' || b == b'_')
}

/// Whether the bytes start like an HTTP request line: a method token, one space and the start of
/// a target (`/`, `*`, `http://`, `https://`, or anything after `CONNECT`).
pub(crate) fn looks_like_request(bytes: &[u8]) -> bool {
    let Some(space) = bytes
        .iter()
        .take(MAX_METHOD_LEN + 1)
        .position(|&b| b == b' ')
    else {
        return false;
    };
    let (method, target) = (&bytes[..space], &bytes[space + 1..]);
    is_method(method) && !target.is_empty() && target_start_ok(method, target)
}

/// Whether a (possibly partial) request target starts in one of the forms of RFC 9112 §3.2:
/// origin (`/`), asterisk (`*`), absolute (`http://`, `https://`) or, after CONNECT, authority.
fn target_start_ok(method: &[u8], target: &[u8]) -> bool {
    match target.first() {
        None => true,
        Some(b'/' | b'*') => true,
        Some(&b) if method == b"CONNECT" => b.is_ascii_alphanumeric() || b == b'[',
        Some(_) => [&b"http://"[..], b"https://"].iter().any(|scheme| {
            let n = target.len().min(scheme.len());
            target[..n].eq_ignore_ascii_case(&scheme[..n])
        }),
    }
}

fn starts_with_ignore_case(bytes: &[u8], prefix: &[u8]) -> bool {
    bytes
        .get(..prefix.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(prefix))
}

/// The host the first HTTP/1.x request in `bytes` is for: lowercase, without port; an IPv6
/// address in its canonical text without brackets.
pub fn request_host(bytes: &[u8]) -> Result<String, HttpError> {
    let head = &bytes[..bytes.len().min(MAX_HEAD_LEN)];
    let mut lines = lines(head);
    let Some((request_line, complete)) = lines.next() else {
        return Err(HttpError::Truncated);
    };
    if !complete {
        // Could this still become a request line?
        return if request_line_prefix_ok(request_line) {
            Err(cut_off(bytes))
        } else {
            Err(HttpError::NotHttp)
        };
    }
    let (method, target) = parse_request_line(request_line)?;
    if method == b"CONNECT" {
        return authority_host(target);
    }
    for scheme in [&b"http://"[..], b"https://"] {
        if starts_with_ignore_case(target, scheme) {
            let authority = &target[scheme.len()..];
            let end = authority
                .iter()
                .position(|&b| matches!(b, b'/' | b'?' | b'#'))
                .unwrap_or(authority.len());
            return authority_host(&authority[..end]);
        }
    }

    for (line, complete) in lines {
        if !complete {
            return Err(cut_off(bytes));
        }
        if line.is_empty() {
            return Err(HttpError::NoHost);
        }
        if line[0] == b' ' || line[0] == b'\t' {
            return Err(HttpError::Malformed("folded header line"));
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(HttpError::Malformed("header line without colon"));
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(HttpError::Malformed("invalid header name"));
        }
        if value.iter().any(|&b| b.is_ascii_control() && b != b'\t') {
            return Err(HttpError::Malformed("control character in header value"));
        }
        if name.eq_ignore_ascii_case(b"host") {
            return authority_host(value.trim_ascii());
        }
    }
    Err(cut_off(bytes))
}

/// `Truncated`, or `TooLong` when the bytes went on past [`MAX_HEAD_LEN`].
fn cut_off(bytes: &[u8]) -> HttpError {
    if bytes.len() >= MAX_HEAD_LEN {
        HttpError::TooLong
    } else {
        HttpError::Truncated
    }
}

/// RFC 9110 §5.6.2 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Method and target of a complete request line `METHOD SP target SP HTTP/1.x`.
fn parse_request_line(line: &[u8]) -> Result<(&[u8], &[u8]), HttpError> {
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::NotHttp);
    };
    if !is_method(method)
        || target.is_empty()
        || !target_start_ok(method, target)
        || target
            .iter()
            .any(|&b| b.is_ascii_control() || !b.is_ascii())
        || !is_http1_version(version)
    {
        return Err(HttpError::NotHttp);
    }
    Ok((method, target))
}

fn is_http1_version(version: &[u8]) -> bool {
    matches!(version, [b'H', b'T', b'T', b'P', b'/', b'1', b'.', d] if d.is_ascii_digit())
}

/// Whether an unterminated first line is a prefix of a plausible request line.
fn request_line_prefix_ok(partial: &[u8]) -> bool {
    let mut parts = partial.splitn(3, |&b| b == b' ');
    let method = parts.next().unwrap_or_default();
    let Some(target) = parts.next() else {
        return partial.len() <= MAX_METHOD_LEN
            && partial
                .iter()
                .all(|&b| b.is_ascii_uppercase() || b == b'-' || b == b'_');
    };
    if !is_method(method)
        || !target_start_ok(method, target)
        || target
            .iter()
            .any(|&b| b.is_ascii_control() || !b.is_ascii())
    {
        return false;
    }
    match parts.next() {
        None => true,
        Some(version) => {
            let version = version.strip_suffix(b"\r").unwrap_or(version);
            !target.is_empty()
                && b"HTTP/1.0".starts_with(&version[..version.len().min(7)])
                && version.len() <= 8
                && version.get(7).is_none_or(u8::is_ascii_digit)
        }
    }
}

/// The host of `host[:port]` or `[v6]:port`.
fn authority_host(authority: &[u8]) -> Result<String, HttpError> {
    if authority.is_empty() {
        return Err(HttpError::NoHost);
    }
    let (host, port) = if let Some(rest) = authority.strip_prefix(b"[") {
        let Some(close) = rest.iter().position(|&b| b == b']') else {
            return Err(HttpError::BadHost);
        };
        let port = match &rest[close + 1..] {
            [] => None,
            [b':', port @ ..] => Some(port),
            _ => return Err(HttpError::BadHost),
        };
        let address = std::str::from_utf8(&rest[..close])
            .ok()
            .and_then(|text| text.parse::<Ipv6Addr>().ok())
            .ok_or(HttpError::BadHost)?;
        check_port(port)?;
        return Ok(address.to_string());
    } else {
        match authority.iter().position(|&b| b == b':') {
            Some(colon) => (&authority[..colon], Some(&authority[colon + 1..])),
            None => (authority, None),
        }
    };
    check_port(port)?;
    host_name(host).ok_or(HttpError::BadHost)
}

/// A port is up to 5 digits (RFC 3986 allows an empty one).
fn check_port(port: Option<&[u8]>) -> Result<(), HttpError> {
    match port {
        Some(p) if p.len() > 5 || !p.iter().all(u8::is_ascii_digit) => Err(HttpError::BadHost),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What `curl -s http://pool.example.org:8080/stats` (curl 7.88.1) sent, captured on loopback.
    const CURL_REQUEST: &[u8] = b"GET /stats HTTP/1.1\r\nHost: pool.example.org:8080\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n";

    #[test]
    fn curl_request() {
        assert_eq!(request_host(CURL_REQUEST).unwrap(), "pool.example.org");
    }

    #[test]
    fn host_header_anywhere_any_case() {
        let req = b"POST /api/v1/report HTTP/1.1\r\nContent-Type: application/json\r\nhOsT:\tMonitor.Example.NET \r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(request_host(req).unwrap(), "monitor.example.net");
    }

    #[test]
    fn bare_lf_line_endings() {
        assert_eq!(
            request_host(b"GET / HTTP/1.0\nHost: example.org\n\n").unwrap(),
            "example.org"
        );
    }

    #[test]
    fn ipv4_and_ipv6_hosts() {
        assert_eq!(
            request_host(b"GET / HTTP/1.1\r\nHost: 192.0.2.1:80\r\n\r\n").unwrap(),
            "192.0.2.1"
        );
        assert_eq!(
            request_host(b"GET / HTTP/1.1\r\nHost: [2001:DB8::1]:8080\r\n\r\n").unwrap(),
            "2001:db8::1"
        );
        assert_eq!(
            request_host(b"GET / HTTP/1.1\r\nHost: [::1]\r\n\r\n").unwrap(),
            "::1"
        );
    }

    /// Proxy requests name the host in the target, which wins over the Host header.
    #[test]
    fn absolute_and_authority_form() {
        assert_eq!(
            request_host(b"GET http://Pool.Example.org:3333/x?y HTTP/1.1\r\nHost: other\r\n\r\n")
                .unwrap(),
            "pool.example.org"
        );
        assert_eq!(
            request_host(b"CONNECT pool.example.org:443 HTTP/1.1\r\n").unwrap(),
            "pool.example.org"
        );
    }

    /// The Host line must be complete: its value may go on in bytes not given.
    #[test]
    fn truncated_request() {
        for len in 0..CURL_REQUEST.len() {
            let result = request_host(&CURL_REQUEST[..len]);
            let host_line_end = "GET /stats HTTP/1.1\r\nHost: pool.example.org:8080\r\n".len();
            if len < host_line_end {
                assert_eq!(result, Err(HttpError::Truncated), "prefix of {len}");
            } else {
                assert_eq!(result.as_deref(), Ok("pool.example.org"), "prefix of {len}");
            }
        }
        let no_host_yet = b"GET / HTTP/1.1\r\nUser-Agent: x\r\nAccept: */*\r\n";
        assert_eq!(request_host(no_host_yet), Err(HttpError::Truncated));
    }

    #[test]
    fn oversized_head() {
        let mut req = b"GET / HTTP/1.1\r\n".to_vec();
        while req.len() < MAX_HEAD_LEN + 100 {
            req.extend_from_slice(b"X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        req.extend_from_slice(b"Host: late.example.org\r\n\r\n");
        assert_eq!(request_host(&req), Err(HttpError::TooLong));
        // An over-long host name is refused, not cut.
        let long = format!(
            "GET / HTTP/1.1\r\nHost: {}.example.org\r\n\r\n",
            "a".repeat(250)
        );
        assert_eq!(request_host(long.as_bytes()), Err(HttpError::BadHost));
        let long_port = b"GET / HTTP/1.1\r\nHost: example.org:123456\r\n\r\n";
        assert_eq!(request_host(long_port), Err(HttpError::BadHost));
    }

    #[test]
    fn malformed_headers() {
        for (req, expected) in [
            (
                &b"GET / HTTP/1.1\r\nNo colon here\r\nHost: a\r\n\r\n"[..],
                HttpError::Malformed("header line without colon"),
            ),
            (
                b"GET / HTTP/1.1\r\nX-A: 1\r\n folded\r\nHost: a\r\n\r\n",
                HttpError::Malformed("folded header line"),
            ),
            (
                b"GET / HTTP/1.1\r\nBad Name: 1\r\nHost: a\r\n\r\n",
                HttpError::Malformed("invalid header name"),
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\x00b.example\r\n\r\n",
                HttpError::Malformed("control character in header value"),
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\rb.example\r\n\r\n",
                HttpError::Malformed("control character in header value"),
            ),
            (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", HttpError::BadHost),
            (
                b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n",
                HttpError::BadHost,
            ),
            (b"GET / HTTP/1.1\r\nHost: a:b:c\r\n\r\n", HttpError::BadHost),
            (
                b"GET / HTTP/1.1\r\nHost: [nope]:80\r\n\r\n",
                HttpError::BadHost,
            ),
            (b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", HttpError::BadHost),
            (
                b"GET / HTTP/1.1\r\nHost: caf\xc3\xa9.example\r\n\r\n",
                HttpError::BadHost,
            ),
            (b"GET / HTTP/1.1\r\nHost:\r\n\r\n", HttpError::NoHost),
            (b"GET / HTTP/1.0\r\nAccept: */*\r\n\r\n", HttpError::NoHost),
        ] {
            assert_eq!(
                request_host(req),
                Err(expected),
                "{}",
                String::from_utf8_lossy(req)
            );
        }
    }

    #[test]
    fn not_http() {
        for bytes in [
            &b"HTTP/1.1 200 OK\r\nServer: x\r\n\r\n"[..],
            b"SSH-2.0-OpenSSH_9.2\r\n",
            b"{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[]}\n",
            b"\x16\x03\x01\x01\x3d\x01",
            b"get / HTTP/1.1\r\n",
            b"GET / HTTP/2.0\r\n",
            b"GET  / HTTP/1.1\r\n",
            b"GET /\x01 HTTP/1.1\r\n",
            b"GET / HTTP/1.1 extra\r\n",
            b"GET /",
            b"GET / HTTP/2",
            b"GET / HTTX",
            b"EHLO mail.example.org",
        ] {
            let result = request_host(bytes);
            // "GET /" without a line end could still become a request: Truncated.
            if bytes == b"GET /" {
                assert_eq!(result, Err(HttpError::Truncated));
            } else {
                assert_eq!(
                    result,
                    Err(HttpError::NotHttp),
                    "{}",
                    String::from_utf8_lossy(bytes)
                );
            }
        }
    }

    #[test]
    fn request_start() {
        assert!(looks_like_request(b"GET /stats HTTP/1.1\r\n"));
        assert!(looks_like_request(b"OPTIONS * HTTP/1.1\r\n"));
        assert!(looks_like_request(b"GET http://a/ HTTP/1.1\r\n"));
        assert!(looks_like_request(
            b"CONNECT pool.example.org:443 HTTP/1.1\r\n"
        ));
        assert!(looks_like_request(b"POST /"));
        assert!(!looks_like_request(b"POST "));
        assert!(!looks_like_request(b"EHLO mail.example.org\r\n"));
        assert!(!looks_like_request(b"get / HTTP/1.1\r\n"));
        assert!(!looks_like_request(b"{\"method\":\"GET /\"}"));
        assert!(!looks_like_request(b""));
    }

    fn host() -> impl Strategy<Value = String> {
        prop::collection::vec("[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", 1..5)
            .prop_map(|labels| labels.join("."))
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..2048)) {
            let _ = request_host(&data);
            let _ = looks_like_request(&data);
        }

        /// Arbitrary header bytes behind a valid request line.
        #[test]
        fn arbitrary_headers_never_panic(data in prop::collection::vec(any::<u8>(), 0..2048)) {
            let mut req = b"GET / HTTP/1.1\r\n".to_vec();
            req.extend_from_slice(&data);
            let _ = request_host(&req);
        }

        /// A generated request gives back its host; any prefix gives the host or `Truncated`.
        #[test]
        fn round_trip_and_prefixes(
            method in "[A-Z]{3,7}",
            path in "/[a-z0-9/._-]{0,30}",
            name in host(),
            port in proptest::option::of(any::<u16>()),
            before in prop::collection::vec(("[A-Za-z-]{1,12}", "[ -~]{0,30}"), 0..4),
            cut in any::<prop::sample::Index>(),
        ) {
            prop_assume!(method != "CONNECT");
            let mut req = format!("{method} {path} HTTP/1.1\r\n");
            for (k, v) in &before {
                if !k.eq_ignore_ascii_case("host") {
                    req.push_str(&format!("{k}: {v}\r\n"));
                }
            }
            match port {
                Some(p) => req.push_str(&format!("Host: {name}:{p}\r\n")),
                None => req.push_str(&format!("Host: {name}\r\n")),
            }
            req.push_str("Accept: */*\r\n\r\n");
            let req = req.as_bytes();
            prop_assert_eq!(request_host(req), Ok(name.clone()));
            let prefix = &req[..cut.index(req.len() + 1)];
            match request_host(prefix) {
                Ok(got) => prop_assert_eq!(got, name),
                Err(e) => prop_assert_eq!(e, HttpError::Truncated),
            }
        }
    }
}
