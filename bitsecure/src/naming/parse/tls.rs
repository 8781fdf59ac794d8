//! The SNI host name of a TLS ClientHello.
//!
//! The kernel hands over the first bytes (at most 512) a client sent on a flow. [`client_hello_sni`]
//! walks them as a TLS record (RFC 8446 §5.1) holding a ClientHello (§4.1.2) and returns the
//! `host_name` of the `server_name` extension (RFC 6066 §3). Every length is checked twice:
//! against the structure that contains it (beyond → [`TlsError::Invalid`]) and against the bytes
//! given (beyond → [`TlsError::Truncated`]: more bytes might have held the name). No allocation
//! but the returned name; the work is bounded by the input length.

use super::host_name;

/// Largest TLS record body (RFC 8446 §5.1: "MUST NOT exceed 2^14 bytes").
pub const MAX_RECORD_LEN: usize = 1 << 14;

const CONTENT_TYPE_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXTENSION_SERVER_NAME: u16 = 0;
const NAME_TYPE_HOST_NAME: u8 = 0;

/// Why no server name came out of the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// Not a TLS handshake record (wrong content type or protocol version).
    #[error("not a TLS handshake record")]
    NotHandshake,
    /// A handshake message, but not a ClientHello.
    #[error("TLS handshake message of type {0} is not a ClientHello")]
    NotClientHello(u8),
    /// The bytes end before the server name (or before it is known there is none).
    #[error("ClientHello is cut off before its server name")]
    Truncated,
    /// The ClientHello continues in a second record before the server name; only the first
    /// record is read.
    #[error("ClientHello is split across TLS records before its server name")]
    Fragmented,
    /// The record header announces more than a TLS record may hold.
    #[error("TLS record length {0} exceeds 16384 bytes")]
    RecordTooLong(usize),
    /// A length or field that cannot be (a length beyond its container, an empty list, ...).
    #[error("invalid ClientHello: {0}")]
    Invalid(&'static str),
    /// A complete ClientHello without a server_name extension (or without a host_name in it).
    #[error("ClientHello has no server name")]
    NoServerName,
    /// The host_name is not a valid host name (control characters, empty labels, too long, ...).
    #[error("ClientHello server name is not a valid host name")]
    BadServerName,
}

/// Reads inside one length-delimited structure: `end` is where the structure says it ends,
/// `buf.len()` how far the given bytes go (possibly less).
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    end: usize,
}

impl<'a> Reader<'a> {
    /// Where the next `n` bytes end, if the structure has them (the bytes may still be missing).
    fn bound(&self, n: usize, what: &'static str) -> Result<usize, TlsError> {
        match self.pos.checked_add(n) {
            Some(next) if next <= self.end => Ok(next),
            _ => Err(TlsError::Invalid(what)),
        }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], TlsError> {
        let next = self.bound(n, what)?;
        let bytes = self.buf.get(self.pos..next).ok_or(TlsError::Truncated)?;
        self.pos = next;
        Ok(bytes)
    }

    fn skip(&mut self, n: usize, what: &'static str) -> Result<(), TlsError> {
        self.pos = self.bound(n, what)?;
        Ok(())
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, TlsError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, TlsError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u24(&mut self, what: &'static str) -> Result<usize, TlsError> {
        let b = self.take(3, what)?;
        Ok((usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]))
    }

