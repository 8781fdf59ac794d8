//! The baseline check: is the file at `baseline.path` valid, or, when absent, can the agent
//! write the one it learns? Loads the file read-only; never writes, moves or creates the file
//! or its directories.

use std::{
    io,
    path::{Path, PathBuf},
};

use super::Check;
use crate::baseline::file::{self, BaselineError};

/// What is at `baseline.path`.
#[derive(Debug)]
pub enum BaselineState {
    /// A valid baseline.
    Valid { rules: usize },
    /// A file that does not load (unreadable, corrupt, invalid).
    Invalid(BaselineError),
    /// No file: the agent learns one and writes it, creating missing directories.
    Absent {
        /// The nearest existing directory on the way to the file.
        directory: PathBuf,
        /// The agent (this user) can write there.
        writable: bool,
    },
}

/// Looks at `path`: loads it, or finds where a learned baseline would be written.
pub fn inspect_baseline(path: &Path) -> BaselineState {
    match std::fs::symlink_metadata(path) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            let mut directory = path.parent().unwrap_or(Path::new("/"));
            while !directory.exists() {
                match directory.parent() {
                    Some(parent) => directory = parent,
                    None => break,
                }
            }
            BaselineState::Absent {
                directory: directory.to_owned(),
                writable: is_writable(directory),
            }
        }
        _ => match file::load(path) {
            Ok(baseline) => BaselineState::Valid {
                rules: baseline.rules.len(),
            },
            Err(error) => BaselineState::Invalid(error),
        },
    }
}

fn is_writable(directory: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(path) = std::ffi::CString::new(directory.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `path` is a valid NUL-terminated string that outlives the call.
    unsafe { libc::access(path.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

/// `baseline.path`: valid, absent (learned on first start), or a problem.
pub fn check_baseline(path: &Path, learn_seconds: f64, state: &BaselineState) -> Check {
    let shown = path.display();
    match state {
        BaselineState::Valid { rules } => {
            Check::ok("baseline", format!("{shown}: valid, {rules} rules"))
        }
        BaselineState::Invalid(error) => Check::fail(
            "baseline",
            error.to_string(),
            format!(
                "correct the file where named (`bitsecure baseline show --file {shown}` checks \
                 it), or move it away to learn a new baseline"
            ),
        ),
        BaselineState::Absent { .. } if learn_seconds <= 0.0 => Check::warn(
            "baseline",
            format!(
                "{shown} is absent and baseline.learn_seconds = 0: traffic will be counted but \
                 not compared with a baseline"
            ),
            "`bitsecure baseline record --duration 30m`, or set baseline.learn_seconds \
             (e.g. 1800) to learn on the first start",
        ),
        BaselineState::Absent {
            directory,
            writable: true,
        } => Check::ok(
            "baseline",
            format!(
                "{shown} is absent: will learn for {learn_seconds:.0} s on first start, then write \
                 it{}",
                match path.parent() {
                    Some(parent) if parent != directory => {
                        format!(" (it creates {} first)", parent.display())
                    }
                    _ => String::new(),
                }
            ),
        ),
        BaselineState::Absent {
            directory,
            writable: false,
        } => Check::fail(
            "baseline",
            format!(
                "{shown} is absent and {} is not writable: the learned baseline could not be saved",
                directory.display()
            ),
            format!(
                "as root: `install -d -o <the agent's user> {}` (creates the directory or hands \
                 it over), or set baseline.path to a writable place",
                path.parent().unwrap_or(directory).display()
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::check::testing::{Status, assert_status, fix};

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("bitsecure-check-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn valid_baseline_passes() {
        let dir = scratch("valid");
        let path = dir.join("baseline.toml");
        std::fs::write(
            &path,
            "format_version = 1\n[[rule]]\nprocess = \"xmrig\"\nremote = \"10.0.0.2\"\nport = 3333\nprotocol = \"tcp\"\n",
        )
        .unwrap();
        let check = check_baseline(&path, 1800.0, &inspect_baseline(&path));
        assert_status(&check, Status::Ok);
        assert!(check.message.contains("1 rules"), "{check}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn baseline_with_a_syntax_error_fails_naming_the_line() {
        let dir = scratch("broken");
        let path = dir.join("baseline.toml");
        std::fs::write(
            &path,
            "format_version = 1\n[[rule]]\nprocess = \"xmrig\nremote = \"10.0.0.2\"\n",
        )
        .unwrap();
        let check = check_baseline(&path, 1800.0, &inspect_baseline(&path));
        assert_status(&check, Status::Fail);
        assert!(check.message.contains("line 3"), "{check}");
        assert!(check.message.contains("baseline.toml"), "{check}");
        assert!(
            fix(&check).contains("bitsecure baseline show --file"),
            "{check}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn absent_baseline_is_learned() {
        let dir = scratch("absent");
        let path = dir.join("baseline.toml");
        let state = inspect_baseline(&path);
        let check = check_baseline(&path, 1800.0, &state);
        assert_status(&check, Status::Ok);
        assert!(
            check
                .message
                .contains("will learn for 1800 s on first start"),
            "{check}"
        );
        // Missing directories are created by the agent: the nearest existing one counts.
        let deeper = dir.join("a/b/baseline.toml");
        let BaselineState::Absent { directory, .. } = inspect_baseline(&deeper) else {
            panic!("not absent");
        };
        assert_eq!(directory, dir);
        // Learning off: counted but not compared.
        let check = check_baseline(&path, 0.0, &state);
        assert_status(&check, Status::Warn);
        assert!(fix(&check).contains("baseline record"), "{check}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn absent_baseline_in_a_read_only_place_fails() {
        let path = Path::new("/var/lib/bitsecure/baseline.toml");
        let state = BaselineState::Absent {
            directory: PathBuf::from("/var/lib"),
            writable: false,
        };
        let check = check_baseline(path, 1800.0, &state);
        assert_status(&check, Status::Fail);
        assert!(
            check.message.contains("/var/lib is not writable"),
            "{check}"
        );
        assert!(fix(&check).contains("baseline.path"), "{check}");
        assert!(
            fix(&check).contains("install -d -o <the agent's user> /var/lib/bitsecure"),
            "{check}"
        );
    }
}
