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
//! TCP protocol (`serve`, `tcp-serve`): the client sends one line, `SEND <n>\n` or `RECV <n>\n`.
//! For SEND the server reads exactly n bytes, replies `OK\n` and waits for the client to close;
//! for RECV it writes n bytes, shuts down its write side and waits for the client to close.
//!
//! Raw IP echo: the client sends its requests with TTL/hop limit [`REQUEST_HOPS`] and the server
//! its replies with [`REPLY_HOPS`]; each side ignores packets carrying its own value, which are
//! its own packets looped back when both ends share a host (loopback), so they never ping-pong.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::ptr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use clap::{Args, Parser, Subcommand, ValueEnum};

/// TTL / hop limit of raw IP echo requests sent by `raw`.
const REQUEST_HOPS: u8 = 200;
/// TTL / hop limit of raw IP echo replies sent by `serve --raw-protocol`.
const REPLY_HOPS: u8 = 100;
/// Size of the write chunks and of the receive buffers.
const CHUNK: usize = 64 * 1024;

#[derive(Parser)]
#[command(
    version,
    about = "Traffic generator for the bitsecure integration tests"
)]
struct Cli {
    /// Seconds a client subcommand may take before it fails (exit status 1).
    #[arg(long, global = true, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_secs: u64,
    #[command(subcommand)]
    command: Command,
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
    size: usize,
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
    size: usize,
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
    size: usize,
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
    println!(
        "{{\"sent_bytes\":{},\"received_bytes\":{},\"packets_sent\":{},\"packets_received\":{}}}",
        SENT_BYTES.load(Ordering::Relaxed),
        RECEIVED_BYTES.load(Ordering::Relaxed),
        PACKETS_SENT.load(Ordering::Relaxed),
        PACKETS_RECEIVED.load(Ordering::Relaxed),
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
    let timeout = Duration::from_secs(cli.timeout_secs);
    if let Command::Serve(args) = &cli.command {
        if let Err(e) = serve(args) {
            eprintln!("bitsecure-trafficgen: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    if !matches!(cli.command, Command::Hold(_)) {
        start_watchdog(timeout);
    }
    finish(match &cli.command {
        Command::Serve(_) => Ok(()),
        Command::Tcp(args) => tcp_client(args, timeout),
        Command::TcpServe(args) => tcp_serve(args, timeout),
        Command::Udp(args) => udp_client(args, timeout),
        Command::Ping(args) => ping(args, timeout),
        Command::Raw(args) => raw_client(args, timeout),
        Command::Hold(args) => hold(args, timeout),
    })
}

// ---------------------------------------------------------------------------------------------
// TCP protocol helpers. Every byte written or read on a TCP socket is counted.

fn write_counted(stream: &mut TcpStream, mut data: &[u8]) -> Result<()> {
    while !data.is_empty() {
        match stream.write(data) {
            Ok(0) => bail!("connection closed while writing"),
            Ok(n) => {
                count_sent(n, 0);
                data = &data[n..];
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("write to TCP socket failed"),
        }
    }
    Ok(())
}

/// Writes `n` filler bytes, counting them as sent if `counted`.
fn write_filler(out: &mut impl Write, n: u64, counted: bool) -> io::Result<()> {
    let chunk: Vec<u8> = (0..CHUNK).map(|i| (i % 251) as u8).collect();
    let mut left = n;
    while left > 0 {
        let len = left.min(CHUNK as u64) as usize;
        let written = match out.write(&chunk[..len]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(w) => w,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if counted {
            count_sent(written, 0);
        }
        left -= written as u64;
    }
    Ok(())
}

/// Reads up to `limit` bytes (everything until EOF if `None`) and returns how many were read.
fn read_counted(stream: &mut TcpStream, limit: Option<u64>) -> Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let want = limit.map_or(CHUNK as u64, |l| (l - total).min(CHUNK as u64)) as usize;
        if want == 0 {
            return Ok(total);
        }
        match stream.read(&mut buf[..want]) {
            Ok(0) => return Ok(total),
            Ok(n) => {
                count_received(n, 0);
                total += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("read from TCP socket failed"),
        }
    }
}

/// Reads one `\n`-terminated line (at most 64 bytes) byte by byte, so nothing after it is
/// consumed, and returns it without the newline.
fn read_line(stream: &mut TcpStream) -> Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => bail!(
                "connection closed before end of line {:?}",
                String::from_utf8_lossy(&line)
            ),
            Ok(_) => count_received(1, 0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("read from TCP socket failed"),
        }
        if byte[0] == b'\n' {
            return String::from_utf8(line).context("line is not UTF-8");
        }
        line.push(byte[0]);
        ensure!(line.len() <= 64, "line too long");
    }
}

/// Serves one SEND/RECV request, then waits for the client to close.
fn handle_connection(mut stream: TcpStream) -> Result<()> {
    let line = read_line(&mut stream).context("cannot read the request line")?;
    let (verb, n) = line.split_once(' ').context("malformed request line")?;
    let n: u64 = n
        .parse()
        .with_context(|| format!("bad byte count in {line:?}"))?;
    match verb {
        "SEND" => {
            let got = read_counted(&mut stream, Some(n))?;
            ensure!(got == n, "client sent {got} of {n} bytes then closed");
            write_counted(&mut stream, b"OK\n")?;
        }
        "RECV" => {
            write_filler(&mut stream, n, true).context("write to TCP socket failed")?;
            stream
                .shutdown(std::net::Shutdown::Write)
                .context("shutdown failed")?;
        }
        _ => bail!("unknown request {line:?}"),
    }
    read_counted(&mut stream, None)?;
    Ok(())
}

fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("cannot connect to {addr}"))?;
    set_timeouts(&stream, Some(timeout))?;
    Ok(stream)
}

