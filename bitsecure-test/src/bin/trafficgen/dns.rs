//! DNS for the name tests: `dns-serve`, an authoritative-style server answering from records
//! given on the command line, and `dns-flood`, a stream of distinct responses nobody asked for
//! (what a hostile or broken network can throw at the agent's name map).
//!
//! Messages are built and parsed with hickory-proto, the agent's own DNS library, but the
//! tests check the server against an independent client (`dig`).

use std::io::{self, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use anyhow::{Context as _, Result, ensure};
use clap::Args;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use super::{
    DATAGRAM_BUF, address_range_start, log_error, pace, ready_forever, send_datagram, serve_tcp,
};

/// Longest CNAME chain followed: a loop in the given records ends there.
const MAX_CHAIN: usize = 8;

#[derive(Args)]
pub struct DnsServeArgs {
    /// Address to answer on, over UDP and TCP, e.g. 10.0.0.2:53 or [fd00::2]:53.
    #[arg(long)]
    listen: SocketAddr,
    /// A record: NAME=A:IPV4, NAME=AAAA:IPV6 or NAME=CNAME:TARGET. Repeatable.
    #[arg(long = "record", required = true, value_parser = parse_record)]
    records: Vec<ZoneRecord>,
    /// TTL of every record in the answers, in seconds.
    #[arg(long, default_value_t = 300)]
    ttl: u32,
}

#[derive(Args)]
pub struct DnsQueryArgs {
    /// The DNS server to ask (UDP), e.g. 10.0.0.2:53.
    #[arg(long)]
    server: SocketAddr,
    /// The name to resolve (type A). `{}` in it is replaced by a random label per query, as
    /// a DNS tunnel encodes data (`{}.t.example.net`).
    #[arg(long)]
    name: String,
    /// Queries to send, one after the other (each waiting for its answer).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    count: u32,
    /// Milliseconds between two queries.
    #[arg(long, default_value_t = 0)]
    every_ms: u64,
}

/// Asks `server` for the A records of `name` over UDP and waits for the answer to that query
/// (same ID); prints the addresses, one per line, before the report.
pub fn query(args: &DnsQueryArgs, timeout: std::time::Duration) -> Result<()> {
    let local: SocketAddr = match args.server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).context("cannot bind the UDP socket")?;
    socket
        .set_read_timeout(Some(timeout))
        .context("cannot set the read timeout")?;
    // xorshift: random-looking labels, reproducible per process.
    let mut state = u64::from(std::process::id()) | 1;
    for i in 0..args.count {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let name = args.name.replace("{}", &format!("x{state:016x}"));
        let id = ((u64::from(std::process::id()) + u64::from(i)) & 0xffff) as u16;
        ask(&socket, args.server, id, &name)?;
        thread::sleep(std::time::Duration::from_millis(args.every_ms));
    }
    Ok(())
}

/// One query for `name` (type A) and its answer (same ID, from `server`).
fn ask(socket: &UdpSocket, server: SocketAddr, id: u16, name: &str) -> Result<()> {
    let mut request = Message::new(id, MessageType::Query, OpCode::Query);
    request.metadata.recursion_desired = true;
    request.add_query(Query::query(
        fqdn(name).map_err(anyhow::Error::msg)?,
        RecordType::A,
    ));
    let wire = request.to_vec().context("cannot encode the query")?;
    send_datagram(socket, &wire, server)?;
    let mut buf = vec![0u8; DATAGRAM_BUF];
    loop {
        let (len, from) = socket
            .recv_from(&mut buf)
            .context("no answer from the server")?;
        super::count_received(len, 1);
        let Ok(response) = Message::from_vec(&buf[..len]) else {
            continue;
        };
        if from != server || response.metadata.id != id {
            continue;
        }
        for record in &response.answers {
            if let RData::A(address) = &record.data {
                eprintln!("{}", address.0);
            }
        }
        return Ok(());
    }
}

#[derive(Args)]
pub struct DnsFloodArgs {
    /// Where the responses go (a resolver-side UDP socket).
    #[arg(long)]
    to: SocketAddr,
    /// Local address to send from; port 53, like a DNS server's.
    #[arg(long)]
    from: SocketAddr,
    /// Number of responses. Response i maps `r<i>.flood.example` (or NAME) to FIRST_ADDRESS + i.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    count: u32,
    /// The name every response maps (a forgery of one name); default: a new name each.
    #[arg(long)]
    name: Option<String>,
    /// Address of the first response.
    #[arg(long, default_value = "100.64.0.0")]
    first_address: Ipv4Addr,
    /// Responses per second (0 = as fast as possible).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// TTL of the records, in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl: u32,
}

/// One record of the server's data.
#[derive(Clone, Debug)]
pub struct ZoneRecord {
    name: Name,
    data: RData,
}

