//! The mount table: a `/proc/mounts` text as the list of its mounts. The cgroup v2 hierarchy is
//! found in it ([`super::cgroup`]), and `bitsecure check` looks up the filesystem of the pin
//! path in it. Parses text only; reads no file.

use std::path::PathBuf;

/// One line of `/proc/mounts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub target: PathBuf,
    pub fstype: String,
}

/// The mounts of a `/proc/mounts` text, in mount order.
pub fn parse_mounts(mounts: &str) -> Vec<Mount> {
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_source, target, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            Some(Mount {
                // /proc/mounts escapes spaces in paths as \040.
                target: PathBuf::from(target.replace("\\040", " ")),
                fstype: fstype.to_owned(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_keep_their_order_type_and_unescaped_target() {
        let mounts =
            parse_mounts("sysfs /sys sysfs rw 0 0\nnone /mnt/my\\040pins bpf rw 0 0\nshort line\n");
        let found: Vec<(&str, &str)> = mounts
            .iter()
            .map(|mount| (mount.target.to_str().unwrap(), mount.fstype.as_str()))
            .collect();
        assert_eq!(found, [("/sys", "sysfs"), ("/mnt/my pins", "bpf")]);
    }
}
