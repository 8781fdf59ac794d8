//! The quiet-day scenario: a rig doing rare-but-normal things for a whole (time-compressed)
//! day after a short learning window — what a fixed learning window misses and what must not
//! wake anyone — then two attacks that must still page.
//!
//! The rig: a miner whose pool pushes jobs at random (Poisson) times and which reconnects at
//! random (mean 15 min), resolving the pool's name itself each time (it resolved it before the
//! agent started, so its first lookup is never seen); a monitoring reporter every 20 s; the
//! system resolver every minute; NTP every 64 s. After 10 minutes of learning: an hourly job
//! (the reporter uploads its log bundle to another port of its host), a restart of the
//! reporter at 6 h, an NTP burst at 12 h. Then a new program uploading to a new host, and an
//! impostor of the miner.
//!
//! Prometheus (with the bundled rules, time-compressed) judges; the events file gives the
//! test the timeline, the agent's unexpected list at the end of the day and the baseline path.

use std::fs::File;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use bitsecure::cli::client as http_client;
use clap::Args;
use serde_json::json;

use crate::demo::{
    Timeline, free_address, gauge, now_unix, pause, start_agent, step, wait_for_alerts, wait_until,
    with_lab,
};
use crate::lab::{Lab, site_address};
use crate::prometheus::{self, Setup};

const MINER: &str = "xmrig";
const REPORTER: &str = "rig-monitor";
const RESOLVER: &str = "resolved";
const TIME_SYNC: &str = "chronyd";
const INTRUDER: &str = "backdoor";
const IMPOSTOR: &str = "xmrig-impostor";
const POOL_NAME: &str = "pool.day.example";
const MONITOR_NAME: &str = "monitor.day.example";
const WALLET: &str = "4RigOwnersWallet.rig01";

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const LEARNING: Duration = Duration::from_secs(600);
const DAY: Duration = Duration::from_secs(86_400);

#[derive(Args)]
pub struct DayArgs {
    /// How many times faster than real life the day runs: 240 = a day in 6 minutes.
    #[arg(long, default_value_t = 240.0, value_parser = parse_scale)]
    time_scale: f64,
    /// The agent binary (default: `bitsecure` next to this program).
    #[arg(long)]
    agent: Option<PathBuf>,
    /// The Prometheus binary.
    #[arg(long, default_value = "prometheus")]
    prometheus: PathBuf,
    /// Write the timeline (phases with start and end as Unix time, the end-of-day state) to
    /// this file, one JSON object per line.
    #[arg(long)]
    events: Option<PathBuf>,
    /// Working directory (logs, baseline, Prometheus data); removed at the end unless given.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep everything running after the scenario until Ctrl-C.
    #[arg(long)]
    keep_running: bool,
}

fn parse_scale(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(scale) if (60.0..=480.0).contains(&scale) => Ok(scale),
        _ => Err("a number from 60 to 480".into()),
    }
}

pub fn run(args: &DayArgs) -> Result<()> {
    with_lab(args.agent.as_ref(), args.dir.as_ref(), |agent, lab| {
        scenario(args, agent, lab)
    })
}

