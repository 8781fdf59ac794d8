//! Address → name mappings from DNS responses.
//!
//! The kernel hands over DNS responses seen on ingress: UDP port 53 payloads as they are, TCP
//! port 53 segments with the 2-byte length prefix of RFC 1035 §4.2.2 ([`tcp_message`] strips it).
//! [`parse_response`] turns a response into `(address, name, ttl)` triples where `name` is the
//! name the client asked for (the question), reached through any CNAME chain in the answer
//! section: `a CNAME b`, `b CNAME c`, `c A 1.2.3.4` gives `(1.2.3.4, "a")`. Only A and AAAA
//! records of class IN count; everything else (authority and additional sections included) is
//! ignored, so a server cannot attach names to addresses the client did not ask about.

use std::collections::HashMap;
use std::net::IpAddr;

use hickory_proto::op::Message;
use hickory_proto::rr::{DNSClass, Name, RData};
use hickory_proto::serialize::binary::DecodeError;

/// Size of the fixed DNS header.
const HEADER_LEN: usize = 12;
/// Largest DNS message (the TCP length prefix is 16 bits; UDP payloads cannot be larger either).
pub const MAX_MESSAGE_LEN: usize = u16::MAX as usize;

/// One address the response maps to the name the client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsAnswer {
    /// An address from an A or AAAA record at the end of the CNAME chain.
    pub address: IpAddr,
    /// The question name: lowercase, no trailing dot, unusual bytes escaped as `\DDD`.
    pub name: String,
    /// Seconds the mapping is valid: the smallest TTL along the chain (CNAMEs and the address).
    pub ttl: u32,
}

/// What an answer must repeat to answer a query: the message ID and the first question.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DnsQuestion {
    pub id: u16,
    /// The question name: lowercase, no trailing dot (as [`DnsAnswer::name`]).
    pub name: String,
    /// Record type asked for (1 = A, 28 = AAAA, ...).
    pub qtype: u16,
}

/// Why a DNS message gave no mappings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// The bytes end before the message does (also: a TCP segment shorter than its prefix says).
    #[error("DNS message is truncated")]
    Truncated,
    /// The server set the TC flag: the answer is incomplete and the client retries over TCP.
    #[error("DNS response has the TC flag set (incomplete answer)")]
    TruncatedResponse,
    /// The QR flag says query: only responses carry answers.
    #[error("DNS message is a query, not a response")]
    NotResponse,
    /// The QR flag says response where a query was expected.
    #[error("DNS message is a response, not a query")]
    NotAQuery,
    /// Opcode other than QUERY (NOTIFY, UPDATE, ...): no address answers to take.
    #[error("DNS response has opcode {0}, not QUERY")]
    NotQuery(u8),
    /// A response without a question: nothing says which name the addresses belong to.
    #[error("DNS response has no question")]
    NoQuestion,
    /// More bytes than any DNS message can have.
    #[error("DNS message of {0} bytes exceeds the 65535-byte maximum")]
    Oversized(usize),
    /// The bytes are not a well-formed DNS message.
    #[error("malformed DNS message: {0}")]
    Malformed(String),
}

/// The DNS message inside one TCP segment: the bytes after the 2-byte length prefix, exactly as
/// many as the prefix says (bytes after it belong to a following message and are not returned).
pub fn tcp_message(segment: &[u8]) -> Result<&[u8], DnsError> {
    let Some((prefix, rest)) = segment.split_first_chunk::<2>() else {
        return Err(DnsError::Truncated);
    };
    let len = usize::from(u16::from_be_bytes(*prefix));
    if len < HEADER_LEN {
        return Err(DnsError::Malformed(format!(
            "TCP length prefix {len} is shorter than a DNS header"
        )));
    }
    rest.get(..len).ok_or(DnsError::Truncated)
}

/// [`parse_response`] of the message in a TCP segment (see [`tcp_message`]).
pub fn parse_tcp_response(segment: &[u8]) -> Result<Vec<DnsAnswer>, DnsError> {
    parse_response(tcp_message(segment)?)
}

