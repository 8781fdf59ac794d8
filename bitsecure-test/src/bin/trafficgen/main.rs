//! Traffic generator for the privileged integration tests and the benchmark.
//!
//! The tests copy this binary to a unique executable name, so that the kernel's `comm` (and so
//! the agent's attribution) identifies it, run the client side in the root network namespace
//! and `serve` inside a test namespace, where nftables counts the packets as independent truth.
//!
//! Every client subcommand prints exactly one JSON line on stdout when it ends, also on failure:
//! `{"sent_bytes":N,"received_bytes":M,"packets_sent":P,"packets_received":Q}`. The byte counts
//! are what the process passed to / got from its sockets: for TCP every byte of the stream,
//! including the `SEND n`/`RECV n` header line and the `OK` reply; for UDP and raw IP the
//! datagram payloads; for ping the ICMP messages (8-byte ICMP header + payload), never an IP
//! header. Packets count datagrams / ICMP messages (they stay 0 for TCP). Only matching echoes
//! are counted as received. The exit status is 0 only if everything expected happened before
//! `--timeout-secs` elapsed (a watchdog then prints the totals so far and exits with 1).
//!
//! TCP protocol (`serve`, `tcp-serve`): the client may first send any number of `JOB <n>\n`
//! lines, each answered with n bytes on the same connection (the miner-like `periodic`), then
//! one line `SEND <n>\n` or `RECV <n>\n`.
//! For SEND the server reads exactly n bytes, replies `OK\n` and waits for the client to close;
//! for RECV it writes n bytes, shuts down its write side and waits for the client to close.
//!
//! Raw IP echo: the client sends its requests with TTL/hop limit [`REQUEST_HOPS`] and the server
//! its replies with [`REPLY_HOPS`]; each side ignores packets carrying its own value, which are
//! its own packets looped back when both ends share a host (loopback), so they never ping-pong.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::mem;
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket,
};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::ptr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use clap::{Args, Parser, Subcommand, ValueEnum};

mod dns;
mod flood;
mod packet;
mod tap;
mod xdp;

/// TTL / hop limit of raw IP echo requests sent by `raw`.
const REQUEST_HOPS: u8 = 200;
/// TTL / hop limit of raw IP echo replies sent by `serve --raw-protocol`.
const REPLY_HOPS: u8 = 100;
/// Size of the write chunks and of the TCP receive buffers.
const CHUNK: usize = 64 * 1024;
/// Size of the datagram receive buffers (larger than any IP packet).
const DATAGRAM_BUF: usize = 1 << 17;

#[derive(Parser)]
#[command(
    version,
    about = "Traffic generator for the bitsecure integration tests"
)]
struct Cli {
    /// Seconds a client subcommand may take before it fails (exit status 1).
    #[arg(long, global = true, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_secs: u64,
    /// Takes this process name (`prctl(PR_SET_NAME)`, as any process can) before doing
    /// anything: what an impostor of another process does.
    #[arg(long, global = true)]
    comm: Option<String>,
    #[command(subcommand)]
    command: Command,
}

/// Renames the calling thread (the main thread: the process) to `name` (15 bytes at most).
fn set_comm(name: &str) {
    let name = std::ffi::CString::new(name).expect("a name without NUL");
    // SAFETY: PR_SET_NAME reads a NUL-terminated string (truncated to 16 bytes by the kernel).
    let result = unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong, 0, 0, 0) };
    assert_eq!(
        result,
        0,
        "prctl(PR_SET_NAME): {}",
        std::io::Error::last_os_error()
    );
}