    /// A reader for the next `len` bytes, which this reader then skips.
    fn sub(&mut self, len: usize, what: &'static str) -> Result<Reader<'a>, TlsError> {
        let end = self.bound(len, what)?;
        let sub = Reader {
            buf: self.buf,
            pos: self.pos,
            end,
        };
        self.pos = end;
        Ok(sub)
    }

    fn at_end(&self) -> bool {
        self.pos >= self.end
    }
}

/// The SNI host name (lowercase, no trailing dot) of the ClientHello at the start of `bytes`.
pub fn client_hello_sni(bytes: &[u8]) -> Result<String, TlsError> {
    let mut record = Reader {
        buf: bytes,
        pos: 0,
        end: 5,
    };
    let content_type = record.u8("record header")?;
    let major = record.u8("record header")?;
    let minor = record.u8("record header")?;
    if content_type != CONTENT_TYPE_HANDSHAKE || major != 3 || minor > 4 {
        return Err(TlsError::NotHandshake);
    }
    let record_len = usize::from(record.u16("record header")?);
    if record_len > MAX_RECORD_LEN {
        return Err(TlsError::RecordTooLong(record_len));
    }
    if record_len < 4 {
        return Err(TlsError::Invalid("record too short for a handshake header"));
    }
    let record_end = 5 + record_len;

    // The handshake message may be longer than its record (continued in the next one): read
    // what this record holds; running past it is `Fragmented` if the next record is there.
    let in_record = &bytes[..bytes.len().min(record_end)];
    let mut handshake = Reader {
        buf: in_record,
        pos: 5,
        end: record_end,
    };
    let msg_type = handshake.u8("handshake header")?;
    if msg_type != HANDSHAKE_CLIENT_HELLO {
        return Err(TlsError::NotClientHello(msg_type));
    }
    let body_len = handshake.u24("handshake header")?;
    let mut hello = Reader {
        buf: in_record,
        pos: handshake.pos,
        end: handshake.pos.saturating_add(body_len),
    };
    match server_name(&mut hello) {
        Err(TlsError::Truncated) if bytes.len() > record_end => Err(TlsError::Fragmented),
        other => other,
    }
}

fn server_name(hello: &mut Reader<'_>) -> Result<String, TlsError> {
    let version = hello.take(2, "client version")?;
    if version[0] != 3 {
        return Err(TlsError::Invalid("client version"));
    }
    hello.skip(32, "random")?;
    let session_id_len = usize::from(hello.u8("session id")?);
    if session_id_len > 32 {
        return Err(TlsError::Invalid("session id longer than 32 bytes"));
    }
    hello.skip(session_id_len, "session id")?;
    let suites_len = usize::from(hello.u16("cipher suites")?);
    if suites_len < 2 || suites_len % 2 != 0 {
        return Err(TlsError::Invalid("cipher suites length"));
    }
    hello.skip(suites_len, "cipher suites")?;
    let compression_len = usize::from(hello.u8("compression methods")?);
    if compression_len < 1 {
        return Err(TlsError::Invalid("no compression method"));
    }
    hello.skip(compression_len, "compression methods")?;
    if hello.at_end() {
        return Err(TlsError::NoServerName); // no extensions at all (TLS 1.0 style)
    }
    let extensions_len = usize::from(hello.u16("extensions")?);
    let mut extensions = hello.sub(extensions_len, "extensions beyond the ClientHello")?;
    while !extensions.at_end() {
        let ext_type = extensions.u16("extension header")?;
        let ext_len = usize::from(extensions.u16("extension header")?);
        let mut ext = extensions.sub(ext_len, "extension beyond the extension list")?;
        if ext_type != EXTENSION_SERVER_NAME {
            continue;
        }
        let list_len = usize::from(ext.u16("server name list")?);
        let mut list = ext.sub(list_len, "server name list beyond its extension")?;
        while !list.at_end() {
            let name_type = list.u8("server name entry")?;
            let name_len = usize::from(list.u16("server name entry")?);
            if name_type != NAME_TYPE_HOST_NAME {
                list.skip(name_len, "server name beyond its list")?;
                continue;
            }
            let name = list.take(name_len, "server name beyond its list")?;
            return host_name(name).ok_or(TlsError::BadServerName);
        }
        return Err(TlsError::NoServerName);
    }
    Err(TlsError::NoServerName)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The first bytes `openssl s_client -servername pool.example.org -connect 127.0.0.1:48443`
    /// (OpenSSL 3.0.19) sent, captured with a TCP listener on loopback: 322 bytes, one record;
    /// server_name is the first extension (type at 0x90, length 0x92, list length 0x94, name
    /// type 0x96, name length 0x97, name 0x99..0xa9).
    pub(crate) const OPENSSL_CLIENT_HELLO: &str = concat!(
        "160301013d0100013903030f3e977ccc04cfcc618e54ab9501db133a9b9d",
        "583f01bfc9845d0e0f84291bfb20e02881ee300d15608e9cf413c46c9409",
        "9a52248f607f0ac646e1be4296ff3665003e130213031301c02cc030009f",
        "cca9cca8ccaac02bc02f009ec024c028006bc023c0270067c00ac0140039",
        "c009c0130033009d009c003d003c0035002f00ff010000b2000000150013",
        "000010706f6f6c2e6578616d706c652e6f7267000b000403000102000a00",
        "160014001d0017001e001900180100010101020103010400230000001600",
        "0000170000000d002a0028040305030603080708080809080a080b080408",
        "050806040105010601030303010302040205020602002b00090803040303",
        "03020301002d00020101003300260024001d0020e7ee91056e1b279ca78d",
        "9ea7cd7ea76a31a76ec2eb6305ec24f8fbe212449c0d",
    );

    pub(crate) fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("test hex"))
            .collect()
    }

    fn u16be(n: usize) -> [u8; 2] {
        u16::try_from(n).expect("test length").to_be_bytes()
    }

    /// A ClientHello with the given extensions (type, body), wrapped in one record.
    pub(crate) fn client_hello(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut ext = Vec::new();
        for (ty, body) in extensions {
            ext.extend_from_slice(&ty.to_be_bytes());
            ext.extend_from_slice(&u16be(body.len()));
            ext.extend_from_slice(body);
        }
        let mut hello = vec![3, 3];
        hello.extend_from_slice(&[0x42; 32]); // random
        hello.push(32);
        hello.extend_from_slice(&[0x17; 32]); // session id
        hello.extend_from_slice(&[0, 4, 0x13, 0x01, 0x13, 0x02]); // cipher suites
        hello.extend_from_slice(&[1, 0]); // compression: null
        hello.extend_from_slice(&u16be(ext.len()));
        hello.extend_from_slice(&ext);
        let mut handshake = vec![HANDSHAKE_CLIENT_HELLO];
        handshake.extend_from_slice(&u32::try_from(hello.len()).unwrap().to_be_bytes()[1..]);
        handshake.extend_from_slice(&hello);
        let mut record = vec![CONTENT_TYPE_HANDSHAKE, 3, 1];
        record.extend_from_slice(&u16be(handshake.len()));
        record.extend_from_slice(&handshake);
        record
    }

    /// A server_name extension body with the given (name type, name) entries.
    pub(crate) fn sni_ext(entries: &[(u8, &[u8])]) -> (u16, Vec<u8>) {
        let mut list = Vec::new();
        for (ty, name) in entries {
            list.push(*ty);
            list.extend_from_slice(&u16be(name.len()));
            list.extend_from_slice(name);
        }
        let mut body = u16be(list.len()).to_vec();
        body.extend_from_slice(&list);
        (EXTENSION_SERVER_NAME, body)
    }

    /// Extensions as a browser sends them around the server name.
    fn typical(host: &[u8]) -> Vec<u8> {
        client_hello(&[
            (0xff01, vec![0]),                                // renegotiation_info
            (0x000a, vec![0, 4, 0, 0x1d, 0, 0x17]),           // supported_groups
            sni_ext(&[(NAME_TYPE_HOST_NAME, host)]),          // server_name
            (0x0010, b"\x00\x0c\x02h2\x08http/1.1".to_vec()), // ALPN
        ])
    }

    #[test]
    fn real_openssl_client_hello() {
        let hello = hex(OPENSSL_CLIENT_HELLO);
        assert_eq!(hello.len(), 322);
        assert_eq!(client_hello_sni(&hello).unwrap(), "pool.example.org");
        // The kernel hands over 512 bytes at most; whatever follows the record is not read.
        let mut longer = hello.clone();
        longer.extend_from_slice(&[0x14, 3, 3, 0, 1, 1]);
        assert_eq!(client_hello_sni(&longer).unwrap(), "pool.example.org");
    }

    #[test]
    fn built_client_hello() {
        assert_eq!(
            client_hello_sni(&typical(b"Pool.Example.Org")).unwrap(),
            "pool.example.org"
        );
    }

    #[test]
    fn other_name_types_skipped() {
        let hello = client_hello(&[sni_ext(&[(7, b"ignored"), (0, b"pool.example.org")])]);
        assert_eq!(client_hello_sni(&hello).unwrap(), "pool.example.org");
    }

    #[test]
    fn no_server_name() {
        let hello = client_hello(&[(0x000a, vec![0, 2, 0, 0x1d])]);
        assert_eq!(client_hello_sni(&hello), Err(TlsError::NoServerName));
        let empty_list = client_hello(&[sni_ext(&[])]);
        assert_eq!(client_hello_sni(&empty_list), Err(TlsError::NoServerName));
        // No extensions block at all.
        let mut bare = client_hello(&[]);
        bare.truncate(bare.len() - 2);
        bare[4] -= 2;
        bare[8] -= 2;
        assert_eq!(client_hello_sni(&bare), Err(TlsError::NoServerName));
    }

    /// Every prefix that ends before the name is `Truncated`; from the end of the name on, the
    /// name comes out.
    #[test]
    fn truncated_client_hello() {
        let hello = hex(OPENSSL_CLIENT_HELLO);
        let name_end = 0x99 + "pool.example.org".len();
        for len in 0..hello.len() {
            let result = client_hello_sni(&hello[..len]);
            if len < name_end {
                assert_eq!(result, Err(TlsError::Truncated), "prefix of {len}");
            } else {
                assert_eq!(result.as_deref(), Ok("pool.example.org"), "prefix of {len}");
            }
        }
    }

    #[test]
    fn oversized_record() {
        let mut hello = hex(OPENSSL_CLIENT_HELLO);
        hello[3..5].copy_from_slice(&[0x40, 0x01]);
        assert_eq!(
            client_hello_sni(&hello),
            Err(TlsError::RecordTooLong(16385))
        );
        hello[3..5].copy_from_slice(&[0xff, 0xff]);
        assert_eq!(
            client_hello_sni(&hello),
            Err(TlsError::RecordTooLong(65535))
        );
    }

    /// Lengths that reach beyond their container are invalid, not merely truncated.
    #[test]
    fn oversized_inner_lengths() {
        let hello = hex(OPENSSL_CLIENT_HELLO);
        // Extensions length (at 0x8e) 256 more than the ClientHello holds.
        let mut ext_len = hello.clone();
        ext_len[0x8e] += 1;
        assert!(matches!(
            client_hello_sni(&ext_len),
            Err(TlsError::Invalid(_))
        ));
        // server_name extension length (at 0x92) beyond the extension list.
        let mut sni_len = hello.clone();
        sni_len[0x92..0x94].copy_from_slice(&[0x01, 0x00]);
        assert!(matches!(
            client_hello_sni(&sni_len),
            Err(TlsError::Invalid(_))
        ));
        // Host name length (at 0x97) beyond the server name list.
        let mut name_len = hello.clone();
        name_len[0x98] += 1;
        assert!(matches!(
            client_hello_sni(&name_len),
            Err(TlsError::Invalid(_))
        ));
        // Session id longer than 32.
        let mut sid = hello.clone();
        sid[43] = 33;
        assert!(matches!(client_hello_sni(&sid), Err(TlsError::Invalid(_))));
        // Handshake body longer than the record, with the record complete and nothing after:
        // the next record would be needed before the name.
        let built = client_hello(&[(0x0015, vec![0; 100]), sni_ext(&[(0, b"a.example")])]);
        let mut split = built[..60].to_vec();
        split[3..5].copy_from_slice(&u16be(55));
        assert_eq!(client_hello_sni(&split), Err(TlsError::Truncated));
        split.extend_from_slice(&[CONTENT_TYPE_HANDSHAKE, 3, 3, 0, 2, 0, 0]);
        assert_eq!(client_hello_sni(&split), Err(TlsError::Fragmented));
    }

    #[test]
    fn malformed_client_hello() {
        let hello = hex(OPENSSL_CLIENT_HELLO);
        // Application data, alert, SSLv2-style, plain text.
        let mut app_data = hello.clone();
        app_data[0] = 23;
        assert_eq!(client_hello_sni(&app_data), Err(TlsError::NotHandshake));
        let mut bad_version = hello.clone();
        bad_version[1] = 2;
        assert_eq!(client_hello_sni(&bad_version), Err(TlsError::NotHandshake));
        assert_eq!(
            client_hello_sni(b"GET / HTTP/1.1\r\n"),
            Err(TlsError::NotHandshake)
        );
        assert_eq!(
            client_hello_sni(&[0x80, 0x2e, 0x01]),
            Err(TlsError::NotHandshake)
        );
        // ServerHello instead of ClientHello.
        let mut server_hello = hello.clone();
        server_hello[5] = 2;
        assert_eq!(
            client_hello_sni(&server_hello),
            Err(TlsError::NotClientHello(2))
        );
        // Odd cipher suites length.
        let mut suites = hello.clone();
        suites[0x4d] = 0x3d;
        assert!(matches!(
            client_hello_sni(&suites),
            Err(TlsError::Invalid(_))
        ));
        // A record too short for a handshake header.
        assert!(matches!(
            client_hello_sni(&[22, 3, 1, 0, 2, 1, 0]),
            Err(TlsError::Invalid(_))
        ));
        // A host name with a control character, an empty one, and one too long.
        for bad in [&b"pool\nexample.org"[..], b"", b"a..b", &[b'a'; 300]] {
            let h = client_hello(&[sni_ext(&[(0, bad)])]);
            assert_eq!(client_hello_sni(&h), Err(TlsError::BadServerName));
        }
    }

    /// A host name label.
    fn host() -> impl Strategy<Value = String> {
        prop::collection::vec("[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", 1..6)
            .prop_map(|labels| labels.join("."))
    }

    /// Extensions other than server_name, to place before and after it.
    fn other_extensions() -> impl Strategy<Value = Vec<(u16, Vec<u8>)>> {
        prop::collection::vec(
            (1u16..=0xffff, prop::collection::vec(any::<u8>(), 0..64)),
            0..5,
        )
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..2048)) {
            let _ = client_hello_sni(&data);
        }

        /// Arbitrary bytes behind a valid record and handshake header reach the body parser.
        #[test]
        fn arbitrary_hello_body_never_panics(body in prop::collection::vec(any::<u8>(), 0..2048)) {
            let mut data = vec![22, 3, 1];
            data.extend_from_slice(&u16be(body.len() + 4));
            data.push(1);
            data.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
            data.extend_from_slice(&body);
            let _ = client_hello_sni(&data);
        }

        #[test]
        fn generated_hello_round_trip(
            name in host(),
            before in other_extensions(),
            after in other_extensions(),
        ) {
            let mut extensions = before;
            extensions.push(sni_ext(&[(0, name.as_bytes())]));
            extensions.extend(after);
            let hello = client_hello(&extensions);
            prop_assert_eq!(client_hello_sni(&hello), Ok(name));
        }

        /// Any prefix of a valid ClientHello yields the name or `Truncated`, never a wrong name.
        #[test]
        fn prefix_gives_name_or_truncated(
            name in host(),
            before in other_extensions(),
            after in other_extensions(),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut extensions = before;
            extensions.push(sni_ext(&[(0, name.as_bytes())]));
            extensions.extend(after);
            let hello = client_hello(&extensions);
            let prefix = &hello[..cut.index(hello.len() + 1)];
            match client_hello_sni(prefix) {
                Ok(got) => prop_assert_eq!(got, name),
                Err(e) => prop_assert_eq!(e, TlsError::Truncated),
            }
        }
    }
}
