//! Names and applications of remote endpoints, from the bytes the kernel hands over.
//!
//! Pure parsing, no I/O and no clocks; every function takes any byte slice without panicking.
//!
//! - [`dns`]: address → name mappings from DNS responses (UDP messages, and TCP segments with
//!   their 2-byte length prefix), following CNAME chains back to the name the client asked for.
//! - [`tls`]: the SNI host name of a TLS ClientHello, from a possibly truncated prefix.
//! - [`http`]: the Host of the first HTTP/1.x request.
//! - [`app`]: a coarse application class (stratum, tls, http, ssh, dns) of a flow's first bytes.

pub mod app;
pub mod dns;
pub mod http;
pub mod stratum;
pub mod tls;

pub use app::{App, classify, classify_flow};
pub use dns::{DnsAnswer, DnsError};
pub use http::HttpError;
pub use tls::TlsError;

/// Longest host name in text form (RFC 1035: 255 octets on the wire, 253 characters as text).
pub const MAX_HOST_NAME_LEN: usize = 253;

/// A host name as sent in SNI or an HTTP Host header, checked and lowercased.
///
/// Accepts letters, digits, `-` and `_` in dot-separated labels of 1 to 63 characters (one
/// trailing dot is dropped), at most [`MAX_HOST_NAME_LEN`] characters. Anything else (control
/// characters, spaces, empty labels, non-ASCII) gives `None`: such a name would be a forgery or
/// garbage, and must not reach metric labels.
pub(crate) fn host_name(bytes: &[u8]) -> Option<String> {
    let bytes = bytes.strip_suffix(b".").unwrap_or(bytes);
    if bytes.is_empty() || bytes.len() > MAX_HOST_NAME_LEN {
        return None;
    }
    let labels_ok = bytes.split(|&b| b == b'.').all(|label| {
        (1..=63).contains(&label.len())
            && label
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    if !labels_ok {
        return None;
    }
    // Only ASCII bytes remain, so this cannot fail.
    let text = std::str::from_utf8(bytes).ok()?;
    Some(text.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::host_name;

    #[test]
    fn host_name_accepts_and_lowercases() {
        assert_eq!(
            host_name(b"Pool.Example.ORG").as_deref(),
            Some("pool.example.org")
        );
        assert_eq!(
            host_name(b"pool.example.org.").as_deref(),
            Some("pool.example.org")
        );
        assert_eq!(
            host_name(b"_srv.x-y.example").as_deref(),
            Some("_srv.x-y.example")
        );
        assert_eq!(host_name(b"10.0.0.1").as_deref(), Some("10.0.0.1"));
    }

    #[test]
    fn host_name_rejects_garbage() {
        for bad in [
            &b""[..],
            b".",
            b"..",
            b"a..b",
            b".a",
            b"a b",
            b"a\r\nb",
            b"a\0",
            b"caf\xc3\xa9.example",
            b"a:80",
            b"a/b",
        ] {
            assert_eq!(host_name(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        let long_label = "a".repeat(64);
        assert_eq!(host_name(long_label.as_bytes()), None);
        let ok_label = "a".repeat(63);
        assert!(host_name(ok_label.as_bytes()).is_some());
        let long_name = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(62),
        ]
        .join(".");
        assert_eq!(long_name.len(), 254);
        assert_eq!(host_name(long_name.as_bytes()), None);
        assert!(host_name(&long_name.as_bytes()[1..]).is_some());
    }
}