#[derive(Subcommand)]
enum Command {
    /// Long-running echo server (until killed): TCP SEND/RECV, UDP echo and raw IP echo.
    /// Prints `ready` once every socket is bound.
    Serve(ServeArgs),
    /// TCP client: C rounds, each uploading N bytes (SEND) on one connection and/or downloading
    /// M bytes (RECV) on another; P connections at a time.
    Tcp(TcpArgs),
    /// TCP server as the traffic source: accepts exactly C connections speaking the SEND/RECV
    /// protocol, serves them concurrently, then prints the totals. Prints `ready` once listening.
    TcpServe(TcpServeArgs),
    /// UDP client (unconnected socket, send_to): sends N datagrams of S bytes, each waiting for
    /// its echo before the next.
    Udp(UdpArgs),
    /// ICMP / ICMPv6 echo over a raw socket: N sequential echo requests of S payload bytes, each
    /// waiting for its reply (matched by identifier, sequence and payload).
    Ping(PingArgs),
    /// Raw IP client of protocol N: sends K packets of S bytes to ADDR, each waiting for its echo
    /// from `serve --raw-protocol` (packets from other sources are ignored).
    Raw(RawArgs),
    /// Opens a TCP connection at once and prints `connected`, waits (polling every 50 ms) until
    /// the go-file exists, then uploads N bytes (SEND) on that already open connection.
    /// The `--timeout-secs` watchdog starts when the go-file appears.
    Hold(HoldArgs),
    /// A miner-like client: one long-lived TCP connection on which it fetches a job of N bytes
    /// (`JOB n`) every interval (± jitter), K times (0 = until killed). Prints `connected`.
    Periodic(PeriodicArgs),
    /// Short-connection churn: N TCP connections, P at a time, each to the next server of the
    /// list in turn: connect, upload B bytes (SEND), read the `OK`, close. Several servers
    /// (ports) keep the client's TIME_WAIT sockets from using up the ephemeral ports.
    Churn(ChurnArgs),
    /// Port-scan / P2P-burst traffic: one unconnected UDP socket sends one datagram of S bytes
    /// to each of N consecutive IPv4 addresses from FIRST, cycling over K ports from PORT,
    /// without waiting for answers (nothing is counted as received).
    Spray(SprayArgs),
    /// Long-running DNS server over UDP and TCP on the same port, answering from the records
    /// given on the command line (CNAME chains followed within them), NXDOMAIN otherwise.
    /// Prints `ready` once both sockets are bound.
    DnsServe(dns::DnsServeArgs),
    /// Sends N distinct DNS responses (unique names and addresses) from a local address (port
    /// 53) to a UDP address, without waiting for anything; the report counts them.
    DnsFlood(dns::DnsFloodArgs),
    /// Resolves one name (type A) at a DNS server over UDP, as a stub resolver would; the
    /// addresses go to stderr.
    DnsQuery(dns::DnsQueryArgs),
    /// Receives UDP datagrams on ADDR and counts them: prints `ready` once bound, ends after the
    /// first datagram once none came for the idle time.
    UdpSink(UdpSinkArgs),
    /// TCP SYNs from N spoofed IPv4 sources at a listener (raw socket, needs CAP_NET_RAW),
    /// without waiting for anything; the report counts whole IP packets.
    SynFlood(flood::SynFloodArgs),
    /// N UDP clients, each its own socket (its own port), send one datagram each to an echo
    /// server and wait for the echo.
    UdpClients(flood::UdpClientsArgs),
    /// F hand-built Ethernet/IPv4/UDP frames through an AF_PACKET socket on IF (below every
    /// socket hook), then holds the socket open until killed (prints `ready`).
    PacketSend(packet::PacketSendArgs),
    /// Two tap devices joined like a VM host, merging TCP segments into GSO frames (LRO).
    TapMerge(tap::TapMergeArgs),
    /// Attaches a pass-everything XDP program to IF and holds it until killed (prints `ready`).
    XdpAttach(xdp::XdpAttachArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Address to serve the TCP SEND/RECV protocol on, e.g. 10.0.0.2:5000 or [fd00::2]:5000.
    #[arg(long)]
    tcp: Option<SocketAddr>,
    /// Address to echo UDP datagrams on.
    #[arg(long)]
    udp: Option<SocketAddr>,
    /// IP protocol number to echo on a raw socket (e.g. 253).
    #[arg(long, requires = "raw_bind", value_parser = clap::value_parser!(u8).range(1..=254))]
    raw_protocol: Option<u8>,
    /// Local address of the raw socket (its family selects IPv4 or IPv6).
    #[arg(long, requires = "raw_protocol")]
    raw_bind: Option<IpAddr>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Method {
    /// write(2) from a buffer.
    Write,
    /// sendfile(2) from a temporary file.
    Sendfile,
    /// splice(2) from a pipe filled by another thread.
    Splice,
}

#[derive(Args)]
struct TcpArgs {
    /// Server address, e.g. 10.0.0.2:5000 or [fd00::2]:5000.
    #[arg(long)]
    connect: SocketAddr,
    /// Bytes to upload (SEND) per round.
    #[arg(long, default_value_t = 0)]
    upload: u64,
    /// Bytes to download (RECV) per round.
    #[arg(long, default_value_t = 0)]
    download: u64,
    /// Number of rounds; a round opens one connection per non-zero direction.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    connections: u64,
    /// Connections open at the same time (one thread each).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=4096))]
    parallel: u64,
    /// How upload data is handed to the socket (downloads always use read(2)).
    #[arg(long, value_enum, default_value_t = Method::Write)]
    method: Method,
}

#[derive(Args)]
struct TcpServeArgs {
    /// Address to listen on.
    #[arg(long)]
    listen: SocketAddr,
    /// Number of connections to accept and serve before exiting.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=4096))]
    connections: u64,
    /// Milliseconds to wait before the first accept: connections (and what their clients
    /// send) wait in the listen backlog meanwhile.
    #[arg(long, default_value_t = 0)]
    accept_after_ms: u64,
}

#[derive(Args)]
struct UdpArgs {
    /// Echo server address.
    #[arg(long)]
    to: SocketAddr,
    /// Number of datagrams.
    #[arg(long)]
    datagrams: u32,
    /// Payload bytes per datagram.
    #[arg(long)]
    size: u16,
}

#[derive(Args)]
struct PingArgs {
    /// Address to ping (IPv4 or IPv6).
    #[arg(long)]
    to: IpAddr,
    /// Number of echo requests.
    #[arg(long)]
    count: u32,
    /// Payload bytes per echo request (after the 8-byte ICMP header).
    #[arg(long)]
    size: u16,
}

#[derive(Args)]
struct RawArgs {
    /// Address of the `serve --raw-protocol` peer.
    #[arg(long)]
    to: IpAddr,
    /// IP protocol number (e.g. 253).
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=254))]
    protocol: u8,
    /// Number of packets.
    #[arg(long)]
    count: u32,
    /// Payload bytes per packet.
    #[arg(long)]
    size: u16,
}

#[derive(Args)]
struct HoldArgs {
    /// Server address.
    #[arg(long)]
    connect: SocketAddr,
    /// Bytes to upload (SEND) once the go-file exists.
    #[arg(long)]
    upload: u64,
    /// File whose appearance starts the upload.
    #[arg(long)]
    go_file: PathBuf,
    /// Seconds to wait for the go-file before failing.
    #[arg(long, default_value_t = 300)]
    go_timeout_secs: u64,
}

#[derive(Args)]
struct PeriodicArgs {
    /// Server address (`serve --tcp`).
    #[arg(long)]
    connect: SocketAddr,
    /// Milliseconds between jobs.
    #[arg(long)]
    every_ms: u64,
    /// Random jitter of each interval, in percent of it (deterministic sequence).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=50))]
    jitter_percent: u64,
    /// Bytes of each job (sent by the server).
    #[arg(long)]
    job_bytes: u64,
    /// Jobs to fetch; 0 = until killed.
    #[arg(long, default_value_t = 0)]
    jobs: u64,
}

