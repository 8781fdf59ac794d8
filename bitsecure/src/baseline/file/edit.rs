//! Changing a baseline file: [`append_rules`] adds rules to an existing file's text and keeps
//! everything already there byte for byte, comments included (a `toml_edit` edit, checked by
//! parsing the result); [`write_atomically`] replaces the file on disk, keeping a `.bak`.
//!
//! The atomic write itself is [`fsutil::write_atomically`]; this module only maps its errors.
//! Nothing here renders a whole file (`render`) or decides what is valid (`validate`).

use std::{collections::HashMap, path::Path};

use super::{error::BaselineError, parse, render::write_rule, validate::validate_rule};
use crate::{
    baseline::model::{Rule, RuleIdentity},
    fsutil::{self, FileKind},
};

/// Appends rules to an existing file's text, keeping everything already there byte for byte
/// (comments and layout included); the new rules go at the end. Returns an error, and no
/// text, when the existing text is not a valid baseline, when a new rule is invalid, when a new
/// rule has the identity of a rule already there (or of an earlier new one: use
/// [`Baseline::position_of`](crate::baseline::model::Baseline::position_of) to filter first),
/// and when the result would not parse back.
pub fn append_rules(
    existing_text: &str,
    origin: &str,
    rules: &[Rule],
) -> Result<String, BaselineError> {
    let existing = parse(existing_text, origin)?;
    let mut identities: HashMap<RuleIdentity, usize> = existing
        .rules
        .iter()
        .enumerate()
        .map(|(i, rule)| (rule.identity(), i + 1))
        .collect();
    for (offset, rule) in rules.iter().enumerate() {
        let index = existing.rules.len() + offset + 1;
        validate_rule(rule).map_err(|p| BaselineError::Rule {
            origin: origin.to_owned(),
            line: None,
            index,
            rule: rule.describe(),
            problem: p.problem,
        })?;
        if let Some(&existing) = identities.get(&rule.identity()) {
            return Err(BaselineError::AlreadyPresent {
                origin: origin.to_owned(),
                rule: rule.describe(),
                existing,
            });
        }
        identities.insert(rule.identity(), index);
    }
    if rules.is_empty() {
        return Ok(existing_text.to_owned());
    }

    let (bom, body) = match existing_text.strip_prefix('\u{feff}') {
        Some(body) => ("\u{feff}", body),
        None => ("", existing_text),
    };
    let edit_error = |problem: String| BaselineError::Edit {
        origin: origin.to_owned(),
        problem,
    };
    let mut document: toml_edit::DocumentMut = body
        .parse()
        .map_err(|e: toml_edit::TomlError| edit_error(e.to_string()))?;
    let mut fresh_text = String::new();
    for rule in rules {
        write_rule(&mut fresh_text, rule).map_err(|e| edit_error(e.to_string()))?;
        fresh_text.push('\n');
    }
    let fresh: toml_edit::DocumentMut = fresh_text
        .parse()
        .map_err(|e: toml_edit::TomlError| edit_error(format!("rendered rules: {e}")))?;
    let new_tables: Vec<toml_edit::Table> = fresh
        .get("rule")
        .and_then(toml_edit::Item::as_array_of_tables)
        .map(|tables| tables.iter().cloned().collect())
        .unwrap_or_default();

    // New tables go after every existing one, and after the comments at the end of the file,
    // so the existing text is an exact prefix of the result.
    let mut next_position = last_position(document.as_table()).saturating_add(1);
    let trailing = document.trailing().as_str().unwrap_or_default().to_owned();
    let separator = if trailing.is_empty() || trailing == "\n" || trailing.ends_with("\n\n") {
        ""
    } else if trailing.ends_with('\n') {
        "\n"
    } else {
        "\n\n"
    };
    let first_prefix = if trailing.is_empty() {
        "\n".to_owned()
    } else {
        format!("{trailing}{separator}")
    };
    document.set_trailing("");
    let item = document
        .entry("rule")
        .or_insert(toml_edit::Item::ArrayOfTables(
            toml_edit::ArrayOfTables::new(),
        ));
    let Some(target) = item.as_array_of_tables_mut() else {
        return Err(edit_error(
            "its rules are not written as [[rule]] tables (e.g. `rule = [...]`): rewrite them \
             as [[rule]] tables first"
                .to_owned(),
        ));
    };
    for (i, mut table) in new_tables.into_iter().enumerate() {
        table
            .decor_mut()
            .set_prefix(if i == 0 { first_prefix.as_str() } else { "\n" });
        set_positions(&mut table, &mut next_position);
        target.push(table);
    }
    let result = format!("{bom}{document}");
    parse(&result, origin).map_err(|error| BaselineError::EditInvalid {
        origin: origin.to_owned(),
        error: Box::new(error),
    })?;
    Ok(result)
}