/// The question a DNS query message (UDP payload, or the result of [`tcp_message`]) asks.
pub fn parse_query(message: &[u8]) -> Result<DnsQuestion, DnsError> {
    if message.len() > MAX_MESSAGE_LEN {
        return Err(DnsError::Oversized(message.len()));
    }
    let Some(header) = message.get(..HEADER_LEN) else {
        return Err(DnsError::Truncated);
    };
    if header[2] & 0x80 != 0 {
        return Err(DnsError::NotAQuery);
    }
    let opcode = (header[2] >> 3) & 0x0f;
    if opcode != 0 {
        return Err(DnsError::NotQuery(opcode));
    }
    let msg = Message::from_vec(message).map_err(|e| match e {
        DecodeError::InsufficientBytes => DnsError::Truncated,
        other => DnsError::Malformed(other.to_string()),
    })?;
    first_question(&msg).ok_or(DnsError::NoQuestion)
}

/// [`parse_query`] of the message in a TCP segment (see [`tcp_message`]).
pub fn parse_tcp_query(segment: &[u8]) -> Result<DnsQuestion, DnsError> {
    parse_query(tcp_message(segment)?)
}

/// The ID and first question of a parsed message.
fn first_question(msg: &Message) -> Option<DnsQuestion> {
    let query = msg.queries.first()?;
    Some(DnsQuestion {
        id: msg.metadata.id,
        name: name_text(query.name()),
        qtype: u16::from(query.query_type()),
    })
}

/// [`parse_response_to`] of the message in a TCP segment (see [`tcp_message`]).
pub fn parse_tcp_response_to(segment: &[u8]) -> Result<(DnsQuestion, Vec<DnsAnswer>), DnsError> {
    parse_response_to(tcp_message(segment)?)
}

/// The `(address, question name, ttl)` mappings of a DNS response message (UDP payload, or the
/// result of [`tcp_message`]). A well-formed response without usable answers (NXDOMAIN, a
/// question for MX, an answer for another name) gives an empty list.
pub fn parse_response(message: &[u8]) -> Result<Vec<DnsAnswer>, DnsError> {
    parse_response_to(message).map(|(_, answers)| answers)
}

