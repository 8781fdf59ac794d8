//! The programs of the simulated rig. Each runs under its own executable name (the demo copies
//! this binary), so the agent attributes its traffic by that name, as on a real rig:
//!
//! - `pool`: a Stratum-like pool (newline-delimited JSON-RPC over TCP) speaking both
//!   [`Flavour`]s: answers `mining.subscribe`, `mining.authorize` and `mining.submit`, or
//!   `login` and `submit`, and pushes a job (`mining.notify` or `job`) to every logged-in miner
//!   each job interval.
//! - `miner`: logs in (subscribe + authorize, or login) and submits a share for every job it
//!   receives.
//! - `monitor`: an HTTP endpoint that accepts the reporter's POSTs (204 No Content).
//! - `reporter`: POSTs a stats document of a given size every interval, or once (a burst).
//! - `udp-responder` / `udp-ticker`: DNS- and NTP-like request/response background traffic.
//! - `dns-server`: answers A questions from a zone file it reads for every query.
//!
//! Servers print `ready` once listening; everything runs until killed, except a reporter with
//! `--count`.

use std::io::{self, BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use clap::{Args, ValueEnum};
use serde_json::{Value, json};

#[derive(Args)]
pub struct PoolArgs {
    /// Address to listen on, e.g. 10.77.1.2:3333.
    #[arg(long)]
    listen: SocketAddr,
    /// Milliseconds between two jobs pushed to every miner (the job cycle).
    #[arg(long)]
    job_interval_ms: u64,
    /// Approximate size of one `mining.notify` message in bytes.
    #[arg(long, default_value_t = 2048)]
    job_bytes: usize,
    /// Push jobs at random times (a Poisson process whose mean interval is
    /// `--job-interval-ms`), as real pools do when blocks come, instead of every interval.
    #[arg(long)]
    poisson: bool,
}

/// A source of random intervals (xorshift; reproducible per process, no crate needed).
struct Random(u64);

impl Random {
    fn new() -> Self {
        Self(u64::from(std::process::id()).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// Uniform in (0, 1].
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    /// An exponential interval of mean `mean` (the gaps of a Poisson process).
    fn exponential(&mut self, mean: Duration) -> Duration {
        mean.mul_f64(-self.unit().ln())
    }
}

/// The dialect of Stratum a miner speaks (the pool answers both).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Flavour {
    /// Stratum V1: `mining.subscribe`, `mining.authorize`, `mining.notify`, `mining.submit`.
    V1,
    /// The JSON-RPC 2.0 stratum of xmrig and Monero pools: `login` (whose result carries the
    /// first job), `job`, `submit`.
    Login,
}

#[derive(Args)]
pub struct MinerArgs {
    /// The pool's address.
    #[arg(long)]
    pool: SocketAddr,
    /// Worker name (`mining.authorize`) or wallet login (`login`).
    #[arg(long, default_value = "rig01.worker")]
    worker: String,
    /// Stratum dialect.
    #[arg(long, value_enum, default_value_t = Flavour::V1)]
    flavour: Flavour,
    /// Exit successfully after submitting a share for this many jobs; 0 = mine until the pool
    /// closes the connection (an error).
    #[arg(long, default_value_t = 0)]
    jobs: u64,
    /// Resolve this name (type A, at `--dns`) before connecting, and connect to its address
    /// (on the port of `--pool`), as a miner given the pool by name does.
    #[arg(long, requires = "dns")]
    resolve: Option<String>,
    /// The DNS server `--resolve` asks.
    #[arg(long, requires = "resolve")]
    dns: Option<SocketAddr>,
    /// Reconnect (resolving again) after random times of this mean, in milliseconds, as a
    /// miner does when its pool drops it; 0 = keep the one connection.
    #[arg(long, default_value_t = 0)]
    reconnect_mean_ms: u64,
}

#[derive(Args)]
pub struct MonitorArgs {
    /// Address to accept the reporter's HTTP POSTs on.
    #[arg(long)]
    listen: SocketAddr,
}

#[derive(Args)]
pub struct ReporterArgs {
    /// The monitoring endpoint's address.
    #[arg(long)]
    to: SocketAddr,
    /// Size of each report body in bytes.
    #[arg(long)]
    bytes: u64,
    /// Milliseconds between reports.
    #[arg(long, default_value_t = 60_000)]
    every_ms: u64,
    /// Reports to send; 0 = until killed. A finite reporter fails if a report fails.
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Host header of the requests (the agent names the remote after it); default: the
    /// address.
    #[arg(long)]
    host: Option<String>,
}

#[derive(Args)]
pub struct UdpResponderArgs {
    /// Address to answer datagrams on.
    #[arg(long)]
    listen: SocketAddr,
    /// Size of each answer in bytes.
    #[arg(long)]
    reply_bytes: usize,
}

#[derive(Args)]
pub struct DnsServerArgs {
    /// Address to answer DNS queries on (UDP).
    #[arg(long)]
    listen: SocketAddr,
    /// The zone: one `NAME ADDRESS` (IPv4) per line, read again for every query, so the demo
    /// can change an answer while the server runs (a hijacked name). Other names: NXDOMAIN.
    #[arg(long)]
    zone: PathBuf,
    /// TTL of the answers, in seconds.
    #[arg(long, default_value_t = 300)]
    ttl: u32,
}

#[derive(Args)]
pub struct UdpTickerArgs {
    /// The responder's address.
    #[arg(long)]
    to: SocketAddr,
    /// Size of each request in bytes.
    #[arg(long)]
    bytes: usize,
    /// Milliseconds between requests.
    #[arg(long)]
    every_ms: u64,
    /// Send a DNS query for this name (type A) instead of `--bytes` filler bytes.
    #[arg(long)]
    dns_name: Option<String>,
}

#[derive(Args)]
pub struct DnsBurstArgs {
    /// The DNS server to send the queries to.
    #[arg(long)]
    to: SocketAddr,
    /// The domain the random names are under (`<random>.DOMAIN`).
    #[arg(long)]
    domain: String,
    /// Queries to send (without waiting for answers).
    #[arg(long)]
    count: u32,
    /// Milliseconds between two queries.
    #[arg(long, default_value_t = 0)]
    every_ms: u64,
}

/// Wire bytes of a DNS query (type A) for `name`.
fn dns_query(id: u16, name: &str) -> Result<Vec<u8>> {
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RecordType};
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    let name = Name::from_ascii(format!("{name}.")).context("not a DNS name")?;
    message.add_query(Query::query(name, RecordType::A));
    message.to_vec().context("cannot encode a DNS query")
}

/// Data leaving inside DNS questions: `count` queries for random names under a domain.
pub fn dns_burst(args: &DnsBurstArgs) -> Result<()> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).context("cannot bind")?;
    let mut state = u64::from(std::process::id()) | 1;
    for i in 0..args.count {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let query = dns_query(i as u16, &format!("x{state:016x}.{}", args.domain))?;
        socket.send_to(&query, args.to)?;
        thread::sleep(Duration::from_millis(args.every_ms));
    }
    Ok(())
}