#[derive(Args)]
struct ChurnArgs {
    /// Server addresses (`serve --tcp`), comma-separated or repeated; used in turn.
    #[arg(long, required = true, num_args = 1.., value_delimiter = ',')]
    connect: Vec<SocketAddr>,
    /// Number of connections.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    connections: u64,
    /// Connections open at the same time (one thread each).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=4096))]
    parallel: u64,
    /// Bytes to upload (SEND) on each connection.
    #[arg(long, default_value_t = 16)]
    upload: u64,
    /// Start connection i no earlier than i / R seconds after the start (0 = as fast as
    /// possible).
    #[arg(long, default_value_t = 0.0)]
    per_second: f64,
}

#[derive(Args)]
struct UdpSinkArgs {
    /// Address to receive on.
    #[arg(long)]
    listen: SocketAddr,
    /// Milliseconds without a datagram (after the first) that end the count.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    idle_ms: u64,
}

#[derive(Args)]
struct SprayArgs {
    /// First IPv4 address.
    #[arg(long)]
    first: Ipv4Addr,
    /// Number of consecutive addresses, one datagram each.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    addresses: u32,
    /// First destination port.
    #[arg(long)]
    port: u16,
    /// Ports cycled over (datagram i goes to port PORT + i mod K).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    ports: u16,
    /// Payload bytes per datagram.
    #[arg(long, default_value_t = 32)]
    size: u16,
}

static SENT_BYTES: AtomicU64 = AtomicU64::new(0);
static RECEIVED_BYTES: AtomicU64 = AtomicU64::new(0);
static PACKETS_SENT: AtomicU64 = AtomicU64::new(0);
static PACKETS_RECEIVED: AtomicU64 = AtomicU64::new(0);
/// Held while printing the totals and exiting, so they are printed exactly once.
static FINISH: Mutex<()> = Mutex::new(());

fn count_sent(bytes: usize, packets: u64) {
    SENT_BYTES.fetch_add(bytes as u64, Ordering::Relaxed);
    PACKETS_SENT.fetch_add(packets, Ordering::Relaxed);
}

fn count_received(bytes: usize, packets: u64) {
    RECEIVED_BYTES.fetch_add(bytes as u64, Ordering::Relaxed);
    PACKETS_RECEIVED.fetch_add(packets, Ordering::Relaxed);
}

/// Prints the JSON totals line and exits: 0 on success, 1 (after the error on stderr) otherwise.
fn finish(result: Result<()>) -> ! {
    let _guard = FINISH.lock().unwrap_or_else(|e| e.into_inner());
    let code = match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("bitsecure-trafficgen: {e:#}");
            1
        }
    };
    let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    println!(
        "{{\"sent_bytes\":{},\"received_bytes\":{},\"packets_sent\":{},\"packets_received\":{}}}",
        load(&SENT_BYTES),
        load(&RECEIVED_BYTES),
        load(&PACKETS_SENT),
        load(&PACKETS_RECEIVED),
    );
    let _ = io::stdout().flush();
    std::process::exit(code)
}

/// Fails the whole run (printing the totals so far) once `timeout` has elapsed.
fn start_watchdog(timeout: Duration) {
    thread::spawn(move || {
        thread::sleep(timeout);
        finish(Err(anyhow!("timed out after {} s", timeout.as_secs())))
    });
}

/// Prints a progress marker (`ready`, `connected`) the test waits for.
fn announce(word: &str) -> Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "{word}")
        .and_then(|()| out.flush())
        .context("cannot write to stdout")
}

fn main() {
    let cli = Cli::parse();
    if let Some(name) = &cli.comm {
        set_comm(name);
    }
    let timeout = Duration::from_secs(cli.timeout_secs);
    // Servers run until killed; `hold` starts the watchdog once its go-file appears.
    if !matches!(
        cli.command,
        Command::Serve(_)
            | Command::DnsServe(_)
            | Command::Hold(_)
            | Command::Periodic(_)
            | Command::PacketSend(_)
            | Command::TapMerge(_)
            | Command::XdpAttach(_)
    ) {
        start_watchdog(timeout);
    }
    finish(match &cli.command {
        Command::Serve(args) => server_failed(serve(args)),
        Command::DnsServe(args) => server_failed(dns::serve(args)),
        Command::Tcp(args) => tcp_client(args, timeout),
        Command::TcpServe(args) => tcp_serve(args, timeout),
        Command::Udp(args) => udp_client(args, timeout),
        Command::Ping(args) => ping(args),
        Command::Raw(args) => raw_client(args),
        Command::Hold(args) => hold(args, timeout),
        Command::Periodic(args) => periodic(args, timeout),
        Command::Churn(args) => churn(args, timeout),
        Command::Spray(args) => spray(args),
        Command::DnsFlood(args) => dns::flood(args),
        Command::DnsQuery(args) => dns::query(args, timeout),
        Command::UdpSink(args) => udp_sink(args, timeout),
        Command::SynFlood(args) => flood::syn_flood(args),
        Command::UdpClients(args) => flood::udp_clients(args),
        Command::PacketSend(args) => packet::packet_send(args),
        Command::TapMerge(args) => tap::tap_merge(args),
        Command::XdpAttach(args) => xdp::xdp_attach(args),
    })
}

/// Ends a server, which returns only on error, without a report (nobody waits for one).
fn server_failed(result: Result<std::convert::Infallible>) -> ! {
    let Err(e) = result;
    eprintln!("bitsecure-trafficgen: {e:#}");
    std::process::exit(1)
}

// ---------------------------------------------------------------------------------------------
// TCP. Every byte written to or read from a TCP socket is counted.

/// Filler data: `len` bytes of a repeating pattern.
fn filler(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// `n` filler bytes to copy from, in chunks of [`CHUNK`] bytes.
fn filler_reader(n: u64) -> impl Read {
    io::BufReader::with_capacity(CHUNK, io::repeat(b'x').take(n))
}

/// A TCP stream that counts the bytes read from and written to it.
struct Counted<'a>(&'a TcpStream);

