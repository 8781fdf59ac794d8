//! The running kernel: its release against [`MINIMUM_KERNEL`], the build options BPF needs
//! (from `/proc/config.gz` or `/boot/config-<release>`), and BTF. Reads those files and runs
//! `gzip -dc`; loads nothing into the kernel.

use std::path::Path;

use super::Check;
use crate::kernel::programs::MINIMUM_KERNEL;

/// `(major, minor, patch)` of a kernel release such as `5.4.0-150-generic` or `6.18.44-fc`.
pub fn parse_kernel_release(release: &str) -> Option<(u32, u32, u32)> {
    fn leading_number(text: &str) -> Option<u32> {
        let end = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        text[..end].parse().ok()
    }
    let mut parts = release.trim().splitn(3, '.');
    let major = parts.next()?.parse().ok()?;
    let minor = leading_number(parts.next()?)?;
    let patch = parts.next().and_then(leading_number).unwrap_or(0);
    Some((major, minor, patch))
}

/// The running kernel against [`MINIMUM_KERNEL`].
pub fn check_kernel(release: &str) -> Check {
    let (major, minor) = MINIMUM_KERNEL;
    let Some((found_major, found_minor, _)) = parse_kernel_release(release) else {
        return Check::warn(
            "kernel",
            format!("cannot read a version from the kernel release {release:?}"),
            format!("make sure the kernel is Linux {major}.{minor} or newer (`uname -r`)"),
        );
    };
    if (found_major, found_minor) >= MINIMUM_KERNEL {
        Check::ok(
            "kernel",
            format!(
                "Linux {} (BitSecure needs {major}.{minor} or newer)",
                release.trim()
            ),
        )
    } else {
        Check::fail(
            "kernel",
            format!(
                "Linux {} is too old: BitSecure needs {major}.{minor} or newer \
                 (cgroup/sock_release, batched map reads)",
                release.trim()
            ),
            format!(
                "install a Linux {major}.{minor}+ kernel (e.g. the distribution's backports or \
                 HWE kernel) and reboot into it"
            ),
        )
    }
}

/// Kernel build options the agent depends on: (option, what it gives, required).
const KERNEL_OPTIONS: [(&str, &str, bool); 3] = [
    ("CONFIG_BPF_SYSCALL", "the bpf() system call", true),
    (
        "CONFIG_CGROUP_BPF",
        "eBPF programs attached to cgroups",
        true,
    ),
    (
        "CONFIG_BPF_JIT",
        "compiled eBPF (else interpreted: slower on every packet)",
        false,
    ),
];

/// The value of `option` in a kernel config text (`y`, `m`, a string...), `None` when it is
/// absent or `# ... is not set`.
pub fn kernel_config_value<'a>(text: &'a str, option: &str) -> Option<&'a str> {
    text.lines().find_map(|line| {
        line.trim()
            .strip_prefix(option)?
            .strip_prefix('=')
            .map(|value| value.trim_matches('"'))
    })
}

/// The kernel build options, from the kernel config read from `source` (`Ok((path, text))`),
/// or a warning when none could be read (`Err(why)`).
pub fn check_kernel_config(found: &Result<(String, String), String>) -> Vec<Check> {
    const TOPIC: &str = "kernel config";
    let (source, text) = match found {
        Ok(found) => found,
        Err(why) => {
            return vec![Check::warn(
                TOPIC,
                format!(
                    "{why}: cannot confirm {}",
                    KERNEL_OPTIONS.map(|(option, ..)| option).join(", ")
                ),
                "`modprobe configs` provides /proc/config.gz on most kernels (the agent's own \
                 start will tell if BPF is missing)",
            )];
        }
    };
    KERNEL_OPTIONS
        .iter()
        .map(
            |&(option, what, required)| match kernel_config_value(text, option) {
                Some(value @ ("y" | "m")) => {
                    Check::ok(TOPIC, format!("{option}={value} ({what}; from {source})"))
                }
                other => {
                    let found = match other {
                        Some(value) => format!("{option}={value}"),
                        None => format!("{option} is not set"),
                    };
                    let message = format!("{found} in {source}: no {what}");
                    let fix = format!("boot a kernel built with {option}=y");
                    if required {
                        Check::fail(TOPIC, message, fix)
                    } else {
                        Check::warn(TOPIC, message, fix)
                    }
                }
            },
        )
        .collect()
}

/// BTF of the running kernel (`/sys/kernel/btf/vmlinux`): only nice to have.
pub fn check_btf(present: bool) -> Check {
    if present {
        Check::ok("btf", "/sys/kernel/btf/vmlinux present")
    } else {
        Check::warn(
            "btf",
            "/sys/kernel/btf/vmlinux is missing: the agent does not need it (no CO-RE), but \
             tools such as `bpftool` show less without it",
            "nothing to do for BitSecure; a kernel built with CONFIG_DEBUG_INFO_BTF=y provides it",
        )
    }
}

