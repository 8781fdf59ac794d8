//! The naming metrics: payload events from the kernel, DNS answers, the address -> name map.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use super::register;
use crate::naming::EventCounts;

/// Names and applications: the kernel's payload events and the address -> name map.
pub struct NamingMetrics {
    pub kernel_events: IntCounterVec,
    pub kernel_events_dropped: IntCounter,
    pub dns_responses: IntCounterVec,
    pub names: IntGauge,
    pub names_limit: IntGauge,
}

impl NamingMetrics {
    pub(super) fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            kernel_events: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "bitsecure_kernel_events_total",
                        "Payload events read from the kernel: kind=\"dns\" (a DNS answer from port 53), \"dns_query\" (a DNS query to port 53) or \"payload\" (the first payload of a flow).",
                    ),
                    &["kind"],
                )?,
            )?,
            kernel_events_dropped: register(
                registry,
                IntCounter::new(
                    "bitsecure_kernel_events_dropped_total",
                    "Payload events the kernel dropped because its ring buffer was full (names.ring_buffer_bytes): some names or applications were not learnt.",
                )?,
            )?,
            dns_responses: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "bitsecure_dns_responses_total",
                        "DNS answers received from port 53, by result: ok (answers a query this socket sent that server; its addresses named for the asker), unsolicited (no such query: ignored) or unparsable.",
                    ),
                    &["result"],
                )?,
            )?,
            names: register(
                registry,
                IntGauge::new(
                    "bitsecure_names",
                    "Addresses in the address -> name map (learnt from DNS answers, TLS SNI and HTTP Host).",
                )?,
            )?,
            names_limit: register(
                registry,
                IntGauge::new(
                    "bitsecure_names_limit",
                    "Cap on the address -> name map (names.max_entries); beyond it the soonest-expiring entries go.",
                )?,
            )?,
        };
        for kind in ["dns", "dns_query", "payload"] {
            metrics.kernel_events.with_label_values(&[kind]);
        }
        for result in ["ok", "unsolicited", "unparsable"] {
            metrics.dns_responses.with_label_values(&[result]);
        }
        Ok(metrics)
    }

    /// Payload events read from the kernel (during a poll or between polls).
    pub fn record_events(&self, counts: &EventCounts) {
        let EventCounts {
            dns,
            payload,
            dns_ok,
            dns_unparsable,
            dns_unsolicited,
            dns_queries,
        } = *counts;
        self.kernel_events.with_label_values(&["dns"]).inc_by(dns);
        self.kernel_events
            .with_label_values(&["dns_query"])
            .inc_by(dns_queries);
        self.dns_responses
            .with_label_values(&["unsolicited"])
            .inc_by(dns_unsolicited);
        self.kernel_events
            .with_label_values(&["payload"])
            .inc_by(payload);
        self.dns_responses.with_label_values(&["ok"]).inc_by(dns_ok);
        self.dns_responses
            .with_label_values(&["unparsable"])
            .inc_by(dns_unparsable);
    }

    /// Events the kernel dropped: part of the poller's kernel statistics.
    pub(super) fn record_dropped(&self, dropped: u64) {
        self.kernel_events_dropped.inc_by(dropped);
    }
}