/// Accepts a changed executable: every rule expecting `exe` with SHA-256 `old` expects `new`
/// from now on, with a comment above the new value saying when and what it replaced. See
/// [`set_rule_field`].
pub fn accept_executable(
    existing_text: &str,
    origin: &str,
    exe: &str,
    old: &str,
    new: &str,
    when: &str,
) -> Result<(String, usize), BaselineError> {
    set_rule_field(
        existing_text,
        origin,
        &[("exe", exe), ("sha256", old)],
        ("sha256", new),
        &format!("executable change accepted {when}; it was {old}"),
    )
}

/// Accepts a new payout account: every rule of `process` expecting account `old` expects
/// `new` from now on, with a comment saying when and what it replaced. See [`set_rule_field`].
pub fn accept_account(
    existing_text: &str,
    origin: &str,
    process: &str,
    old: &str,
    new: &str,
    when: &str,
) -> Result<(String, usize), BaselineError> {
    set_rule_field(
        existing_text,
        origin,
        &[("process", process), ("account", old)],
        ("account", new),
        &format!("payout account change accepted {when}; it was {old}"),
    )
}

/// Accepts a moved name: every rule for `name` with `prefixes` takes the `networks` it lacks,
/// with a comment saying when. See [`edit_rules`].
pub fn accept_prefixes(
    existing_text: &str,
    origin: &str,
    name: &str,
    networks: &[String],
    when: &str,
) -> Result<(String, usize), BaselineError> {
    edit_rules(existing_text, origin, |table| {
        if table.get("remote").and_then(toml_edit::Item::as_str) != Some(name) {
            return false;
        }
        let Some(prefixes) = table
            .get_mut("prefixes")
            .and_then(toml_edit::Item::as_array_mut)
        else {
            return false;
        };
        let missing: Vec<&String> = networks
            .iter()
            .filter(|network| !prefixes.iter().any(|known| known.as_str() == Some(network)))
            .collect();
        if missing.is_empty() {
            return false;
        }
        for network in missing {
            prefixes.push(network.as_str());
        }
        note_above(
            table,
            "prefixes",
            &format!("a move of {name} accepted {when}"),
        );
        true
    })
}

/// Turns the rules by `address` of `process` (on `port` and `protocol`, as written) into rules
/// by `name`, which its traffic was resolved from, keeping the address's `network` as the
/// name's `prefixes` (what the moved-name check compares with), with a comment saying when.
pub fn accept_upgrade(
    existing_text: &str,
    origin: &str,
    process: &str,
    (address, port, protocol): (&str, Option<u16>, &str),
    name: &str,
    network: &str,
    when: &str,
) -> Result<(String, usize), BaselineError> {
    edit_rules(existing_text, origin, |table| {
        let text = |key: &str| table.get(key).and_then(toml_edit::Item::as_str);
        let rule_port = table.get("port").and_then(toml_edit::Item::as_integer);
        if text("process") != Some(process)
            || text("remote") != Some(address)
            || text("protocol") != Some(protocol)
            || rule_port != port.map(i64::from)
        {
            return false;
        }
        table.insert("remote", toml_edit::value(name));
        note_above(
            table,
            "remote",
            &format!("by name since {when}: {address} was resolved from {name}"),
        );
        let mut networks = toml_edit::Array::new();
        networks.push(network);
        table.insert("prefixes", toml_edit::value(networks));
        true
    })
}