/// A fully qualified name (as names from the wire are: `Name` equality tells them apart).
fn fqdn(text: &str) -> Result<Name, String> {
    // hickory reads "" as the root; no test means that.
    if text.is_empty() {
        return Err("empty name".to_owned());
    }
    let mut name = Name::from_ascii(text).map_err(|e| format!("bad name {text:?}: {e}"))?;
    name.set_fqdn(true);
    Ok(name)
}

fn parse_record(text: &str) -> Result<ZoneRecord, String> {
    let syntax = || format!("{text:?} is not NAME=TYPE:VALUE");
    let (name, rest) = text.split_once('=').ok_or_else(syntax)?;
    // The first colon ends the type: an IPv6 value has more.
    let (kind, value) = rest.split_once(':').ok_or_else(syntax)?;
    let address = |e| format!("bad address {value:?}: {e}");
    let data = match kind.to_ascii_uppercase().as_str() {
        "A" => RData::A(A(value.parse().map_err(address)?)),
        "AAAA" => RData::AAAA(AAAA(value.parse().map_err(address)?)),
        "CNAME" => RData::CNAME(CNAME(fqdn(value)?)),
        other => return Err(format!("record type {other} is not one of A, AAAA, CNAME")),
    };
    Ok(ZoneRecord {
        name: fqdn(name)?,
        data,
    })
}

/// The response to `request`: the CNAME chain from the question name through `zone`, then
/// the records of the asked type at its end. NXDOMAIN if the zone has nothing for the name
/// asked; an empty answer (NODATA) if it has other types only.
fn respond(zone: &[ZoneRecord], ttl: u32, request: &Message) -> Message {
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata.authoritative = true;
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    let Some(query) = request.queries.first() else {
        response.metadata.response_code = ResponseCode::FormErr;
        return response;
    };
    response.add_query(query.clone());
    let wanted = query.query_type();
    let mut name = query.name().clone();
    for _ in 0..MAX_CHAIN {
        let records: Vec<&ZoneRecord> = zone.iter().filter(|r| r.name == name).collect();
        if records.is_empty() {
            if response.answers.is_empty() {
                response.metadata.response_code = ResponseCode::NXDomain;
            }
            break;
        }
        let target = records.iter().find_map(|r| match &r.data {
            RData::CNAME(CNAME(target)) if wanted != RecordType::CNAME => Some(target.clone()),
            _ => None,
        });
        if let Some(target) = target {
            let link = RData::CNAME(CNAME(target.clone()));
            response.add_answer(Record::from_rdata(name, ttl, link));
            name = target;
            continue;
        }
        response.add_answers(
            records
                .iter()
                .filter(|r| r.data.record_type() == wanted)
                .map(|r| Record::from_rdata(name.clone(), ttl, r.data.clone())),
        );
        break;
    }
    response
}

/// The encoded response to the encoded `query`.
fn answer(zone: &[ZoneRecord], ttl: u32, query: &[u8]) -> Result<Vec<u8>> {
    let request = Message::from_vec(query).context("not a DNS message")?;
    ensure!(
        request.metadata.message_type == MessageType::Query
            && request.metadata.op_code == OpCode::Query,
        "not a standard query"
    );
    respond(zone, ttl, &request)
        .to_vec()
        .context("cannot encode the response")
}

/// Binds UDP and TCP on the same address, prints `ready` and answers until killed.
pub fn serve(args: &DnsServeArgs) -> Result<std::convert::Infallible> {
    let zone: Arc<[ZoneRecord]> = args.records.clone().into();
    let ttl = args.ttl;
    let udp =
        UdpSocket::bind(args.listen).with_context(|| format!("cannot bind UDP {}", args.listen))?;
    let tcp = TcpListener::bind(args.listen)
        .with_context(|| format!("cannot listen on TCP {}", args.listen))?;
    let udp_zone = Arc::clone(&zone);
    thread::spawn(move || serve_udp(&udp, &udp_zone, ttl));
    thread::spawn(move || serve_tcp(&tcp, move |stream| answer_tcp(stream, &zone, ttl)));
    ready_forever()
}

fn serve_udp(socket: &UdpSocket, zone: &[ZoneRecord], ttl: u32) {
    let mut buf = vec![0u8; DATAGRAM_BUF];
    loop {
        let (n, from) = match socket.recv_from(&mut buf) {
            Ok(received) => received,
            Err(e) => {
                log_error(format_args!("UDP receive failed: {e}"), true);
                continue;
            }
        };
        let sent = answer(zone, ttl, &buf[..n]).and_then(|response| {
            socket
                .send_to(&response, from)
                .context("cannot send the response")
        });
        if let Err(e) = sent {
            log_error(format_args!("DNS query from {from}: {e:#}"), false);
        }
    }
}

