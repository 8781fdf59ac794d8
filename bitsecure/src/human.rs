//! Numbers for people, and back: byte counts, rates and durations as the CLI, the progress lines
//! and `baseline show`/`diff` print them, and the durations a user types (`--duration 30m`).
//! Pure functions, no I/O.

use std::time::Duration;

/// Bytes with an SI unit: `512 B`, `1.5 kB`, `3.2 MB`.
pub fn bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A rate with an SI unit: `120.5 B/s`, `2.4 kB/s`.
pub fn rate(bytes_per_second: f64) -> String {
    let mut value = bytes_per_second;
    let mut unit = "B/s";
    for bigger in ["kB/s", "MB/s", "GB/s", "TB/s"] {
        if value.abs() < 1000.0 {
            break;
        }
        value /= 1000.0;
        unit = bigger;
    }
    format!("{value:.1} {unit}")
}

/// A number with at most two decimals, without trailing zeros: `2`, `0.5`, `12.35`.
pub fn decimal(value: f64) -> String {
    let text = format!("{value:.2}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    }
}

/// A duration for people: `5 s`, `30 min`, `1 h 30 min`, `2 d 3 h`.
pub fn duration(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 120.0 {
        return format!("{} s", decimal(seconds));
    }
    let minutes = (seconds / 60.0).round();
    if minutes < 120.0 {
        return format!("{minutes} min");
    }
    let hours = (minutes / 60.0).floor();
    let rest_minutes = minutes - hours * 60.0;
    if hours < 48.0 {
        return if rest_minutes == 0.0 {
            format!("{hours} h")
        } else {
            format!("{hours} h {rest_minutes} min")
        };
    }
    let days = (hours / 24.0).floor();
    let rest_hours = hours - days * 24.0;
    if rest_hours == 0.0 {
        format!("{days} d")
    } else {
        format!("{days} d {rest_hours} h")
    }
}

/// "1h02m03s" style, for progress lines.
pub fn clock_duration(seconds: f64) -> String {
    let total = seconds.round().max(0.0) as u64;
    let (hours, minutes, secs) = (total / 3600, total / 60 % 60, total % 60);
    if hours > 0 {
        format!("{hours}h{minutes:02}m{secs:02}s")
    } else if minutes > 0 {
        format!("{minutes}m{secs:02}s")
    } else {
        format!("{secs}s")
    }
}

/// Parses "30m", "90s", "2h", "1h30m" or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        return (seconds > 0.0 && seconds.is_finite())
            .then(|| Duration::from_secs_f64(seconds))
            .ok_or_else(|| format!("duration must be positive: {text}"));
    }
    let mut total = 0.0;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() || c == '.' {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1.0,
            'm' => 60.0,
            'h' => 3600.0,
            'd' => 86400.0,
            _ => {
                return Err(format!(
                    "bad duration {text:?}: use e.g. 90s, 30m, 2h, 1h30m"
                ));
            }
        };
        let value: f64 = number
            .parse()
            .map_err(|_| format!("bad duration {text:?}: a number must come before {c}"))?;
        total += value * unit;
        number.clear();
    }
    if !number.is_empty() || total <= 0.0 {
        return Err(format!(
            "bad duration {text:?}: use e.g. 90s, 30m, 2h, 1h30m"
        ));
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn durations_parse_and_format() {
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2.5s"), Ok(Duration::from_millis(2500)));
        for bad in ["", "m", "10x", "5m3", "-3", "0"] {
            assert!(parse_duration(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(clock_duration(3723.0), "1h02m03s");
        assert_eq!(clock_duration(65.0), "1m05s");
        assert_eq!(clock_duration(7.0), "7s");
    }
}