impl Read for Counted<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (&mut &*self.0).read(buf)?;
        count_received(n, 0);
        Ok(n)
    }
}

impl Write for Counted<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = (&mut &*self.0).write(buf)?;
        count_sent(n, 0);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads until EOF (at most `limit` bytes) and returns how many bytes were read.
fn read_all(stream: &TcpStream, limit: u64) -> Result<u64> {
    io::copy(&mut Counted(stream).take(limit), &mut io::sink()).context("TCP read failed")
}

/// Reads one `\n`-terminated line (at most 64 bytes) byte by byte, so that nothing after it is
/// consumed, and returns it without the newline.
#[expect(
    clippy::unbuffered_bytes,
    reason = "buffering would consume the data after the line"
)]
fn read_line(stream: &TcpStream) -> Result<String> {
    let mut line = Vec::new();
    for byte in Counted(stream).bytes() {
        match byte.context("TCP read failed")? {
            b'\n' => return String::from_utf8(line).context("line is not UTF-8"),
            byte => line.push(byte),
        }
        ensure!(line.len() <= 64, "line too long");
    }
    bail!("connection closed before end of line {line:?}")
}

/// Serves `JOB n` requests (n bytes back, connection kept) until one SEND/RECV request, then
/// waits for the client to close.
fn handle_connection(stream: &TcpStream) -> Result<()> {
    let (verb, n) = loop {
        let line = read_line(stream).context("cannot read the request line")?;
        let (verb, n) = line.split_once(' ').context("malformed request line")?;
        let n: u64 = n
            .parse()
            .with_context(|| format!("bad byte count in {line:?}"))?;
        if verb != "JOB" {
            break (verb.to_owned(), n);
        }
        io::copy(&mut filler_reader(n), &mut Counted(stream)).context("TCP write failed")?;
    };
    match verb.as_str() {
        "SEND" => {
            let got = read_all(stream, n)?;
            ensure!(got == n, "client sent {got} of {n} bytes then closed");
            Counted(stream)
                .write_all(b"OK\n")
                .context("cannot send OK")?;
        }
        "RECV" => {
            io::copy(&mut filler_reader(n), &mut Counted(stream)).context("TCP write failed")?;
            stream
                .shutdown(Shutdown::Write)
                .context("shutdown failed")?;
        }
        _ => bail!("unknown request {verb:?}"),
    }
    read_all(stream, u64::MAX)?;
    Ok(())
}

fn set_timeouts(stream: &TcpStream, timeout: Duration) -> Result<()> {
    stream
        .set_read_timeout(Some(timeout))
        .context("cannot set the read timeout")?;
    stream
        .set_write_timeout(Some(timeout))
        .context("cannot set the write timeout")
}

fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("cannot connect to {addr}"))?;
    set_timeouts(&stream, timeout)?;
    Ok(stream)
}

/// Does `SEND n` on an open connection: header, `n` bytes by `method`, then waits for `OK`.
/// `file` (for sendfile) holds at least `n` bytes.
fn upload(stream: &TcpStream, n: u64, method: Method, file: Option<&File>) -> Result<()> {
    Counted(stream)
        .write_all(format!("SEND {n}\n").as_bytes())
        .context("cannot send SEND")?;
    let sock = stream.as_raw_fd();
    match (method, file) {
        (Method::Sendfile, Some(file)) => {
            let mut offset: libc::off_t = 0;
            // SAFETY: both descriptors are open during the call; `offset` is a valid pointer.
            pump(n, "sendfile", |len| unsafe {
                libc::sendfile(sock, file.as_raw_fd(), &mut offset, len)
            })?;
        }
        (Method::Splice, _) => splice_upload(sock, n)?,
        _ => {
            io::copy(&mut filler_reader(n), &mut Counted(stream)).context("TCP write failed")?;
        }
    }
    let reply = read_line(stream).context("no reply to SEND")?;
    ensure!(reply == "OK", "unexpected reply {reply:?} to SEND");
    Ok(())
}

/// Does `RECV m` on a new connection and checks that exactly `m` bytes arrive before EOF.
fn download(addr: SocketAddr, m: u64, timeout: Duration) -> Result<()> {
    let stream = connect(addr, timeout)?;
    Counted(&stream)
        .write_all(format!("RECV {m}\n").as_bytes())
        .context("cannot send RECV")?;
    let got = read_all(&stream, u64::MAX)?;
    ensure!(got == m, "downloaded {got} bytes, expected {m}");
    Ok(())
}

/// Runs a system call returning a count or -1 with errno, retrying when interrupted.
fn syscall(what: &str, mut call: impl FnMut() -> isize) -> Result<usize> {
    loop {
        if let Ok(n) = usize::try_from(call()) {
            return Ok(n);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e).with_context(|| format!("{what} failed"));
        }
    }
}

/// Sends `n` bytes with a zero-copy call (`call(max_len)` returns the bytes it moved).
fn pump(n: u64, what: &str, mut call: impl FnMut(usize) -> isize) -> Result<()> {
    let mut left = n;
    while left > 0 {
        let moved = syscall(what, || call(left.min(1 << 20) as usize))?;
        ensure!(moved > 0, "{what}: the data source ended early");
        count_sent(moved, 0);
        left -= moved as u64;
    }
    Ok(())
}

/// Sends `n` bytes to socket `sock` with splice(2) from a pipe that another thread fills.
fn splice_upload(sock: i32, n: u64) -> Result<()> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    syscall(
        "pipe2",
        || unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } as isize,
    )?;
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    let (pipe_out, pipe_in) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let writer = thread::spawn(move || io::copy(&mut filler_reader(n), &mut File::from(pipe_in)));
    let null = ptr::null_mut();
    // SAFETY: both descriptors are open; null offsets are what pipes and sockets require.
    let result = pump(n, "splice", |len| unsafe {
        libc::splice(
            pipe_out.as_raw_fd(),
            null,
            sock,
            null,
            len,
            libc::SPLICE_F_MOVE,
        )
    });
    drop(pipe_out); // makes the writer fail (EPIPE) instead of blocking if splicing stopped early
    let written = writer
        .join()
        .map_err(|_| anyhow!("pipe writer thread panicked"))?;
    result?;
    written.context("write to pipe failed").map(drop)
}

