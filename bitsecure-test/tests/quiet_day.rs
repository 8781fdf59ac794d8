//! End to end, "quiet and sure": the simulated rig's quiet day (`bitsecure-rig day`, a day in
//! six minutes) with the real agent and a real Prometheus loaded with the bundled rules. After
//! 10 minutes of learning, a day of rare-but-normal life — reconnects that resolve the pool
//! again, an hourly job to a new port, a restart, an NTP burst — must page nobody: no critical
//! alert, every rare class learnt while settling or listed as low risk. Then a new program and
//! an impostor of the miner must page, high risk, for the right reason. Prometheus decides
//! what fired, the baseline file on disk what was learnt.

use bitsecure_test::process::{require_root, scratch_dir};

use crate::demo::{Prometheus, phase_of, play};

#[test]
fn a_quiet_day_pages_nobody_and_attacks_still_page() {
    require_root();
    let _lab = crate::RIG_LAB
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let (mut day, timeline) = play(&["day"], &scratch_dir().join("day"));
    let ready = &timeline["ready"];
    let prometheus = Prometheus(ready["prometheus"].as_str().unwrap());
    let scrape = ready["scrape_interval_seconds"].as_f64().unwrap();
    let phase = |name: &str| phase_of(&timeline, name);

    // The day: nothing critical fires.
    let (start, end) = phase("day");
    let paged = prometheus.range(
        r#"ALERTS{alertstate="firing", severity="critical"}"#,
        start,
        end,
        scrape,
    );
    assert!(
        paged.is_empty(),
        "paged during a normal day: {paged:#?}\n{}",
        day.output()
    );
    // Whatever else fired is no page, and says so.
    for series in prometheus.range(r#"ALERTS{alertstate="firing"}"#, start, end, scrape) {
        let severity = series["metric"]["severity"].as_str().unwrap_or_default();
        assert!(
            matches!(severity, "warning" | "info"),
            "{}",
            series["metric"]
        );
        eprintln!("fired during the day (no page): {}", series["metric"]);
    }
    // No high-risk departure all day: the noise budget says so too.
    let high = prometheus.range(
        r#"sum by (reason) (bitsecure_alertable_departures_total{risk="high"})"#,
        start,
        end,
        scrape,
    );
    assert!(
        high.iter().all(|series| series["values"]
            .as_array()
            .unwrap()
            .iter()
            .all(|point| point[1] == "0")),
        "high-risk departures during the day, by reason: {:?}\n{}",
        high.iter()
            .map(|series| (
                &series["metric"]["reason"],
                series["values"].as_array().and_then(|v| v.last()).cloned()
            ))
            .collect::<Vec<_>>(),
        day.output()
    );

    // Every rare class was learnt while settling, or is listed as low risk.
    let day_end = &timeline["day"];
    for entry in day_end["unexpected"].as_array().unwrap() {
        assert_eq!(entry["risk"], "low", "{entry}");
    }
    let baseline = std::fs::read_to_string(ready["baseline"].as_str().unwrap()).unwrap();
    let late = crate::learnt_late(&baseline);
    // The hourly job first ran after learning: its new port was learnt late.
    assert!(
        late.iter()
            .any(|rule| rule["process"].as_str() == Some("rig-monitor")
                && rule["port"].as_integer() == Some(8081)),
        "the hourly upload was not learnt late:\n{baseline}"
    );
    for rule in &late {
        assert!(
            matches!(rule["process"].as_str(), Some("rig-monitor" | "xmrig")),
            "learnt late, though no rare class of it: {rule}\n{baseline}"
        );
    }
    assert_eq!(
        day_end["maturity"]["stage"], "stable",
        "six quiet hours of rig time settle it: {}",
        day_end["maturity"]
    );

    // The attacks page, high risk, each for its reason.
    for (attack, process, reason) in [
        ("new-process", "backdoor", "new-process"),
        ("impostor", "xmrig", "impostor"),
    ] {
        let (start, end) = phase(attack);
        let fired = prometheus.range(
            &format!(
                r#"ALERTS{{alertstate="firing", alertname="BitSecureUnexpectedDestination", process="{process}"}}"#
            ),
            start,
            end + 2.0 * scrape,
            scrape,
        );
        assert!(!fired.is_empty(), "{attack} did not page\n{}", day.output());
        let labels = &fired[0]["metric"];
        assert_eq!(
            (
                labels["severity"].as_str(),
                labels["risk"].as_str(),
                labels["reason"].as_str()
            ),
            (Some("critical"), Some("high"), Some(reason)),
            "{attack}: {labels}"
        );
    }
    let status = day.interrupt();
    assert!(
        status.success(),
        "the day failed ({status}):\n{}",
        day.output()
    );
}