/// Answers length-prefixed queries on one connection until the client closes it.
fn answer_tcp(mut stream: &TcpStream, zone: &[ZoneRecord], ttl: u32) -> Result<()> {
    loop {
        let mut prefix = [0u8; 2];
        match stream.read_exact(&mut prefix) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            other => other.context("cannot read the length prefix")?,
        }
        let mut query = vec![0u8; u16::from_be_bytes(prefix).into()];
        stream.read_exact(&mut query).context("query cut short")?;
        let response = answer(zone, ttl, &query)?;
        let len = u16::try_from(response.len()).context("response too long for TCP")?;
        // Prefix and message in one write, so they leave in one segment like most servers'.
        let framed = [&len.to_be_bytes()[..], &response].concat();
        stream
            .write_all(&framed)
            .context("cannot send the response")?;
    }
}

/// Response `i` of a flood: `r<i>.flood.example A <address>`, or `name` instead.
fn flood_response(i: u32, name: Option<&str>, address: Ipv4Addr, ttl: u32) -> Result<Vec<u8>> {
    let name = match name {
        Some(name) => fqdn(name),
        None => fqdn(&format!("r{i}.flood.example")),
    }
    .map_err(anyhow::Error::msg)?;
    // The id wraps: a flood is not an answer to anything anyway.
    let mut response = Message::response(i as u16, OpCode::Query);
    response.add_query(Query::query(name.clone(), RecordType::A));
    response.add_answer(Record::from_rdata(name, ttl, RData::A(A(address))));
    response.to_vec().context("cannot encode a flood response")
}

pub fn flood(args: &DnsFloodArgs) -> Result<()> {
    let first = address_range_start(args.first_address, args.count)?;
    ensure!(
        args.rate >= 0.0 && args.rate.is_finite(),
        "--rate must be a finite rate (0 = unpaced)"
    );
    let socket =
        UdpSocket::bind(args.from).with_context(|| format!("cannot bind UDP {}", args.from))?;
    let start = Instant::now();
    for i in 0..args.count {
        pace(start, i.into(), args.rate);
        let response =
            flood_response(i, args.name.as_deref(), Ipv4Addr::from(first + i), args.ttl)?;
        send_datagram(&socket, &response, args.to)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(records: &[&str]) -> Vec<ZoneRecord> {
        records.iter().map(|r| parse_record(r).unwrap()).collect()
    }

    fn ask(zone: &[ZoneRecord], name: &str, kind: RecordType) -> Message {
        let mut request = Message::new(7, MessageType::Query, OpCode::Query);
        request.add_query(Query::query(fqdn(name).unwrap(), kind));
        let wire = request.to_vec().unwrap();
        Message::from_vec(&answer(zone, 60, &wire).unwrap()).unwrap()
    }

    fn texts(response: &Message) -> Vec<String> {
        response
            .answers
            .iter()
            .map(|r| format!("{} {}", r.name, r.data))
            .collect()
    }

    #[test]
    fn follows_cname_chains_to_the_asked_type() {
        let zone = zone(&[
            "www.example.org=CNAME:cdn.example.net",
            "cdn.example.net=A:10.1.0.3",
            "cdn.example.net=AAAA:fd00::3",
        ]);
        let response = ask(&zone, "WWW.example.org", RecordType::AAAA);
        assert_eq!(response.metadata.response_code, ResponseCode::NoError);
        assert_eq!(response.metadata.id, 7);
        assert_eq!(
            texts(&response),
            [
                "WWW.example.org. cdn.example.net.",
                "cdn.example.net. fd00::3"
            ]
        );
    }

    #[test]
    fn nxdomain_and_nodata() {
        let zone = zone(&["pool.example.org=A:10.1.0.2"]);
        let missing = ask(&zone, "other.example.org", RecordType::A);
        assert_eq!(missing.metadata.response_code, ResponseCode::NXDomain);
        let nodata = ask(&zone, "pool.example.org", RecordType::AAAA);
        assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
        assert!(nodata.answers.is_empty());
    }

    #[test]
    fn cname_loops_end() {
        let zone = zone(&["a.example=CNAME:b.example", "b.example=CNAME:a.example"]);
        assert_eq!(
            ask(&zone, "a.example", RecordType::A).answers.len(),
            MAX_CHAIN
        );
    }

    #[test]
    fn bad_records_rejected() {
        for bad in [
            "x",
            "x=A",
            "x=A:fd00::1",
            "x=AAAA:10.0.0.1",
            "x=MX:y",
            "=A:10.0.0.1",
        ] {
            assert!(parse_record(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn flood_responses_are_distinct_valid_answers() {
        let one = flood_response(1, None, Ipv4Addr::new(100, 64, 0, 1), 60).unwrap();
        let two = flood_response(2, None, Ipv4Addr::new(100, 64, 0, 2), 60).unwrap();
        assert_ne!(one, two);
        let parsed = Message::from_vec(&one).unwrap();
        assert_eq!(parsed.metadata.message_type, MessageType::Response);
        assert_eq!(texts(&parsed), ["r1.flood.example. 100.64.0.1"]);
    }
}
