//! The review commands: `bitsecure unexpected` and `bitsecure baseline show|diff|accept`.
//! They talk to the running agent over its local HTTP endpoint and edit the baseline file.

use std::{collections::HashSet, path::Path};

use anyhow::{Context as _, bail};

use crate::baseline::{
    file,
    model::{Baseline, FORMAT_VERSION, Rule, printable},
    monitor::{ChangedExecutable, Unexpected},
    risk::{Reason, Risk},
};
use crate::export::api::BaselineView;
use crate::{cli::client, human};

/// GETs `path` from the agent at `agent` ("127.0.0.1:9977" or "http://127.0.0.1:9977").
fn get(agent: &str, path: &str) -> anyhow::Result<String> {
    client::get(agent, path).with_context(|| {
        format!("asking the agent at {agent} (is `bitsecure run` running, with agent.listen at this address?)")
    })
}

/// The agent's unexpected list.
pub fn fetch_unexpected(agent: &str) -> anyhow::Result<Vec<Unexpected>> {
    let body = get(agent, "/api/unexpected")?;
    serde_json::from_str(&body).context("the agent's unexpected list is not valid JSON")
}

/// The agent's whole baseline view: unexpected traffic and changed executables.
pub fn fetch_view(agent: &str) -> anyhow::Result<BaselineView> {
    let body = get(agent, "/api/baseline")?;
    serde_json::from_str(&body).context("the agent's baseline view is not valid JSON")
}

/// `bitsecure unexpected`.
pub fn unexpected(agent: &str, json: bool) -> anyhow::Result<()> {
    if json {
        print!("{}", get(agent, "/api/unexpected")?);
        return Ok(());
    }
    let mut view = fetch_view(agent)?;
    if view.unexpected.is_empty() {
        println!("no unexpected traffic");
    } else {
        // Riskiest first; within a risk, the agent's order (most recent, then biggest).
        view.unexpected
            .sort_by_key(|entry| std::cmp::Reverse(entry.risk));
        print!("{}", format_table(&view.unexpected));
        print!("{}", format_reasons(&view.unexpected));
        print!("{}", format_impostors(&view.unexpected));
    }
    print!("{}", format_changed_executables(&view.changed_executables));
    print!("{}", format_dns(&view));
    print!("{}", format_upgrades(&view));
    Ok(())
}

/// `bitsecure baseline status`: one line saying where the baseline stands, with its evidence.
pub fn status(agent: &str, json: bool) -> anyhow::Result<()> {
    let view = fetch_view(agent)?;
    if json {
        println!("{}", serde_json::to_string(&view.maturity)?);
        return Ok(());
    }
    println!("{}", describe_status(&view));
    print!("{}", format_rule_use(&view));
    Ok(())
}

/// The stale rules and the rules that could be by name, one line each.
pub fn format_rule_use(view: &BaselineView) -> String {
    let mut out = String::new();
    for rule in view.rules.iter().filter(|rule| rule.stale) {
        out.push_str(&format!(
            "stale: {} saw no traffic {} ({} hits): still needed?\n",
            printable(&rule.rule),
            match &rule.last_seen {
                Some(when) => format!("since {when}"),
                None => "since monitoring started".to_owned(),
            },
            rule.hits
        ));
    }
    out.push_str(&format_upgrades(view));
    out
}

/// The rules by address whose traffic was resolved from a name.
pub fn format_upgrades(view: &BaselineView) -> String {
    let mut out = String::new();
    for upgrade in &view.upgrades {
        out.push_str(&format!(
            "~ the rule {} → {}{}/{} could be by name {}: its process resolved the address \
             from it (`bitsecure baseline accept --upgrade` writes it, keeping {} as the \
             name's network)\n",
            printable(&upgrade.process),
            printable(&upgrade.remote),
            upgrade
                .port
                .map(|port| format!(":{port}"))
                .unwrap_or_default(),
            printable(&upgrade.protocol),
            printable(&upgrade.name),
            printable(&upgrade.prefix),
        ));
    }
    out
}