fn set_timeouts(stream: &TcpStream, timeout: Option<Duration>) -> Result<()> {
    stream
        .set_read_timeout(timeout)
        .context("cannot set the read timeout")?;
    stream
        .set_write_timeout(timeout)
        .context("cannot set the write timeout")
}

/// Does `SEND n` on an open connection: header, `n` bytes by `method`, then waits for `OK`.
fn upload(stream: &mut TcpStream, n: u64, method: Method, file: Option<&File>) -> Result<()> {
    write_counted(stream, format!("SEND {n}\n").as_bytes())?;
    match (method, file) {
        (Method::Sendfile, Some(file)) => send_file(stream, file, n)?,
        (Method::Splice, _) => splice_upload(stream, n)?,
        _ => write_filler(stream, n, true).context("write to TCP socket failed")?,
    }
    let reply = read_line(stream).context("no reply to SEND")?;
    ensure!(reply == "OK", "unexpected reply {reply:?} to SEND");
    Ok(())
}

/// Does `RECV m` on a new connection and checks that exactly `m` bytes arrive before EOF.
fn download(addr: SocketAddr, m: u64, timeout: Duration) -> Result<()> {
    let mut stream = connect(addr, timeout)?;
    write_counted(&mut stream, format!("RECV {m}\n").as_bytes())?;
    let got = read_counted(&mut stream, None)?;
    ensure!(got == m, "downloaded {got} bytes, expected {m}");
    Ok(())
}

/// Sends the first `n` bytes of `file` with sendfile(2).
fn send_file(stream: &TcpStream, file: &File, n: u64) -> Result<()> {
    let mut offset: libc::off_t = 0;
    let mut left = n;
    while left > 0 {
        let len = left.min(1 << 20) as usize;
        // SAFETY: both descriptors are open for the duration of the call; `offset` is valid.
        let r = unsafe { libc::sendfile(stream.as_raw_fd(), file.as_raw_fd(), &mut offset, len) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e).context("sendfile failed");
        }
        ensure!(r > 0, "sendfile: the data file ended early");
        count_sent(r as usize, 0);
        left -= r as u64;
    }
    Ok(())
}