fn announce_ready() -> Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "ready")
        .and_then(|()| out.flush())
        .context("cannot write to stdout")
}

/// Writes one JSON-RPC message as a line.
fn send_line(mut stream: &TcpStream, message: &Value) -> io::Result<()> {
    let mut line = message.to_string();
    line.push('\n');
    stream.write_all(line.as_bytes())
}

pub fn pool(args: &PoolArgs) -> Result<()> {
    let listener = TcpListener::bind(args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    announce_ready()?;
    let miners: Arc<Mutex<Vec<(TcpStream, Flavour)>>> = Arc::default();
    let (interval, job_bytes) = (Duration::from_millis(args.job_interval_ms), args.job_bytes);
    let poisson = args.poisson;
    let subscribed = Arc::clone(&miners);
    thread::spawn(move || {
        let mut random = Random::new();
        for job in 1u64.. {
            thread::sleep(if poisson {
                random.exponential(interval)
            } else {
                interval
            });
            // A miner whose connection broke is dropped from the list.
            subscribed
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .retain(|(miner, flavour)| {
                    send_line(miner, &job_message(*flavour, job, job_bytes)).is_ok()
                });
        }
    });
    for stream in listener.incoming() {
        let stream = stream.context("accept failed")?;
        let miners = Arc::clone(&miners);
        thread::spawn(move || {
            if let Err(error) = serve_miner(stream, &miners, job_bytes) {
                eprintln!("pool: {error:#}");
            }
        });
    }
    Ok(())
}

/// A `mining.notify` of about `size` bytes (the coinbase part is padded).
fn job_notification(job: u64, size: usize) -> Value {
    let coinbase = "0".repeat(size.saturating_sub(200));
    json!({
        "id": null,
        "method": "mining.notify",
        "params": [
            format!("{job:08x}"),
            "4d16b6f85af6e2198f44ae2a6de67f78487ae5611b77c6c0440b921e00000000",
            coinbase,
            "072f736c7573682f00000000",
            [],
            "20000000",
            "1d00ffff",
            format!("{:08x}", 0x6744_0000u64 + job),
            true
        ]
    })
}

/// The job of the `login` flavour: a hashing blob of about `size` hex digits.
fn login_job(job: u64, size: usize) -> Value {
    json!({
        "job_id": format!("{job:08x}"),
        "blob": "0".repeat(size.saturating_sub(120)),
        "target": "b88d0600",
        "height": 3_100_000 + job,
        "algo": "rx/0"
    })
}

/// Job `job` pushed to a miner of `flavour`.
fn job_message(flavour: Flavour, job: u64, size: usize) -> Value {
    match flavour {
        Flavour::V1 => job_notification(job, size),
        Flavour::Login => {
            json!({"jsonrpc": "2.0", "method": "job", "params": login_job(job, size)})
        }
    }
}

fn serve_miner(
    stream: TcpStream,
    miners: &Mutex<Vec<(TcpStream, Flavour)>>,
    job_bytes: usize,
) -> Result<()> {
    let reader = BufReader::new(stream.try_clone()?);
    for line in reader.lines() {
        let request: Value = serde_json::from_str(&line?).context("not JSON-RPC")?;
        let id = request.get("id").cloned().unwrap_or(Value::Null);
        let method = request.get("method").and_then(Value::as_str);
        let (reply, logged_in) = match method {
            Some("mining.subscribe") => {
                let subscriptions = json!([
                    [["mining.notify", "ae6812eb4cd7735a302a8a9dd95cf71f"]],
                    "08000002",
                    4
                ]);
                (
                    json!({"id": id, "result": subscriptions, "error": null}),
                    None,
                )
            }
            Some("mining.authorize") => (
                json!({"id": id, "result": true, "error": null}),
                Some(Flavour::V1),
            ),
            Some("mining.submit") => (json!({"id": id, "result": true, "error": null}), None),
            // The login result carries the first job.
            Some("login") => {
                let result = json!({"id": "1", "job": login_job(0, job_bytes), "status": "OK"});
                (
                    json!({"id": id, "jsonrpc": "2.0", "error": null, "result": result}),
                    Some(Flavour::Login),
                )
            }
            Some("submit" | "keepalived") => (
                json!({"id": id, "jsonrpc": "2.0", "error": null, "result": {"status": "OK"}}),
                None,
            ),
            other => bail!("unknown method {other:?}"),
        };
        send_line(&stream, &reply)?;
        if let Some(flavour) = logged_in {
            if flavour == Flavour::V1 {
                // Like a real pool: the first job right away, then one per cycle.
                send_line(&stream, &job_notification(0, job_bytes))?;
            }
            miners
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push((stream.try_clone()?, flavour));
        }
    }
    Ok(())
}

/// The job id a pool message hands the miner, if it carries a job.
fn job_id(flavour: Flavour, message: &Value) -> Option<Value> {
    match flavour {
        Flavour::V1 => (message["method"] == "mining.notify").then(|| message["params"][0].clone()),
        Flavour::Login if message["method"] == "job" => Some(message["params"]["job_id"].clone()),
        Flavour::Login => message
            .get("result")
            .and_then(|result| result.get("job"))
            .map(|job| job["job_id"].clone()),
    }
}

/// The first IPv4 address `server` answers for `name`.
fn resolve(server: SocketAddr, name: &str) -> Result<Ipv4Addr> {
    use hickory_proto::op::Message;
    use hickory_proto::rr::RData;
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).context("cannot bind")?;
    socket.set_read_timeout(Some(Duration::from_secs(5)))?;
    let id = (std::process::id() & 0xffff) as u16;
    socket.send_to(&dns_query(id, name)?, server)?;
    let mut answer = [0u8; 2048];
    loop {
        let (length, from) = socket
            .recv_from(&mut answer)
            .with_context(|| format!("no answer from {server} for {name}"))?;
        let Ok(message) = Message::from_vec(&answer[..length]) else {
            continue;
        };
        if from != server || message.metadata.id != id {
            continue;
        }
        return message
            .answers
            .iter()
            .find_map(|record| match &record.data {
                RData::A(address) => Some(address.0),
                _ => None,
            })
            .with_context(|| format!("{server} has no address for {name}"));
    }
}