/// Sets `field` to a new value (with `note` as a comment above it) in every `[[rule]]` whose
/// fields have the `wanted` values. See [`edit_rules`].
fn set_rule_field(
    existing_text: &str,
    origin: &str,
    wanted: &[(&str, &str)],
    (field, value): (&str, &str),
    note: &str,
) -> Result<(String, usize), BaselineError> {
    edit_rules(existing_text, origin, |table| {
        let has = |(key, value): &(&str, &str)| {
            table.get(key).and_then(toml_edit::Item::as_str) == Some(*value)
        };
        if !wanted.iter().all(has) {
            return false;
        }
        table.insert(field, toml_edit::value(value));
        note_above(table, field, note);
        true
    })
}

/// `# note` on the line above `key` of `table`.
fn note_above(table: &mut toml_edit::Table, key: &str, note: &str) {
    if let Some(mut key) = table.key_mut(key) {
        key.leaf_decor_mut().set_prefix(format!("# {note}\n"));
    }
}

/// Applies `edit` to every `[[rule]]` table of the text (it says whether it changed the
/// table), keeping the rest byte for byte. Returns the text and how many rules changed (0: the
/// text unchanged); an error, and no text, when the existing text or the result is not a valid
/// baseline.
fn edit_rules(
    existing_text: &str,
    origin: &str,
    mut edit: impl FnMut(&mut toml_edit::Table) -> bool,
) -> Result<(String, usize), BaselineError> {
    parse(existing_text, origin)?;
    let (bom, body) = match existing_text.strip_prefix('\u{feff}') {
        Some(body) => ("\u{feff}", body),
        None => ("", existing_text),
    };
    let mut document: toml_edit::DocumentMut =
        body.parse()
            .map_err(|e: toml_edit::TomlError| BaselineError::Edit {
                origin: origin.to_owned(),
                problem: e.to_string(),
            })?;
    let mut changed = 0;
    if let Some(rules) = document
        .get_mut("rule")
        .and_then(toml_edit::Item::as_array_of_tables_mut)
    {
        for table in rules.iter_mut() {
            if edit(table) {
                changed += 1;
            }
        }
    }
    if changed == 0 {
        return Ok((existing_text.to_owned(), 0));
    }
    let result = format!("{bom}{document}");
    parse(&result, origin).map_err(|error| BaselineError::EditInvalid {
        origin: origin.to_owned(),
        error: Box::new(error),
    })?;
    Ok((result, changed))
}

/// The highest document position of any table in `table`.
fn last_position(table: &toml_edit::Table) -> isize {
    let mut last = table.position().unwrap_or(0);
    for (_, item) in table.iter() {
        match item {
            toml_edit::Item::Table(child) => last = last.max(last_position(child)),
            toml_edit::Item::ArrayOfTables(tables) => {
                for child in tables.iter() {
                    last = last.max(last_position(child));
                }
            }
            _ => {}
        }
    }
    last
}

fn set_positions(table: &mut toml_edit::Table, next: &mut isize) {
    table.set_position(*next);
    *next = next.saturating_add(1);
    for (_, item) in table.iter_mut() {
        if let toml_edit::Item::Table(child) = item {
            set_positions(child, next);
        }
    }
}

/// Replaces `path` with `text` atomically, keeping the previous version as `<path>.bak`
/// ([`fsutil::write_atomically`]); on error the previous file is intact.
pub fn write_atomically(path: &Path, text: &str) -> Result<(), BaselineError> {
    fsutil::write_atomically(path, text.as_bytes(), FileKind::Edited).map_err(|error| {
        BaselineError::Write {
            path: path.to_path_buf(),
            action: error.action,
            error: error.source,
        }
    })
}