/// Sends `n` bytes with splice(2) from a pipe that another thread fills.
fn splice_upload(stream: &TcpStream, n: u64) -> Result<()> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error()).context("pipe2 failed");
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let writer = thread::spawn(move || write_filler(&mut File::from(write_end), n, false));
    let result = (|| {
        let mut left = n;
        while left > 0 {
            let len = left.min(1 << 20) as usize;
            // SAFETY: both descriptors are open; null offsets are allowed for pipes and sockets.
            let r = unsafe {
                libc::splice(
                    read_end.as_raw_fd(),
                    ptr::null_mut(),
                    stream.as_raw_fd(),
                    ptr::null_mut(),
                    len,
                    libc::SPLICE_F_MOVE,
                )
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e).context("splice failed");
            }
            ensure!(r > 0, "splice: the pipe ended early");
            count_sent(r as usize, 0);
            left -= r as u64;
        }
        Ok(())
    })();
    drop(read_end); // unblocks the writer (EPIPE) if splicing stopped early
    let written = writer
        .join()
        .map_err(|_| anyhow!("pipe writer thread panicked"))?;
    result?;
    written.context("write to pipe failed")
}

/// Writes `n` filler bytes to an unlinked temporary file, for sendfile(2).
fn filler_file(n: u64) -> Result<File> {
    let path =
        std::env::temp_dir().join(format!("bitsecure-trafficgen-{}.data", std::process::id()));
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    let _ = fs::remove_file(&path);
    write_filler(&mut file, n, false)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(file)
}

// ---------------------------------------------------------------------------------------------
// Subcommands.

