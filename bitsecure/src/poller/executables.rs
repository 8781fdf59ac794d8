//! What a process runs: the SHA-256 of its executable's content, read through
//! `/proc/PID/exe` (the file the process was started from, even if its path has since been
//! replaced or deleted), cached per file version so each binary is hashed once.
//!
//! A hash is the part of a process's identity that a path cannot fake: a miner binary patched
//! to pay another wallet keeps its name, path and unit, not its hash.

use std::{
    collections::HashMap, fs::File, io::Read as _, os::unix::fs::MetadataExt as _, path::Path,
};

use sha2::{Digest as _, Sha256};

/// Of larger executables only this much is hashed (reading more would stall the poll: SHA-256
/// runs at ~0.5-2 GB/s), so their "hash" is that of their first 256 MiB, not `sha256sum`'s.
/// Far above any miner or agent binary; and a hash there is always, so padding a patched
/// binary past the limit does not make it unknown (its headers and code are in that part).
const MAX_HASHED_BYTES: u64 = 256 << 20;
/// File versions remembered; the cache starts over when it is full.
const MAX_CACHED: usize = 4096;

/// One version of one file: a rewrite in place changes its size, mtime or ctime; a replacement
/// its inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FileVersion {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

/// SHA-256 of executables, by file version.
#[derive(Debug, Default)]
pub struct ExecutableHashes {
    hashes: HashMap<FileVersion, String>,
}

impl ExecutableHashes {
    /// The SHA-256 (lowercase hex) of the executable of `pid`, read below `proc_root` (of its
    /// first [`MAX_HASHED_BYTES`] for a larger one); `None` when it cannot be read (the
    /// process is gone).
    pub fn of_process(&mut self, proc_root: &Path, pid: u32) -> Option<String> {
        let mut file = File::open(proc_root.join(pid.to_string()).join("exe")).ok()?;
        let metadata = file.metadata().ok()?;
        let version = FileVersion {
            dev: metadata.dev(),
            ino: metadata.ino(),
            size: metadata.size(),
            mtime_ns: i128::from(metadata.mtime()) * 1_000_000_000
                + i128::from(metadata.mtime_nsec()),
            ctime_ns: i128::from(metadata.ctime()) * 1_000_000_000
                + i128::from(metadata.ctime_nsec()),
        };
        if let Some(hash) = self.hashes.get(&version) {
            return Some(hash.clone());
        }
        let hash = sha256_hex(&mut file)?;
        if self.hashes.len() >= MAX_CACHED {
            self.hashes.clear();
        }
        self.hashes.insert(version, hash.clone());
        Some(hash)
    }
}

/// SHA-256 of what `reader` yields, up to [`MAX_HASHED_BYTES`], lowercase hex; `None` if
/// reading fails.
pub fn sha256_hex(reader: &mut impl std::io::Read) -> Option<String> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; 256 * 1024];
    let mut limited = reader.take(MAX_HASHED_BYTES);
    loop {
        let read = limited.read(&mut buffer).ok()?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Some(
        hasher
            .finalize()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_match_the_standard_vectors() {
        assert_eq!(
            sha256_hex(&mut &b""[..]).as_deref(),
            Some("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        );
        assert_eq!(
            sha256_hex(&mut &b"abc"[..]).as_deref(),
            Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
    }

    #[test]
    fn hashes_its_own_executable_like_the_file_on_disk() {
        let mut hashes = ExecutableHashes::default();
        let own = hashes
            .of_process(Path::new("/proc"), std::process::id())
            .expect("own executable readable");
        let on_disk = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(Some(own.clone()), sha256_hex(&mut on_disk.as_slice()));
        // Cached: the same answer without reading again.
        assert_eq!(hashes.hashes.len(), 1);
        assert_eq!(
            hashes.of_process(Path::new("/proc"), std::process::id()),
            Some(own)
        );
        assert_eq!(hashes.of_process(Path::new("/proc"), u32::MAX), None);
    }

    #[test]
    fn a_file_past_the_limit_is_hashed_by_its_first_part() {
        // Padding past the limit keeps a hash (a patched binary cannot make itself unknown
        // by growing), and it is the hash of the part read.
        let big = std::io::repeat(7).take(MAX_HASHED_BYTES + 4096);
        let head = std::io::repeat(7).take(MAX_HASHED_BYTES);
        assert_eq!(sha256_hex(&mut { big }), sha256_hex(&mut { head }));
        assert!(sha256_hex(&mut std::io::repeat(7).take(MAX_HASHED_BYTES + 1)).is_some());
    }
}