#[cfg(test)]
mod tests {
    use std::{
        fs::{self, Permissions},
        os::unix::fs::{PermissionsExt as _, symlink},
    };

    use super::*;
    use crate::baseline::test_support::{EXISTING, TempDir, chronyd_rule};

    #[test]
    fn append_rules_keeps_the_existing_text_and_adds_the_rules() {
        let new_rules = [Rule::new("sshd", "*", Some(22), "tcp"), chronyd_rule()];
        for existing in [
            EXISTING.to_owned(),
            format!("{EXISTING}\n# Accepted by hand below.\n"),
            format!("{EXISTING}# no newline at the end"),
            format!("{EXISTING}\n\n"),
        ] {
            let result = append_rules(&existing, "rig.toml", &new_rules).expect("appended");
            assert!(result.starts_with(&existing), "{result}");
            assert!(result.contains("# The pool.\n[[rule]]\n"));
            let parsed = parse(&result, "result").expect("the result parses");
            assert_eq!(parsed.rules.len(), 3);
            assert_eq!(parsed.rules[1..], new_rules);
            assert_eq!(
                parsed.rules[0],
                parse(&existing, "existing").expect("parses").rules[0]
            );
            // No run of blank lines where the rules were added.
            assert!(!result.contains("\n\n\n\n"), "{result}");
        }

        // Into a file without rules.
        let result = append_rules("format_version = 1 # just this\n", "new.toml", &new_rules)
            .expect("appended");
        assert!(
            result.starts_with("format_version = 1 # just this\n\n[[rule]]\nprocess = \"sshd\"\n"),
            "{result}"
        );
        assert_eq!(parse(&result, "result").expect("parses").rules, new_rules);

        // Nothing to add: the text as it was.
        assert_eq!(
            append_rules(EXISTING, "rig.toml", &[]).expect("ok"),
            EXISTING
        );
    }

    #[test]
    fn an_upgraded_rule_is_by_name_with_its_address_network_and_a_comment() {
        let (text, changed) = accept_upgrade(
            EXISTING,
            "rig.toml",
            "xmrig",
            ("10.0.0.2", Some(3333), "tcp"),
            "pool.example.org",
            "10.0.0.0/24",
            "2027-01-15T08:00:00Z",
        )
        .expect("upgraded");
        assert_eq!(changed, 1);
        assert!(
            text.contains(
                "# by name since 2027-01-15T08:00:00Z: 10.0.0.2 was resolved from \
                 pool.example.org\nremote = \"pool.example.org\""
            ),
            "{text}"
        );
        assert!(text.contains("# My rig's baseline. Hand-tuned: keep this comment!"));
        assert!(text.contains("{mean=1.0,p95=2.0,  max=3.0}   # odd spacing, kept"));
        let rule = &parse(&text, "t").expect("valid").rules[0];
        assert_eq!(rule.remote, "pool.example.org");
        assert_eq!(
            rule.prefixes.as_deref(),
            Some(&["10.0.0.0/24".to_owned()][..])
        );
        assert!(rule.normal.is_some(), "what normal looked like stays");
        // Another port, protocol or process: not this rule.
        for other in [
            ("xmrig", Some(3334), "tcp"),
            ("xmrig", Some(3333), "udp"),
            ("curl", Some(3333), "tcp"),
        ] {
            let (same, changed) = accept_upgrade(
                EXISTING,
                "rig.toml",
                other.0,
                ("10.0.0.2", other.1, other.2),
                "pool.example.org",
                "10.0.0.0/24",
                "now",
            )
            .expect("no error");
            assert_eq!((same.as_str(), changed), (EXISTING, 0), "{other:?}");
        }
    }

