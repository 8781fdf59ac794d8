//! Lint of the bundled Grafana dashboard (`grafana/dashboards/bitsecure.json`) and its
//! provisioning files, without a Grafana: structure, layout, documentation, data source
//! references, variables and queries. Every finding names the panel it is about.
//!
//! The queries themselves are evaluated against a real Prometheus by the end-to-end test, which
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

fn panels(dashboard: &Value) -> &[Value] {
    dashboard["panels"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
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
    for panel in panels(dashboard) {
        let who = name(panel);
        match panel["id"].as_u64() {
            None => findings.push(format!("{who}: no numeric id")),
            Some(id) => {
                if let Some(other) = ids.insert(id, who.clone()) {
                    findings.push(format!("{who}: id {id} is also used by {other}"));
                }
            }
        }
        if panel["type"] == "row"
            || panel.get("panels").is_some()
            || panel.get("collapsed").is_some()
        {
            findings.push(format!(
                "{who}: row panels are not allowed (keep the layout flat, every panel with a unit)"
            ));
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

/// The core view: live traffic beside the baseline reference, for both directions, must be
/// directly comparable.
fn check_core_view(dashboard: &Value) -> Vec<String> {
    let mut findings = Vec::new();
    let by_title = |title: &str| {
        panels(dashboard)
            .iter()
            .find(|panel| panel["title"] == title)
    };
    for direction in ["sent", "received"] {
        let live_title = format!("Live traffic — {direction}, by application");
        let reference_title = format!("Baseline reference — {direction}, by application");
        let (Some(live), Some(reference)) = (by_title(&live_title), by_title(&reference_title))
        else {
            findings.push(format!(
                "no \"{live_title}\" and \"{reference_title}\" pair of panels"
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
        for panel in [live, reference] {
            let who = name(panel);
            let defaults = &panel["fieldConfig"]["defaults"];
            if defaults["unit"] != "Bps" {
                findings.push(format!("{who}: unit must be Bps, is {}", defaults["unit"]));
            }
            if defaults["min"] != 0 {
                findings.push(format!("{who}: axis minimum must be 0"));
            }
            if defaults["color"]["mode"] != "palette-classic-by-name" {
                findings.push(format!(
                    "{who}: colour mode must be palette-classic-by-name (one colour per application in both graphs)"
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
        let exprs = |panel: &Value| {
            panel["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|target| target["expr"].as_str())
                .collect::<Vec<_>>()
                .join(" ")
        };
        if !exprs(live).contains(&format!("bitsecure_{direction}_bytes_total")) {
            findings.push(format!(
                "{}: must query bitsecure_{direction}_bytes_total",
                name(live)
            ));
        }
        let reference_exprs = exprs(reference);
        if !reference_exprs.contains("bitsecure_rule_reference_bytes_per_second")
            || !reference_exprs.contains(&format!(r#"direction="{direction}""#))
        {
            findings.push(format!(
                "{}: must query bitsecure_rule_reference_bytes_per_second with direction=\"{direction}\"",
                name(reference)
            ));
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
fn layout_is_flat_unique_and_non_overlapping() {
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
            "row panel",
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
    assert_eq!(
        variables(r#"rate(x{job=~"$job", a=~"b$"}[${__rate_interval}]) [[old]] ${instance:pipe}"#),
        ["job", "__rate_interval", "instance", "[[old]]"]
    );
    assert_eq!(unbalanced(r#"sum(x{a="("}"#), Some("unclosed `(`".into()));
    assert_eq!(unbalanced(r#"sum(x{a="("))"#), Some("unmatched `)`".into()));
    assert_eq!(unbalanced(r#"sum(x{a="("})"#), None);
}