/// `bitsecure baseline accept --upgrade`: every rule by address the agent offers to name
/// becomes the rule by that name (with the address's network as its `prefixes`). Returns how
/// many rules changed.
pub fn accept_upgrades(agent: &str, baseline_path: &Path) -> anyhow::Result<usize> {
    let view = fetch_view(agent)?;
    if view.upgrades.is_empty() {
        bail!(
            "the agent offers no rule by address to name; `bitsecure baseline status` lists \
             the offers"
        );
    }
    edit_baseline_file(
        baseline_path,
        |origin| format!("no rule of {origin} matches the agent's offers (edited meanwhile?)"),
        |mut text, origin, when| {
            let mut changed = 0;
            for upgrade in &view.upgrades {
                let (edited, count) = file::accept_upgrade(
                    &text,
                    origin,
                    &upgrade.process,
                    (&upgrade.remote, upgrade.port, &upgrade.protocol),
                    &upgrade.name,
                    &upgrade.prefix,
                    when,
                )?;
                text = edited;
                changed += count;
            }
            Ok((text, changed))
        },
    )
}

/// The status line of a baseline view.
pub fn describe_status(view: &BaselineView) -> String {
    match (&view.maturity, view.learning_remaining_seconds) {
        (Some(maturity), _) => maturity.describe(),
        (None, Some(left)) => format!(
            "learning: {} left, then the baseline is written and settles",
            human::duration(left)
        ),
        (None, None) => "off: no baseline and not learning (`bitsecure baseline record`)".into(),
    }
}

/// The names processes asked for that their DNS rule does not list, DNS tunnels, and names
/// seen outside their networks.
pub fn format_dns(view: &BaselineView) -> String {
    let mut out = String::new();
    for moved in &view.moved_names {
        out.push_str(&format!(
            "! {} now has the address {} ({}), outside the networks it had while learning ({}): \
             a DNS or BGP hijack, or a pool that moved (`bitsecure baseline accept \
             --moved-name {}` if it moved)\n",
            printable(&moved.name),
            printable(&moved.remote),
            printable(&moved.process),
            moved.known.join(", "),
            printable(&moved.name),
        ));
    }
    for tunnel in &view.dns_tunnels {
        out.push_str(&format!(
            "! {} asked for {} distinct names under {} within a minute: data leaving through \
             DNS queries?\n",
            printable(&tunnel.process),
            tunnel.names_per_minute,
            printable(&tunnel.domain),
        ));
    }
    if !view.new_names.is_empty() {
        out.push_str("names asked that the baseline does not list:\n");
    }
    for new in &view.new_names {
        out.push_str(&format!(
            "  {} asked {} for {} ({} queries, {} .. {})\n",
            printable(&new.process),
            printable(&new.server),
            printable(&new.name),
            new.queries,
            new.first_seen,
            new.last_seen,
        ));
    }
    out
}

/// One line per unexpected entry whose process took the name of one the baseline expects, and
/// per entry of expected traffic that logged in with another payout account.
pub fn format_impostors(list: &[Unexpected]) -> String {
    let mut out = String::new();
    for entry in list {
        if let (Some(expected), Some(seen)) = (&entry.expected_account, &entry.account) {
            out.push_str(&format!(
                "! {} pays another account on {}:{}: it logged in as {}, the baseline expects {} \
                 (`bitsecure baseline accept --process {} --remote {}` if you changed it)\n",
                printable(&entry.process),
                printable(entry.name.as_deref().unwrap_or(&entry.remote)),
                entry.port.map(|port| port.to_string()).unwrap_or_default(),
                printable(seen),
                printable(expected),
                printable(&entry.process),
                printable(&entry.remote),
            ));
        }
        let Some(expected) = &entry.impostor_of else {
            continue;
        };
        out.push_str(&format!(
            "! {} is an impostor of `{}`: it runs {} in cgroup {}, the baseline expects {} in {}\n",
            printable(&entry.process),
            printable(&expected.process),
            printable(entry.exe.as_deref().unwrap_or("an unknown executable")),
            printable(entry.cgroup.as_deref().unwrap_or("?")),
            printable(expected.exe.as_deref().unwrap_or("any executable")),
            printable(expected.cgroup.as_deref().unwrap_or("any cgroup")),
        ));
    }
    out
}

