//! The config check: does the config load? Every other check reads it, so [`super::gather`]
//! stops here when it does not. Reports what [`Config::load`] said; reads nothing itself.

use super::Check;
use crate::config::Config;

/// The config loaded from `origin` (a description of where it came from), or why not.
pub fn check_config(origin: &str, loaded: &Result<Config, crate::config::ConfigError>) -> Check {
    match loaded {
        Ok(_) => Check::ok("config", format!("{origin}: valid")),
        Err(error) => Check::fail(
            "config",
            format!("{origin}: {error}"),
            "correct the file (`bitsecure config --default` prints every key with its meaning); \
             no other check runs without a valid config",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::check::testing::{Status, assert_status, fix};

    #[test]
    fn config_errors_fail_with_the_line() {
        let loaded = Config::parse("[agent]\nlisten = 3\n", "x.toml");
        let check = check_config("x.toml (--config)", &loaded);
        assert_status(&check, Status::Fail);
        assert!(check.message.contains("line 2"), "{check}");
        assert!(
            fix(&check).contains("bitsecure config --default"),
            "{check}"
        );
        let check = check_config("embedded default", &Config::parse("", "e"));
        assert_status(&check, Status::Ok);
        assert!(check.message.contains("embedded default"), "{check}");
    }
}
