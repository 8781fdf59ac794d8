//! A minimal blocking HTTP GET client for local endpoints: the agent's own API (used by the
//! review commands) and Prometheus' HTTP API (used by the simulated rig and its tests).
//! It speaks HTTP/1.0 so that servers answer with a plain body up to the end of the connection
//! (no chunked encoding), which is all a loopback client needs.

use std::io::{Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs as _};
use std::time::Duration;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum HttpError {
    #[error("bad address {0:?}")]
    Address(String),
    #[error("cannot reach {address}: {source}")]
    Connect {
        address: String,
        source: std::io::Error,
    },
    #[error("talking to {address}: {source}")]
    Io {
        address: String,
        source: std::io::Error,
    },
    #[error("malformed answer from {0}")]
    Malformed(String),
    #[error("{address} answered {status}: {body}")]
    Status {
        address: String,
        status: String,
        body: String,
    },
}

/// GETs `path` (with its query string) from `address` ("127.0.0.1:9977", optionally with an
/// `http://` prefix) and returns the body of a 200 answer.
pub fn get(address: &str, path: &str) -> Result<String, HttpError> {
    let address = address.trim_start_matches("http://").trim_end_matches('/');
    let socket = address
        .to_socket_addrs()
        .ok()
        .and_then(|mut addresses| addresses.next())
        .ok_or_else(|| HttpError::Address(address.to_owned()))?;
    let mut stream =
        TcpStream::connect_timeout(&socket, Duration::from_secs(3)).map_err(|source| {
            HttpError::Connect {
                address: address.to_owned(),
                source,
            }
        })?;
    let io_error = |source| HttpError::Io {
        address: address.to_owned(),
        source,
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(io_error)?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").map_err(io_error)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).map_err(io_error)?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| HttpError::Malformed(address.to_owned()))?;
    let status = head.lines().next().unwrap_or_default();
    match status.split_whitespace().nth(1) {
        Some("200") => Ok(body.to_owned()),
        Some(_) => Err(HttpError::Status {
            address: address.to_owned(),
            status: status.to_owned(),
            body: body.chars().take(500).collect(),
        }),
        None => Err(HttpError::Malformed(address.to_owned())),
    }
}

/// Percent-encodes a query-string value (RFC 3986 unreserved characters stay as they are).
pub fn encode_query_value(value: &str) -> String {
    let mut encoded = String::with_capacity(value.len() * 3);
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                encoded.push(byte as char)
            }
            _ => encoded.push_str(&format!("%{byte:02X}")),
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(
            encode_query_value(r#"sum by (process) (up{job="x"}[5m])"#),
            "sum%20by%20%28process%29%20%28up%7Bjob%3D%22x%22%7D%5B5m%5D%29"
        );
        assert_eq!(encode_query_value("a-b_c.d~e"), "a-b_c.d~e");
        assert_eq!(encode_query_value("é"), "%C3%A9");
    }

    #[test]
    fn answers_other_than_200_are_errors() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            for status in ["200 OK", "404 Not Found"] {
                let (mut stream, _) = listener.accept().unwrap();
                // Read the whole request first: closing with unread input would reset.
                let mut request = Vec::new();
                let mut byte = [0u8; 1];
                while !request.ends_with(b"\r\n\r\n") {
                    stream.read_exact(&mut byte).unwrap();
                    request.push(byte[0]);
                }
                write!(
                    stream,
                    "HTTP/1.0 {status}\r\nContent-Length: 5\r\n\r\nhello"
                )
                .unwrap();
            }
        });
        assert_eq!(get(&address, "/a").unwrap(), "hello");
        let error = get(&address, "/b").unwrap_err().to_string();
        assert!(error.contains("404 Not Found"), "{error}");
        server.join().unwrap();
    }
}
