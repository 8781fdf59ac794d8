//! Lint of the bundled Grafana dashboard (`grafana/dashboards/bitsecure.json`) and its
//! provisioning files, without a Grafana: structure, layout (rows: overview, the core view
//! repeated per rig, review, agent health collapsed), documentation, data source references,
//! variables and queries. Every finding names the panel it is about.
//!
//! Every query is parsed by Prometheus' own parser (`promtool check rules` on the queries as
//! recording rules), and evaluated against a real Prometheus by the end-to-end test, which
//! substitutes exactly `$job`, `$instance`, `$__rate_interval` and `$__range`; this lint makes
//! sure no query needs anything else.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_json::{Value, json};

/// The only variables a panel query may use (the end-to-end test substitutes exactly these).
const QUERY_VARIABLES: [&str; 4] = ["job", "instance", "__rate_interval", "__range"];
const GRID_COLUMNS: u64 = 24;

fn grafana_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../grafana")
}

fn read(relative: &str) -> String {
    let path = grafana_dir().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

fn dashboard() -> Value {
    let text = read("dashboards/bitsecure.json");
    serde_json::from_str(&text)
        .unwrap_or_else(|err| panic!("grafana/dashboards/bitsecure.json is not valid JSON: {err}"))
}

/// The one data source reference allowed anywhere in the dashboard.
fn datasource_ref() -> Value {
    json!({"type": "prometheus", "uid": "${datasource}"})
}

/// Every panel that shows data, top-level or inside a collapsed row (rows themselves are not).
pub fn panels(dashboard: &Value) -> Vec<&Value> {
    laid_out(dashboard)
        .into_iter()
        .filter(|panel| panel["type"] != "row")
        .collect()
}

/// Every panel as laid out when all rows are expanded: rows and what they hold.
fn laid_out(dashboard: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        all.push(panel);
        all.extend(panel["panels"].as_array().into_iter().flatten());
    }
    all
}

/// Every PromQL expression of the dashboard: panel targets and annotation queries.
pub fn expressions(dashboard: &Value) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for panel in panels(dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                found.push((name(panel), expr.to_owned()));
            }
        }
    }
    for annotation in dashboard["annotations"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(expr) = annotation["expr"].as_str() {
            found.push((
                format!("annotation {}", annotation["name"]),
                expr.to_owned(),
            ));
        }
    }
    found
}

/// How findings name a panel: its id and title.
fn name(panel: &Value) -> String {
    format!(
        "panel {} \"{}\"",
        panel["id"],
        panel["title"].as_str().unwrap_or("<no title>")
    )
}

fn assert_clean(check: &str, findings: Vec<String>) {
    assert!(
        findings.is_empty(),
        "{check}: {} problem(s) in grafana/dashboards/bitsecure.json:\n  {}",
        findings.len(),
        findings.join("\n  ")
    );
}

// ---------------------------------------------------------------------------------- checks

fn check_identity(dashboard: &Value) -> Vec<String> {
    let mut findings = Vec::new();
    if dashboard["uid"] != "bitsecure-rig" {
        findings.push(format!(
            "dashboard uid is {}, not \"bitsecure-rig\"",
            dashboard["uid"]
        ));
    }
    if dashboard["title"] != "BitSecure — rig network" {
        findings.push(format!(
            "dashboard title is {}, not \"BitSecure — rig network\"",
            dashboard["title"]
        ));
    }
    match dashboard["schemaVersion"].as_u64() {
        Some(version) if (36..=41).contains(&version) => {}
        _ => findings.push(format!(
            "schemaVersion {} is not a Grafana 10/11 schema (36..=41)",
            dashboard["schemaVersion"]
        )),
    }
    if dashboard["editable"] != false {
        findings.push(
            "editable must be false: the dashboard is provisioned (edits would be lost at the next start)"
                .into(),
        );
    }
    let alert_annotation = dashboard["annotations"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|annotation| {
            annotation["enable"] == true
                && annotation["expr"]
                    .as_str()
                    .is_some_and(|expr| expr.contains("ALERTS{") && expr.contains("BitSecure"))
        });
    if !alert_annotation {
        findings.push("no enabled annotation of the firing BitSecure alerts (ALERTS)".into());
    }
    if dashboard["graphTooltip"] != 1 {
        findings.push(
            "graphTooltip must be 1 (shared crosshair): the live and reference graphs are read side by side"
                .into(),
        );
    }
    if panels(dashboard).is_empty() {
        findings.push("no panels".into());
    }
    findings
}

