//! The baseline file: what normal traffic looks like on this machine, as TOML a person can read,
//! diff and edit.
//!
//! A baseline declares its format version, optionally when and where it was recorded, and one
//! `[[rule]]` per expected traffic class. A rule's identity is (process, remote, port,
//! protocol, app); what normal looked like for it is in `[rule.normal]` (absent for a rule
//! accepted by hand) and, for periodic traffic, the expected rate over one cycle in
//! `[rule.profile]`.
//!
//! A remote is an address, a network, `*`, or a host name: `pool.example.org` matches traffic to
//! whatever address this host learnt that name for (from a DNS answer it received, a TLS SNI or
//! an HTTP Host), `*.example.org` any name below `example.org`. A name rule never matches
//! traffic whose remote has no known name.
//!
//! ```toml
//! # BitSecure baseline: what normal traffic looks like on this machine.
//! format_version = 1
//!
//! [recording]                          # optional: absent in a hand-written file
//! started_at = "2026-11-24T12:00:00Z"  # RFC 3339, UTC
//! duration_seconds = 1800.0
//! step_seconds = 5.0                   # one sample every step
//! host = "rig-01"
//!
//! [[rule]]
//! process = "xmrig"                    # process name (as in /proc/PID/comm)
//! exe = "/usr/bin/xmrig"               # optional: only this executable matches
//! sha256 = "9f86d0…"                   # optional: its content; another is reported
//! cgroup = "/system.slice/xmrig.service" # optional: only sockets made in this cgroup match
//! remote = "pool.example.org"          # IP address, CIDR ("10.0.0.0/24", "fd00::/64"), host
//!                                      # name, wildcard ("*.example.org") or "*"
//! port = 3333                          # optional: absent = any port
//! protocol = "tcp"                     # tcp, udp, icmp, icmpv6, sctp or a number 0..=255
//! app = "stratum"                      # optional: stratum, tls, http, ssh, dns or unknown;
//!                                      # absent = any application
//! note = "pool"                        # optional
//!   [rule.normal]                      # optional: absent for rules accepted by hand
//!   sent_bytes_per_second = { mean = 120.5, p95 = 800.0, max = 2400.0 }
//!   received_bytes_per_second = { mean = 10.0, p95 = 80.0, max = 240.0 }
//!   active_fraction = 0.12             # share of steps with traffic, 0..=1
//!   connections_per_hour = 2.0
//!   cadence_seconds = 300.0            # optional: only for periodic traffic
//!   [rule.profile]                     # optional: expected rate over one cycle
//!   step_seconds = 5.0                 # width of a bin
//!   sent = [0.0, 1500.0, 0.0]          # bytes/s per bin
//!   received = [0.0, 200.0, 0.0]       # as many bins as `sent`
//!
//! [[rule]]
//! process = "sshd"
//! remote = "*"
//! port = 22
//! protocol = "tcp"
//! note = "administration, accepted by hand"
//! ```
//!
//! Reading is strict, and every error names the file and, where it can, the line: corrupt TOML,
//! unknown keys and wrong types (from the TOML parser), then the format version (checked
//! first, so a file from a newer BitSecure says so instead of complaining about new keys),
//! then the meaning of each value (a remote that is neither an address nor a name, an unknown
//! app, a negative rate, a profile whose `sent` and `received` differ in length...), naming the
//! rule by its position in the file (1 = the first `[[rule]]`) and by
//! [`Rule::describe`](crate::baseline::model::Rule::describe). Two rules with the same identity
//! are an error too.
//!
//! Writing: [`render`](fn@render) makes a fresh file (for a new recording); [`append_rules`]
//! adds rules to an existing file's text and keeps everything already there byte for byte,
//! comments included; [`write_atomically`] replaces the file on disk (temporary file, fsync,
//! rename) after keeping the previous version as `<file>.bak`.
//!
//! This module owns the file as a whole and reads it ([`parse`], [`read_text`], [`load`]); its
//! parts: `error` ([`BaselineError`] and where in the text a problem is), `validate` (the
//! version, then the meaning of each value), `render` (a fresh file), `edit` ([`append_rules`],
//! [`write_atomically`]), `show` and `diff` (`bitsecure baseline show|diff`). The data it reads
//! into is [`baseline::model`](crate::baseline::model); matching traffic against rules is
//! [`baseline::matching`](crate::baseline::matching).
//!
//! ```
//! use bitsecure::baseline::{file, matching::LiveFlow};
//! use bitsecure::naming::App;
//!
//! let text = r#"
//! format_version = 1
//! [[rule]]
//! process = "xmrig"
//! remote = "*.example.org"
//! port = 3333
//! protocol = "tcp"
//! app = "stratum"
//! "#;
//! let baseline = file::parse(text, "example.toml").expect("valid");
//! let flow = LiveFlow {
//!     process: "xmrig",
//!     exe: Some("/usr/bin/xmrig"),
//!     cgroup: Some("/system.slice/xmrig.service"),
//!     remote: "10.0.0.2".parse().expect("an address"),
//!     name: Some("eu.pool.example.org"),
//!     port: Some(3333),
//!     protocol: 6,
//!     app: App::Stratum,
//! };
//! assert!(baseline.rules[0].matches(&flow));
//! assert!(!baseline.rules[0].matches(&LiveFlow { app: App::Http, ..flow }));
//! // The rule names no executable: any program called xmrig matches (`exe` would pin it).
//! assert!(baseline.rules[0].matches(&LiveFlow { exe: Some("/tmp/xmrig"), ..flow }));
//! assert!(!baseline.rules[0].matches(&LiveFlow { name: None, ..flow }));
//! assert_eq!(baseline.rules[0].describe(), "xmrig → *.example.org:3333/tcp (stratum)");
//! ```

