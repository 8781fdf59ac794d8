//! The benchmark's report: medians and spreads, one row per measurement with its target, and
//! the Markdown table printed and written to `report.md`.

use std::{fmt::Write as _, fs, path::Path};

use anyhow::{Context as _, bail};

use crate::progress;

pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    } else {
        sorted[middle]
    }
}

/// "median (min-max)", or just the value for a single sample.
pub fn spread(values: &[f64]) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    match values.len() {
        1 => format!("{:.3}", median(values)),
        _ => format!("{:.3} ({min:.2}-{max:.2})", median(values)),
    }
}

/// One line of the report; `pass` is `None` when the value could not be measured.
#[derive(Default)]
pub struct Row {
    pub metric: String,
    pub without: String,
    pub with: String,
    pub ratio: String,
    pub target: String,
    pub pass: Option<bool>,
}

impl Row {
    /// A with-agent value that must not exceed `max`.
    pub fn limit(metric: &str, value: Option<f64>, max: f64) -> Self {
        Self {
            metric: metric.to_owned(),
            with: value.map_or("n/a".into(), |value| format!("{value:.2}")),
            target: format!("<= {max}"),
            pass: value.map(|value| value <= max),
            ..Self::default()
        }
    }

    /// A program's run time in an earlier build (`without` column) and this one (`with`):
    /// this one may cost at most 5% more.
    pub fn versus(program: &str, earlier: Option<f64>, this: Option<f64>) -> Self {
        let ratio = earlier.zip(this).map(|(earlier, this)| this / earlier);
        let format = |value: Option<f64>| value.map_or("n/a".into(), |value| format!("{value:.2}"));
        Self {
            metric: format!("{program}, earlier build -> this build (ns/run)"),
            without: format(earlier),
            with: format(this),
            ratio: ratio.map_or("n/a".into(), |ratio| format!("{ratio:.3}")),
            target: "<= 1.05".into(),
            pass: ratio.map(|ratio| ratio <= 1.05),
        }
    }
}

/// Prints the report and writes it to `out/report.md`; fails if a value is missing.
pub fn write_report(
    rows: &[Row],
    out: &Path,
    reps: u32,
    secs: u32,
    window: u64,
) -> anyhow::Result<()> {
    let report = format!(
        "# BitSecure overhead benchmark\n\n{}\nThroughput and packet rate: medians (min-max) of \
         {reps} interleaved runs (alternating which side goes first) without / with the agent, {secs} s each. Program run times: \
         averages over one extra with-agent run of each workload (with an earlier build to compare, one per repetition, the two builds in turns), the only time kernel.bpf_stats_enabled=1 (it adds two clock reads per run, included in these figures). CPU and memory: agent \
         with 10,000 live flows, CPU over {window} s, MB = 10^6 bytes.\n",
        table(rows)
    );
    println!("\n{report}");
    let path = out.join("report.md");
    fs::write(&path, &report).with_context(|| format!("cannot write {}", path.display()))?;
    progress(&format!("report written to {}", path.display()));
    let missing = rows.iter().filter(|row| row.pass.is_none()).count();
    if missing > 0 {
        bail!("{missing} measurement(s) could not be made (n/a in the report)");
    }
    Ok(())
}

/// A Markdown table, padded so that it reads well as plain text too.
fn table(rows: &[Row]) -> String {
    let header = [
        "Metric",
        "Without",
        "With",
        "With/without",
        "Target",
        "Result",
    ];
    let cells: Vec<[&str; 6]> = rows
        .iter()
        .map(|row| {
            let result = match row.pass {
                Some(true) => "PASS",
                Some(false) => "FAIL",
                None => "MISSING",
            };
            [
                &row.metric,
                &row.without,
                &row.with,
                &row.ratio,
                &row.target,
                result,
            ]
            .map(|cell| if cell.is_empty() { "-" } else { cell })
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|column| {
            cells
                .iter()
                .map(|row| row[column].len())
                .fold(header[column].len(), usize::max)
        })
        .collect();
    let line = |cells: &[&str]| {
        let mut line = String::from("|");
        for (cell, width) in cells.iter().zip(&widths) {
            let _ = write!(line, " {cell:<width$} |");
        }
        line + "\n"
    };
    let rules: Vec<String> = widths.iter().map(|width| "-".repeat(*width)).collect();
    let mut text = line(&header) + &line(&rules.iter().map(String::as_str).collect::<Vec<_>>());
    for row in &cells {
        text += &line(row);
    }
    text
}