fn check_layout(dashboard: &Value) -> Vec<String> {
    let mut findings = Vec::new();
    let mut ids: BTreeMap<u64, String> = BTreeMap::new();
    let mut boxes: Vec<(String, [u64; 4])> = Vec::new();
    for row in dashboard["panels"].as_array().into_iter().flatten() {
        if row["type"] != "row" {
            if row.get("panels").is_some() || row.get("collapsed").is_some() {
                findings.push(format!("{}: only rows hold panels", name(row)));
            }
            continue;
        }
        let who = name(row);
        let grid = &row["gridPos"];
        if grid["x"] != 0 || grid["w"] != GRID_COLUMNS || grid["h"] != 1 {
            findings.push(format!("{who}: a row spans the 24 columns at x 0, 1 high"));
        }
        let held = row["panels"].as_array().map_or(0, Vec::len);
        match row["collapsed"].as_bool() {
            Some(true) if held == 0 => findings.push(format!("{who}: collapsed and empty")),
            Some(false) if held > 0 => findings.push(format!(
                "{who}: an expanded row's panels follow it, they are not inside it"
            )),
            None => findings.push(format!("{who}: no `collapsed`")),
            _ => {}
        }
        for held in row["panels"].as_array().into_iter().flatten() {
            if held["type"] == "row" {
                findings.push(format!("{}: a row inside {who}", name(held)));
            }
            if held["gridPos"]["y"].as_u64() <= grid["y"].as_u64() {
                findings.push(format!("{}: above its row {who}", name(held)));
            }
        }
    }
    for panel in laid_out(dashboard) {
        let who = name(panel);
        match panel["id"].as_u64() {
            None => findings.push(format!("{who}: no numeric id")),
            Some(id) => {
                if let Some(other) = ids.insert(id, who.clone()) {
                    findings.push(format!("{who}: id {id} is also used by {other}"));
                }
            }
        }
        let grid = &panel["gridPos"];
        let field = |key: &str| grid[key].as_u64();
        match (field("x"), field("y"), field("w"), field("h")) {
            (Some(x), Some(y), Some(w), Some(h)) => {
                if w == 0 || h == 0 {
                    findings.push(format!("{who}: gridPos has a zero width or height"));
                }
                if x + w > GRID_COLUMNS {
                    findings.push(format!(
                        "{who}: gridPos x {x} + w {w} exceeds the {GRID_COLUMNS} columns"
                    ));
                }
                boxes.push((who, [x, y, w, h]));
            }
            _ => findings.push(format!(
                "{who}: gridPos needs non-negative integers x, y, w and h, got {grid}"
            )),
        }
    }
    for (index, (first, [x1, y1, w1, h1])) in boxes.iter().enumerate() {
        for (second, [x2, y2, w2, h2]) in &boxes[index + 1..] {
            let columns_meet = *x1 < x2 + w2 && *x2 < x1 + w1;
            let rows_meet = *y1 < y2 + h2 && *y2 < y1 + h1;
            if columns_meet && rows_meet {
                findings.push(format!("{first} overlaps {second}"));
            }
        }
    }
    findings
}

fn check_documentation(dashboard: &Value) -> Vec<String> {
    let mut findings = Vec::new();
    for panel in panels(dashboard) {
        let who = name(panel);
        let non_empty = |value: &Value| value.as_str().is_some_and(|text| !text.trim().is_empty());
        if !non_empty(&panel["title"]) {
            findings.push(format!("{who}: no title"));
        }
        if !non_empty(&panel["description"]) {
            findings.push(format!(
                "{who}: no description (say what the panel shows and what to do about it)"
            ));
        }
        if !non_empty(&panel["fieldConfig"]["defaults"]["unit"]) {
            findings.push(format!("{who}: no unit in fieldConfig.defaults.unit"));
        }
    }
    findings
}