fn scenario(args: &DayArgs, agent_binary: &std::path::Path, lab: &mut Lab) -> Result<()> {
    let scale = args.time_scale;
    let real = |duration: Duration| duration.div_f64(scale);
    let ms = |duration: Duration| real(duration).as_millis().max(1).to_string();
    let mut timeline = Timeline(
        args.events
            .as_ref()
            .map(|path| {
                File::create(path).with_context(|| format!("cannot create {}", path.display()))
            })
            .transpose()?,
    );
    let at = |site: &str, port: u16| format!("{}:{port}", site_address(site));
    println!(
        "BitSecure quiet day at {scale}x: a day in {:.0?}, learning {:.1?}",
        real(DAY),
        real(LEARNING)
    );

    step("remote sites: a pool pushing jobs at random times, the monitoring host, DNS, NTP");
    lab.start_at_site(
        "pool",
        "pool",
        &[
            "pool",
            "--listen",
            &at("pool", 3333),
            "--job-interval-ms",
            &ms(Duration::from_secs(30)),
            "--poisson",
        ],
    )?;
    for (name, port) in [("monitor", 8080), ("monitor-uploads", 8081)] {
        lab.start_at_site(
            "monitor",
            name,
            &["monitor", "--listen", &at("monitor", port)],
        )?;
    }
    lab.start_infrastructure(POOL_NAME)?;
    lab.start_at_site(
        "outside",
        "outside",
        &["monitor", "--listen", &at("outside", 4444)],
    )?;

    step("the rig: miner (reconnecting, resolving its pool), reporter, resolver, NTP");
    let pool = at("pool", 3333);
    let dns = at("infra", 53);
    let reconnect = ms(15 * MINUTE);
    let miner_args = [
        "miner",
        "--pool",
        pool.as_str(),
        "--worker",
        WALLET,
        "--resolve",
        POOL_NAME,
        "--dns",
        dns.as_str(),
        "--reconnect-mean-ms",
        reconnect.as_str(),
    ];
    // Started before the agent: its first lookup is never seen.
    lab.start_on_rig(MINER, &miner_args)?;
    let monitor = at("monitor", 8080);
    let report_every = ms(Duration::from_secs(20));
    let reporter_args = [
        "reporter",
        "--to",
        monitor.as_str(),
        "--bytes",
        "1500",
        "--every-ms",
        report_every.as_str(),
        "--host",
        MONITOR_NAME,
    ];
    lab.start_on_rig(REPORTER, &reporter_args)?;
    let ntp = at("infra", 123);
    for (name, every, to, extra) in [
        (
            RESOLVER,
            MINUTE,
            &dns,
            &["--bytes", "40", "--dns-name", POOL_NAME][..],
        ),
        (
            TIME_SYNC,
            Duration::from_secs(64),
            &ntp,
            &["--bytes", "48"][..],
        ),
    ] {
        let every_ms = ms(every);
        let mut args = vec!["udp-ticker", "--to", to, "--every-ms", &every_ms];
        args.extend(extra);
        lab.start_on_rig(name, &args)?;
    }
    // A rig program that refused its arguments would leave a hole in the scene, quietly.
    pause(Duration::from_millis(300))?;
    lab.check_running()?;

    step("the agent learns for 10 minutes of rig time, then settles");
    // Settling's quiet time and ceiling in rig time: the agent counts real seconds.
    let agent_listen = start_agent(
        lab,
        agent_binary,
        Duration::from_millis(500),
        real(LEARNING),
        &format!(
            "settle_quiet_seconds = {}\nsettle_max_seconds = {}\n",
            real(6 * HOUR).as_secs_f64(),
            real(7 * DAY).as_secs_f64()
        ),
    )?;
    let prometheus_listen = free_address()?;
    let scrape = Duration::from_secs(1);
    prometheus::start(
        lab,
        &Setup {
            binary: &args.prometheus,
            listen: &prometheus_listen,
            agent: &agent_listen,
            scrape_interval: scrape,
            time_scale: scale,
        },
    )?;
    // Until Prometheus scrapes the agent, `up` is absent: at 240x, BitSecureAgentMissing's
    // five minutes are 1.25 s, shorter than Prometheus takes to start scraping.
    wait_until(
        "Prometheus scrapes the agent",
        Duration::from_secs(60),
        || Ok(!prometheus::query(&prometheus_listen, "up{job=\"bitsecure\"} == 1")?.is_empty()),
    )?;
    pause(Duration::from_secs(3))?;
    timeline.record(json!({
        "event": "ready",
        "agent": agent_listen,
        "prometheus": prometheus_listen,
        "scrape_interval_seconds": scrape.as_secs_f64(),
        "time_scale": scale,
        "baseline": lab.dir.join("baseline.toml"),
    }))?;
    let learning_start = now_unix();
    wait_until(
        "learning ends",
        real(LEARNING) + Duration::from_secs(30),
        || {
            let metrics = http_client::get(&agent_listen, "/metrics")?;
            Ok(gauge(&metrics, "bitsecure_baseline_learning") == Some(0.0)
                && gauge(&metrics, "bitsecure_baseline_rules").unwrap_or(0.0) > 0.0)
        },
    )?;
    timeline.record(
        json!({"event": "phase", "phase": "learning", "start": learning_start, "end": now_unix()}),
    )?;

    step("a day of rare-but-normal life: hourly jobs, a restart, an NTP burst, reconnects");
    let day_start = now_unix();
    let uploads = at("monitor", 8081);
    let mut restarted = false;
    let mut burst = false;
    for hour in 0..24u32 {
        // The hourly job at half past: the reporter's log bundle, to its host's other port.
        pause(real(30 * MINUTE))?;
        lab.run_on_rig(
            REPORTER,
            &[
                "reporter",
                "--to",
                &uploads,
                "--bytes",
                "50000",
                "--count",
                "1",
                "--host",
                MONITOR_NAME,
            ],
        )?;
        if hour == 6 && !restarted {
            println!("  6 h: the reporter restarts");
            lab.stop(REPORTER)?;
            lab.start_on_rig(REPORTER, &reporter_args)?;
            restarted = true;
        }
        if hour == 12 && !burst {
            println!("  12 h: NTP resynchronises in a burst");
            let chronyd = lab.program(TIME_SYNC)?;
            lab.start_program_on_rig(
                "ntp-burst",
                &chronyd,
                &[
                    "udp-ticker",
                    "--to",
                    &ntp,
                    "--every-ms",
                    "20",
                    "--bytes",
                    "48",
                ],
            )?;
            pause(real(5 * MINUTE))?;
            lab.stop("ntp-burst")?;
            burst = true;
        }
        pause(real(30 * MINUTE))?;
        print!("\r  {} h of 24 ", hour + 1);
        std::io::Write::flush(&mut std::io::stdout())?;
    }
    println!();
    let unexpected = http_client::get(&agent_listen, "/api/unexpected")?;
    let unexpected: serde_json::Value =
        serde_json::from_str(&unexpected).context("the agent's list is not JSON")?;
    let view: serde_json::Value =
        serde_json::from_str(&http_client::get(&agent_listen, "/api/baseline")?)
            .context("the agent's view is not JSON")?;
    timeline.record(json!({
        "event": "phase",
        "phase": "day",
        "start": day_start,
        "end": now_unix(),
        "unexpected": unexpected,
        "maturity": view["maturity"],
        "upgrades": view["upgrades"],
    }))?;

    let attacks: [(&str, &[(&str, &str)]); 2] = [
        (
            "new-process",
            &[
                ("BitSecureUnexpectedDestination", INTRUDER),
                ("BitSecureNewProcessOnNetwork", INTRUDER),
            ],
        ),
        (
            "impostor",
            &[
                ("BitSecureImpostorProcess", MINER),
                ("BitSecureUnexpectedDestination", MINER),
            ],
        ),
    ];
    let mut missing = Vec::new();
    for (phase, expected) in attacks {
        step(&format!("attack: {phase}"));
        let start = now_unix();
        if phase == "new-process" {
            lab.run_on_rig(
                INTRUDER,
                &[
                    "reporter",
                    "--to",
                    &at("outside", 4444),
                    "--bytes",
                    "2000000",
                    "--count",
                    "1",
                ],
            )?;
        } else {
            let copy = lab.hidden_copy(MINER)?;
            lab.start_program_on_rig(IMPOSTOR, &copy, &miner_args[..5])?;
        }
        let fired = wait_for_alerts(&prometheus_listen, expected, Duration::from_secs(60))?;
        for (alert, process) in expected {
            if !fired
                .iter()
                .any(|(name, by)| name == alert && by == process)
            {
                missing.push(format!("{alert}{{process=\"{process}\"}}"));
            }
        }
        if phase == "impostor" {
            lab.stop(IMPOSTOR)?;
        }
        timeline
            .record(json!({"event": "phase", "phase": phase, "start": start, "end": now_unix()}))?;
    }
    timeline.record(json!({"event": "done", "ok": missing.is_empty()}))?;
    if args.keep_running {
        println!("\nStill running (Ctrl-C to stop and clean up).");
        while pause(Duration::from_secs(3600)).is_ok() {}
    }
    if !missing.is_empty() {
        bail!("alerts that did not fire: {}", missing.join(", "));
    }
    println!("\n✓ a quiet day, and both attacks paged");
    Ok(())
}