/// The changed executables, with the command that accepts each.
pub fn format_changed_executables(list: &[ChangedExecutable]) -> String {
    let mut out = String::new();
    for changed in list {
        out.push_str(&format!(
            "! {} runs a changed executable {}: SHA-256 {} (the baseline expects {}); if this is \
             an update you made: bitsecure baseline accept --executable {}\n",
            printable(&changed.process),
            printable(&changed.exe),
            printable(changed.sha256.as_deref().unwrap_or("unreadable")),
            printable(&changed.expected_sha256),
            printable(&changed.exe),
        ));
    }
    out
}

/// `bitsecure baseline accept --moved-name NAME`: the rules for `name` take the networks the
/// agent saw it move to. Returns how many rules changed.
pub fn accept_moved_name(agent: &str, baseline_path: &Path, name: &str) -> anyhow::Result<usize> {
    let view = fetch_view(agent)?;
    let networks: Vec<String> = view
        .moved_names
        .iter()
        .filter(|moved| moved.name == name)
        .map(|moved| moved.prefix.clone())
        .collect();
    if networks.is_empty() {
        bail!("the agent reports no move of {name}; `bitsecure unexpected` lists the moved names");
    }
    edit_baseline_file(
        baseline_path,
        |origin| format!("no rule of {origin} for {name} lists networks to add to"),
        |text, origin, when| Ok(file::accept_prefixes(&text, origin, name, &networks, when)?),
    )
}

/// Reads the baseline file, applies `edit` (text, origin, now in RFC 3339 → text, rules
/// changed) and writes the result atomically (keeping `.bak`); `nothing(origin)` is the error
/// when no rule changed. Returns how many did.
fn edit_baseline_file(
    baseline_path: &Path,
    nothing: impl FnOnce(&str) -> String,
    edit: impl FnOnce(String, &str, &str) -> anyhow::Result<(String, usize)>,
) -> anyhow::Result<usize> {
    let origin = baseline_path.display().to_string();
    let text =
        std::fs::read_to_string(baseline_path).with_context(|| format!("cannot read {origin}"))?;
    let when = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let (text, changed) = edit(text, &origin, &when)?;
    if changed == 0 {
        bail!("{}", nothing(&origin));
    }
    file::write_atomically(baseline_path, &text)?;
    Ok(changed)
}

/// `bitsecure baseline accept --executable PATH`: the rules expecting the executable at `exe`
/// take the SHA-256 the agent sees it run with now. Returns how many rules changed.
pub fn accept_executable(agent: &str, baseline_path: &Path, exe: &str) -> anyhow::Result<usize> {
    let view = fetch_view(agent)?;
    let changes: Vec<&ChangedExecutable> = view
        .changed_executables
        .iter()
        .filter(|changed| changed.exe == exe)
        .collect();
    if changes.is_empty() {
        bail!(
            "the agent reports no changed executable at {exe}; `bitsecure unexpected` lists \
             the changed ones"
        );
    }
    edit_baseline_file(
        baseline_path,
        |origin| {
            format!("no rule of {origin} expects {exe} with the hash the agent compared it with")
        },
        |mut text, origin, when| {
            let mut changed_rules = 0;
            let mut done = HashSet::new();
            for changed in changes {
                let Some(new) = &changed.sha256 else {
                    bail!(
                        "the agent could not read the executable {exe} that {} runs: nothing \
                         to accept",
                        changed.process
                    );
                };
                if !done.insert((&changed.expected_sha256, new)) {
                    continue;
                }
                let (edited, count) = file::accept_executable(
                    &text,
                    origin,
                    exe,
                    &changed.expected_sha256,
                    new,
                    when,
                )?;
                text = edited;
                changed_rules += count;
            }
            Ok((text, changed_rules))
        },
    )
}