pub fn miner(args: &MinerArgs) -> Result<()> {
    let mut random = Random::new();
    loop {
        let until = (args.reconnect_mean_ms > 0).then(|| {
            std::time::Instant::now()
                + random.exponential(Duration::from_millis(args.reconnect_mean_ms))
        });
        if mine_once(args, until)? {
            return Ok(());
        }
    }
}

/// One connection to the pool (resolved first when asked), mining until `until` (then
/// `Ok(false)`: reconnect) or `--jobs` jobs (`Ok(true)`).
fn mine_once(args: &MinerArgs, until: Option<std::time::Instant>) -> Result<bool> {
    let pool = match (&args.resolve, args.dns) {
        (Some(name), Some(dns)) => SocketAddr::new(resolve(dns, name)?.into(), args.pool.port()),
        _ => args.pool,
    };
    let stream =
        TcpStream::connect(pool).with_context(|| format!("cannot reach the pool at {pool}"))?;
    if until.is_some() {
        // Wake up now and then to see whether it is time to reconnect.
        stream.set_read_timeout(Some(Duration::from_millis(100)))?;
    }
    let mut next_id = match args.flavour {
        Flavour::V1 => {
            send_line(
                &stream,
                &json!({"id": 1, "method": "mining.subscribe", "params": ["bitsecure-rig/1.0"]}),
            )?;
            send_line(
                &stream,
                &json!({"id": 2, "method": "mining.authorize", "params": [args.worker, "x"]}),
            )?;
            3u64
        }
        Flavour::Login => {
            let params = json!({"login": args.worker, "pass": "x", "agent": "bitsecure-rig/1.0"});
            send_line(
                &stream,
                &json!({"id": 1, "jsonrpc": "2.0", "method": "login", "params": params}),
            )?;
            2
        }
    };
    let mut jobs = 0;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    loop {
        if until.is_some_and(|until| std::time::Instant::now() >= until) {
            return Ok(false);
        }
        match reader.read_line(&mut line) {
            Ok(0) => bail!("the pool closed the connection"),
            Ok(_) if line.ends_with('\n') => {}
            // A timeout (or a line cut by one): read on.
            Ok(_) => continue,
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(error) => return Err(error).context("pool connection failed"),
        }
        let message: Value = serde_json::from_str(line.trim_end())
            .context("the pool sent something that is not JSON")?;
        line.clear();
        let Some(job) = job_id(args.flavour, &message) else {
            continue;
        };
        // "Found" a share for this job.
        let share = match args.flavour {
            Flavour::V1 => json!({
                "id": next_id,
                "method": "mining.submit",
                "params": [args.worker, job, "00000001", "67440000", "b2957c02"]
            }),
            Flavour::Login => json!({
                "id": next_id,
                "jsonrpc": "2.0",
                "method": "submit",
                "params": {"id": "1", "job_id": job, "nonce": "b2957c02", "result": "0".repeat(64)}
            }),
        };
        send_line(&stream, &share)?;
        next_id += 1;
        jobs += 1;
        if jobs == args.jobs {
            return Ok(true);
        }
    }
}

