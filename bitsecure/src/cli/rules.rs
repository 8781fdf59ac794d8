//! `bitsecure rules`: the bundled Prometheus rules (`prometheus/bitsecure.rules.yml`, built
//! into the binary), made to fit a Prometheus whose scrape job has another name and whose
//! runbook lives elsewhere. The bundled file is the default output, byte for byte.

use anyhow::bail;

/// The rules as shipped.
pub const BUNDLED: &str = include_str!("../../../prometheus/bitsecure.rules.yml");

/// The scrape job the bundled rules select (`up{job="bitsecure"}`).
pub const DEFAULT_JOB: &str = "bitsecure";

/// Where the bundled rules' `runbook_url`s point (the project's `docs/runbook.md`).
pub const DEFAULT_RUNBOOK: &str = "https://example.invalid/bitsecure/blob/main/docs/runbook.md";

/// The rules with `job` as the scrape job and `runbook` as the runbook's address (each alert
/// appends `#its-name`).
pub fn render(job: &str, runbook: &str) -> anyhow::Result<String> {
    if job.is_empty() || job.contains(['"', '\\', '\n']) {
        bail!("--job {job:?}: give the job_name of your scrape config (no quotes or backslashes)");
    }
    let scheme_ok = ["http://", "https://", "file:/"]
        .iter()
        .any(|scheme| runbook.starts_with(scheme));
    if !scheme_ok || runbook.contains(['"', '#', ' ', '\n', '\\']) {
        bail!(
            "--runbook-base {runbook:?}: give an http(s):// or file:/ address of the runbook \
             without a #fragment (each alert adds its own)"
        );
    }
    let selector = |job: &str| format!("job=\"{job}\"");
    Ok(BUNDLED
        .replace(&selector(DEFAULT_JOB), &selector(job))
        .replace(
            &format!("runbook_url: \"{DEFAULT_RUNBOOK}#"),
            &format!("runbook_url: \"{runbook}#"),
        ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_give_the_bundled_file() {
        assert_eq!(render(DEFAULT_JOB, DEFAULT_RUNBOOK).unwrap(), BUNDLED);
    }

    #[test]
    fn job_and_runbook_are_replaced_everywhere() {
        let rules = render("rigs", "https://wiki.example/bitsecure").unwrap();
        assert!(!rules.contains("job=\"bitsecure\""));
        assert!(rules.contains("up{job=\"rigs\"}"));
        let alerts = rules.matches("- alert:").count();
        let runbooks = rules
            .matches("runbook_url: \"https://wiki.example/bitsecure#bitsecure")
            .count();
        assert!(alerts > 20);
        assert_eq!(runbooks, alerts, "every alert links the runbook");
    }

    #[test]
    fn bad_values_are_refused_with_what_to_give() {
        for (job, runbook) in [
            ("", DEFAULT_RUNBOOK),
            ("a\"b", DEFAULT_RUNBOOK),
            ("rigs", "wiki/runbook"),
            ("rigs", "https://wiki.example/runbook#x"),
        ] {
            let error = render(job, runbook).unwrap_err().to_string();
            assert!(
                error.contains("--job") || error.contains("--runbook-base"),
                "{error}"
            );
        }
    }
}