/// Writes `n` filler bytes to an (already unlinked) temporary file, for sendfile(2).
fn filler_file(n: u64) -> Result<File> {
    let path =
        std::env::temp_dir().join(format!("bitsecure-trafficgen-{}.data", std::process::id()));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path);
    let mut file = file.with_context(|| format!("cannot create {}", path.display()))?;
    let _ = fs::remove_file(&path); // the open descriptor keeps the data
    io::copy(&mut filler_reader(n), &mut file)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(file)
}

fn tcp_client(args: &TcpArgs, timeout: Duration) -> Result<()> {
    ensure!(
        args.upload > 0 || args.download > 0,
        "give --upload and/or --download"
    );
    let file = match args.method {
        Method::Sendfile if args.upload > 0 => Some(filler_file(args.upload)?),
        _ => None,
    };
    // One entry per connection: `true` for an upload, `false` for a download.
    let directions = [
        (args.upload > 0).then_some(true),
        (args.download > 0).then_some(false),
    ];
    let ops: Vec<bool> = (0..args.connections)
        .flat_map(|_| directions.into_iter().flatten())
        .collect();
    in_parallel(args.parallel, ops.len() as u64, |i| {
        if ops[i as usize] {
            connect(args.connect, timeout)
                .and_then(|s| upload(&s, args.upload, args.method, file.as_ref()))
        } else {
            download(args.connect, args.download, timeout)
        }
    })
}

/// Runs `job(0)` .. `job(jobs - 1)` on `workers` threads, each taking the next index; the
/// first error stops the remaining jobs and is returned.
fn in_parallel(workers: u64, jobs: u64, job: impl Fn(u64) -> Result<()> + Sync) -> Result<()> {
    let next = AtomicU64::new(0);
    let first_error = Mutex::new(None);
    thread::scope(|scope| {
        for _ in 0..workers.min(jobs) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= jobs {
                        break;
                    }
                    if let Err(e) = job(i) {
                        next.store(jobs, Ordering::Relaxed); // stop the other workers
                        first_error
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert(e);
                    }
                }
            });
        }
    });
    first_error
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .map_or(Ok(()), Err)
}

fn tcp_serve(args: &TcpServeArgs, timeout: Duration) -> Result<()> {
    let listener = TcpListener::bind(args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    announce("ready")?;
    thread::sleep(Duration::from_millis(args.accept_after_ms));
    thread::scope(|scope| {
        let mut handlers = Vec::new();
        for i in 0..args.connections {
            let (stream, peer) = listener
                .accept()
                .with_context(|| format!("accept #{i} failed"))?;
            set_timeouts(&stream, timeout)?;
            handlers.push((peer, scope.spawn(move || handle_connection(&stream))));
        }
        for (peer, handler) in handlers {
            let result = handler
                .join()
                .map_err(|_| anyhow!("handler thread panicked"))?;
            result.with_context(|| format!("connection from {peer}"))?;
        }
        Ok(())
    })
}

fn hold(args: &HoldArgs, timeout: Duration) -> Result<()> {
    let stream = connect(args.connect, timeout)?;
    announce("connected")?;
    let give_up = Instant::now() + Duration::from_secs(args.go_timeout_secs);
    while !args.go_file.exists() {
        let waited = args.go_timeout_secs;
        ensure!(
            Instant::now() < give_up,
            "{} did not appear in {waited} s",
            args.go_file.display()
        );
        thread::sleep(Duration::from_millis(50));
    }
    start_watchdog(timeout);
    upload(&stream, args.upload, Method::Write, None)
}

/// The miner-like loop: one connection, a job every interval. Ends by EOF (`jobs` done) with
/// the server still expecting a request: closing the connection ends its side too.
fn periodic(args: &PeriodicArgs, timeout: Duration) -> Result<()> {
    let stream = connect(args.connect, timeout)?;
    announce("connected")?;
    // xorshift: the same jitter sequence every run.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut done = 0;
    while args.jobs == 0 || done < args.jobs {
        Counted(&stream)
            .write_all(format!("JOB {}\n", args.job_bytes).as_bytes())
            .context("cannot send JOB")?;
        let got = io::copy(&mut Counted(&stream).take(args.job_bytes), &mut io::sink())
            .context("TCP read failed")?;
        ensure!(
            got == args.job_bytes,
            "job cut short: {got} of {} bytes",
            args.job_bytes
        );
        done += 1;
        if args.jobs != 0 && done == args.jobs {
            break;
        }
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let span = args.every_ms * args.jitter_percent / 100;
        let jitter = if span == 0 { 0 } else { state % (2 * span + 1) };
        thread::sleep(Duration::from_millis(args.every_ms - span + jitter));
    }
    Ok(())
}

fn churn(args: &ChurnArgs, timeout: Duration) -> Result<()> {
    ensure!(
        args.per_second >= 0.0 && args.per_second.is_finite(),
        "--per-second must be a finite rate (0 = unpaced)"
    );
    let servers = &args.connect;
    let start = Instant::now();
    in_parallel(args.parallel, args.connections, |i| {
        pace(start, i, args.per_second);
        let server = servers[(i % servers.len() as u64) as usize];
        connect(server, timeout)
            .and_then(|s| upload(&s, args.upload, Method::Write, None))
            .with_context(|| format!("connection #{i} to {server}"))
    })
}

/// Sleeps until event `i` of a run started at `start` is due at `per_second` events a second
/// (0 = no pacing). Events that are late go at once, so the average rate holds.
fn pace(start: Instant, i: u64, per_second: f64) {
    if per_second > 0.0 {
        let due = start + Duration::from_secs_f64(i as f64 / per_second);
        thread::sleep(due.saturating_duration_since(Instant::now()));
    }
}

// ---------------------------------------------------------------------------------------------
// Datagrams: UDP, ICMP echo and raw IP. Only matching echoes count as received.

/// Datagram payload: the sequence number (big endian, as much of it as fits), then filler.
fn datagram(seq: u32, size: u16) -> Vec<u8> {
    let mut payload = filler(size.into());
    let k = payload.len().min(4);
    payload[..k].copy_from_slice(&seq.to_be_bytes()[..k]);
    payload
}

fn udp_client(args: &UdpArgs, timeout: Duration) -> Result<()> {
    let local: SocketAddr = match args.to {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).context("cannot bind the UDP socket")?;
    socket
        .set_read_timeout(Some(timeout))
        .context("cannot set the read timeout")?;
    let mut buf = vec![0u8; DATAGRAM_BUF];
    for seq in 0..args.datagrams {
        let payload = datagram(seq, args.size);
        let sent = socket
            .send_to(&payload, args.to)
            .with_context(|| format!("send to {} failed", args.to))?;
        count_sent(sent, 1); // UDP sends all or nothing
        loop {
            let (n, from) = socket
                .recv_from(&mut buf)
                .with_context(|| format!("no echo of datagram {seq}"))?;
            if (from.ip(), from.port()) == (args.to.ip(), args.to.port()) && buf[..n] == payload[..]
            {
                count_received(n, 1);
                break;
            }
        }
    }
    Ok(())
}

/// `first` as a number, once checked that `count` (≥ 1) consecutive addresses from it exist.
fn address_range_start(first: Ipv4Addr, count: u32) -> Result<u32> {
    let start = u32::from(first);
    ensure!(
        start.checked_add(count - 1).is_some(),
        "{first} + {count} addresses goes past 255.255.255.255"
    );
    Ok(start)
}

fn spray(args: &SprayArgs) -> Result<()> {
    let socket =
        UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).context("cannot bind the UDP socket")?;
    let first = address_range_start(args.first, args.addresses)?;
    ensure!(
        args.port.checked_add(args.ports - 1).is_some(),
        "port {} + {} ports goes past 65535",
        args.port,
        args.ports
    );
    for i in 0..args.addresses {
        let to = SocketAddr::from((
            Ipv4Addr::from(first + i),
            args.port + (i % u32::from(args.ports)) as u16,
        ));
        send_datagram(&socket, &datagram(i, args.size), to)?;
    }
    Ok(())
}