/// [`parse_response`] with the question it answers (the message ID and its first question).
pub fn parse_response_to(message: &[u8]) -> Result<(DnsQuestion, Vec<DnsAnswer>), DnsError> {
    if message.len() > MAX_MESSAGE_LEN {
        return Err(DnsError::Oversized(message.len()));
    }
    // The flags come from the raw header, so a truncated or odd body still gets the precise
    // error (a TC response, for one, may be cut anywhere).
    let Some(header) = message.get(..HEADER_LEN) else {
        return Err(DnsError::Truncated);
    };
    let (flags_hi, qdcount) = (header[2], u16::from_be_bytes([header[4], header[5]]));
    if flags_hi & 0x80 == 0 {
        return Err(DnsError::NotResponse);
    }
    let opcode = (flags_hi >> 3) & 0x0f;
    if opcode != 0 {
        return Err(DnsError::NotQuery(opcode));
    }
    if flags_hi & 0x02 != 0 {
        return Err(DnsError::TruncatedResponse);
    }
    if qdcount == 0 {
        return Err(DnsError::NoQuestion);
    }

    // hickory reports a message cut inside a record's data as a wrong data length: walk the
    // section structure first to tell "cut off" from "wrong".
    if ends_early(message) {
        return Err(DnsError::Truncated);
    }
    let msg = Message::from_vec(message).map_err(|e| match e {
        DecodeError::InsufficientBytes => DnsError::Truncated,
        other => DnsError::Malformed(other.to_string()),
    })?;
    let question = first_question(&msg).ok_or(DnsError::NoQuestion)?;

    // owner → (CNAME target, ttl), and the address records, from the answer section only.
    let mut cnames: HashMap<String, (String, u32)> = HashMap::new();
    let mut addresses: Vec<(String, IpAddr, u32)> = Vec::new();
    for record in &msg.answers {
        if record.dns_class != DNSClass::IN {
            continue;
        }
        match &record.data {
            RData::A(a) => addresses.push((name_text(&record.name), IpAddr::V4(a.0), record.ttl)),
            RData::AAAA(a) => {
                addresses.push((name_text(&record.name), IpAddr::V6(a.0), record.ttl));
            }
            RData::CNAME(target) => {
                // A name has at most one CNAME (RFC 2181 §10.1); keep the first.
                cnames
                    .entry(name_text(&record.name))
                    .or_insert_with(|| (name_text(&target.0), record.ttl));
            }
            _ => {}
        }
    }

    let mut out: Vec<DnsAnswer> = Vec::new();
    for query in &msg.queries {
        if query.query_class() != DNSClass::IN {
            continue;
        }
        let qname = name_text(query.name());
        if qname.is_empty() {
            continue; // the root: no host is called that
        }
        // The chain qname → ... with the smallest TTL so far at each step. Bounded by the
        // number of CNAMEs, and a name seen twice (a loop) ends it.
        let mut chain: Vec<(&str, u32)> = vec![(qname.as_str(), u32::MAX)];
        let mut current = (qname.as_str(), u32::MAX);
        while let Some((target, ttl)) = cnames.get(current.0) {
            if chain.len() > cnames.len() || chain.iter().any(|(n, _)| n == target) {
                break;
            }
            current = (target.as_str(), current.1.min(*ttl));
            chain.push(current);
        }
        for (owner, address, ttl) in &addresses {
            let Some(&(_, chain_ttl)) = chain.iter().find(|(n, _)| n == owner) else {
                continue;
            };
            let ttl = (*ttl).min(chain_ttl);
            match out
                .iter_mut()
                .find(|a| a.address == *address && a.name == qname)
            {
                Some(existing) => existing.ttl = existing.ttl.max(ttl),
                None => out.push(DnsAnswer {
                    address: *address,
                    name: qname.clone(),
                    ttl,
                }),
            }
        }
    }
    Ok((question, out))
}

/// Whether the sections the header announces need more bytes than `message` has. Only the
/// framing is walked (names, fixed fields, RDATA lengths); a wrong byte that is not about the
/// length is left for the decoder to report.
fn ends_early(message: &[u8]) -> bool {
    /// Why the walk stopped.
    enum Stop {
        /// The bytes ended.
        Short,
        /// A byte that is wrong in itself (reserved label type): the decoder says what.
        Bad,
    }
    fn skip_name(message: &[u8], mut pos: usize) -> Result<usize, Stop> {
        loop {
            let len = *message.get(pos).ok_or(Stop::Short)?;
            match len & 0xc0 {
                0x00 if len == 0 => return Ok(pos + 1),
                0x00 => pos += 1 + usize::from(len),
                0xc0 => return Ok(pos + 2),
                _ => return Err(Stop::Bad),
            }
        }
    }
    fn u16_at(message: &[u8], at: usize) -> Result<usize, Stop> {
        match message.get(at..at + 2) {
            Some(&[hi, lo]) => Ok(usize::from(u16::from_be_bytes([hi, lo]))),
            _ => Err(Stop::Short),
        }
    }
    fn walk(message: &[u8]) -> Result<usize, Stop> {
        let questions = u16_at(message, 4)?;
        let records = u16_at(message, 6)? + u16_at(message, 8)? + u16_at(message, 10)?;
        let mut pos = HEADER_LEN;
        for _ in 0..questions {
            pos = skip_name(message, pos)? + 4; // type, class
        }
        for _ in 0..records {
            let end = skip_name(message, pos)?;
            // type, class, ttl (8 bytes), the RDATA length, the RDATA.
            pos = end + 10 + u16_at(message, end + 8)?;
        }
        Ok(pos)
    }
    match walk(message) {
        Ok(end) => end > message.len(),
        Err(Stop::Short) => true,
        Err(Stop::Bad) => false,
    }
}