mod diff;
mod edit;
mod error;
mod merge;
mod render;
mod show;
mod validate;

use std::path::Path;

pub use diff::{DIFF_RELATIVE_THRESHOLD, diff, diff_json, diff_with_threshold};
pub use edit::{
    accept_account, accept_executable, accept_prefixes, accept_upgrade, append_rules,
    write_atomically,
};
pub use error::BaselineError;
use error::toml_error;
pub use merge::{Merged, merge};
pub use render::render;
pub use show::show;
use validate::{check_version, validate};

use super::model::Baseline;
use crate::fsutil::{self, ReadError};

/// Largest baseline file [`load`] accepts, in bytes: a bigger one is surely a mistake.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Parses and validates a baseline. `origin` (usually the path) names the text in errors.
pub fn parse(text: &str, origin: &str) -> Result<Baseline, BaselineError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    check_version(text, origin)?;
    let baseline: Baseline = toml::from_str(text).map_err(|e| toml_error(text, origin, &e))?;
    validate(&baseline).map_err(|invalid| invalid.into_error(&baseline, origin, Some(text)))?;
    Ok(baseline)
}

/// Reads the text of a baseline file: at most [`MAX_FILE_BYTES`], UTF-8.
pub fn read_text(path: &Path) -> Result<String, BaselineError> {
    let origin = path.display().to_string();
    fsutil::read_text(path, MAX_FILE_BYTES).map_err(|error| match error {
        ReadError::Io(error) => BaselineError::Read { origin, error },
        ReadError::TooLarge { size, limit } => BaselineError::TooLarge {
            origin,
            size,
            limit,
        },
        ReadError::NotUtf8 { line, offset } => BaselineError::NotUtf8 {
            origin,
            line,
            offset,
        },
    })
}