pub fn monitor(args: &MonitorArgs) -> Result<()> {
    let listener = TcpListener::bind(args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    announce_ready()?;
    for stream in listener.incoming() {
        let stream = stream.context("accept failed")?;
        thread::spawn(move || {
            if let Err(error) = accept_report(stream) {
                eprintln!("monitor: {error:#}");
            }
        });
    }
    Ok(())
}

/// Reads one HTTP request (head + Content-Length body) and answers 204.
fn accept_report(stream: TcpStream) -> Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut content_length = 0u64;
    loop {
        let mut line = String::new();
        ensure!(
            reader.read_line(&mut line)? > 0,
            "connection closed mid-request"
        );
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            content_length = value.trim().parse().context("bad Content-Length")?;
        }
    }
    let body = io::copy(&mut reader.take(content_length), &mut io::sink())?;
    ensure!(body == content_length, "body cut short");
    (&stream).write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")?;
    Ok(())
}

pub fn reporter(args: &ReporterArgs) -> Result<()> {
    let mut sent = 0;
    loop {
        let host = args.host.clone().unwrap_or_else(|| args.to.to_string());
        match post_report(args.to, &host, args.bytes) {
            Ok(()) => {}
            Err(error) if args.count == 0 => eprintln!("reporter: {error:#}"),
            Err(error) => return Err(error),
        }
        sent += 1;
        if args.count != 0 && sent >= args.count {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(args.every_ms));
    }
}

