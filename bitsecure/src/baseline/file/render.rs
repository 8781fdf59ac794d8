//! Writing a fresh baseline file (for a new recording): the header comment explaining it, then
//! each value as TOML that reads back exactly (strings escaped, floats that round-trip).
//!
//! Text only: no files (see `edit`), no checks (a valid baseline renders to a file that parses
//! back to it).

use std::fmt::{self, Write as _};

use crate::baseline::model::{Baseline, PacketSocketRule, Rule};

/// The comment at the top of a file written by [`render`].
const HEADER: &str = "\
# BitSecure baseline: what normal traffic looks like on this machine.
#
# Each [[rule]] is one expected traffic class: a process talking to a remote (an IP address,
# a CIDR network, a host name, a wildcard like \"*.example.org\" or \"*\") on a port (no
# `port` = any port) over a protocol, speaking an application protocol (`app`: stratum, tls,
# http, ssh, dns or unknown; no `app` = any). A name matches the addresses this machine learnt
# it for (DNS answers, TLS SNI, HTTP Host). [rule.normal] is what normal looked like during the
# recording (rates in bytes per second); a rule without it was accepted by hand.
# [rule.profile] is the expected rate over one cycle of periodic traffic.
# Each [[packet_socket]] is a process expected to hold a packet socket (kind = \"packet\", whole
# frames below every other rule: a DHCP client) or a raw IP socket (kind = \"raw\") of one
# protocol (`*` = any); any other holder is unexpected.
# You may edit this file; when BitSecure rewrites it, it keeps the previous version as .bak.
";

/// A fresh baseline file, with a header comment explaining it (for a new recording). It
/// parses back to an equal baseline when the baseline is valid.
pub fn render(baseline: &Baseline) -> String {
    Rendered(baseline).to_string()
}

struct Rendered<'a>(&'a Baseline);

impl fmt::Display for Rendered<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let baseline = self.0;
        f.write_str(HEADER)?;
        writeln!(f, "format_version = {}", baseline.format_version)?;
        if let Some(recording) = &baseline.recording {
            writeln!(f)?;
            writeln!(f, "[recording]")?;
            writeln!(f, "started_at = {}", toml_string(&recording.started_at))?;
            writeln!(
                f,
                "duration_seconds = {}",
                toml_float(recording.duration_seconds)
            )?;
            writeln!(f, "step_seconds = {}", toml_float(recording.step_seconds))?;
            writeln!(f, "host = {}", toml_string(&recording.host))?;
        }
        for rule in &baseline.rules {
            writeln!(f)?;
            write_rule(f, rule)?;
        }
        for rule in &baseline.packet_sockets {
            writeln!(f)?;
            write_packet_socket(f, rule)?;
        }
        Ok(())
    }
}

/// One `[[packet_socket]]` table.
fn write_packet_socket(f: &mut impl fmt::Write, rule: &PacketSocketRule) -> fmt::Result {
    writeln!(f, "[[packet_socket]]")?;
    writeln!(f, "process = {}", toml_string(&rule.process))?;
    if let Some(exe) = &rule.exe {
        writeln!(f, "exe = {}", toml_string(exe))?;
    }
    writeln!(f, "kind = {}", toml_string(&rule.kind))?;
    writeln!(f, "protocol = {}", toml_string(&rule.protocol))?;
    if let Some(note) = &rule.note {
        writeln!(f, "note = {}", toml_string(note))?;
    }
    Ok(())
}

