//! The JSON API of the review commands: what `/api/unexpected` and `/api/baseline` answer.
//! The types are the wire format (`bitsecure unexpected` and `baseline accept` read them back
//! with [`crate::cli::client`]); the baseline service produces the content.

use std::sync::Mutex;

use serde::Serialize;

use crate::baseline::{
    dns_watch::{NewName, Tunnel},
    monitor::{ChangedExecutable, MovedName, Unexpected, Upgrade},
    settle::Maturity,
};

/// What `/api/baseline` shows.
#[derive(Debug, Default, Clone, Serialize, serde::Deserialize)]
pub struct BaselineView {
    /// "learning", "monitoring" or "off".
    pub mode: String,
    pub unexpected: Vec<Unexpected>,
    /// Processes a rule expects, running an executable whose hash is not the rule's.
    #[serde(default)]
    pub changed_executables: Vec<ChangedExecutable>,
    /// Names processes asked for that their DNS rule does not list.
    #[serde(default)]
    pub new_names: Vec<NewName>,
    /// Processes asking for many distinct names under one domain (DNS tunnels).
    #[serde(default)]
    pub dns_tunnels: Vec<Tunnel>,
    /// Names rules expect, seen at addresses outside the networks they had while learning.
    #[serde(default)]
    pub moved_names: Vec<MovedName>,
    /// While monitoring: settling or stable, with the evidence.
    #[serde(default)]
    pub maturity: Option<Maturity>,
    /// While learning: seconds left.
    #[serde(default)]
    pub learning_remaining_seconds: Option<f64>,
    /// Rules by address whose traffic was resolved from a name (`baseline accept --upgrade`).
    #[serde(default)]
    pub upgrades: Vec<Upgrade>,
    /// How much each rule is used: hits, last seen, stale.
    #[serde(default)]
    pub rules: Vec<RuleUse>,
}

/// How much one rule of the baseline in force is used.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct RuleUse {
    /// The rule as `process → remote:port/protocol (app)`.
    pub rule: String,
    /// Flow observations it matched since monitoring started.
    pub hits: u64,
    /// RFC 3339, UTC; `None` when not seen since monitoring started.
    pub last_seen: Option<String>,
    /// Not seen for `baseline.stale_seconds`.
    pub stale: bool,
}

/// The latest view, replaced after every poll and read by the HTTP server.
#[derive(Debug, Default)]
pub struct Api {
    view: Mutex<BaselineView>,
}

impl Api {
    pub fn set_view(&self, view: BaselineView) {
        if let Ok(mut shared) = self.view.lock() {
            *shared = view;
        }
    }

    pub fn view(&self) -> BaselineView {
        self.view
            .lock()
            .map(|view| view.clone())
            .unwrap_or_default()
    }

    /// The JSON body of an API path, or `None` when `path` is not one.
    pub fn body(&self, path: &str) -> Option<serde_json::Result<String>> {
        // Clone under the lock, serialise outside it: the poller updates the view.
        let snapshot = match path {
            "/api/unexpected" | "/api/baseline" => self.view(),
            _ => return None,
        };
        let body = if path == "/api/unexpected" {
            serde_json::to_string_pretty(&snapshot.unexpected)
        } else {
            serde_json::to_string_pretty(&snapshot)
        };
        Some(body.map(|body| body + "\n"))
    }
}
