//! Who gets paid: the account a miner logs in with, and a pool sending it elsewhere, from the
//! first newline-delimited JSON-RPC messages of a Stratum flow.
//!
//! Both flavours: Stratum V1 `mining.authorize` (`params[0]`: `wallet.worker` or a pool
//! account) and the xmrig / Monero `login` (`params.login`: the wallet, with any worker or
//! difficulty suffix). The account is kept as sent, so a changed worker name is a change too.
//! A pool's `client.reconnect` (`params`: host, port, wait) sends the miner to another server.
//! TLS stratum (`stratum+ssl`) is encrypted: nothing of it can be read here.

use serde_json::Value;

/// Longest account kept (a Monero address with a payment id and worker is ~200 characters);
/// anything longer is cut.
pub const MAX_ACCOUNT_LEN: usize = 256;

/// What one Stratum message says about payouts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StratumMessage {
    /// The miner logs in with this account.
    Login { account: String },
    /// The pool tells the miner to connect to `host` (and `port`, when given) instead.
    Reconnect { host: String, port: Option<u16> },
}

/// The payout messages among the complete lines of `bytes` (a line cut off at the end of a
/// captured payload is left out; other JSON-RPC methods are ignored).
pub fn messages(bytes: &[u8]) -> Vec<StratumMessage> {
    let complete = match bytes.iter().rposition(|&b| b == b'\n') {
        Some(end) => &bytes[..end],
        // One message without its newline: whole if it parses.
        None => bytes,
    };
    complete
        .split(|&b| b == b'\n')
        .filter_map(|line| serde_json::from_slice::<Value>(line).ok())
        .filter_map(|message| message_of(&message))
        .collect()
}

fn message_of(message: &Value) -> Option<StratumMessage> {
    let params = message.get("params")?;
    let text = |value: &Value| {
        value
            .as_str()
            .filter(|text| !text.is_empty())
            .map(|text| text.chars().take(MAX_ACCOUNT_LEN).collect::<String>())
    };
    match message.get("method")?.as_str()? {
        "mining.authorize" => Some(StratumMessage::Login {
            account: text(params.get(0)?)?,
        }),
        "login" => Some(StratumMessage::Login {
            account: text(params.get("login")?)?,
        }),
        "client.reconnect" => Some(StratumMessage::Reconnect {
            host: text(params.get(0)?)?,
            port: params.get(1).and_then(|port| match port {
                Value::Number(number) => number.as_u64().and_then(|p| u16::try_from(p).ok()),
                Value::String(text) => text.parse().ok(),
                _ => None,
            }),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WALLET: &str = "48edfHu7V9Z84YzzMa6fUueoELZ9ZRXq9VetWzYGzKt52XU5xvqgzYnDK9URnRoJMk1j8nLwEVsaSWJ4fhdUyZijBGUicoD";

    #[test]
    fn both_flavours_of_login() {
        let xmrig = format!(
            r#"{{"id":1,"jsonrpc":"2.0","method":"login","params":{{"login":"{WALLET}.rig01","pass":"x","agent":"XMRig/6.21.0"}}}}"#
        );
        assert_eq!(
            messages(format!("{xmrig}\n").as_bytes()),
            [StratumMessage::Login {
                account: format!("{WALLET}.rig01")
            }]
        );
        let v1 = concat!(
            r#"{"id":1,"method":"mining.subscribe","params":["cgminer/4.10"]}"#,
            "\n",
            r#"{"id":2,"method":"mining.authorize","params":["bc1qwallet.worker1","x"]}"#,
            "\n"
        );
        assert_eq!(
            messages(v1.as_bytes()),
            [StratumMessage::Login {
                account: "bc1qwallet.worker1".into()
            }]
        );
    }

    #[test]
    fn a_pool_redirect() {
        let reconnect =
            br#"{"id":null,"method":"client.reconnect","params":["evil.example.net",3333,0]}"#;
        assert_eq!(
            messages(reconnect),
            [StratumMessage::Reconnect {
                host: "evil.example.net".into(),
                port: Some(3333)
            }]
        );
        let no_port = br#"{"id":null,"method":"client.reconnect","params":["x.example","y"]}"#;
        assert_eq!(
            messages(no_port),
            [StratumMessage::Reconnect {
                host: "x.example".into(),
                port: None
            }]
        );
    }

    #[test]
    fn odd_input_gives_nothing() {
        let cut = br#"{"id":1,"method":"mining.subscribe","params":[]}
{"id":2,"method":"mining.authorize","params":["wallet.w"#;
        assert_eq!(messages(cut), []);
        for bytes in [
            &b""[..],
            b"GET / HTTP/1.1\r\n\r\n",
            br#"{"id":2,"method":"mining.authorize","params":[]}"#,
            br#"{"id":2,"method":"mining.authorize","params":[""]}"#,
            br#"{"id":2,"method":"login","params":{"pass":"x"}}"#,
            br#"{"id":2,"method":"mining.authorize","params":[42]}"#,
            br#"{"id":3,"method":"mining.submit","params":["w","j","n","t","n"]}"#,
        ] {
            assert_eq!(messages(bytes), [], "{}", String::from_utf8_lossy(bytes));
        }
        let long = format!(
            r#"{{"id":2,"method":"mining.authorize","params":["{}"]}}"#,
            "a".repeat(1000)
        );
        assert_eq!(
            messages(long.as_bytes()),
            [StratumMessage::Login {
                account: "a".repeat(MAX_ACCOUNT_LEN)
            }]
        );
    }
}
