//! Who may read the agent's HTTP endpoints off loopback, as Prometheus' exporters have it
//! (the exporter-toolkit's web config): TLS with a certificate and key (PEM files), and HTTP
//! basic auth against bcrypt hashes (`htpasswd -nBC 10 USER`). Both are optional; without them
//! the endpoints are plain HTTP for whoever reaches `agent.listen` (loopback by default).

use std::{collections::BTreeMap, sync::Arc, sync::Mutex};

use anyhow::Context as _;
use base64::Engine as _;
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self, ServerConfig,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
    },
};

use crate::config::AgentConfig;

pub struct WebSecurity {
    /// TLS for every connection, when configured.
    pub tls: Option<TlsAcceptor>,
    /// User → bcrypt hash; empty: no authentication.
    users: BTreeMap<String, String>,
    /// The last `Authorization` value that passed: bcrypt costs ~50 ms a check, and a scrape
    /// brings the same credentials every time.
    last_good: Mutex<Option<String>>,
}

impl WebSecurity {
    /// From `agent.tls_cert_file`, `agent.tls_key_file` and `agent.basic_auth_users`; reading
    /// the certificate or key fails with the file named.
    pub fn from_config(agent: &AgentConfig) -> anyhow::Result<Self> {
        let tls = match (&agent.tls_cert_file, &agent.tls_key_file) {
            (Some(cert), Some(key)) => {
                let certs = CertificateDer::pem_file_iter(cert)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .with_context(|| format!("agent.tls_cert_file {cert}: no PEM certificate"))?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .with_context(|| format!("agent.tls_key_file {key}: no PEM private key"))?;
                // ring: builds with cc alone (aws-lc-rs wants more of a C toolchain). rustls
                // deprecates it for lacking post-quantum key exchange, which a scrape on a LAN
                // can do without for now.
                #[expect(deprecated, reason = "ring lacks post-quantum key exchange only")]
                let provider = rustls::crypto::ring::default_provider();
                let config = ServerConfig::builder_with_provider(Arc::new(provider))
                    .with_safe_default_protocol_versions()
                    .context("TLS setup failed")?
                    .with_no_client_auth()
                    .with_single_cert(certs, key)
                    .context(
                        "agent.tls_cert_file and agent.tls_key_file do not make a TLS identity",
                    )?;
                Some(TlsAcceptor::from(Arc::new(config)))
            }
            _ => None,
        };
        Ok(Self {
            tls,
            users: agent.basic_auth_users.clone(),
            last_good: Mutex::new(None),
        })
    }

    /// Whether a request with this head may be served.
    pub fn authorized(&self, head: &str) -> bool {
        if self.users.is_empty() {
            return true;
        }
        let Some(value) = header(head, "authorization") else {
            return false;
        };
        if self
            .last_good
            .lock()
            .is_ok_and(|last| last.as_deref() == Some(value))
        {
            return true;
        }
        let Some(encoded) = value
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
            .map(|(_, encoded)| encoded.trim())
        else {
            return false;
        };
        let Some(credentials) = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
        else {
            return false;
        };
        let Some((user, password)) = credentials.split_once(':') else {
            return false;
        };
        let good = self
            .users
            .get(user)
            .is_some_and(|hash| bcrypt::verify(password, hash).unwrap_or(false));
        if good && let Ok(mut last) = self.last_good.lock() {
            *last = Some(value.to_owned());
        }
        good
    }
}

/// The value of header `name` (case-insensitive) in a request head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn security(users: &[(&str, &str)]) -> WebSecurity {
        let agent = AgentConfig {
            basic_auth_users: users
                .iter()
                .map(|(user, password)| ((*user).to_owned(), bcrypt::hash(password, 4).unwrap()))
                .collect(),
            ..AgentConfig::default()
        };
        WebSecurity::from_config(&agent).unwrap()
    }

    fn head(authorization: &str) -> String {
        format!("GET /metrics HTTP/1.1\r\nHost: rig\r\n{authorization}\r\n\r\n")
    }

    fn basic(credentials: &str) -> String {
        format!(
            "Authorization: Basic {}",
            base64::engine::general_purpose::STANDARD.encode(credentials)
        )
    }

    #[test]
    fn only_a_known_user_with_the_right_password_is_served() {
        let web = security(&[("prometheus", "s3cret")]);
        assert!(web.authorized(&head(&basic("prometheus:s3cret"))));
        // Again, from the cache.
        assert!(web.authorized(&head(&basic("prometheus:s3cret"))));
        for refused in [
            String::new(),
            basic("prometheus:wrong"),
            basic("admin:s3cret"),
            basic("prometheus"),
            "Authorization: Bearer s3cret".to_owned(),
            "Authorization: Basic !!!".to_owned(),
        ] {
            assert!(!web.authorized(&head(&refused)), "{refused}");
        }
        assert!(
            security(&[]).authorized(&head("")),
            "no users: no authentication"
        );
    }
}
