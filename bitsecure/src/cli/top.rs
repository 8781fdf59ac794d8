//! `bitsecure top`: the live view in a terminal, for a rig reached over SSH. It reads the
//! agent's API (no privileges needed to look): per process the live rate beside what the
//! baseline expects (from `/api/history`), and the unexpected list (from `/api/baseline`),
//! riskiest first; `a` accepts the selected entry into the baseline exactly as `bitsecure
//! baseline accept` does (that needs write access to the baseline file).

use std::{
    collections::BTreeMap,
    io::IsTerminal as _,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use ratatui::{
    crossterm::event::{self, Event, KeyCode, KeyEventKind},
    layout::{Constraint, Layout},
    style::{Modifier, Style},
    text::Line,
    widgets::{Block, Cell, Paragraph, Row, Table, TableState},
};

use super::{
    client,
    commands::{self, AcceptFilter},
};
use crate::{baseline::monitor::Unexpected, human};

/// What one refresh shows.
#[derive(Default)]
struct Screen {
    mode: String,
    /// Process → (live sent, reference sent, live received, reference received), bytes/s.
    processes: BTreeMap<String, [Option<f32>; 4]>,
    unexpected: Vec<Unexpected>,
    error: Option<String>,
}

fn fetch(agent: &str) -> Screen {
    let mut screen = Screen::default();
    match commands::fetch_view(agent) {
        Ok(mut view) => {
            view.unexpected
                .sort_by_key(|entry| std::cmp::Reverse(entry.risk));
            screen.mode = view.mode;
            screen.unexpected = view.unexpected;
        }
        Err(error) => screen.error = Some(format!("{error:#}")),
    }
    // The last finished 10-s point of each process track.
    match client::get(agent, "/api/history?range=60") {
        Ok(body) => {
            let history: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            for series in history["series"].as_array().into_iter().flatten() {
                if series["rule"] != "" {
                    continue;
                }
                let Some(process) = series["process"].as_str() else {
                    continue;
                };
                let last = series["values"]
                    .as_array()
                    .and_then(|values| values.last())
                    .and_then(serde_json::Value::as_f64)
                    .map(|rate| rate as f32);
                let column = match (series["kind"].as_str(), series["direction"].as_str()) {
                    (Some("live"), Some("sent")) => 0,
                    (Some("reference"), Some("sent")) => 1,
                    (Some("live"), Some("received")) => 2,
                    (Some("reference"), Some("received")) => 3,
                    _ => continue,
                };
                screen.processes.entry(process.to_owned()).or_default()[column] = last;
            }
        }
        Err(error) => screen.error = Some(error.to_string()),
    }
    screen
}

fn rate(value: Option<f32>) -> String {
    value.map_or_else(
        || "-".into(),
        |rate| format!("{}/s", human::bytes(rate as u64)),
    )
}

/// Runs until `q` (or Esc); refreshes every `every`.
pub fn run(agent: &str, baseline_path: &Path, every: Duration) -> anyhow::Result<()> {
    if !std::io::stdout().is_terminal() {
        bail!("bitsecure top needs a terminal; `bitsecure unexpected` prints the list");
    }
    let mut terminal = ratatui::try_init().context("cannot set up the terminal")?;
    let result = event_loop(&mut terminal, agent, baseline_path, every);
    ratatui::restore();
    result
}

fn event_loop(
    terminal: &mut ratatui::DefaultTerminal,
    agent: &str,
    baseline_path: &Path,
    every: Duration,
) -> anyhow::Result<()> {
    let mut screen = fetch(agent);
    let mut fetched = Instant::now();
    let mut selected = TableState::default().with_selected(Some(0));
    let mut status = format!(
        "q quit · ↑↓ select · a accept the selected entry into {}",
        baseline_path.display()
    );
    loop {
        terminal.draw(|frame| {
            let [head, processes, unexpected, foot] = Layout::vertical([
                Constraint::Length(1),
                Constraint::Length(screen.processes.len() as u16 + 3),
                Constraint::Min(4),
                Constraint::Length(1),
            ])
            .areas(frame.area());
            let title = match &screen.error {
                Some(error) => format!("BitSecure top · {agent} · {error}"),
                None => format!(
                    "BitSecure top · {agent} · {} · {} unexpected",
                    screen.mode,
                    screen.unexpected.len()
                ),
            };
            frame.render_widget(Paragraph::new(Line::from(title)), head);
            let rows = screen.processes.iter().map(|(process, rates)| {
                Row::new(
                    std::iter::once(Cell::from(process.clone()))
                        .chain(rates.iter().map(|value| Cell::from(rate(*value)))),
                )
            });
            frame.render_widget(
                Table::new(
                    rows,
                    [
                        Constraint::Fill(2),
                        Constraint::Fill(1),
                        Constraint::Fill(1),
                        Constraint::Fill(1),
                        Constraint::Fill(1),
                    ],
                )
                .header(
                    Row::new([
                        "PROCESS",
                        "SENT",
                        "BASELINE SENT",
                        "RECEIVED",
                        "BASELINE RECEIVED",
                    ])
                    .style(Style::new().add_modifier(Modifier::BOLD)),
                )
                .block(Block::bordered().title("live (last 10 s) beside the baseline")),
                processes,
            );
            let rows = screen.unexpected.iter().map(|entry| {
                let remote = match &entry.name {
                    Some(name) => format!("{} ({name})", entry.remote),
                    None => entry.remote.clone(),
                };
                let port = entry
                    .port
                    .map(|port| format!(":{port}"))
                    .unwrap_or_default();
                Row::new([
                    entry.risk.as_str().to_owned(),
                    entry.process.clone(),
                    format!("{remote}{port}/{}", entry.protocol),
                    entry.app.as_str().to_owned(),
                    human::bytes(entry.sent_bytes),
                    human::bytes(entry.received_bytes),
                    entry.reason.as_str().to_owned(),
                ])
            });
            frame.render_stateful_widget(
                Table::new(
                    rows,
                    [
                        Constraint::Length(6),
                        Constraint::Fill(1),
                        Constraint::Fill(3),
                        Constraint::Length(8),
                        Constraint::Length(9),
                        Constraint::Length(9),
                        Constraint::Fill(1),
                    ],
                )
                .header(
                    Row::new([
                        "RISK", "PROCESS", "REMOTE", "APP", "SENT", "RECEIVED", "WHY",
                    ])
                    .style(Style::new().add_modifier(Modifier::BOLD)),
                )
                .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
                .block(Block::bordered().title("unexpected traffic, riskiest first")),
                unexpected,
                &mut selected,
            );
            frame.render_widget(Paragraph::new(Line::from(status.as_str())), foot);
        })?;
        let wait = every.saturating_sub(fetched.elapsed());
        if event::poll(wait)?
            && let Event::Key(key) = event::read()?
            && key.kind == KeyEventKind::Press
        {
            match key.code {
                KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                KeyCode::Down => selected.select_next(),
                KeyCode::Up => selected.select_previous(),
                KeyCode::Char('a') => {
                    let entry = selected.selected().and_then(|i| screen.unexpected.get(i));
                    if entry.is_none() {
                        status = "nothing selected: the unexpected list is empty".into();
                    }
                    if let Some(entry) = entry {
                        let filter = AcceptFilter {
                            all: false,
                            process: Some(entry.process.clone()),
                            remote: Some(entry.remote.clone()),
                            port: entry.port,
                            protocol: Some(entry.protocol.clone()),
                            app: Some(entry.app.as_str().to_owned()),
                        };
                        status = match commands::accept(
                            agent,
                            baseline_path,
                            &filter,
                            false,
                            Some("accepted in bitsecure top"),
                        ) {
                            Ok(rules) => format!(
                                "accepted {} ({rules} rule(s)); the agent reloads the baseline",
                                entry.process
                            ),
                            Err(error) => format!("accept failed: {error:#}"),
                        };
                        // `accept` reports on stderr, over the screen: draw it all again.
                        terminal.clear()?;
                        // The list changes once the agent has reloaded the file.
                        fetched = Instant::now() - every;
                    }
                }
                _ => {}
            }
        }
        if fetched.elapsed() >= every {
            screen = fetch(agent);
            fetched = Instant::now();
            // Drawing an empty table unselects: select the first entry when there is one.
            let last = screen.unexpected.len().checked_sub(1);
            selected.select(match (selected.selected(), last) {
                (_, None) => None,
                (None, Some(_)) => Some(0),
                (Some(index), Some(last)) => Some(index.min(last)),
            });
        }
    }
}
