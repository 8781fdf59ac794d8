//! A deliberately small HTTP/1.1 server for `/metrics` and the JSON API (GET only, one
//! response per connection). Requests are bounded in size and time so a slow or hostile client cannot hold
//! the agent's resources.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use log::{debug, warn};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

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
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let metrics = Arc::clone(&metrics);
                tokio::spawn(async move {
                    if let Err(error) = handle(stream, &metrics).await {
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

async fn handle(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
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
    let mut stream = Response {
        stream: &mut stream,
        head_only,
    };
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => match metrics.render() {
            Ok(body) => {
                respond(
                    &mut stream,
                    200,
                    "text/plain; version=0.0.4; charset=utf-8",
                    &body,
                )
                .await
            }
            Err(error) => {
                warn!("rendering metrics failed: {error}");
                respond(&mut stream, 500, "text/plain", "rendering metrics failed\n").await
            }
        },
        ("GET" | "HEAD", "/api/unexpected" | "/api/baseline") => match metrics.api.body(path) {
            Some(Ok(body)) => respond(&mut stream, 200, "application/json", body.as_str()).await,
            _ => respond(&mut stream, 500, "text/plain", "serialising failed\n").await,
        },
        ("GET" | "HEAD", "/") => respond(
            &mut stream,
            200,
            "text/plain",
            "BitSecure agent: /metrics (Prometheus), /api/unexpected and /api/baseline (JSON)\n",
        )
        .await,
        ("GET" | "HEAD", _) => respond(&mut stream, 404, "text/plain", "not found\n").await,
        _ => respond(&mut stream, 405, "text/plain", "only GET is supported\n").await,
    }
}

/// Reads up to the blank line ending the request head; `None` if it exceeds the limit.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
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

/// Where a response goes; HEAD requests get the head only.
struct Response<'a> {
    stream: &'a mut TcpStream,
    head_only: bool,
}

async fn respond(
    response: &mut Response<'_>,
    status: u16,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        _ => "Internal Server Error",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    response.stream.write_all(head.as_bytes()).await?;
    if !response.head_only {
        response.stream.write_all(body.as_bytes()).await?;
    }
    response.stream.shutdown().await
}