    #[test]
    fn accepting_an_executable_updates_its_hash_and_says_so_in_the_file() {
        let (old, new) = ("a".repeat(64), "b".repeat(64));
        let text = EXISTING.replace(
            "process = \"xmrig\"\n",
            &format!("process = \"xmrig\"\nexe = \"/usr/bin/xmrig\"\nsha256 = \"{old}\"\n"),
        );
        let (edited, changed) = accept_executable(
            &text,
            "baseline.toml",
            "/usr/bin/xmrig",
            &old,
            &new,
            "2026-12-07T20:00:00Z",
        )
        .unwrap();
        assert_eq!(changed, 1);
        assert!(
            edited.contains(&format!(
                "# executable change accepted 2026-12-07T20:00:00Z; it was {old}\nsha256 = \"{new}\"\n"
            )),
            "{edited}"
        );
        // Everything else kept, comments included.
        assert_eq!(
            edited
                .replace(
                    &format!("# executable change accepted 2026-12-07T20:00:00Z; it was {old}\n"),
                    ""
                )
                .replace(&new, &old),
            text
        );
        let baseline = crate::baseline::file::parse(&edited, "edited").unwrap();
        assert_eq!(baseline.rules[0].sha256.as_deref(), Some(new.as_str()));
        // Another executable, or a hash the rule does not have: nothing changes.
        for (exe, from) in [
            ("/opt/xmrig", old.as_str()),
            ("/usr/bin/xmrig", new.as_str()),
        ] {
            let (same, changed) = accept_executable(&text, "b", exe, from, &new, "now").unwrap();
            assert_eq!((same.as_str(), changed), (text.as_str(), 0));
        }
        // A new hash that is not one is refused.
        assert!(accept_executable(&text, "b", "/usr/bin/xmrig", &old, "XYZ", "now").is_err());
    }

    #[test]
    fn append_rules_refuses_duplicates_and_invalid_input() {
        let same_identity = Rule::new("xmrig", "::ffff:10.0.0.2", Some(3333), "6");
        let error = append_rules(EXISTING, "rig.toml", &[same_identity]).expect_err("a duplicate");
        assert!(
            matches!(error, BaselineError::AlreadyPresent { existing: 1, .. }),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            "rig.toml: rule xmrig → [::ffff:10.0.0.2]:3333/6 is already in the baseline (rule 1): \
             not adding it twice"
        );

        let sshd = Rule::new("sshd", "*", Some(22), "tcp");
        let error = append_rules(EXISTING, "rig.toml", &[sshd.clone(), sshd.clone()])
            .expect_err("a duplicate among the new rules");
        assert!(
            matches!(error, BaselineError::AlreadyPresent { existing: 2, .. }),
            "{error:?}"
        );

        let invalid = Rule::new("sshd", "*", Some(22), "ssh");
        let error =
            append_rules(EXISTING, "rig.toml", &[sshd.clone(), invalid]).expect_err("invalid");
        assert!(
            matches!(&error, BaselineError::Rule { index: 3, problem, .. } if problem.starts_with("unknown protocol")),
            "{error:?}"
        );

        let error = append_rules(
            "format_version = 1\n[[rule]\n",
            "bad.toml",
            std::slice::from_ref(&sshd),
        )
        .expect_err("corrupt existing file");
        assert!(
            matches!(error, BaselineError::Toml { line: Some(2), .. }),
            "{error:?}"
        );

        let error = append_rules("format_version = 1\nrule = []\n", "inline.toml", &[sshd])
            .expect_err("inline rules");
        assert!(matches!(error, BaselineError::Edit { .. }), "{error:?}");
    }