/// A terminal table of the unexpected list.
pub fn format_table(list: &[Unexpected]) -> String {
    let rows: Vec<[String; 12]> = list
        .iter()
        .map(|entry| {
            [
                entry.risk.as_str().to_owned(),
                entry.reason.as_str().to_owned(),
                entry.process.clone(),
                entry.exe.clone().unwrap_or_else(|| "?".into()),
                entry.remote.clone(),
                name_cell(entry),
                entry
                    .port
                    .map(|port| port.to_string())
                    .unwrap_or_else(|| "-".into()),
                entry.protocol.clone(),
                entry.app.as_str().to_owned(),
                human::bytes(entry.sent_bytes),
                human::bytes(entry.received_bytes),
                format!("{} .. {}", entry.first_seen, entry.last_seen),
            ]
        })
        .collect();
    let header = [
        "RISK",
        "WHY",
        "PROCESS",
        "EXECUTABLE",
        "REMOTE",
        "NAME",
        "PORT",
        "PROTO",
        "APP",
        "SENT",
        "RECEIVED",
        "FIRST .. LAST SEEN",
    ];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut text = String::new();
        for (index, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if index + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  "));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&header);
    for row in &rows {
        line(&row.each_ref().map(String::as_str));
    }
    out
}

/// What each reason in the list means, once each, riskiest first.
pub fn format_reasons(list: &[Unexpected]) -> String {
    let mut reasons: Vec<(Risk, Reason)> = list.iter().map(|e| (e.risk, e.reason)).collect();
    reasons.sort_by(|a, b| b.cmp(a));
    reasons.dedup();
    let mut out = String::new();
    for (risk, reason) in reasons {
        out.push_str(&format!("{risk} risk, {reason}: {}\n", reason.explain()));
    }
    if list.iter().any(|entry| entry.risk == Risk::High) {
        out.push_str("high risk pages (risk.page); the rest is listed for review\n");
    }
    out
}

/// `pool.example.org (dns)`: the remote's name and where it was learnt; `-` when unknown.
fn name_cell(entry: &Unexpected) -> String {
    match (&entry.name, entry.name_source) {
        (Some(name), Some(source)) => format!("{name} ({})", source.as_str()),
        (Some(name), None) => name.clone(),
        (None, _) => "-".into(),
    }
}

/// Which unexpected entries `baseline accept` takes.
#[derive(Debug, Default)]
pub struct AcceptFilter {
    pub all: bool,
    pub process: Option<String>,
    /// The entry's address or its name.
    pub remote: Option<String>,
    pub port: Option<u16>,
    pub protocol: Option<String>,
    pub app: Option<String>,
}

impl AcceptFilter {
    fn is_empty(&self) -> bool {
        self.process.is_none()
            && self.remote.is_none()
            && self.port.is_none()
            && self.protocol.is_none()
            && self.app.is_none()
    }

    fn matches(&self, entry: &Unexpected) -> bool {
        self.process
            .as_ref()
            .is_none_or(|process| *process == entry.process)
            && self
                .remote
                .as_ref()
                .is_none_or(|remote| *remote == entry.remote || entry.name.as_ref() == Some(remote))
            && self.port.is_none_or(|port| Some(port) == entry.port)
            && self
                .protocol
                .as_ref()
                .is_none_or(|protocol| *protocol == entry.protocol)
            && self
                .app
                .as_ref()
                .is_none_or(|app| app == entry.app.as_str())
    }
}

/// The rules that make unexpected entries expected: one per entry, for the remote's name when
/// known (unless `by_address`), with the entry's app. Entries that give the same rule (a name
/// seen at several addresses) give it once.
pub fn rules_for(entries: &[Unexpected], by_address: bool, note: Option<&str>) -> Vec<Rule> {
    let mut seen = HashSet::new();
    entries
        .iter()
        .map(|entry| entry.rule(by_address, note))
        .filter(|rule| seen.insert(rule.identity()))
        .collect()
}

/// `bitsecure baseline accept`: turns unexpected entries into rules in the baseline file (see
/// [`rules_for`]). Returns how many rules were added.
pub fn accept(
    agent: &str,
    baseline_path: &Path,
    filter: &AcceptFilter,
    by_address: bool,
    note: Option<&str>,
) -> anyhow::Result<usize> {
    if filter.all != filter.is_empty() {
        bail!(
            "say which entries to accept: --all, or one or more of --process, --remote, --port, --protocol, --app"
        );
    }
    let (payouts, chosen): (Vec<Unexpected>, Vec<Unexpected>) = fetch_unexpected(agent)?
        .into_iter()
        .filter(|entry| filter.all || filter.matches(entry))
        .partition(|entry| entry.expected_account.is_some());
    if chosen.is_empty() && payouts.is_empty() {
        bail!("no unexpected traffic matches; `bitsecure unexpected` lists what there is");
    }
    let rules = rules_for(&chosen, by_address, note);
    let origin = baseline_path.display().to_string();
    let text = if baseline_path.exists() {
        let existing = std::fs::read_to_string(baseline_path)
            .with_context(|| format!("cannot read {origin}"))?;
        // A changed payout account is the rule's traffic with another payee: its rule takes
        // the new account rather than a second rule being added.
        let mut text = existing;
        let when = jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        for entry in &payouts {
            let (Some(old), Some(new)) = (&entry.expected_account, &entry.account) else {
                continue;
            };
            let (edited, changed) =
                file::accept_account(&text, &origin, &entry.process, old, new, &when)?;
            if changed > 0 {
                eprintln!(
                    "{} now pays account {} (was {})",
                    printable(&entry.process),
                    printable(new),
                    printable(old)
                );
            }
            text = edited;
        }
        file::append_rules(&text, &origin, &rules)?
    } else {
        file::render(&Baseline {
            format_version: FORMAT_VERSION,
            recording: None,
            rules: rules.clone(),
            packet_sockets: Vec::new(),
        })
    };
    file::write_atomically(baseline_path, &text)?;
    for rule in &rules {
        eprintln!("accepted {}", rule.describe());
    }
    Ok(rules.len())
}

/// `bitsecure baseline show`.
pub fn show(path: &Path, json: bool) -> anyhow::Result<()> {
    let baseline = file::load(path)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&baseline)?);
    } else {
        print!("{}", file::show(&baseline));
    }
    Ok(())
}