/// Sends one datagram without waiting for an answer, and counts it. A full transmit queue
/// (ENOBUFS) sends nothing: then it waits a moment and sends again.
fn send_datagram(socket: &UdpSocket, payload: &[u8], to: SocketAddr) -> Result<()> {
    let mut attempts = 0;
    let sent = loop {
        match socket.send_to(payload, to) {
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) && attempts < 1000 => {
                attempts += 1;
                thread::sleep(Duration::from_millis(1));
            }
            other => break other.with_context(|| format!("send to {to} failed"))?,
        }
    };
    count_sent(sent, 1); // UDP sends all or nothing
    Ok(())
}

/// Receive buffer of `udp-sink`: room for a whole flood, so the socket drops nothing.
const SINK_RCVBUF: libc::c_int = 256 << 20;

fn udp_sink(args: &UdpSinkArgs, timeout: Duration) -> Result<()> {
    let socket =
        UdpSocket::bind(args.listen).with_context(|| format!("cannot bind UDP {}", args.listen))?;
    // SO_RCVBUFFORCE (root) goes past net.core.rmem_max.
    set_socket_option(
        socket.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_RCVBUFFORCE,
        SINK_RCVBUF,
    )
    .context("cannot enlarge the receive buffer")?;
    socket
        .set_read_timeout(Some(timeout))
        .context("cannot set the read timeout")?;
    announce("ready")?;
    let mut buf = vec![0u8; DATAGRAM_BUF];
    loop {
        match socket.recv_from(&mut buf) {
            Ok((n, _)) => count_received(n, 1),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                ensure!(
                    PACKETS_RECEIVED.load(Ordering::Relaxed) > 0,
                    "no datagram arrived"
                );
                return Ok(());
            }
            Err(e) => return Err(e).context("UDP receive failed"),
        }
        // After the first datagram, silence for the idle time ends the count.
        socket
            .set_read_timeout(Some(Duration::from_millis(args.idle_ms)))
            .context("cannot set the read timeout")?;
    }
}