/// A DNS name in presentation form: labels joined by dots, lowercase, no trailing dot; bytes
/// other than printable ASCII, and `.` or `\` inside a label, escaped as `\DDD` (RFC 4343), so
/// two different wire names never give the same text and no control character gets through.
fn name_text(name: &Name) -> String {
    let mut text = String::new();
    for (i, label) in name.iter().enumerate() {
        if i > 0 {
            text.push('.');
        }
        for &b in label {
            if b.is_ascii_graphic() && b != b'.' && b != b'\\' {
                text.push(char::from(b.to_ascii_lowercase()));
            } else {
                text.push_str(&format!("\\{b:03}"));
            }
        }
    }
    text
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use hickory_proto::op::{MessageType, OpCode, Query};
    use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, TXT};
    use hickory_proto::rr::{Record, RecordType};
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn name(s: &str) -> Name {
        Name::from_ascii(s).expect("test name")
    }

    fn response(qname: &str, qtype: RecordType, answers: Vec<Record>) -> Message {
        let mut msg = Message::response(0x1234, OpCode::Query);
        msg.metadata.recursion_desired = true;
        msg.metadata.recursion_available = true;
        msg.add_query(Query::query(name(qname), qtype));
        msg.add_answers(answers);
        msg
    }

    fn a(owner: &str, ttl: u32, ip: [u8; 4]) -> Record {
        Record::from_rdata(name(owner), ttl, RData::A(A(Ipv4Addr::from(ip))))
    }

    fn aaaa(owner: &str, ttl: u32, ip: Ipv6Addr) -> Record {
        Record::from_rdata(name(owner), ttl, RData::AAAA(AAAA(ip)))
    }

    fn cname(owner: &str, ttl: u32, target: &str) -> Record {
        Record::from_rdata(name(owner), ttl, RData::CNAME(CNAME(name(target))))
    }

    fn bytes(msg: &Message) -> Vec<u8> {
        msg.to_vec().expect("encode test message")
    }

    fn answer(ip: IpAddr, name: &str, ttl: u32) -> DnsAnswer {
        DnsAnswer {
            address: ip,
            name: name.to_string(),
            ttl,
        }
    }

    /// Wire bytes of the query (ID 0x1234, type A) that [`a_response`] answers.
    pub(crate) fn a_query(qname: &str) -> Vec<u8> {
        let mut msg = Message::new(0x1234, MessageType::Query, OpCode::Query);
        msg.metadata.recursion_desired = true;
        msg.add_query(Query::query(name(qname), RecordType::A));
        bytes(&msg)
    }

    #[test]
    fn queries_and_the_answers_that_answer_them() {
        let question = parse_query(&a_query("Pool.Example.org.")).unwrap();
        assert_eq!(
            question,
            DnsQuestion {
                id: 0x1234,
                name: "pool.example.org".into(),
                qtype: 1
            }
        );
        let (answered, answers) =
            parse_response_to(&a_response("pool.example.org", [10, 0, 0, 9], 60)).unwrap();
        assert_eq!(answered, question);
        assert_eq!(answers.len(), 1);
        // A response is not a query, and a query carries no answers.
        assert_eq!(
            parse_query(&a_response("pool.example.org", [10, 0, 0, 9], 60)),
            Err(DnsError::NotAQuery)
        );
        assert_eq!(
            parse_response(&a_query("pool.example.org")),
            Err(DnsError::NotResponse)
        );
        let mut framed = vec![0, a_query("x.example.org").len() as u8];
        framed.extend(a_query("x.example.org"));
        assert_eq!(parse_tcp_query(&framed).unwrap().name, "x.example.org");
        assert_eq!(parse_query(b"\x12"), Err(DnsError::Truncated));
    }

    /// Wire bytes of a response mapping `qname` to one IPv4 address (for other modules' tests).
    pub(crate) fn a_response(qname: &str, ip: [u8; 4], ttl: u32) -> Vec<u8> {
        bytes(&response(qname, RecordType::A, vec![a(qname, ttl, ip)]))
    }

    fn v4(ip: [u8; 4]) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(ip))
    }

    /// A plain response: two A records for the asked name.
    #[test]
    fn a_records_of_the_question() {
        let msg = response(
            "pool.example.org.",
            RecordType::A,
            vec![
                a("pool.example.org.", 300, [192, 0, 2, 1]),
                a("pool.example.org.", 300, [192, 0, 2, 2]),
            ],
        );
        assert_eq!(
            parse_response(&bytes(&msg)).unwrap(),
            vec![
                answer(v4([192, 0, 2, 1]), "pool.example.org", 300),
                answer(v4([192, 0, 2, 2]), "pool.example.org", 300),
            ]
        );
    }

    #[test]
    fn aaaa_records() {
        let ip: Ipv6Addr = "2001:db8::53".parse().unwrap();
        let msg = response(
            "pool.example.org.",
            RecordType::AAAA,
            vec![aaaa("pool.example.org.", 60, ip)],
        );
        assert_eq!(
            parse_response(&bytes(&msg)).unwrap(),
            vec![answer(IpAddr::V6(ip), "pool.example.org", 60)]
        );
    }

    /// a → CNAME b → CNAME c → A: the address belongs to `a`, with the smallest TTL on the way.
    #[test]
    fn cname_chain_maps_to_question_name() {
        let msg = response(
            "a.example.org.",
            RecordType::A,
            vec![
                cname("a.example.org.", 3600, "b.cdn.example.net."),
                cname("b.cdn.example.net.", 120, "c.edge.example.com."),
                a("c.edge.example.com.", 600, [1, 2, 3, 4]),
            ],
        );
        assert_eq!(
            parse_response(&bytes(&msg)).unwrap(),
            vec![answer(v4([1, 2, 3, 4]), "a.example.org", 120)]
        );
    }

    /// The chain is followed by name, not by record order.
    #[test]
    fn cname_chain_in_any_order() {
        let msg = response(
            "a.example.org.",
            RecordType::A,
            vec![
                a("c.example.org.", 30, [1, 2, 3, 4]),
                cname("b.example.org.", 300, "c.example.org."),
                cname("a.example.org.", 300, "b.example.org."),
            ],
        );
        assert_eq!(
            parse_response(&bytes(&msg)).unwrap(),
            vec![answer(v4([1, 2, 3, 4]), "a.example.org", 30)]
        );
    }

    /// Addresses of names outside the chain are not attributed to the question.
    #[test]
    fn unrelated_answers_ignored() {
        let mut msg = response(
            "pool.example.org.",
            RecordType::A,
            vec![
                a("pool.example.org.", 300, [192, 0, 2, 1]),
                a("evil.example.com.", 300, [203, 0, 113, 9]),
            ],
        );
        msg.add_additional(a("other.example.org.", 300, [198, 51, 100, 1]));
        msg.add_authority(a("ns.example.org.", 300, [198, 51, 100, 2]));
        assert_eq!(
            parse_response(&bytes(&msg)).unwrap(),
            vec![answer(v4([192, 0, 2, 1]), "pool.example.org", 300)]
        );
    }

    #[test]
    fn other_record_types_ignored() {
        let msg = response(
            "example.org.",
            RecordType::ANY,
            vec![
                Record::from_rdata(
                    name("example.org."),
                    300,
                    RData::MX(MX::new(10, name("mail.example.org."))),
                ),
                Record::from_rdata(
                    name("example.org."),
                    300,
                    RData::TXT(TXT::new(vec!["v=spf1 -all".to_string()])),
                ),
                a("example.org.", 300, [192, 0, 2, 7]),
            ],
        );
        assert_eq!(
            parse_response(&bytes(&msg)).unwrap(),
            vec![answer(v4([192, 0, 2, 7]), "example.org", 300)]
        );
    }

    #[test]
    fn names_lowercased_without_trailing_dot() {
        let msg = response(
            "Pool.EXAMPLE.org.",
            RecordType::A,
            vec![a("pool.example.ORG.", 300, [192, 0, 2, 1])],
        );
        assert_eq!(
            parse_response(&bytes(&msg)).unwrap(),
            vec![answer(v4([192, 0, 2, 1]), "pool.example.org", 300)]
        );
    }

    #[test]
    fn nxdomain_gives_no_answers() {
        let mut msg = response("nope.example.org.", RecordType::A, vec![]);
        msg.metadata.response_code = hickory_proto::op::ResponseCode::NXDomain;
        assert_eq!(parse_response(&bytes(&msg)).unwrap(), vec![]);
    }

    /// A CNAME loop ends instead of spinning; the addresses reachable before it still count.
    #[test]
    fn cname_loop_terminates() {
        let msg = response(
            "a.example.org.",
            RecordType::A,
            vec![
                cname("a.example.org.", 300, "b.example.org."),
                cname("b.example.org.", 300, "a.example.org."),
                a("b.example.org.", 300, [192, 0, 2, 1]),
            ],
        );
        assert_eq!(
            parse_response(&bytes(&msg)).unwrap(),
            vec![answer(v4([192, 0, 2, 1]), "a.example.org", 300)]
        );
    }

    /// A label with a dot or control byte inside cannot pass for another name.
    #[test]
    fn odd_label_bytes_escaped() {
        let odd = Name::from_labels(vec![&b"a.b"[..], b"x\n", b"org"]).unwrap();
        let mut msg = Message::response(1, OpCode::Query);
        msg.add_query(Query::query(odd.clone(), RecordType::A));
        msg.add_answer(Record::from_rdata(
            odd,
            5,
            RData::A(A(Ipv4Addr::new(192, 0, 2, 1))),
        ));
        assert_eq!(
            parse_response(&bytes(&msg)).unwrap(),
            vec![answer(v4([192, 0, 2, 1]), "a\\046b.x\\010.org", 5)]
        );
    }

    /// A response as a recursive resolver sends it, written out byte by byte rather than built
    /// with hickory: compression pointers (also inside the CNAME target) and an EDNS OPT record.
    #[test]
    fn wire_bytes_with_compression_and_edns() {
        let wire: &[u8] = &[
            0xab, 0xcd, 0x81, 0x80, 0x00, 0x01, 0x00, 0x02, 0x00, 0x00, 0x00, 0x01, // header
            0x04, b'p', b'o', b'o', b'l', 0x07, b'e', b'x', b'a', b'm', b'p', b'l', b'e', 0x03,
            b'o', b'r', b'g', 0x00, 0x00, 0x01, 0x00, 0x01, // question pool.example.org A IN
            0xc0, 0x0c, 0x00, 0x05, 0x00, 0x01, 0x00, 0x00, 0x0e, 0x10, 0x00, 0x05, 0x02, b'e',
            b'u', 0xc0, 0x0c, // pool.example.org CNAME eu.pool.example.org (ttl 3600)
            0xc0, 0x2e, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x00, 0x3c, 0x00, 0x04, 0xc6, 0x33,
            0x64, 0x07, // eu.pool.example.org A 198.51.100.7 (ttl 60)
            0x00, 0x00, 0x29, 0x04, 0xd0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // OPT
        ];
        assert_eq!(
            parse_response(wire).unwrap(),
            vec![answer(v4([198, 51, 100, 7]), "pool.example.org", 60)]
        );
        // The same message over TCP.
        let mut segment = (wire.len() as u16).to_be_bytes().to_vec();
        segment.extend_from_slice(wire);
        assert_eq!(parse_tcp_response(&segment), parse_response(wire));
    }

    #[test]
    fn query_is_not_a_response() {
        let mut msg = Message::new(7, MessageType::Query, OpCode::Query);
        msg.add_query(Query::query(name("pool.example.org."), RecordType::A));
        assert_eq!(parse_response(&bytes(&msg)), Err(DnsError::NotResponse));
    }

    #[test]
    fn other_opcode_rejected() {
        let mut msg = response("example.org.", RecordType::SOA, vec![]);
        msg.metadata.op_code = OpCode::Notify;
        assert_eq!(parse_response(&bytes(&msg)), Err(DnsError::NotQuery(4)));
    }

    #[test]
    fn tc_flag_rejected() {
        let mut msg = response(
            "pool.example.org.",
            RecordType::A,
            vec![a("pool.example.org.", 300, [192, 0, 2, 1])],
        );
        msg.metadata.truncation = true;
        assert_eq!(
            parse_response(&bytes(&msg)),
            Err(DnsError::TruncatedResponse)
        );
    }

    #[test]
    fn no_question_rejected() {
        let mut msg = Message::response(1, OpCode::Query);
        msg.add_answer(a("pool.example.org.", 300, [192, 0, 2, 1]));
        assert_eq!(parse_response(&bytes(&msg)), Err(DnsError::NoQuestion));
    }

    /// Every strict prefix of a valid response is `Truncated` (also when cut inside RDATA, which
    /// hickory alone reports as a wrong RDATA length).
    #[test]
    fn truncated_message() {
        let msg = response(
            "a.example.org.",
            RecordType::A,
            vec![
                cname("a.example.org.", 300, "b.example.org."),
                a("b.example.org.", 300, [192, 0, 2, 1]),
            ],
        );
        let wire = bytes(&msg);
        for len in 0..wire.len() {
            assert_eq!(
                parse_response(&wire[..len]),
                Err(DnsError::Truncated),
                "prefix of {len} bytes"
            );
        }
    }

    #[test]
    fn oversized_message() {
        let mut huge = bytes(&response(
            "pool.example.org.",
            RecordType::A,
            vec![a("pool.example.org.", 300, [192, 0, 2, 1])],
        ));
        huge.resize(MAX_MESSAGE_LEN + 1, 0);
        assert_eq!(
            parse_response(&huge),
            Err(DnsError::Oversized(MAX_MESSAGE_LEN + 1))
        );
        // Trailing bytes within the limit are ignored (padding, or a following TCP message).
        huge.truncate(MAX_MESSAGE_LEN);
        assert_eq!(parse_response(&huge).unwrap().len(), 1);
    }

    #[test]
    fn malformed_message() {
        let wire = bytes(&response(
            "pool.example.org.",
            RecordType::A,
            vec![a("pool.example.org.", 300, [192, 0, 2, 1])],
        ));
        // A label length of 0x50 has the reserved top bits 01.
        let mut bad_label = wire.clone();
        bad_label[12] = 0x50;
        assert!(matches!(
            parse_response(&bad_label),
            Err(DnsError::Malformed(_))
        ));
        // A compression pointer to itself.
        let mut loop_ptr = wire.clone();
        loop_ptr[12] = 0xc0;
        loop_ptr[13] = 12;
        assert!(matches!(
            parse_response(&loop_ptr),
            Err(DnsError::Malformed(_))
        ));
        // An A record whose RDATA length says 5.
        let mut bad_rdlen = wire.clone();
        let rdlen_at = wire.len() - 6;
        bad_rdlen[rdlen_at + 1] = 5;
        bad_rdlen.push(0);
        assert!(parse_response(&bad_rdlen).is_err());
        // Garbage.
        assert!(
            parse_response(b"\x12\x34\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00garbage").is_err()
        );
    }

    #[test]
    fn tcp_prefix_stripped() {
        let wire = bytes(&response(
            "pool.example.org.",
            RecordType::A,
            vec![a("pool.example.org.", 300, [192, 0, 2, 1])],
        ));
        let mut segment = (wire.len() as u16).to_be_bytes().to_vec();
        segment.extend_from_slice(&wire);
        assert_eq!(tcp_message(&segment), Ok(&wire[..]));
        // A second message behind the first is not part of it.
        segment.extend_from_slice(b"\x00\x0cnext message");
        assert_eq!(tcp_message(&segment), Ok(&wire[..]));
        assert_eq!(
            parse_tcp_response(&segment).unwrap(),
            vec![answer(v4([192, 0, 2, 1]), "pool.example.org", 300)]
        );
    }

    #[test]
    fn tcp_segment_truncated() {
        let wire = bytes(&response(
            "pool.example.org.",
            RecordType::A,
            vec![a("pool.example.org.", 300, [192, 0, 2, 1])],
        ));
        let mut segment = (wire.len() as u16).to_be_bytes().to_vec();
        segment.extend_from_slice(&wire);
        for len in 0..segment.len() {
            assert_eq!(
                tcp_message(&segment[..len]),
                Err(DnsError::Truncated),
                "{len}"
            );
        }
    }

    #[test]
    fn tcp_segment_oversized_prefix() {
        // The prefix claims 65535 bytes; the segment holds 14.
        let segment = b"\xff\xff\x12\x34\x81\x80\x00\x01\x00\x00\x00\x00\x00\x00";
        assert_eq!(tcp_message(segment), Err(DnsError::Truncated));
    }

    #[test]
    fn tcp_segment_malformed_prefix() {
        assert!(matches!(
            tcp_message(b"\x00\x00rest"),
            Err(DnsError::Malformed(_))
        ));
        assert!(matches!(
            tcp_message(b"\x00\x0b01234567890"),
            Err(DnsError::Malformed(_))
        ));
    }

    /// A host name label: what resolvers see for pools and CDNs.
    fn label() -> impl Strategy<Value = String> {
        "[a-z0-9]([a-z0-9-]{0,14}[a-z0-9])?"
    }

    fn dns_name() -> impl Strategy<Value = String> {
        prop::collection::vec(label(), 1..5).prop_map(|labels| labels.join("."))
    }

    fn ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(|b| IpAddr::V4(Ipv4Addr::from(b))),
            any::<[u8; 16]>().prop_map(|b| IpAddr::V6(Ipv6Addr::from(b))),
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse_response(&data);
            let _ = parse_tcp_response(&data);
        }

        /// Arbitrary bytes behind a plausible response header reach the record decoder.
        #[test]
        fn arbitrary_body_never_panics(
            counts in any::<[u8; 8]>(),
            body in prop::collection::vec(any::<u8>(), 0..2048),
        ) {
            let mut data = vec![0x12, 0x34, 0x81, 0x80];
            data.extend_from_slice(&counts);
            data.extend_from_slice(&body);
            let _ = parse_response(&data);
        }

        /// A response built from random names and addresses parses back to the same pairs,
        /// with or without a CNAME chain in front of the addresses.
        #[test]
        fn round_trip(
            qname in dns_name(),
            chain in prop::collection::vec(dns_name(), 0..4),
            ips in prop::collection::vec(ip(), 1..8),
            ttl in 0u32..=i32::MAX as u32,
            cut in any::<prop::sample::Index>(),
        ) {
            let mut answers = Vec::new();
            let mut owner = format!("{qname}.");
            for target in &chain {
                let target = format!("{target}.");
                answers.push(cname(&owner, ttl, &target));
                owner = target;
            }
            for ip in &ips {
                answers.push(match ip {
                    IpAddr::V4(v4) => a(&owner, ttl, v4.octets()),
                    IpAddr::V6(v6) => aaaa(&owner, ttl, *v6),
                });
            }
            let msg = response(&format!("{qname}."), RecordType::A, answers);
            let wire = bytes(&msg);
            let parsed = parse_response(&wire).unwrap();
            prop_assert_eq!(
                parse_response(&wire[..cut.index(wire.len())]),
                Err(DnsError::Truncated)
            );
            // A chain that comes back to an earlier name is a loop; addresses behind it are
            // still reached as long as their owner is on the chain.
            let mut expected: Vec<IpAddr> = Vec::new();
            for ip in &ips {
                if !expected.contains(ip) {
                    expected.push(*ip);
                }
            }
            let got: Vec<IpAddr> = parsed.iter().map(|a| a.address).collect();
            let chain_has_loop = {
                let mut seen = vec![qname.clone()];
                chain.iter().any(|n| { let dup = seen.contains(n); seen.push(n.clone()); dup })
            };
            if !chain_has_loop {
                prop_assert_eq!(got, expected);
            }
            for answer in &parsed {
                prop_assert_eq!(&answer.name, &qname);
                prop_assert_eq!(answer.ttl, ttl);
            }
        }
    }
}