fn post_report(to: SocketAddr, host: &str, bytes: u64) -> Result<()> {
    let mut stream =
        TcpStream::connect(to).with_context(|| format!("cannot reach the monitor at {to}"))?;
    // One write, as real HTTP clients do: the agent reads the Host from the first packet.
    let head = format!(
        "POST /api/v1/report HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: {bytes}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes())?;
    // A stats document padded to the requested size.
    let head = br#"{"rig":"rig01","hashrate_khs":123.4,"temperatures":[61,63,60],"pad":""#;
    let head = &head[..head.len().min(bytes as usize)];
    stream.write_all(head)?;
    io::copy(
        &mut io::repeat(b'x').take(bytes - head.len() as u64),
        &mut stream,
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    ensure!(
        answer.starts_with("HTTP/1.1 2"),
        "the monitor answered {:?}",
        answer.lines().next().unwrap_or_default()
    );
    Ok(())
}

pub fn udp_responder(args: &UdpResponderArgs) -> Result<()> {
    let socket =
        UdpSocket::bind(args.listen).with_context(|| format!("cannot bind {}", args.listen))?;
    announce_ready()?;
    let answer = vec![0x5a; args.reply_bytes];
    let mut request = [0u8; 2048];
    loop {
        let (_, from) = socket.recv_from(&mut request)?;
        socket.send_to(&answer, from)?;
    }
}

/// The address `name` has in the zone file, if any.
fn zone_address(zone: &Path, name: &str) -> Result<Option<Ipv4Addr>> {
    let text = std::fs::read_to_string(zone)
        .with_context(|| format!("cannot read the zone {}", zone.display()))?;
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        if let (Some(owner), Some(address)) = (fields.next(), fields.next())
            && owner.trim_end_matches('.').eq_ignore_ascii_case(name)
        {
            return Ok(Some(address.parse().with_context(|| {
                format!("{address:?} in the zone is not an IPv4 address")
            })?));
        }
    }
    Ok(None)
}

/// The encoded answer to the encoded `query`: the zone's address for an A question, else
/// NXDOMAIN.
fn dns_answer(query: &[u8], zone: &Path, ttl: u32) -> Result<Vec<u8>> {
    use hickory_proto::op::{Message, ResponseCode};
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{RData, Record, RecordType};
    let request = Message::from_vec(query).context("not a DNS message")?;
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    let Some(question) = request.queries.first() else {
        response.metadata.response_code = ResponseCode::FormErr;
        return response.to_vec().context("cannot encode a DNS answer");
    };
    response.add_query(question.clone());
    let name = question.name().to_ascii();
    match zone_address(zone, name.trim_end_matches('.'))? {
        Some(address) if question.query_type() == RecordType::A => {
            let owner = question.name().clone();
            response.add_answer(Record::from_rdata(owner, ttl, RData::A(A(address))));
        }
        Some(_) => {}
        None => response.metadata.response_code = ResponseCode::NXDomain,
    }
    response.to_vec().context("cannot encode a DNS answer")
}

pub fn dns_server(args: &DnsServerArgs) -> Result<()> {
    let socket =
        UdpSocket::bind(args.listen).with_context(|| format!("cannot bind {}", args.listen))?;
    zone_address(&args.zone, "")?;
    announce_ready()?;
    let mut query = [0u8; 2048];
    loop {
        let (length, from) = socket.recv_from(&mut query)?;
        match dns_answer(&query[..length], &args.zone, args.ttl) {
            Ok(answer) => {
                socket.send_to(&answer, from)?;
            }
            Err(error) => eprintln!("dns-server: query from {from}: {error:#}"),
        }
    }
}

pub fn udp_ticker(args: &UdpTickerArgs) -> Result<()> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).context("cannot bind")?;
    socket.set_read_timeout(Some(Duration::from_secs(1)))?;
    let request = match &args.dns_name {
        Some(name) => dns_query(0x4242, name)?,
        None => vec![0xa5; args.bytes],
    };
    let mut answer = [0u8; 2048];
    loop {
        socket.send_to(&request, args.to)?;
        // A lost answer is not an error for a background ticker.
        let _ = socket.recv_from(&mut answer);
        thread::sleep(Duration::from_millis(args.every_ms));
    }
}