/// Reads, parses and validates a baseline file.
pub fn load(path: &Path) -> Result<Baseline, BaselineError> {
    let text = read_text(path)?;
    parse(&text, &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use std::{
        fs::{self, File},
        io,
    };

    use super::*;
    use crate::baseline::{
        model::Rule,
        test_support::{EXISTING, TempDir, chronyd_rule, stats, xmrig_rule},
    };

    const HAND_WRITTEN: &str = r#"# BitSecure baseline for rig-01, edited by hand.
format_version = 1   # the format

[recording]
started_at = "2026-11-24T12:00:00.250Z"
duration_seconds = 1800        # an integer is fine for a float
step_seconds = 5.0
host = "rig-01"

# The mining pool.
[[rule]]
process = "xmrig"
exe = "/usr/bin/xmrig"
remote = "10.0.0.0/24"
port = 3333
protocol = "tcp"
note = "pool"
  [rule.normal]
  sent_bytes_per_second = { mean = 120.5, p95 = 800.0, max = 2400.0 }
  received_bytes_per_second = { mean = 10.0, p95 = 80.0, max = 240.0 }
  active_fraction = 0.12
  connections_per_hour = 2.0
  cadence_seconds = 300.0
  [rule.profile]
  step_seconds = 100.0
  sent = [0.0, 1500.0,
          0.0]               # three bins
  received = [0.0, 200.0, 0.0]

[[rule]]
process = "sshd"
remote = "*"
port = 22
protocol = "6"     # tcp by number
"#;

    #[test]
    fn parses_a_hand_written_file_with_comments() {
        let baseline = parse(HAND_WRITTEN, "hand.toml").expect("parses");
        assert_eq!(baseline.format_version, 1);
        let recording = baseline.recording.as_ref().expect("a recording");
        assert_eq!(recording.started_at, "2026-11-24T12:00:00.250Z");
        assert_eq!(recording.duration_seconds, 1800.0);
        assert_eq!(recording.host, "rig-01");
        assert_eq!(baseline.rules.len(), 2);
        let pool = &baseline.rules[0];
        assert_eq!(pool.remote, "10.0.0.0/24");
        assert_eq!(pool.port, Some(3333));
        assert_eq!(pool.exe.as_deref(), Some("/usr/bin/xmrig"));
        let normal = pool.normal.as_ref().expect("normal values");
        assert_eq!(normal.sent_bytes_per_second, stats(120.5, 800.0, 2400.0));
        assert_eq!(normal.cadence_seconds, Some(300.0));
        let profile = pool.profile.as_ref().expect("a profile");
        assert_eq!(profile.sent, [0.0, 1500.0, 0.0]);
        assert_eq!(profile.received, [0.0, 200.0, 0.0]);
        let sshd = &baseline.rules[1];
        assert_eq!(sshd, &Rule::new("sshd", "*", Some(22), "6"));
        assert_eq!(sshd.normal, None);
        assert_eq!(sshd.describe(), "sshd → *:22/6");
    }

    #[test]
    fn a_byte_order_mark_is_accepted() {
        let text = format!("\u{feff}{HAND_WRITTEN}");
        assert_eq!(parse(&text, "bom.toml").expect("parses").rules.len(), 2);
    }

    #[test]
    fn load_refuses_non_utf8_and_oversized_files() {
        let dir = TempDir::new("load");
        let path = dir.join("latin1.toml");
        fs::write(&path, b"format_version = 1\n# caf\xe9\n").expect("write");
        let error = load(&path).expect_err("not UTF-8");
        assert!(
            matches!(
                error,
                BaselineError::NotUtf8 {
                    line: 2,
                    offset: 24,
                    ..
                }
            ),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(
            message.contains("latin1.toml, line 2: not UTF-8 text"),
            "{message}"
        );

        let path = dir.join("huge.toml");
        File::create(&path)
            .and_then(|file| file.set_len(MAX_FILE_BYTES + 1))
            .expect("a sparse file");
        let error = load(&path).expect_err("too large");
        assert!(
            matches!(error, BaselineError::TooLarge { size, limit, .. }
                if size == MAX_FILE_BYTES + 1 && limit == 16 * 1024 * 1024),
            "{error:?}"
        );
        assert!(
            error
                .to_string()
                .contains("huge.toml: the file is 16777217 bytes"),
            "{error}"
        );

        let error = load(&dir.join("missing.toml")).expect_err("no file");
        assert!(
            matches!(&error, BaselineError::Read { error, .. } if error.kind() == io::ErrorKind::NotFound),
            "{error:?}"
        );
        assert!(
            error
                .to_string()
                .contains("missing.toml: cannot read the baseline file"),
            "{error}"
        );

        let path = dir.join("hand.toml");
        fs::write(&path, HAND_WRITTEN).expect("write");
        assert_eq!(load(&path).expect("loads").rules.len(), 2);
        let path = dir.join("unknown.toml");
        fs::write(&path, "format_version = 1\ncolour = 1\n").expect("write");
        let message = load(&path).expect_err("unknown field").to_string();
        assert!(
            message.contains("unknown.toml, line 2, column 1: unknown field `colour`"),
            "{message}"
        );
    }

    #[test]
    fn names_and_apps_are_written_read_shown_and_compared() {
        let pool = Rule {
            app: Some("stratum".to_owned()),
            ..xmrig_rule()
        };
        let pool = Rule {
            remote: "pool.example.org".to_owned(),
            ..pool
        };
        let baseline = Baseline::new(None, vec![pool.clone(), chronyd_rule()]);
        let text = render(&baseline);
        assert!(
            text.contains(
                "remote = \"pool.example.org\"\nport = 3333\nprotocol = \"tcp\"\napp = \"stratum\"\n"
            ),
            "{text}"
        );
        assert_eq!(parse(&text, "rendered").expect("parses"), baseline);
        // A rule without an app is written without the key.
        assert_eq!(text.matches("app = ").count(), 1, "{text}");

        let appended =
            append_rules(EXISTING, "rig.toml", std::slice::from_ref(&pool)).expect("appended");
        assert!(appended.starts_with(EXISTING));
        assert_eq!(parse(&appended, "appended").expect("parses").rules[1], pool);

        let shown = show(&baseline);
        assert!(
            shown.contains("  1. xmrig → pool.example.org:3333/tcp (stratum) (pool)\n"),
            "{shown}"
        );

        // The miner now speaks HTTP to its pool: another rule, not a change of this one.
        let mut new = baseline.clone();
        new.rules[0].app = Some("http".to_owned());
        let text = diff(&baseline, &new);
        for expected in [
            "- removed xmrig → pool.example.org:3333/tcp (stratum) [exe /usr/bin/xmrig]",
            "+ added   xmrig → pool.example.org:3333/tcp (http) [exe /usr/bin/xmrig]",
        ] {
            assert!(
                text.lines().any(|line| line == expected),
                "{expected:?} in\n{text}"
            );
        }
    }
}