/// Sends `count` packets built by `message(i)` to `to`, each waiting for a packet from `to`
/// that `is_echo(hops, sent, received)` accepts.
fn raw_echoes(
    socket: &RawSocket,
    to: IpAddr,
    count: u32,
    message: impl Fn(u32) -> Vec<u8>,
    is_echo: impl Fn(Option<u8>, &[u8], &[u8]) -> bool,
) -> Result<()> {
    let mut buf = vec![0u8; DATAGRAM_BUF];
    for i in 0..count {
        let sent = message(i);
        socket.send_to(&sent, to)?;
        count_sent(sent.len(), 1);
        loop {
            match socket.receive(&mut buf)? {
                Some((src, hops, echo)) if src == to && is_echo(hops, &sent, echo) => {
                    count_received(echo.len(), 1);
                    break;
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// RFC 1071 Internet checksum.
fn internet_checksum(data: &[u8]) -> u16 {
    let words = data
        .chunks(2)
        .map(|c| (u32::from(c[0]) << 8) | u32::from(c.get(1).copied().unwrap_or(0)));
    let mut sum: u32 = words.sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn ping(args: &PingArgs) -> Result<()> {
    let v6 = args.to.is_ipv6();
    let (protocol, request, reply) = match v6 {
        false => (libc::IPPROTO_ICMP, 8, 0),
        true => (libc::IPPROTO_ICMPV6, 128, 129),
    };
    let socket = RawSocket::open(v6, protocol)?;
    let id = (std::process::id() as u16).to_be_bytes();
    let message = |i: u32| {
        let seq = (i as u16).to_be_bytes();
        let mut message = [[request, 0, 0, 0], [id[0], id[1], seq[0], seq[1]]].concat();
        message.extend(datagram(i, args.size));
        if !v6 {
            // The kernel computes the ICMPv6 checksum (it covers a pseudo-header), not ICMP's.
            let sum = internet_checksum(&message);
            message[2..4].copy_from_slice(&sum.to_be_bytes());
        }
        message
    };
    // Raw ICMP sockets see all ICMP (even our own requests on loopback): match type, id, seq.
    let is_reply = |_, sent: &[u8], got: &[u8]| {
        got.len() == sent.len() && got[..2] == [reply, 0] && got[4..] == sent[4..]
    };
    raw_echoes(&socket, args.to, args.count, message, is_reply)
}

fn raw_client(args: &RawArgs) -> Result<()> {
    let socket = RawSocket::open(args.to.is_ipv6(), args.protocol.into())?;
    socket.set_hop_limit(REQUEST_HOPS)?;
    let is_echo = |hops, sent: &[u8], got: &[u8]| hops != Some(REQUEST_HOPS) && got == sent;
    raw_echoes(
        &socket,
        args.to,
        args.count,
        |i| datagram(i, args.size),
        is_echo,
    )
}

// ---------------------------------------------------------------------------------------------
// The long-running server.

/// Binds every requested socket, prints `ready` and serves until killed; returns only on error.
fn serve(args: &ServeArgs) -> Result<std::convert::Infallible> {
    ensure!(
        args.tcp.is_some() || args.udp.is_some() || args.raw_protocol.is_some(),
        "give at least one of --tcp, --udp, --raw-protocol"
    );
    if let Some(addr) = args.tcp {
        let listener =
            TcpListener::bind(addr).with_context(|| format!("cannot listen on TCP {addr}"))?;
        thread::spawn(move || serve_tcp(&listener, handle_connection));
    }
    if let Some(addr) = args.udp {
        let socket = UdpSocket::bind(addr).with_context(|| format!("cannot bind UDP {addr}"))?;
        thread::spawn(move || serve_udp(&socket));
    }
    if let (Some(protocol), Some(addr)) = (args.raw_protocol, args.raw_bind) {
        let socket = RawSocket::open(addr.is_ipv6(), protocol.into())?;
        socket.set_hop_limit(REPLY_HOPS)?;
        socket.bind(addr)?;
        thread::spawn(move || serve_raw(&socket));
    }
    ready_forever()
}

/// Prints `ready` and leaves the serving to the threads, until killed.
fn ready_forever() -> Result<std::convert::Infallible> {
    announce("ready")?;
    loop {
        thread::park();
    }
}

/// Logs an error of the server, which keeps going (after a pause, against busy loops).
fn log_error(what: impl std::fmt::Display, pause: bool) {
    eprintln!("bitsecure-trafficgen serve: {what}");
    if pause {
        thread::sleep(Duration::from_millis(100));
    }
}

/// Accepts connections forever, each served by `handle` on a thread of its own.
fn serve_tcp<H>(listener: &TcpListener, handle: H)
where
    H: Fn(&TcpStream) -> Result<()> + Clone + Send + 'static,
{
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                let handle = handle.clone();
                let handler = move || {
                    if let Err(e) = handle(&stream) {
                        log_error(format_args!("TCP connection from {peer}: {e:#}"), false);
                    }
                };
                if let Err(e) = thread::Builder::new().spawn(handler) {
                    log_error(format_args!("cannot start a connection thread: {e}"), true);
                }
            }
            Err(e) => log_error(format_args!("TCP accept failed: {e}"), true),
        }
    }
}

fn serve_udp(socket: &UdpSocket) {
    let mut buf = vec![0u8; DATAGRAM_BUF];
    loop {
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => {
                if let Err(e) = socket.send_to(&buf[..n], from) {
                    log_error(format_args!("UDP echo to {from} failed: {e}"), false);
                }
            }
            Err(e) => log_error(format_args!("UDP receive failed: {e}"), true),
        }
    }
}

fn serve_raw(socket: &RawSocket) {
    let mut buf = vec![0u8; DATAGRAM_BUF];
    loop {
        match socket.receive(&mut buf) {
            // Our own replies come back to us when the client shares the host: skip them.
            Ok(Some((src, hops, payload))) if hops != Some(REPLY_HOPS) => {
                if let Err(e) = socket.send_to(payload, src) {
                    log_error(format_args!("{e:#}"), false);
                }
            }
            Ok(_) => {}
            Err(e) => log_error(format_args!("{e:#}"), true),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Raw IP sockets (libc).

/// A SOCK_RAW socket of one IP protocol. IPv4 receives include the IP header (stripped by
/// [`RawSocket::receive`]); IPv6 receives do not, so the hop limit comes as a control message.
struct RawSocket {
    fd: OwnedFd,
    v6: bool,
}

/// Source address, TTL / hop limit if known, and IP payload of a received packet.
type RawPacket<'a> = (IpAddr, Option<u8>, &'a [u8]);

impl RawSocket {
    fn open(v6: bool, protocol: i32) -> Result<Self> {
        let family = if v6 { libc::AF_INET6 } else { libc::AF_INET };
        let kind = libc::SOCK_RAW | libc::SOCK_CLOEXEC;
        // SAFETY: plain system call without pointers.
        let fd = syscall("socket", || unsafe { libc::socket(family, kind, protocol) }
            as isize)
        .with_context(|| format!("cannot open a raw socket for IP protocol {protocol}"))?;
        // SAFETY: the descriptor was just created and is owned by nobody else.
        let socket = Self {
            fd: unsafe { OwnedFd::from_raw_fd(fd as i32) },
            v6,
        };
        if v6 {
            socket.set_option(libc::IPPROTO_IPV6, libc::IPV6_RECVHOPLIMIT, 1)?;
        }
        Ok(socket)
    }

    fn set_option(&self, level: i32, name: i32, value: libc::c_int) -> Result<()> {
        set_socket_option(self.fd.as_raw_fd(), level, name, value)
    }

    fn set_hop_limit(&self, hops: u8) -> Result<()> {
        if self.v6 {
            self.set_option(libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, hops.into())
        } else {
            self.set_option(libc::IPPROTO_IP, libc::IP_TTL, hops.into())
        }
    }

    fn bind(&self, ip: IpAddr) -> Result<()> {
        let (addr, len) = sockaddr_from_ip(ip);
        let addr = ptr::from_ref(&addr).cast();
        // SAFETY: `addr` points to a socket address of `len` bytes.
        syscall(
            "bind",
            || unsafe { libc::bind(self.fd.as_raw_fd(), addr, len) } as isize,
        )
        .with_context(|| format!("cannot bind the raw socket to {ip}"))?;
        Ok(())
    }

    fn send_to(&self, payload: &[u8], ip: IpAddr) -> Result<()> {
        let (addr, addr_len) = sockaddr_from_ip(ip);
        let (fd, data, len, addr) = (
            self.fd.as_raw_fd(),
            payload.as_ptr().cast(),
            payload.len(),
            ptr::from_ref(&addr).cast(),
        );
        // SAFETY: `data` and `addr` point to `len` and `addr_len` readable bytes.
        let sent = syscall("sendto", || unsafe {
            libc::sendto(fd, data, len, 0, addr, addr_len)
        })
        .with_context(|| format!("raw send to {ip} failed"))?;
        ensure!(sent == len, "short raw send ({sent} of {len} bytes)");
        Ok(())
    }

    /// Receives one packet; `None` if it is malformed.
    fn receive<'a>(&self, buf: &'a mut [u8]) -> Result<Option<RawPacket<'a>>> {
        // SAFETY: all-zero is a valid sockaddr_storage and msghdr.
        let (mut addr, mut msg): (libc::sockaddr_storage, libc::msghdr) = unsafe { mem::zeroed() };
        let mut control = [0u64; 16];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        msg.msg_name = ptr::from_mut(&mut addr).cast();
        msg.msg_namelen = mem::size_of_val(&addr) as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = mem::size_of_val(&control) as _;
        let fd = self.fd.as_raw_fd();
        // SAFETY: `msg` points to live buffers of the sizes it states.
        let n =
            syscall("raw receive", || unsafe { libc::recvmsg(fd, &mut msg, 0) })?.min(buf.len());
        let Some(src) = ip_from_sockaddr(&addr) else {
            return Ok(None);
        };
        if self.v6 {
            let mut hops = None;
            // SAFETY: recvmsg filled `msg`; the CMSG functions stay within its control buffer.
            unsafe {
                let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
                while let Some(c) = cmsg.as_ref() {
                    if (c.cmsg_level, c.cmsg_type) == (libc::IPPROTO_IPV6, libc::IPV6_HOPLIMIT) {
                        let value: libc::c_int = ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                        hops = u8::try_from(value).ok();
                    }
                    cmsg = libc::CMSG_NXTHDR(&msg, c);
                }
            }
            return Ok(Some((src, hops, &buf[..n])));
        }
        let header_len = usize::from(buf[0] & 0x0f) * 4;
        if n < 20 || header_len < 20 || header_len > n {
            return Ok(None);
        }
        Ok(Some((src, Some(buf[8]), &buf[header_len..n])))
    }
}

/// setsockopt(2) with an integer value on the open socket `fd`.
fn set_socket_option(fd: i32, level: i32, name: i32, value: libc::c_int) -> Result<()> {
    let len = mem::size_of_val(&value) as libc::socklen_t;
    let value = ptr::from_ref(&value).cast();
    // SAFETY: `value` points to `len` readable bytes.
    syscall(
        "setsockopt",
        || unsafe { libc::setsockopt(fd, level, name, value, len) } as isize,
    )?;
    Ok(())
}

fn sockaddr_from_ip(ip: IpAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage, sockaddr_in and sockaddr_in6.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match ip {
        IpAddr::V4(v4) => {
            let mut sin: libc::sockaddr_in = unsafe { mem::zeroed() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_addr.s_addr = u32::from_ne_bytes(v4.octets());
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { ptr::write(ptr::from_mut(&mut storage).cast(), sin) };
            mem::size_of_val(&sin)
        }
        IpAddr::V6(v6) => {
            let mut sin6: libc::sockaddr_in6 = unsafe { mem::zeroed() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_addr.s6_addr = v6.octets();
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { ptr::write(ptr::from_mut(&mut storage).cast(), sin6) };
            mem::size_of_val(&sin6)
        }
    };
    (storage, len as libc::socklen_t)
}

fn ip_from_sockaddr(storage: &libc::sockaddr_storage) -> Option<IpAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says that the storage holds a sockaddr_in.
            let sin: libc::sockaddr_in = unsafe { ptr::read(ptr::from_ref(storage).cast()) };
            Some(Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()).into())
        }
        libc::AF_INET6 => {
            // SAFETY: the family says that the storage holds a sockaddr_in6.
            let sin6: libc::sockaddr_in6 = unsafe { ptr::read(ptr::from_ref(storage).cast()) };
            Some(Ipv6Addr::from(sin6.sin6_addr.s6_addr).into())
        }
        _ => None,
    }
}
