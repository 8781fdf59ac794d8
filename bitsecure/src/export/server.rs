//! A deliberately small HTTP/1.1 server for `/metrics`, the JSON API and the health endpoints
//! (`/-/healthy`, `/-/ready`, as Prometheus' own exporters have them), GET only, one response
//! per connection, gzip when the client asks for it (Prometheus does: an exposition at the
//! series cap is megabytes), TLS and basic auth when configured ([`super::web`]). Requests are
//! bounded in size and time so a slow or hostile client cannot hold the agent's resources.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use log::{debug, warn};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpListener,
};

use super::web::WebSecurity;
use crate::export::metrics::Metrics;

const MAX_REQUEST_HEAD: usize = 8 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds `address`, failing with a clear message (e.g. port already in use).
pub async fn bind(address: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address).await.map_err(|error| {
        anyhow::anyhow!(
            "cannot listen on {address}: {error} (set agent.listen in the config to another address)"
        )
    })
}

/// Serves connections until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, web: Arc<WebSecurity>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let (metrics, web) = (Arc::clone(&metrics), Arc::clone(&web));
                tokio::spawn(async move {
                    let result = match &web.tls {
                        // The CLI on the rig itself speaks plain HTTP to loopback: a local
                        // client that does not open with a TLS handshake is served so, and
                        // without a password (as with the default loopback-only listen).
                        Some(_)
                            if peer.ip().to_canonical().is_loopback()
                                && !opens_with_tls(&stream).await =>
                        {
                            handle(stream, &metrics, &web, Trust::Local).await
                        }
                        Some(acceptor) => {
                            match tokio::time::timeout(REQUEST_TIMEOUT, acceptor.accept(stream))
                                .await
                            {
                                Ok(Ok(stream)) => {
                                    handle(stream, &metrics, &web, Trust::Remote).await
                                }
                                Ok(Err(error)) => Err(error),
                                Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
                            }
                        }
                        None => handle(stream, &metrics, &web, Trust::Remote).await,
                    };
                    if let Err(error) = result {
                        debug!("HTTP client {peer}: {error}");
                    }
                });
            }
            Err(error) => {
                warn!("accepting an HTTP connection failed: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Whether a connection's first byte is a TLS handshake record (waits for it, bounded).
async fn opens_with_tls(stream: &tokio::net::TcpStream) -> bool {
    let mut first = [0u8; 1];
    matches!(
        tokio::time::timeout(REQUEST_TIMEOUT, stream.peek(&mut first)).await,
        Ok(Ok(1)) if first[0] == 0x16
    )
}

/// Who a request comes from: a plain-HTTP client on loopback (the CLI) needs no password.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Trust {
    Local,
    Remote,
}

async fn handle<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    metrics: &Metrics,
    web: &WebSecurity,
    trust: Trust,
) -> std::io::Result<()> {
    let head = match tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream)).await {
        Ok(head) => head?,
        Err(_) => {
            let mut response = Response {
                stream: &mut stream,
                head_only: false,
            };
            return respond(&mut response, 408, "text/plain", "request timeout\n").await;
        }
    };
    let Some(head) = head else {
        let mut response = Response {
            stream: &mut stream,
            head_only: false,
        };
        return respond(&mut response, 431, "text/plain", "request head too large\n").await;
    };
    let request_line = head.lines().next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (method, target) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let path = target.split('?').next().unwrap_or_default();
    let head_only = method == "HEAD";
    let gzip = accepts_gzip(&head);
    let mut stream = Response {
        stream: &mut stream,
        head_only,
    };
    if trust == Trust::Remote && !web.authorized(&head) {
        return respond(&mut stream, 401, "text/plain", "unauthorized\n").await;
    }
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => match metrics.render() {
            Ok(body) => {
                respond_encoded(
                    &mut stream,
                    "text/plain; version=0.0.4; charset=utf-8",
                    body.as_bytes(),
                    gzip,
                )
                .await
            }
            Err(error) => {
                warn!("rendering metrics failed: {error}");
                respond(&mut stream, 500, "text/plain", "rendering metrics failed\n").await
            }
        },
        ("GET" | "HEAD", "/-/healthy") => {
            respond(&mut stream, 200, "text/plain", "Healthy\n").await
        }
        ("GET" | "HEAD", "/-/ready") if metrics.is_ready() => {
            respond(&mut stream, 200, "text/plain", "Ready\n").await
        }
        ("GET" | "HEAD", "/-/ready") => {
            respond(
                &mut stream,
                503,
                "text/plain",
                "not ready: the kernel maps were not polled yet\n",
            )
            .await
        }
        ("GET" | "HEAD", "/api/history") => {
            let range = query_param(target, "range")
                .and_then(|range| range.parse::<i64>().ok())
                .unwrap_or(3600)
                .clamp(60, 24 * 3600);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |since| since.as_secs_f64());
            match serde_json::to_string(&metrics.history.view(range, now)) {
                Ok(body) => {
                    respond_encoded(&mut stream, "application/json", body.as_bytes(), gzip).await
                }
                Err(_) => respond(&mut stream, 500, "text/plain", "serialising failed\n").await,
            }
        }
        ("GET" | "HEAD", "/api/unexpected" | "/api/baseline") => match metrics.api.body(path) {
            Some(Ok(body)) => {
                respond_encoded(&mut stream, "application/json", body.as_bytes(), gzip).await
            }
            _ => respond(&mut stream, 500, "text/plain", "serialising failed\n").await,
        },
        ("GET" | "HEAD", "/") => {
            respond(
                &mut stream,
                200,
                "text/plain",
                "BitSecure agent: /metrics (Prometheus), /api/unexpected, /api/baseline and \
             /api/history?range=SECONDS (JSON), /-/healthy, /-/ready\n",
            )
            .await
        }
        ("GET" | "HEAD", _) => respond(&mut stream, 404, "text/plain", "not found\n").await,
        _ => respond(&mut stream, 405, "text/plain", "only GET is supported\n").await,
    }
}