/// One `[[rule]]` table, as [`render`] writes it (also for rules about to be appended).
pub(super) fn write_rule(f: &mut impl fmt::Write, rule: &Rule) -> fmt::Result {
    writeln!(f, "[[rule]]")?;
    writeln!(f, "process = {}", toml_string(&rule.process))?;
    if let Some(exe) = &rule.exe {
        writeln!(f, "exe = {}", toml_string(exe))?;
    }
    if let Some(sha256) = &rule.sha256 {
        writeln!(f, "sha256 = {}", toml_string(sha256))?;
    }
    if let Some(cgroup) = &rule.cgroup {
        writeln!(f, "cgroup = {}", toml_string(cgroup))?;
    }
    writeln!(f, "remote = {}", toml_string(&rule.remote))?;
    if let Some(port) = rule.port {
        writeln!(f, "port = {port}")?;
    }
    writeln!(f, "protocol = {}", toml_string(&rule.protocol))?;
    if let Some(app) = &rule.app {
        writeln!(f, "app = {}", toml_string(app))?;
    }
    if let Some(account) = &rule.account {
        writeln!(f, "account = {}", toml_string(account))?;
    }
    if let Some(prefixes) = &rule.prefixes {
        let networks: Vec<String> = prefixes.iter().map(|prefix| toml_string(prefix)).collect();
        writeln!(f, "prefixes = [{}]", networks.join(", "))?;
    }
    if let Some(asks) = &rule.asks {
        let names: Vec<String> = asks.iter().map(|name| toml_string(name)).collect();
        writeln!(f, "asks = [{}]", names.join(", "))?;
    }
    if let Some(note) = &rule.note {
        writeln!(f, "note = {}", toml_string(note))?;
    }
    if let Some(when) = &rule.learnt_late {
        writeln!(f, "learnt_late = {}", toml_string(when))?;
    }
    if let Some(normal) = &rule.normal {
        writeln!(f, "  [rule.normal]")?;
        for (name, stats) in [
            ("sent_bytes_per_second", &normal.sent_bytes_per_second),
            (
                "received_bytes_per_second",
                &normal.received_bytes_per_second,
            ),
        ] {
            writeln!(
                f,
                "  {name} = {{ mean = {}, p95 = {}, max = {} }}",
                toml_float(stats.mean),
                toml_float(stats.p95),
                toml_float(stats.max)
            )?;
        }
        writeln!(
            f,
            "  active_fraction = {}",
            toml_float(normal.active_fraction)
        )?;
        writeln!(
            f,
            "  connections_per_hour = {}",
            toml_float(normal.connections_per_hour)
        )?;
        if let Some(cadence) = normal.cadence_seconds {
            writeln!(f, "  cadence_seconds = {}", toml_float(cadence))?;
        }
        if let Some(bursts) = normal.bursts {
            writeln!(f, "  bursts = {bursts}")?;
        }
        if let Some(gap) = normal.longest_gap_seconds {
            writeln!(f, "  longest_gap_seconds = {}", toml_float(gap))?;
        }
    }
    if let Some(profile) = &rule.profile {
        writeln!(f, "  [rule.profile]")?;
        writeln!(f, "  step_seconds = {}", toml_float(profile.step_seconds))?;
        write_float_array(f, "sent", &profile.sent)?;
        write_float_array(f, "received", &profile.received)?;
    }
    Ok(())
}

/// Values per line of a long array.
const ARRAY_VALUES_PER_LINE: usize = 8;

fn write_float_array(f: &mut impl fmt::Write, name: &str, values: &[f64]) -> fmt::Result {
    let texts: Vec<String> = values.iter().map(|v| toml_float(*v)).collect();
    if texts.len() <= ARRAY_VALUES_PER_LINE {
        return writeln!(f, "  {name} = [{}]", texts.join(", "));
    }
    writeln!(f, "  {name} = [")?;
    for line in texts.chunks(ARRAY_VALUES_PER_LINE) {
        writeln!(f, "    {},", line.join(", "))?;
    }
    writeln!(f, "  ]")
}

/// A TOML basic string: always one line, control characters escaped.
fn toml_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A TOML float that reads back to the same `f64` (`1800.0`, `0.1`, `1e300`, `nan`).
pub(super) fn toml_float(value: f64) -> String {
    if value.is_nan() {
        "nan".to_owned()
    } else if value.is_infinite() {
        if value > 0.0 { "inf" } else { "-inf" }.to_owned()
    } else {
        // Debug is the shortest text that reads back exactly, always with a '.' or an
        // exponent, which TOML reads as a float.
        format!("{value:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::baseline::{
        file::{load, parse, write_atomically},
        test_support::{TempDir, sample},
    };

    #[test]
    fn render_then_parse_gives_the_same_baseline() {
        let baseline = sample();
        let text = render(&baseline);
        assert!(text.starts_with("# BitSecure baseline: what normal traffic looks like"));
        assert_eq!(text.matches("\n[[rule]]\n").count(), 4);
        assert!(
            text.contains(
                "  sent_bytes_per_second = { mean = 120.5, p95 = 800.0, max = 2400.0 }\n"
            )
        );
        assert!(text.contains("remote = \"fd00::/64\"\n"));
        assert!(
            text.contains("note = \"admin \\\"ops\\\" \\\\ ünïcode\\nsecond line\\t\\u0001\"\n")
        );
        // A 60-bin profile is wrapped, 8 values a line.
        assert!(text.contains("  sent = [\n    0.0, 1500.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,\n"));
        assert_eq!(parse(&text, "rendered").expect("parses"), baseline);

        // And through a real file.
        let dir = TempDir::new("roundtrip");
        let path = dir.join("baseline.toml");
        write_atomically(&path, &text).expect("write");
        assert_eq!(load(&path).expect("load"), baseline);
    }

    #[test]
    fn render_of_an_empty_baseline_parses() {
        let baseline = Baseline::new(None, Vec::new());
        let text = render(&baseline);
        assert!(text.ends_with("format_version = 1\n"));
        assert_eq!(parse(&text, "empty").expect("parses"), baseline);
    }
}