fn tcp_client(args: &TcpArgs, timeout: Duration) -> Result<()> {
    ensure!(
        args.upload > 0 || args.download > 0,
        "give --upload and/or --download"
    );
    let file = match args.method {
        Method::Sendfile if args.upload > 0 => Some(filler_file(args.upload)?),
        _ => None,
    };
    // Operation i: an upload if `true`, a download if `false`.
    let ops: Vec<bool> = (0..args.connections)
        .flat_map(|_| {
            [
                (args.upload > 0).then_some(true),
                (args.download > 0).then_some(false),
            ]
        })
        .flatten()
        .collect();
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error = Mutex::new(None);
    let workers = (args.parallel as usize).min(ops.len());
    thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                while !failed.load(Ordering::Relaxed) {
                    let Some(&is_upload) = ops.get(next.fetch_add(1, Ordering::Relaxed)) else {
                        break;
                    };
                    let result = if is_upload {
                        connect(args.connect, timeout).and_then(|mut s| {
                            upload(&mut s, args.upload, args.method, file.as_ref())
                        })
                    } else {
                        download(args.connect, args.download, timeout)
                    };
                    if let Err(e) = result {
                        failed.store(true, Ordering::Relaxed);
                        first_error
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert(e);
                    }
                }
            });
        }
    });
    match first_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn tcp_serve(args: &TcpServeArgs, timeout: Duration) -> Result<()> {
    let listener = TcpListener::bind(args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    announce("ready")?;
    thread::scope(|scope| {
        let mut handlers = Vec::new();
        for i in 0..args.connections {
            let (stream, peer) = listener
                .accept()
                .with_context(|| format!("accept of connection {i} failed"))?;
            set_timeouts(&stream, Some(timeout))?;
            handlers.push((peer, scope.spawn(move || handle_connection(stream))));
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
    let mut stream = connect(args.connect, timeout)?;
    announce("connected")?;
    let give_up = Instant::now() + Duration::from_secs(args.go_timeout_secs);
    while !args.go_file.exists() {
        ensure!(
            Instant::now() < give_up,
            "{} did not appear in {} s",
            args.go_file.display(),
            args.go_timeout_secs
        );
        thread::sleep(Duration::from_millis(50));
    }
    start_watchdog(timeout);
    upload(&mut stream, args.upload, Method::Write, None)
}

/// Datagram payload: the sequence number (big endian, as much of it as fits), then filler.
fn datagram(seq: u32, size: usize) -> Vec<u8> {
    let mut payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let k = size.min(4);
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
    let mut buf = vec![0u8; 1 << 16];
    for seq in 0..args.datagrams {
        let payload = datagram(seq, args.size);
        let n = socket
            .send_to(&payload, args.to)
            .with_context(|| format!("send_to {} failed", args.to))?;
        ensure!(
            n == payload.len(),
            "short UDP send ({n} of {} bytes)",
            payload.len()
        );
        count_sent(n, 1);
        loop {
            let (n, from) = socket
                .recv_from(&mut buf)
                .with_context(|| format!("no echo of datagram {seq}"))?;
            if from.ip() == args.to.ip() && from.port() == args.to.port() && buf[..n] == payload[..]
            {
                count_received(n, 1);
                break;
            }
        }
    }
    Ok(())
}

/// RFC 1071 Internet checksum.
fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn ping(args: &PingArgs, timeout: Duration) -> Result<()> {
    let v6 = args.to.is_ipv6();
    let protocol = if v6 {
        libc::IPPROTO_ICMPV6
    } else {
        libc::IPPROTO_ICMP
    };
    let (request_type, reply_type) = if v6 { (128u8, 129u8) } else { (8u8, 0u8) };
    let socket = RawSocket::open(v6, protocol)?;
    socket.set_receive_timeout(timeout)?;
    let id = (std::process::id() & 0xffff) as u16;
    let mut buf = vec![0u8; 1 << 17];
    for i in 0..args.count {
        let seq = i as u16;
        let mut message = vec![request_type, 0, 0, 0];
        message.extend_from_slice(&id.to_be_bytes());
        message.extend_from_slice(&seq.to_be_bytes());
        message.extend_from_slice(&datagram(i, args.size));
        if !v6 {
            // The kernel computes the ICMPv6 checksum (it covers a pseudo-header), not ICMP's.
            let sum = internet_checksum(&message);
            message[2..4].copy_from_slice(&sum.to_be_bytes());
        }
        socket.send_to(&message, args.to)?;
        count_sent(message.len(), 1);
        loop {
            let packet = socket
                .receive(&mut buf)
                .with_context(|| format!("no reply to echo request {i}"))?;
            let Some((src, _, reply)) = packet else {
                continue;
            };
            if src == args.to
                && reply.len() == message.len()
                && reply[0] == reply_type
                && reply[1] == 0
                && reply[4..8] == message[4..8]
                && reply[8..] == message[8..]
            {
                count_received(reply.len(), 1);
                break;
            }
        }
    }
    Ok(())
}

fn raw_client(args: &RawArgs, timeout: Duration) -> Result<()> {
    let socket = RawSocket::open(args.to.is_ipv6(), i32::from(args.protocol))?;
    socket.set_receive_timeout(timeout)?;
    socket.set_hop_limit(REQUEST_HOPS)?;
    let mut buf = vec![0u8; 1 << 17];
    for seq in 0..args.count {
        let payload = datagram(seq, args.size);
        socket.send_to(&payload, args.to)?;
        count_sent(payload.len(), 1);
        loop {
            let packet = socket
                .receive(&mut buf)
                .with_context(|| format!("no echo of packet {seq}"))?;
            let Some((src, hops, echo)) = packet else {
                continue;
            };
            if src == args.to && hops != Some(REQUEST_HOPS) && echo == &payload[..] {
                count_received(echo.len(), 1);
                break;
            }
        }
    }
    Ok(())
}

fn serve(args: &ServeArgs) -> Result<()> {
    ensure!(
        args.tcp.is_some() || args.udp.is_some() || args.raw_protocol.is_some(),
        "give at least one of --tcp, --udp, --raw-protocol"
    );
    if let Some(addr) = args.tcp {
        let listener =
            TcpListener::bind(addr).with_context(|| format!("cannot listen on TCP {addr}"))?;
        thread::spawn(move || serve_tcp(&listener));
    }
    if let Some(addr) = args.udp {
        let socket = UdpSocket::bind(addr).with_context(|| format!("cannot bind UDP {addr}"))?;
        thread::spawn(move || serve_udp(&socket));
    }
    if let (Some(protocol), Some(addr)) = (args.raw_protocol, args.raw_bind) {
        let socket = RawSocket::open(addr.is_ipv6(), i32::from(protocol))?;
        socket.set_hop_limit(REPLY_HOPS)?;
        socket.bind(addr)?;
        thread::spawn(move || serve_raw(&socket));
    }
    announce("ready")?;
    loop {
        thread::park();
    }
}

/// Log line for errors of the long-running server, which keeps going.
fn log_error(what: &str, e: &dyn std::fmt::Display) {
    eprintln!("bitsecure-trafficgen serve: {what}: {e:#}");
}

fn serve_tcp(listener: &TcpListener) {
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                let spawned = thread::Builder::new().spawn(move || {
                    if let Err(e) = handle_connection(stream) {
                        log_error(&format!("TCP connection from {peer}"), &format!("{e:#}"));
                    }
                });
                if let Err(e) = spawned {
                    log_error("cannot start a connection thread", &e);
                }
            }
            Err(e) => {
                log_error("TCP accept failed", &e);
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn serve_udp(socket: &UdpSocket) {
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => {
                if let Err(e) = socket.send_to(&buf[..n], from) {
                    log_error(&format!("UDP echo to {from}"), &e);
                }
            }
            Err(e) => {
                log_error("UDP receive failed", &e);
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn serve_raw(socket: &RawSocket) {
    let mut buf = vec![0u8; 1 << 17];
    loop {
        match socket.receive(&mut buf) {
            Ok(Some((src, hops, payload))) if hops != Some(REPLY_HOPS) => {
                let payload = payload.to_vec();
                if let Err(e) = socket.send_to(&payload, src) {
                    log_error(&format!("raw echo to {src}"), &format!("{e:#}"));
                }
            }
            Ok(_) => {}
            Err(e) => {
                log_error("raw receive failed", &format!("{e:#}"));
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Raw IP sockets (libc).

/// A SOCK_RAW socket of one IP protocol. IPv4 receives include the IP header (stripped by
/// [`RawSocket::receive`]); IPv6 receives do not, the hop limit comes as a control message.
struct RawSocket {
    fd: OwnedFd,
    v6: bool,
}

/// Source address, TTL / hop limit if known, and IP payload of a received packet.
type RawPacket<'a> = (IpAddr, Option<u8>, &'a [u8]);

impl RawSocket {
    fn open(v6: bool, protocol: i32) -> Result<Self> {
        let family = if v6 { libc::AF_INET6 } else { libc::AF_INET };
        // SAFETY: plain system call without pointers.
        let fd = unsafe { libc::socket(family, libc::SOCK_RAW | libc::SOCK_CLOEXEC, protocol) };
        if fd < 0 {
            return Err(io::Error::last_os_error()).with_context(|| {
                format!("cannot open a raw socket for IP protocol {protocol} (needs CAP_NET_RAW)")
            });
        }
        // SAFETY: the descriptor was just created and is owned by nobody else.
        let socket = Self {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            v6,
        };
        if v6 {
            let on: libc::c_int = 1;
            socket.set_option(libc::IPPROTO_IPV6, libc::IPV6_RECVHOPLIMIT, &on)?;
        }
        Ok(socket)
    }

    fn set_option<T>(&self, level: i32, name: i32, value: &T) -> Result<()> {
        let len = mem::size_of::<T>() as libc::socklen_t;
        // SAFETY: `value` points to `len` readable bytes.
        let r = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                ptr::from_ref(value).cast(),
                len,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("setsockopt({level}, {name}) failed"));
        }
        Ok(())
    }

    fn set_hop_limit(&self, hops: u8) -> Result<()> {
        let value = libc::c_int::from(hops);
        if self.v6 {
            self.set_option(libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, &value)
        } else {
            self.set_option(libc::IPPROTO_IP, libc::IP_TTL, &value)
        }
    }

    fn set_receive_timeout(&self, timeout: Duration) -> Result<()> {
        let tv = libc::timeval {
            tv_sec: timeout.as_secs().try_into().unwrap_or(libc::time_t::MAX),
            tv_usec: timeout.subsec_micros().into(),
        };
        self.set_option(libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)
    }

    fn bind(&self, ip: IpAddr) -> Result<()> {
        let (addr, len) = sockaddr_from_ip(ip);
        // SAFETY: `addr` holds a valid socket address of `len` bytes.
        let r = unsafe { libc::bind(self.fd.as_raw_fd(), ptr::from_ref(&addr).cast(), len) };
        if r < 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("cannot bind the raw socket to {ip}"));
        }
        Ok(())
    }

    fn send_to(&self, payload: &[u8], ip: IpAddr) -> Result<()> {
        let (addr, len) = sockaddr_from_ip(ip);
        loop {
            // SAFETY: `payload` and `addr` are valid for the given lengths.
            let r = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    payload.as_ptr().cast(),
                    payload.len(),
                    0,
                    ptr::from_ref(&addr).cast(),
                    len,
                )
            };
            if r >= 0 {
                ensure!(
                    r as usize == payload.len(),
                    "short raw send ({r} of {} bytes)",
                    payload.len()
                );
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e).with_context(|| format!("raw send to {ip} failed"));
            }
        }
    }

    /// Receives one packet; `None` if it is malformed. Times out with an error.
    fn receive<'a>(&self, buf: &'a mut [u8]) -> Result<Option<RawPacket<'a>>> {
        // SAFETY: all-zero is a valid sockaddr_storage and msghdr.
        let mut addr: libc::sockaddr_storage = unsafe { mem::zeroed() };
        let mut control = [0u64; 16];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut msg: libc::msghdr = unsafe { mem::zeroed() };
        msg.msg_name = ptr::from_mut(&mut addr).cast();
        msg.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = mem::size_of_val(&control) as _;
        let n = loop {
            // SAFETY: `msg` points to live buffers of the sizes it states.
            let r = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, 0) };
            if r >= 0 {
                break r as usize;
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => {}
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => bail!("timed out"),
                _ => return Err(e).context("raw receive failed"),
            }
        };
        let Some(src) = ip_from_sockaddr(&addr) else {
            return Ok(None);
        };
        if self.v6 {
            let mut hops = None;
            // SAFETY: `msg` was filled by recvmsg; the CMSG macros stay within msg_control.
            unsafe {
                let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
                while !cmsg.is_null() {
                    if (*cmsg).cmsg_level == libc::IPPROTO_IPV6
                        && (*cmsg).cmsg_type == libc::IPV6_HOPLIMIT
                    {
                        let value: libc::c_int = ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                        hops = u8::try_from(value).ok();
                    }
                    cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
                }
            }
            return Ok(Some((src, hops, &buf[..n.min(buf.len())])));
        }
        let header_len = usize::from(buf[0] & 0x0f) * 4;
        if n < 20 || header_len < 20 || header_len > n || n > buf.len() {
            return Ok(None);
        }
        Ok(Some((src, Some(buf[8]), &buf[header_len..n])))
    }
}

fn sockaddr_from_ip(ip: IpAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage / sockaddr_in / sockaddr_in6.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match ip {
        IpAddr::V4(v4) => {
            let mut sin: libc::sockaddr_in = unsafe { mem::zeroed() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_addr.s_addr = u32::from_ne_bytes(v4.octets());
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { ptr::write(ptr::from_mut(&mut storage).cast(), sin) };
            mem::size_of::<libc::sockaddr_in>()
        }
        IpAddr::V6(v6) => {
            let mut sin6: libc::sockaddr_in6 = unsafe { mem::zeroed() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_addr.s6_addr = v6.octets();
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { ptr::write(ptr::from_mut(&mut storage).cast(), sin6) };
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

fn ip_from_sockaddr(storage: &libc::sockaddr_storage) -> Option<IpAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin: libc::sockaddr_in = unsafe { ptr::read(ptr::from_ref(storage).cast()) };
            Some(Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()).into())
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6: libc::sockaddr_in6 = unsafe { ptr::read(ptr::from_ref(storage).cast()) };
            Some(Ipv6Addr::from(sin6.sin6_addr.s6_addr).into())
        }
        _ => None,
    }
}
