//! A real Prometheus for the demo: its configuration (scraping the demo agent, loading the
//! bundled alert rules, time-compressed), and the few HTTP API calls the demo prints from.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use bitsecure::cli::client::{self as http_client, encode_query_value};
use serde_json::Value;

use crate::lab::Lab;

/// The bundled alert rules, as shipped.
pub const RULES: &str = include_str!("../../../../prometheus/bitsecure.rules.yml");

/// What Prometheus needs to know of the demo.
pub struct Setup<'a> {
    pub binary: &'a Path,
    pub listen: &'a str,
    pub agent: &'a str,
    pub scrape_interval: Duration,
    pub time_scale: f64,
}

/// Writes the configuration and the time-compressed rules, starts Prometheus in the lab and
/// waits until it is ready.
pub fn start(lab: &mut Lab, setup: &Setup) -> Result<()> {
    let dir = lab.dir.join("prometheus");
    fs::create_dir_all(&dir)?;
    let interval = format!("{}ms", setup.scrape_interval.as_millis());
    // A range must hold a few scrapes for rate() and increase() to see two samples.
    let rules = scale_durations(RULES, setup.time_scale, setup.scrape_interval * 4);
    fs::write(dir.join("bitsecure.rules.yml"), rules)?;
    fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: {interval}\n  evaluation_interval: {interval}\n\
             rule_files:\n  - bitsecure.rules.yml\n\
             scrape_configs:\n  - job_name: bitsecure\n    static_configs:\n      \
             - targets: ['{agent}']\n        labels:\n          rig: demo-rig\n",
            agent = setup.agent
        ),
    )?;
    let mut command = Command::new(setup.binary);
    command
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={}", setup.listen))
        .arg("--log.level=warn");
    lab.start("prometheus", command)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while http_client::get(setup.listen, "/-/ready").is_err() {
        if Instant::now() > deadline {
            bail!(
                "Prometheus did not become ready in 60 s; see {}",
                lab.log_path("prometheus").display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// One sample of an instant query.
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Evaluates `expr` now.
pub fn query(prometheus: &str, expr: &str) -> Result<Vec<Sample>> {
    let body = http_client::get(
        prometheus,
        &format!("/api/v1/query?query={}", encode_query_value(expr)),
    )?;
    let answer: Value = serde_json::from_str(&body).context("Prometheus answered no JSON")?;
    let result = answer["data"]["result"]
        .as_array()
        .with_context(|| format!("unexpected answer to {expr}: {body}"))?;
    Ok(result
        .iter()
        .map(|sample| Sample {
            labels: string_map(&sample["metric"]),
            value: sample["value"][1]
                .as_str()
                .and_then(|value| value.parse().ok())
                .unwrap_or(f64::NAN),
        })
        .collect())
}

/// An alert as Prometheus reports it.
pub struct Alert {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// The alerts firing now.
pub fn firing_alerts(prometheus: &str) -> Result<Vec<Alert>> {
    let body = http_client::get(prometheus, "/api/v1/alerts")?;
    let answer: Value = serde_json::from_str(&body).context("Prometheus answered no JSON")?;
    Ok(answer["data"]["alerts"]
        .as_array()
        .context("no alerts in Prometheus' answer")?
        .iter()
        .filter(|alert| alert["state"] == "firing")
        .map(|alert| Alert {
            labels: string_map(&alert["labels"]),
            annotations: string_map(&alert["annotations"]),
        })
        .collect())
}

fn string_map(object: &Value) -> BTreeMap<String, String> {
    object
        .as_object()
        .map(|object| {
            object
                .iter()
                .map(|(key, value)| (key.clone(), value.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// Compresses the time windows of a rules file `scale` times: every duration in a `for:` field,
/// a range selector (`[15m]`) or an `offset`. Ranges never get shorter than `min_range`.
pub fn scale_durations(rules: &str, scale: f64, min_range: Duration) -> String {
    let scaled = |duration: Duration, floor: Duration| {
        format!("{}ms", duration.div_f64(scale).max(floor).as_millis())
    };
    let mut out = String::with_capacity(rules.len());
    for line in rules.split_inclusive('\n') {
        let trimmed = line.trim_start();
        if let Some(value) = trimmed.strip_prefix("for:")
            && let Some(duration) = parse_duration(value.trim())
        {
            let indent = &line[..line.len() - trimmed.len()];
            let newline = if line.ends_with('\n') { "\n" } else { "" };
            out.push_str(&format!(
                "{indent}for: {}{newline}",
                scaled(duration, Duration::ZERO)
            ));
            continue;
        }
        out.push_str(&scale_in_expression(line, &|duration| {
            scaled(duration, min_range)
        }));
    }
    out
}

/// Rewrites `[<duration>]` and `offset <duration>` in one line of PromQL.
fn scale_in_expression(line: &str, scaled: &dyn Fn(Duration) -> String) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    loop {
        let bracket = rest.find('[');
        let offset = rest.find("offset ");
        let (at, skip, close) = match (bracket, offset) {
            (Some(b), Some(o)) if o < b => (o, "offset ".len(), None),
            (Some(b), _) => (b, 1, Some(']')),
            (None, Some(o)) => (o, "offset ".len(), None),
            (None, None) => break,
        };
        out.push_str(&rest[..at + skip]);
        rest = &rest[at + skip..];
        let end = match close {
            Some(close) => rest.find(close).unwrap_or(rest.len()),
            None => rest
                .find(|c: char| !c.is_ascii_alphanumeric())
                .unwrap_or(rest.len()),
        };
        match parse_duration(&rest[..end]) {
            Some(duration) => out.push_str(&scaled(duration)),
            None => out.push_str(&rest[..end]),
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// A Prometheus duration such as `90s`, `15m` or `1h30m`.
fn parse_duration(text: &str) -> Option<Duration> {
    if text.is_empty() {
        return None;
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        let number: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ms" => {
                total += Duration::from_millis(number);
                rest = &rest[unit_len..];
                continue;
            }
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            "w" => 7 * 86_400,
            "y" => 365 * 86_400,
            _ => return None,
        };
        total += Duration::from_secs(number * seconds);
        rest = &rest[unit_len..];
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_prometheus() {
        assert_eq!(parse_duration("15m"), Some(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("5x"), None);
        assert_eq!(parse_duration("$__rate_interval"), None);
        assert_eq!(parse_duration(""), None);
    }

    #[test]
    fn for_ranges_and_offsets_are_compressed() {
        let rules = "  - alert: A\n    expr: increase(x[15m]) > 0 or (y unless y offset 15m)\n    for: 2m\n";
        let scaled = scale_durations(rules, 60.0, Duration::from_secs(4));
        assert_eq!(
            scaled,
            "  - alert: A\n    expr: increase(x[15000ms]) > 0 or (y unless y offset 15000ms)\n    for: 2000ms\n"
        );
    }

    #[test]
    fn ranges_keep_a_few_scrapes_and_labels_stay() {
        let scaled = scale_durations(
            "expr: rate(x{a=\"b\"}[1m]) > 0\n",
            60.0,
            Duration::from_secs(4),
        );
        assert_eq!(scaled, "expr: rate(x{a=\"b\"}[4000ms]) > 0\n");
        assert_eq!(
            scale_durations("for: 0s\n", 60.0, Duration::from_secs(4)),
            "for: 0ms\n"
        );
    }
}