/// Every `datasource` must be the `${datasource}` variable and no `uid` may be hard-coded.
fn check_datasource_refs(value: &Value, at: &str, findings: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                if key == "datasource" && *inner != datasource_ref() {
                    findings.push(format!(
                        "{at}: datasource {inner} is not {}",
                        datasource_ref()
                    ));
                }
                if key == "uid" && inner != "${datasource}" {
                    findings.push(format!("{at}: hard-coded uid {inner}"));
                }
                check_datasource_refs(inner, at, findings);
            }
        }
        Value::Array(items) => {
            for item in items {
                check_datasource_refs(item, at, findings);
            }
        }
        _ => {}
    }
}

fn check_datasources(dashboard: &Value) -> Vec<String> {
    let mut findings = Vec::new();
    for panel in panels(dashboard) {
        let who = name(panel);
        if panel.get("datasource").is_none() {
            findings.push(format!("{who}: no datasource (use {})", datasource_ref()));
        }
        for target in panel["targets"].as_array().into_iter().flatten() {
            if target.get("datasource").is_none() {
                findings.push(format!(
                    "{who}: target {} has no datasource (use {})",
                    target["refId"],
                    datasource_ref()
                ));
            }
        }
        check_datasource_refs(panel, &who, &mut findings);
    }
    if let Value::Object(top) = dashboard {
        for (key, value) in top {
            // The dashboard's own uid is the one uid that belongs here.
            if key != "panels" && key != "uid" {
                check_datasource_refs(value, key, &mut findings);
            }
        }
    }
    findings
}

fn variable<'a>(dashboard: &'a Value, wanted: &str) -> Option<&'a Value> {
    dashboard["templating"]["list"]
        .as_array()?
        .iter()
        .find(|variable| variable["name"] == wanted)
}

/// A query variable's query: a string, or the editor's `{"query": ...}` object.
fn variable_query(variable: &Value) -> &str {
    variable["query"]
        .as_str()
        .or_else(|| variable["query"]["query"].as_str())
        .unwrap_or("")
}

fn check_templating(dashboard: &Value) -> Vec<String> {
    let mut findings = Vec::new();
    match variable(dashboard, "datasource") {
        None => findings.push("templating: no `datasource` variable".into()),
        Some(var) => {
            if var["type"] != "datasource" || var["query"] != "prometheus" {
                findings.push(format!(
                    "templating: variable `datasource` must be of type datasource with query prometheus, got type {} query {}",
                    var["type"], var["query"]
                ));
            }
        }
    }
    for wanted in ["job", "instance"] {
        let Some(var) = variable(dashboard, wanted) else {
            findings.push(format!("templating: no `{wanted}` variable"));
            continue;
        };
        if var["type"] != "query" {
            findings.push(format!(
                "templating: variable `{wanted}` is of type {}, not query",
                var["type"]
            ));
        }
        let query = variable_query(var);
        if query.trim().is_empty() {
            findings.push(format!("templating: variable `{wanted}` has no query"));
        }
        for used in variables(query) {
            if used != "job" {
                findings.push(format!(
                    "templating: variable `{wanted}` uses ${used}; variable queries may only use $job"
                ));
            }
        }
    }
    if let Some(var) = variable(dashboard, "job")
        && (var["includeAll"] != true || var["allValue"] != ".+")
    {
        findings.push(
            "templating: variable `job` must offer All as the regex .+ (not a list of every job)"
                .into(),
        );
    }
    if let Some(var) = variable(dashboard, "instance") {
        if !variables(variable_query(var)).contains(&"job".to_string()) {
            findings.push("templating: variable `instance` must depend on $job".into());
        }
        if var["multi"] != true || var["includeAll"] != true {
            findings.push("templating: variable `instance` must be multi-value with All".into());
        }
    }
    findings
}

/// Grafana variables used in `text`: `$name`, `${name}`, `${name:format}` and `[[name]]`.
fn variables(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        rest = &rest[at + 1..];
        if let Some(braced) = rest.strip_prefix('{') {
            let end = braced.find('}').unwrap_or(braced.len());
            let inner = &braced[..end];
            found.push(inner.split(':').next().unwrap_or("").to_string());
            rest = &braced[end..];
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // A bare `$` (a regex anchor) is no variable.
            if !name.is_empty() {
                found.push(name);
            }
        }
    }
    let mut rest = text;
    while let Some(at) = rest.find("[[") {
        rest = &rest[at + 2..];
        let end = rest.find("]]").unwrap_or(rest.len());
        found.push(format!("[[{}]]", &rest[..end]));
        rest = &rest[end..];
    }
    found
}