/// Reads up to the blank line ending the request head; `None` if it exceeds the limit.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<Option<String>> {
    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            break;
        }
        buffer.extend_from_slice(&chunk[..read]);
        if buffer.windows(4).any(|window| window == b"\r\n\r\n") {
            break;
        }
        if buffer.len() > MAX_REQUEST_HEAD {
            return Ok(None);
        }
    }
    Ok(Some(String::from_utf8_lossy(&buffer).into_owned()))
}

/// The value of query parameter `name` in a request target (`/path?a=1&b=2`), undecoded.
fn query_param<'a>(target: &'a str, name: &str) -> Option<&'a str> {
    let (_, query) = target.split_once('?')?;
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

/// Whether the request's `Accept-Encoding` allows gzip (not refused with `q=0`).
fn accepts_gzip(head: &str) -> bool {
    head.lines().skip(1).any(|line| {
        let Some((name, value)) = line.split_once(':') else {
            return false;
        };
        name.trim().eq_ignore_ascii_case("accept-encoding")
            && value.split(',').any(|coding| {
                let mut parts = coding.split(';').map(str::trim);
                let name = parts.next().unwrap_or_default();
                let refused = parts.any(|param| {
                    param
                        .strip_prefix("q=")
                        .and_then(|q| q.parse::<f32>().ok())
                        .is_some_and(|q| q == 0.0)
                });
                (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
            })
    })
}

/// Bodies smaller than this go as they are: compressing them saves nothing worth the time.
const GZIP_MIN_BYTES: usize = 1024;

/// A 200 response of `body`, gzip-compressed when the client accepts it and it is worth it.
async fn respond_encoded<S: AsyncWrite + Unpin>(
    response: &mut Response<'_, S>,
    content_type: &str,
    body: &[u8],
    gzip: bool,
) -> std::io::Result<()> {
    if !gzip || body.len() < GZIP_MIN_BYTES {
        return write_response(response, 200, content_type, None, body).await;
    }
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4),
        flate2::Compression::fast(),
    );
    std::io::Write::write_all(&mut encoder, body)?;
    let compressed = encoder.finish()?;
    write_response(response, 200, content_type, Some("gzip"), &compressed).await
}

/// Where a response goes; HEAD requests get the head only.
struct Response<'a, S> {
    stream: &'a mut S,
    head_only: bool,
}

async fn respond<S: AsyncWrite + Unpin>(
    response: &mut Response<'_, S>,
    status: u16,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    write_response(response, status, content_type, None, body.as_bytes()).await
}

async fn write_response<S: AsyncWrite + Unpin>(
    response: &mut Response<'_, S>,
    status: u16,
    content_type: &str,
    encoding: Option<&str>,
    body: &[u8],
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    };
    let mut encoding = encoding
        .map(|encoding| format!("Content-Encoding: {encoding}\r\n"))
        .unwrap_or_default();
    if status == 401 {
        encoding.push_str("WWW-Authenticate: Basic realm=\"bitsecure\"\r\n");
    }
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n{encoding}\
         Vary: Accept-Encoding\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    response.stream.write_all(head.as_bytes()).await?;
    if !response.head_only {
        response.stream.write_all(body).await?;
    }
    response.stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::accepts_gzip;

    #[test]
    fn gzip_is_sent_only_to_who_asks_for_it() {
        let head = |encoding: &str| format!("GET /metrics HTTP/1.1\r\n{encoding}\r\n\r\n");
        for asked in [
            "Accept-Encoding: gzip",
            "accept-encoding: deflate, GZIP;q=0.5",
            "Accept-Encoding: *",
        ] {
            assert!(accepts_gzip(&head(asked)), "{asked}");
        }
        for not in [
            "",
            "Accept-Encoding: identity",
            "Accept-Encoding: gzip;q=0",
            "X-Accept-Encoding: gzip",
        ] {
            assert!(!accepts_gzip(&head(not)), "{not}");
        }
        // The request line is not a header.
        assert!(!accepts_gzip("GET /accept-encoding:gzip HTTP/1.1\r\n\r\n"));
    }
}