/// The running kernel's build config: `/proc/config.gz` (decompressed by `gzip`), else
/// `/boot/config-<release>`.
pub(super) fn read_kernel_config(release: &str) -> Result<(String, String), String> {
    const PROC_CONFIG: &str = "/proc/config.gz";
    let boot_config = format!("/boot/config-{release}");
    if Path::new(PROC_CONFIG).exists() {
        let output = std::process::Command::new("gzip")
            .args(["-dc", PROC_CONFIG])
            .output();
        if let Ok(output) = output
            && output.status.success()
        {
            return Ok((
                PROC_CONFIG.to_owned(),
                String::from_utf8_lossy(&output.stdout).into_owned(),
            ));
        }
    }
    match std::fs::read_to_string(&boot_config) {
        Ok(text) => Ok((boot_config, text)),
        Err(_) if Path::new(PROC_CONFIG).exists() => Err(format!(
            "cannot decompress {PROC_CONFIG} (is gzip installed?) and {boot_config} is not readable"
        )),
        Err(_) => Err(format!(
            "neither {PROC_CONFIG} nor {boot_config} is readable"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::check::testing::{Status, assert_status, fix};

    #[test]
    fn kernel_release_parses() {
        assert_eq!(parse_kernel_release("5.4.0-150-generic"), Some((5, 4, 0)));
        assert_eq!(parse_kernel_release("6.18.44-fc-v669"), Some((6, 18, 44)));
        assert_eq!(parse_kernel_release("5.10-rc1\n"), Some((5, 10, 0)));
        assert_eq!(parse_kernel_release("6.1.0+"), Some((6, 1, 0)));
        assert_eq!(parse_kernel_release("garbage"), None);
        assert_eq!(parse_kernel_release(""), None);
    }

    #[test]
    fn old_kernel_fails_with_the_fix() {
        let check = check_kernel("5.4.0-150-generic");
        assert_status(&check, Status::Fail);
        assert!(check.message.contains("5.4.0-150-generic"), "{check}");
        assert!(check.message.contains("5.10 or newer"), "{check}");
        assert!(fix(&check).contains("5.10+ kernel"), "{check}");
    }

    #[test]
    fn supported_kernels_pass() {
        for release in ["5.10.0-28-amd64", "5.15.0-91-generic", "6.18.44-fc-v669"] {
            assert_status(&check_kernel(release), Status::Ok);
        }
        assert_status(&check_kernel("5.9.16"), Status::Fail);
        assert_status(&check_kernel("4.19.0-26-amd64"), Status::Fail);
        assert_status(&check_kernel("weird"), Status::Warn);
    }

    const GOOD_KERNEL_CONFIG: &str = "\
# Automatically generated file; DO NOT EDIT.
CONFIG_BPF=y
CONFIG_BPF_SYSCALL=y
CONFIG_BPF_JIT=y
CONFIG_BPF_JIT_ALWAYS_ON=y
CONFIG_CGROUP_BPF=y
";

    #[test]
    fn kernel_config_with_bpf_passes() {
        let checks =
            check_kernel_config(&Ok(("/proc/config.gz".into(), GOOD_KERNEL_CONFIG.into())));
        assert_eq!(checks.len(), 3);
        for check in &checks {
            assert_status(check, Status::Ok);
            assert!(check.message.contains("/proc/config.gz"), "{check}");
        }
        assert!(checks[0].message.starts_with("CONFIG_BPF_SYSCALL=y"));
    }

    #[test]
    fn kernel_config_without_bpf_fails_and_without_jit_warns() {
        let text = "CONFIG_BPF=y\n# CONFIG_BPF_SYSCALL is not set\n# CONFIG_BPF_JIT is not set\n";
        let checks = check_kernel_config(&Ok(("/boot/config-5.10.0".into(), text.into())));
        let statuses: Vec<Status> = checks.iter().map(|check| check.status).collect();
        assert_eq!(statuses, [Status::Fail, Status::Fail, Status::Warn]);
        assert!(checks[0].message.contains("CONFIG_BPF_SYSCALL is not set"));
        assert_eq!(
            fix(&checks[0]),
            "boot a kernel built with CONFIG_BPF_SYSCALL=y"
        );
        assert!(checks[1].message.contains("CONFIG_CGROUP_BPF is not set"));
        assert!(fix(&checks[2]).contains("CONFIG_BPF_JIT=y"));
    }

    #[test]
    fn kernel_config_prefix_of_another_option_is_not_taken_for_it() {
        // CONFIG_BPF_JIT_ALWAYS_ON must not count as CONFIG_BPF_JIT.
        assert_eq!(
            kernel_config_value("CONFIG_BPF_JIT_ALWAYS_ON=y\n", "CONFIG_BPF_JIT"),
            None
        );
        assert_eq!(
            kernel_config_value("CONFIG_LOCALVERSION=\"-fc\"\n", "CONFIG_LOCALVERSION"),
            Some("-fc")
        );
    }

    #[test]
    fn unreadable_kernel_config_only_warns() {
        let checks = check_kernel_config(&Err("neither a nor b is readable".into()));
        assert_eq!(checks.len(), 1);
        assert_status(&checks[0], Status::Warn);
        assert!(
            checks[0].message.contains("CONFIG_CGROUP_BPF"),
            "{}",
            checks[0]
        );
        assert!(fix(&checks[0]).contains("modprobe configs"));
    }

    #[test]
    fn missing_btf_only_warns() {
        assert_status(&check_btf(true), Status::Ok);
        let check = check_btf(false);
        assert_status(&check, Status::Warn);
        assert!(check.message.contains("does not need it"), "{check}");
    }
}