/// `bitsecure baseline merge`: the farm's baseline as TOML; what differed goes to stderr.
pub fn merge(files: &[std::path::PathBuf]) -> anyhow::Result<String> {
    let inputs = files
        .iter()
        .map(|path| Ok((path.display().to_string(), file::load(path)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let merged = file::merge(&inputs);
    for conflict in &merged.conflicts {
        eprintln!("merge: {conflict}");
    }
    eprintln!(
        "merge: {} rules from {} baselines ({} to review above)",
        merged.baseline.rules.len(),
        inputs.len(),
        merged.conflicts.len()
    );
    Ok(file::render(&merged.baseline))
}

/// `bitsecure baseline diff OLD NEW`.
pub fn diff(old: &Path, new: &Path, json: bool) -> anyhow::Result<()> {
    let (old, new) = (file::load(old)?, file::load(new)?);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&file::diff_json(&old, &new))?
        );
    } else {
        print!("{}", file::diff(&old, &new));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::naming::{App, Source};

    fn entry(remote: &str, name: Option<(&str, Source)>, app: App) -> Unexpected {
        Unexpected {
            process: "xmrig".into(),
            exe: Some("/usr/bin/xmrig".into()),
            sha256: None,
            cgroup: None,
            impostor_of: None,
            account: None,
            expected_account: None,
            remote: remote.into(),
            port: Some(3333),
            protocol: "tcp".into(),
            name: name.map(|(name, _)| name.to_owned()),
            name_source: name.map(|(_, source)| source),
            app,
            risk: Risk::High,
            reason: Reason::NewNetwork,
            sent_bytes: 1500,
            received_bytes: 20,
            first_seen: "2027-01-15T08:00:00Z".into(),
            last_seen: "2027-01-15T08:00:05Z".into(),
            first_seen_unix: 0.0,
            last_seen_unix: 0.0,
        }
    }

    const POOL: Option<(&str, Source)> = Some(("pool.example.org", Source::Dns));

    #[test]
    fn the_table_shows_names_with_their_source_and_apps() {
        let table = format_table(&[
            entry("10.0.0.7", POOL, App::Http),
            entry("10.0.0.8", None, App::Unknown),
        ]);
        let lines: Vec<Vec<&str>> = table
            .lines()
            .map(|line| {
                line.split("  ")
                    .map(str::trim)
                    .filter(|cell| !cell.is_empty())
                    .collect()
            })
            .collect();
        assert_eq!(
            lines[0],
            [
                "RISK",
                "WHY",
                "PROCESS",
                "EXECUTABLE",
                "REMOTE",
                "NAME",
                "PORT",
                "PROTO",
                "APP",
                "SENT",
                "RECEIVED",
                "FIRST .. LAST SEEN"
            ]
        );
        assert_eq!(
            lines[1][..9],
            [
                "high",
                "new-network",
                "xmrig",
                "/usr/bin/xmrig",
                "10.0.0.7",
                "pool.example.org (dns)",
                "3333",
                "tcp",
                "http"
            ]
        );
        assert_eq!(lines[2][4..9], ["10.0.0.8", "-", "3333", "tcp", "unknown"]);
        let reasons = format_reasons(&[entry("10.0.0.7", POOL, App::Http)]);
        assert!(
            reasons.starts_with("high risk, new-network: a known program to a network"),
            "{reasons}"
        );
        // Columns line up: every row puts NAME at the same offset.
        let name_at = table.lines().next().and_then(|h| h.find("NAME"));
        assert_eq!(
            table.lines().nth(1).and_then(|row| row.find("pool.")),
            name_at
        );
    }

    #[test]
    fn accepted_rules_name_the_remote_and_record_the_app() {
        let entries = [
            entry("10.0.0.7", POOL, App::Stratum),
            // The same name at another address: the same rule.
            entry("10.0.0.9", POOL, App::Stratum),
            entry("10.0.0.7", POOL, App::Http),
            entry("10.0.0.8", None, App::Unknown),
        ];
        let described: Vec<String> = rules_for(&entries, false, Some("ok"))
            .iter()
            .map(Rule::describe)
            .collect();
        assert_eq!(
            described,
            [
                "xmrig → pool.example.org:3333/tcp (stratum)",
                "xmrig → pool.example.org:3333/tcp (http)",
                "xmrig → 10.0.0.8:3333/tcp (unknown)",
            ]
        );
        let by_address: Vec<String> = rules_for(&entries, true, None)
            .iter()
            .map(Rule::describe)
            .collect();
        assert_eq!(
            by_address,
            [
                "xmrig → 10.0.0.7:3333/tcp (stratum)",
                "xmrig → 10.0.0.9:3333/tcp (stratum)",
                "xmrig → 10.0.0.7:3333/tcp (http)",
                "xmrig → 10.0.0.8:3333/tcp (unknown)",
            ]
        );
        let rules = rules_for(&entries[..1], false, Some("ok"));
        assert_eq!(rules[0].exe.as_deref(), Some("/usr/bin/xmrig"));
        assert_eq!(rules[0].note.as_deref(), Some("ok"));
        // What accept writes is a valid baseline.
        let baseline = Baseline::new(None, rules_for(&entries, false, None));
        assert!(baseline.validate("accepted").is_ok());
    }

    #[test]
    fn the_accept_filter_knows_names_and_apps() {
        let named = entry("10.0.0.7", POOL, App::Http);
        let unnamed = entry("10.0.0.8", None, App::Stratum);
        let filter = |remote: Option<&str>, app: Option<&str>| AcceptFilter {
            remote: remote.map(str::to_owned),
            app: app.map(str::to_owned),
            ..AcceptFilter::default()
        };
        let by_name = filter(Some("pool.example.org"), None);
        assert!(by_name.matches(&named) && !by_name.matches(&unnamed));
        let by_address = filter(Some("10.0.0.8"), None);
        assert!(!by_address.matches(&named) && by_address.matches(&unnamed));
        let by_app = filter(None, Some("http"));
        assert!(!by_app.is_empty());
        assert!(by_app.matches(&named) && !by_app.matches(&unnamed));
        assert!(filter(None, None).is_empty());
    }
}