/// Brackets outside string literals must balance (a cheap syntax check; Prometheus parses the
/// queries for real in the end-to-end test).
fn unbalanced(expr: &str) -> Option<String> {
    let mut stack = Vec::new();
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in expr.chars() {
        if let Some(open) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == open {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' | '`' => quote = Some(c),
            '(' | '[' | '{' => stack.push(c),
            ')' | ']' | '}' => {
                let expected = match c {
                    ')' => '(',
                    ']' => '[',
                    _ => '{',
                };
                if stack.pop() != Some(expected) {
                    return Some(format!("unmatched `{c}`"));
                }
            }
            _ => {}
        }
    }
    if quote.is_some() {
        return Some("unterminated string".into());
    }
    stack.last().map(|open| format!("unclosed `{open}`"))
}

fn check_queries(dashboard: &Value) -> Vec<String> {
    let mut findings = Vec::new();
    for panel in panels(dashboard) {
        let who = name(panel);
        let targets = panel["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        if targets.is_empty() {
            findings.push(format!("{who}: no targets"));
        }
        let mut ref_ids = BTreeSet::new();
        for (index, target) in targets.iter().enumerate() {
            let ref_id = target["refId"].as_str().unwrap_or("");
            let what = format!("{who}, target #{index} (refId {:?})", ref_id);
            if ref_id.is_empty() {
                findings.push(format!("{what}: no refId"));
            } else if !ref_ids.insert(ref_id) {
                findings.push(format!("{what}: refId used twice in the panel"));
            }
            let expr = target["expr"].as_str().unwrap_or("");
            if expr.trim().is_empty() {
                findings.push(format!("{what}: no expr"));
                continue;
            }
            for used in variables(expr) {
                if !QUERY_VARIABLES.contains(&used.as_str()) {
                    findings.push(format!(
                        "{what}: uses `{used}`; queries may only use $job, $instance, $__rate_interval and $__range"
                    ));
                }
            }
            for filter in [r#"job=~"$job""#, r#"instance=~"$instance""#] {
                if !expr.contains(filter) {
                    findings.push(format!("{what}: does not filter on {filter}: {expr}"));
                }
            }
            if let Some(problem) = unbalanced(expr) {
                findings.push(format!("{what}: {problem} in {expr}"));
            }
        }
    }
    findings
}

/// The core view, repeated per rig: live traffic beside the baseline reference, per process and
/// direction, on one y-axis range (each graph of a pair carries its counterpart's series drawn
/// invisible), and the same two in one graph (reference dashed).
fn check_core_view(dashboard: &Value) -> Vec<String> {
    let mut findings = Vec::new();
    let all = panels(dashboard);
    let by_title = |title: &str| all.iter().copied().find(|panel| panel["title"] == title);
    let exprs_of = |panel: &Value, ref_id: &str| {
        panel["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|target| target["refId"] == ref_id)
            .filter_map(|target| target["expr"].as_str())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let is_live =
        |expr: &str, direction: &str| expr.contains(&format!("bitsecure_{direction}_bytes_total"));
    let is_reference = |expr: &str, direction: &str| {
        expr.contains("bitsecure_rule_reference_bytes_per_second")
            && expr.contains(&format!(r#"direction="{direction}""#))
    };
    // The override of refId B, and the value of one of its properties.
    let override_of_b = |panel: &Value, property: &str| -> Option<Value> {
        panel["fieldConfig"]["overrides"]
            .as_array()?
            .iter()
            .filter(|o| o["matcher"]["id"] == "byFrameRefID" && o["matcher"]["options"] == "B")
            .flat_map(|o| o["properties"].as_array().into_iter().flatten())
            .find(|p| p["id"] == property)
            .map(|p| p["value"].clone())
    };
    let repeated_row = dashboard["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|row| row["type"] == "row" && row["repeat"] == "instance");
    let Some(repeated_row) = repeated_row else {
        findings.push("no row repeated per instance (the core view of each rig)".into());
        return findings;
    };
    let row_y = repeated_row["gridPos"]["y"].as_u64().unwrap_or(0);
    let next_row_y = dashboard["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|row| row["type"] == "row")
        .filter_map(|row| row["gridPos"]["y"].as_u64())
        .filter(|y| *y > row_y)
        .min()
        .unwrap_or(u64::MAX);
    for direction in ["sent", "received"] {
        let live_title = format!("Live traffic — {direction}, by process");
        let reference_title = format!("Baseline reference — {direction}, by process");
        let overlay_title = format!(
            "{}{} — live (solid) and baseline (dashed), by process",
            direction[..1].to_uppercase(),
            &direction[1..]
        );
        let (Some(live), Some(reference), Some(overlay)) = (
            by_title(&live_title),
            by_title(&reference_title),
            by_title(&overlay_title),
        ) else {
            findings.push(format!(
                "no \"{live_title}\", \"{reference_title}\" and \"{overlay_title}\" panels"
            ));
            continue;
        };
        let pair = format!("{} / {}", name(live), name(reference));
        let grid = |panel: &Value, key: &str| panel["gridPos"][key].as_u64();
        if grid(live, "y") != grid(reference, "y")
            || grid(live, "h") != grid(reference, "h")
            || grid(live, "w") != Some(12)
            || grid(reference, "w") != Some(12)
            || grid(live, "x") != Some(0)
            || grid(reference, "x") != Some(12)
        {
            findings.push(format!(
                "{pair}: must sit side by side (live left, reference right), 12 columns each, same row and height"
            ));
        }
        for panel in [live, reference, overlay] {
            let who = name(panel);
            let y = grid(panel, "y").unwrap_or(0);
            if y <= row_y || y >= next_row_y {
                findings.push(format!("{who}: must be in the row repeated per instance"));
            }
            let defaults = &panel["fieldConfig"]["defaults"];
            if defaults["unit"] != "Bps" {
                findings.push(format!("{who}: unit must be Bps, is {}", defaults["unit"]));
            }
            if defaults["min"] != 0 {
                findings.push(format!("{who}: axis minimum must be 0"));
            }
            if defaults["color"]["mode"] != "palette-classic-by-name" {
                findings.push(format!(
                    "{who}: colour mode must be palette-classic-by-name (one colour per process in every graph)"
                ));
            }
            for target in panel["targets"].as_array().into_iter().flatten() {
                if target["legendFormat"] != "{{process}}" {
                    findings.push(format!(
                        "{who}: target {} legend must be {{{{process}}}}",
                        target["refId"]
                    ));
                }
            }
        }
        // Live and reference: A shows, B is the counterpart, drawn invisible so that it
        // counts toward the axis range (hidden from the graph it would not).
        for (panel, shown, counterpart) in [
            (live, "live", "reference"),
            (reference, "reference", "live"),
        ] {
            let who = name(panel);
            let (a, b) = (exprs_of(panel, "A"), exprs_of(panel, "B"));
            let shown_ok = if shown == "live" {
                is_live(&a, direction)
            } else {
                is_reference(&a, direction)
            };
            let counterpart_ok = if counterpart == "live" {
                is_live(&b, direction)
            } else {
                is_reference(&b, direction)
            };
            if !shown_ok || !counterpart_ok {
                findings.push(format!(
                    "{who}: refId A must query the {shown} {direction} rate and B the {counterpart} one"
                ));
            }
            let invisible = override_of_b(panel, "color")
                .is_some_and(|color| color["fixedColor"] == "transparent")
                && override_of_b(panel, "custom.hideFrom")
                    .is_some_and(|hide| hide["viz"] == false && hide["legend"] == true);
            if !invisible {
                findings.push(format!(
                    "{who}: refId B must be drawn transparent and left out of the legend, not hidden from the graph (it sets the shared y range)"
                ));
            }
        }
        let who = name(overlay);
        if !is_live(&exprs_of(overlay, "A"), direction)
            || !is_reference(&exprs_of(overlay, "B"), direction)
        {
            findings.push(format!(
                "{who}: refId A must query the live {direction} rate and B the reference"
            ));
        }
        if override_of_b(overlay, "custom.lineStyle").is_none_or(|style| style["fill"] != "dash") {
            findings.push(format!("{who}: the reference (refId B) must be dashed"));
        }
    }
    findings
}

fn check_provisioning_text(file: &str, text: &str, expected: &[&str]) -> Vec<String> {
    let mut findings = Vec::new();
    for line in expected {
        if !text.lines().any(|candidate| candidate.trim() == *line) {
            findings.push(format!("{file}: no line `{line}`"));
        }
    }
    if text.contains('\t') {
        findings.push(format!("{file}: contains a tab (YAML indents with spaces)"));
    }
    findings
}

/// The value of the first `key: value` line, trimmed.
fn yaml_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix(key)?.strip_prefix(':'))
        .map(str::trim)
        .next()
}

fn check_provisioning() -> Vec<String> {
    let mut findings = Vec::new();
    let file = "grafana/provisioning/datasources/bitsecure.yml";
    let text = read("provisioning/datasources/bitsecure.yml");
    findings.extend(check_provisioning_text(
        file,
        &text,
        &[
            "apiVersion: 1",
            "datasources:",
            "type: prometheus",
            "access: proxy",
        ],
    ));
    match yaml_value(&text, "url") {
        Some(url) if url.starts_with('$') => {}
        other => findings.push(format!(
            "{file}: url must come from an environment variable, is {other:?}"
        )),
    }
    let file = "grafana/provisioning/dashboards/bitsecure.yml";
    let text = read("provisioning/dashboards/bitsecure.yml");
    findings.extend(check_provisioning_text(
        file,
        &text,
        &["apiVersion: 1", "providers:", "type: file", "options:"],
    ));
    match yaml_value(&text, "path") {
        Some(path) if path.starts_with('$') && path.ends_with("/dashboards") => {}
        other => findings.push(format!(
            "{file}: path must be an environment variable + /dashboards, is {other:?}"
        )),
    }
    findings
}

// ----------------------------------------------------------------------------------- tests

#[test]
fn dashboard_is_identified() {
    assert_clean("identity", check_identity(&dashboard()));
}

#[test]
fn layout_has_rows_unique_ids_and_no_overlaps() {
    assert_clean("layout", check_layout(&dashboard()));
}

#[test]
fn every_panel_has_a_title_description_and_unit() {
    assert_clean("documentation", check_documentation(&dashboard()));
}

#[test]
fn datasources_are_the_datasource_variable() {
    assert_clean("data sources", check_datasources(&dashboard()));
}

#[test]
fn templating_has_datasource_job_and_instance() {
    assert_clean("templating", check_templating(&dashboard()));
}

#[test]
fn queries_have_ref_ids_filters_and_known_variables_only() {
    assert_clean("queries", check_queries(&dashboard()));
}

#[test]
fn live_and_reference_graphs_are_comparable() {
    assert_clean("core view", check_core_view(&dashboard()));
}

#[test]
fn provisioning_files_have_the_expected_keys() {
    assert_clean("provisioning", check_provisioning());
}

/// The lint itself: each check catches a broken copy of the dashboard and names the panel.
#[test]
fn lint_catches_broken_dashboards() {
    type Check = fn(&Value) -> Vec<String>;
    type Break = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Check, Break)> = vec![
        (
            "duplicate id",
            check_layout,
            Box::new(|d| d["panels"][1]["id"] = d["panels"][0]["id"].clone()),
        ),
        (
            "overlap",
            check_layout,
            Box::new(|d| d["panels"][1]["gridPos"] = d["panels"][0]["gridPos"].clone()),
        ),
        (
            "too wide",
            check_layout,
            Box::new(|d| d["panels"][1]["gridPos"]["w"] = json!(30)),
        ),
        (
            "a row not spanning the width",
            check_layout,
            Box::new(|d| d["panels"][1]["type"] = json!("row")),
        ),
        (
            "no description",
            check_documentation,
            Box::new(|d| d["panels"][1]["description"] = json!(" ")),
        ),
        (
            "no unit",
            check_documentation,
            Box::new(|d| {
                d["panels"][1]["fieldConfig"]["defaults"]
                    .as_object_mut()
                    .unwrap()
                    .remove("unit");
            }),
        ),
        (
            "hard-coded uid",
            check_datasources,
            Box::new(|d| {
                d["panels"][1]["targets"][0]["datasource"] =
                    json!({"type": "prometheus", "uid": "P1809F7CD0C75ACF3"})
            }),
        ),
        (
            "unknown variable",
            check_queries,
            Box::new(|d| {
                let expr = d["panels"][1]["targets"][0]["expr"].as_str().unwrap();
                d["panels"][1]["targets"][0]["expr"] =
                    json!(format!("{expr} * on() group_left ${{__interval}}"));
            }),
        ),
        (
            "no refId",
            check_queries,
            Box::new(|d| d["panels"][1]["targets"][0]["refId"] = json!("")),
        ),
        (
            "no instance filter",
            check_queries,
            Box::new(|d| {
                let expr = d["panels"][1]["targets"][0]["expr"].as_str().unwrap();
                d["panels"][1]["targets"][0]["expr"] =
                    json!(expr.replace(r#"instance=~"$instance""#, ""));
            }),
        ),
    ];
    let original = dashboard();
    // Findings name a panel by id and title; the title survives every breakage below.
    let broken_panel = format!("\"{}\"", original["panels"][1]["title"].as_str().unwrap());
    for (case, check, breaks) in cases {
        let mut broken = original.clone();
        breaks(&mut broken);
        let findings = check(&broken);
        assert!(
            findings
                .iter()
                .any(|finding| finding.contains(&broken_panel)),
            "lint misses `{case}` on {broken_panel}: {findings:?}"
        );
    }
    let mut broken = original.clone();
    broken["templating"]["list"]
        .as_array_mut()
        .unwrap()
        .retain(|variable| variable["name"] != "instance");
    assert!(
        check_templating(&broken)
            .iter()
            .any(|finding| finding.contains("instance")),
        "lint misses a missing `instance` variable"
    );
    // The core view: a counterpart made visible (it would stack a second set of lines) or
    // hidden from the graph (it would no longer set the shared range) is caught.
    for hide in [
        json!({"legend": false, "tooltip": false, "viz": false}),
        json!({"legend": true, "tooltip": true, "viz": true}),
    ] {
        let mut broken = original.clone();
        let live = broken["panels"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .find(|panel| panel["title"] == "Live traffic — sent, by process")
            .unwrap();
        live["fieldConfig"]["overrides"][0]["properties"][3]["value"] = hide.clone();
        assert!(
            check_core_view(&broken)
                .iter()
                .any(|finding| finding.contains("Live traffic — sent")
                    && finding.contains("transparent")),
            "lint misses a counterpart with hideFrom {hide}"
        );
    }
    let mut broken = original.clone();
    broken["editable"] = json!(true);
    assert!(
        check_identity(&broken)
            .iter()
            .any(|f| f.contains("editable"))
    );
    let mut broken = original.clone();
    let last_row = broken["panels"].as_array_mut().unwrap().last_mut().unwrap();
    assert_eq!(
        last_row["collapsed"], true,
        "the last row is the collapsed health row"
    );
    last_row["panels"][0]["gridPos"]["y"] = last_row["gridPos"]["y"].clone();
    assert!(
        check_layout(&broken)
            .iter()
            .any(|f| f.contains("above its row")),
        "lint misses a panel above its collapsed row"
    );
    assert_eq!(
        variables(r#"rate(x{job=~"$job", a=~"b$"}[${__rate_interval}]) [[old]] ${instance:pipe}"#),
        ["job", "__rate_interval", "instance", "[[old]]"]
    );
    assert_eq!(unbalanced(r#"sum(x{a="("}"#), Some("unclosed `(`".into()));
    assert_eq!(unbalanced(r#"sum(x{a="("))"#), Some("unmatched `)`".into()));
    assert_eq!(unbalanced(r#"sum(x{a="("})"#), None);
}

/// Every query parses with Prometheus' own parser: promtool checks them as recording rules
/// (variables replaced as the end-to-end test does).
#[test]
fn every_query_parses_with_promtool() {
    let dashboard = dashboard();
    let queries = expressions(&dashboard);
    assert!(queries.len() > 30, "only {} queries", queries.len());
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (index, (_, expr)) in queries.iter().enumerate() {
        let expr = expr
            .replace("$job", "bitsecure")
            .replace("$instance", ".+")
            .replace("$__rate_interval", "1m")
            .replace("$__range", "1h");
        rules.push_str(&format!(
            "      - record: dashboard:query_{index}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    let path = bitsecure_test::process::scratch_dir().join("dashboard-queries.rules.yml");
    std::fs::write(&path, &rules).unwrap();
    let output = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .expect("promtool: run `cargo xtask setup`");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    let named: Vec<String> = queries
        .iter()
        .enumerate()
        .map(|(index, (who, _))| format!("query_{index}: {who}"))
        .collect();
    assert!(
        output.status.success(),
        "a dashboard query does not parse:\n{text}\n{}",
        named.join("\n")
    );
}

/// Type-checks `dashboard` against Grafana's published dashboard types (the foundation SDK,
/// pinned in `bitsecure-test/grafana-schema`, installed by `cargo xtask setup`): the findings
/// of `tsc`, without the known false alarms listed beside it.
fn schema_findings(dashboard: &Value) -> Vec<String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("grafana-schema");
    let source = format!(
        "import type * as cog from '@grafana/grafana-foundation-sdk/cog';\n\
         import type {{ Dashboard }} from '@grafana/grafana-foundation-sdk/dashboard';\n\
         import type {{ dataquery }} from '@grafana/grafana-foundation-sdk/prometheus';\n\
         // Grafana's types with two artefacts of their TypeScript form removed: their enums\n\
         // are TS enums (a JSON string never is one: compared by value), and a panel's queries\n\
         // are an opaque variant (this dashboard's are all Prometheus queries).\n\
         type PrometheusQuery = Omit<dataquery, '_implementsDataqueryVariant'>;\n\
         type LooseObject<T> = {{ [K in keyof T]: Loose<T[K]> }};\n\
         type Loose<T> = T extends string ? T | `${{T}}`\n\
           : T extends number | boolean | null | undefined ? T\n\
           : T extends (infer U)[] ? Loose<U>[]\n\
           : T extends cog.Dataquery ? LooseObject<PrometheusQuery>\n\
           : T extends object ? LooseObject<T> : T;\n\
         export const dashboard: Loose<Dashboard> = {};\n",
        serde_json::to_string_pretty(dashboard).unwrap()
    );
    std::fs::write(dir.join("check.gen.ts"), source).unwrap();
    let tsc = dir.join("node_modules/.bin/tsc");
    let output = std::process::Command::new(&tsc)
        .arg("-p")
        .arg(&dir)
        .output()
        .unwrap_or_else(|error| panic!("{}: {error}: run `cargo xtask setup`", tsc.display()));
    let known: Vec<String> = std::fs::read_to_string(dir.join("known-false-alarms.txt"))
        .unwrap()
        .lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .map(str::to_owned)
        .collect();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    // One finding per `file(line,col): error ...` line; its continuation lines are indented.
    let findings: Vec<String> = text
        .lines()
        .filter(|line| line.contains(": error TS"))
        .filter(|line| !known.iter().any(|alarm| line.contains(alarm.as_str())))
        .map(str::to_owned)
        .collect();
    assert!(
        output.status.success() || !text.trim().is_empty(),
        "tsc failed without findings: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    findings
}

/// The dashboard is what Grafana's own published types say a dashboard is (see
/// `schema_findings`); and the check finds a misspelt field and a wrong type.
#[test]
fn dashboard_passes_grafanas_published_schema() {
    let dashboard = dashboard();
    assert_clean("schema", schema_findings(&dashboard));
    let mut broken = dashboard.clone();
    broken["panels"][1]["titel"] = json!("typo");
    broken["panels"][2]["gridPos"]["w"] = json!("12");
    let findings = schema_findings(&broken).join("\n");
    assert!(
        findings.contains("'\"titel\"' does not exist"),
        "{findings}"
    );
    assert!(
        findings.contains("Type 'string' is not assignable to type 'number'"),
        "{findings}"
    );
}