    #[test]
    fn temporary_files_of_killed_writers_are_cleaned_up() {
        let dir = TempDir::new("abandoned");
        let path = dir.join("baseline.toml");
        // pid 0 never names a live writer; our own pid is live (and skipped).
        let abandoned = dir.join(".baseline.toml.0.7.tmp");
        let ours = dir.join(&format!(".baseline.toml.{}.999.tmp", std::process::id()));
        let unrelated = dir.join(".other.toml.0.1.tmp");
        for file in [&abandoned, &ours, &unrelated] {
            fs::write(file, "half").expect("write");
        }
        write_atomically(&path, "whole\n").expect("write");
        assert!(!abandoned.exists(), "the dead writer's file is removed");
        assert!(ours.exists() && unrelated.exists(), "others are left alone");
    }

    #[test]
    fn write_atomically_keeps_a_backup_and_leaves_no_temporary_file() {
        let dir = TempDir::new("write");
        let path = dir.join("baseline.toml");
        write_atomically(&path, "first\n").expect("first write");
        assert_eq!(fs::read_to_string(&path).expect("read"), "first\n");
        assert_eq!(dir.names(), ["baseline.toml"]);

        fs::set_permissions(&path, Permissions::from_mode(0o640)).expect("chmod");
        write_atomically(&path, "second\n").expect("second write");
        assert_eq!(fs::read_to_string(&path).expect("read"), "second\n");
        assert_eq!(
            fs::read_to_string(dir.join("baseline.toml.bak")).expect("read"),
            "first\n"
        );
        assert_eq!(dir.names(), ["baseline.toml", "baseline.toml.bak"]);
        let mode = fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);

        write_atomically(&path, "third\n").expect("third write");
        assert_eq!(fs::read_to_string(&path).expect("read"), "third\n");
        assert_eq!(
            fs::read_to_string(dir.join("baseline.toml.bak")).expect("read"),
            "second\n"
        );
        assert_eq!(dir.names(), ["baseline.toml", "baseline.toml.bak"]);
    }

    #[test]
    fn write_atomically_follows_a_symbolic_link() {
        let dir = TempDir::new("symlink");
        let real = dir.join("real.toml");
        let link = dir.join("link.toml");
        fs::write(&real, "old\n").expect("write");
        symlink(&real, &link).expect("symlink");
        write_atomically(&link, "new\n").expect("write through the link");
        assert!(
            fs::symlink_metadata(&link)
                .expect("lstat")
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read_to_string(&real).expect("read"), "new\n");
        assert_eq!(
            fs::read_to_string(dir.join("real.toml.bak")).expect("read"),
            "old\n"
        );
        assert_eq!(dir.names(), ["link.toml", "real.toml", "real.toml.bak"]);
    }

    #[test]
    fn a_failing_write_leaves_the_old_file_intact() {
        // The target is a directory.
        let dir = TempDir::new("fail-dir");
        let target = dir.join("baseline.toml");
        fs::create_dir(&target).expect("mkdir");
        let error = write_atomically(&target, "new\n").expect_err("a directory");
        assert!(matches!(error, BaselineError::Write { .. }), "{error:?}");
        assert!(
            error.to_string().contains("baseline.toml: cannot write it"),
            "{error}"
        );
        assert!(target.is_dir());
        assert_eq!(dir.names(), ["baseline.toml"]);

        // The backup cannot be written (its name is taken by a directory).
        let dir = TempDir::new("fail-backup");
        let path = dir.join("baseline.toml");
        fs::write(&path, "old\n").expect("write");
        fs::create_dir(dir.join("baseline.toml.bak")).expect("mkdir");
        let error = write_atomically(&path, "new\n").expect_err("no backup possible");
        assert!(error.to_string().contains("keep a backup"), "{error}");
        assert_eq!(fs::read_to_string(&path).expect("read"), "old\n");
        assert_eq!(dir.names(), ["baseline.toml", "baseline.toml.bak"]);

        // The directory does not exist.
        let dir = TempDir::new("fail-missing");
        let error = write_atomically(&dir.join("nowhere/baseline.toml"), "new\n")
            .expect_err("no directory");
        assert!(
            error.to_string().contains("create a temporary file"),
            "{error}"
        );
        assert!(dir.names().is_empty());
    }
}
