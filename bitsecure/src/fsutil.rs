//! The two ways the agent touches files of its own: one atomic writer and one bounded reader.
//! Nothing else lives here.
//!
//! The writer is for files whose loss would hurt (the baseline, the agent state): a crash or a
//! `kill -9` at any moment leaves the old or the new version, never half of one, and no
//! temporary file piles up. The reader is for files a person may point the agent at by
//! mistake (`/dev/zero`, a 2 GB log): it never reads more than a limit.

use std::{
    ffi::{OsStr, OsString},
    fs::{self, File, OpenOptions, Permissions},
    io::{self, Read as _, Write as _},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

/// Whose file [`write_atomically`] replaces, which decides how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A file a person edits (the baseline): its previous version is kept as `<file>.bak`, so a
    /// bad edit can be undone, and a symbolic link to it is followed (the link stays, its
    /// target is replaced).
    Edited,
    /// A file only the agent writes (its state, rewritten every poll): no backup, and a
    /// symbolic link in its place is replaced, never followed — a planted link must not
    /// redirect a privileged write.
    AgentOwned,
}

/// A failed atomic write; the previous file is intact.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action}: {source}")]
pub struct WriteError {
    /// The step that failed, e.g. "flush the temporary file to disk".
    pub action: String,
    /// What the system said.
    pub source: io::Error,
}

/// A failed bounded read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The file has more than the limit (at least `size` bytes).
    #[error("it has at least {size} bytes, more than the {limit} allowed")]
    TooLarge { size: u64, limit: u64 },
    /// The file is not UTF-8; `line` (1-based) and `offset` locate the first invalid byte.
    #[error("not UTF-8 text (line {line}, offset {offset})")]
    NotUtf8 { line: usize, offset: usize },
}

/// Reads a UTF-8 text file of at most `limit` bytes. A device or FIFO has no size to check
/// beforehand, and a file can grow while it is read: never more than `limit + 1` bytes are read.
pub fn read_text(path: &Path, limit: u64) -> Result<String, ReadError> {
    let file = File::open(path)?;
    let size = file.metadata()?.len();
    if size > limit {
        return Err(ReadError::TooLarge { size, limit });
    }
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes)?;
    let read = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    if read > limit {
        return Err(ReadError::TooLarge { size: read, limit });
    }
    String::from_utf8(bytes).map_err(|e| {
        let offset = e.utf8_error().valid_up_to();
        let before = e.as_bytes().get(..offset).unwrap_or_default();
        ReadError::NotUtf8 {
            line: before.iter().filter(|&&b| b == b'\n').count() + 1,
            offset,
        }
    })
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Replaces `path` with `bytes` so that a crash leaves either the old or the new file, never
/// a mix: the bytes go to a temporary file in the same directory, which is flushed to disk and
/// renamed over `path`, then the directory is flushed. The new file gets the permissions of the
/// one it replaces; what else happens depends on the [`FileKind`]. On error the previous file
/// is intact and no temporary file is left behind.
pub fn write_atomically(path: &Path, bytes: &[u8], kind: FileKind) -> Result<(), WriteError> {
    let failed = |action: String, source| WriteError { action, source };
    let target = match fs::symlink_metadata(path) {
        Ok(metadata) if metadata.file_type().is_symlink() && kind == FileKind::Edited => {
            fs::canonicalize(path).map_err(|e| failed("follow the symbolic link".to_owned(), e))?
        }
        _ => path.to_path_buf(),
    };
    // An agent-owned path that is a link: the link itself is replaced, with default permissions.
    let inspected = match kind {
        FileKind::Edited => fs::metadata(&target),
        FileKind::AgentOwned => fs::symlink_metadata(&target),
    };
    let permissions = match inspected {
        Ok(metadata) if metadata.file_type().is_symlink() => None,
        Ok(metadata) if metadata.is_dir() => {
            return Err(failed(
                "write it".to_owned(),
                io::Error::new(io::ErrorKind::IsADirectory, "it is a directory"),
            ));
        }
        Ok(metadata) => Some(metadata.permissions()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(failed("inspect it".to_owned(), e)),
    };
    if let (Some(permissions), FileKind::Edited) = (&permissions, kind) {
        let mut backup_name = OsString::from(target.file_name().unwrap_or_default());
        backup_name.push(".bak");
        let backup_path = target.with_file_name(backup_name);
        replace_file(&backup_path, Some(permissions), |file| {
            let mut previous = File::open(&target)?;
            io::copy(&mut previous, file).map(drop)
        })
        .map_err(|(action, e)| {
            failed(
                format!("keep a backup as {}: {action}", backup_path.display()),
                e,
            )
        })?;
    }
    replace_file(&target, permissions.as_ref(), |file| file.write_all(bytes))
        .map_err(|(action, e)| failed(action, e))
}

/// Writes a temporary file next to `target` with `fill`, flushes it and renames it over
/// `target`, then flushes the directory. On error, says which step failed.
fn replace_file(
    target: &Path,
    permissions: Option<&Permissions>,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<(), (String, io::Error)> {
    let Some(name) = target.file_name() else {
        return Err((
            "write it".to_owned(),
            io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"),
        ));
    };
    let directory = match target.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    remove_abandoned_temp_files(directory, name);
    let (temp_path, mut file) = create_temp_file(directory, name).map_err(|e| {
        (
            format!("create a temporary file in {}", directory.display()),
            e,
        )
    })?;
    let written = (|| {
        fill(&mut file).map_err(|e| ("write the temporary file".to_owned(), e))?;
        if let Some(permissions) = permissions {
            file.set_permissions(permissions.clone())
                .map_err(|e| ("set the permissions".to_owned(), e))?;
        }
        file.sync_all()
            .map_err(|e| ("flush the temporary file to disk".to_owned(), e))?;
        drop(file);
        fs::rename(&temp_path, target)
            .map_err(|e| (format!("rename {} over it", temp_path.display()), e))
    })();
    if let Err(error) = written {
        // Best effort: the error that matters is the one above.
        let _ = fs::remove_file(&temp_path);
        return Err(error);
    }
    File::open(directory)
        .and_then(|dir| dir.sync_all())
        .map_err(|e| (format!("flush the directory {}", directory.display()), e))
}

/// A new, hidden file `.<name>.<pid>.<n>.tmp` in `directory`.
/// Removes temporary files of `name` left by writers that were killed mid-write (their pid,
/// part of the file name, is gone), so crashes do not pile them up.
fn remove_abandoned_temp_files(directory: &Path, name: &OsStr) {
    let prefix = format!(".{}.", name.to_string_lossy());
    let Ok(entries) = fs::read_dir(directory) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(rest) = file_name
            .to_str()
            .and_then(|file_name| file_name.strip_prefix(&prefix))
            .and_then(|rest| rest.strip_suffix(".tmp"))
        else {
            continue;
        };
        let Some(pid) = rest
            .split('.')
            .next()
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_file(entry.path());
        }
    }
}

fn create_temp_file(directory: &Path, name: &OsStr) -> io::Result<(PathBuf, File)> {
    let mut attempts = 0;
    loop {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut temp_name = OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(".{}.{n}.tmp", std::process::id()));
        let temp_path = directory.join(temp_name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp_path)
        {
            Ok(file) => return Ok((temp_path, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < 100 => {
                attempts += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// A fresh directory under the system temporary directory, removed on drop (for tests of
/// code that writes files).
#[cfg(test)]
pub(crate) struct TempDir(PathBuf);

#[cfg(test)]
impl TempDir {
    pub(crate) fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = std::env::temp_dir().join(format!(
            "bitsecure-{tag}-{}-{}-{nanos}",
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir(&path).expect("create the temporary directory");
        Self(path)
    }

    pub(crate) fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// The names in the directory, sorted.
    pub(crate) fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(&self.0)
            .expect("list the temporary directory")
            .map(|entry| {
                entry
                    .expect("directory entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    }
}

#[cfg(test)]
impl Drop for TempDir {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt as _;
        let _ = fs::set_permissions(&self.0, Permissions::from_mode(0o755));
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_backup_only_the_file_remains() {
        let dir = TempDir::new("fsutil-nobak");
        let path = dir.join("agent-state.json");
        write_atomically(&path, b"{}", FileKind::AgentOwned).expect("first");
        write_atomically(&path, b"{\"a\":1}", FileKind::AgentOwned).expect("second");
        assert_eq!(fs::read(&path).expect("read"), b"{\"a\":1}");
        assert_eq!(dir.names(), ["agent-state.json"]);
    }

    #[test]
    fn an_agent_owned_file_replaces_a_planted_link_and_leaves_its_target_alone() {
        let dir = TempDir::new("fsutil-link");
        let victim = dir.join("victim");
        fs::write(&victim, "precious\n").expect("write");
        let path = dir.join("agent-state.json");
        std::os::unix::fs::symlink(&victim, &path).expect("symlink");
        write_atomically(&path, b"{}", FileKind::AgentOwned).expect("write");
        assert_eq!(fs::read_to_string(&victim).expect("read"), "precious\n");
        assert!(
            !fs::symlink_metadata(&path)
                .expect("lstat")
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read(&path).expect("read"), b"{}");
        assert_eq!(dir.names(), ["agent-state.json", "victim"]);
    }

    #[test]
    fn bounded_reads_refuse_large_files_devices_and_non_utf8() {
        let dir = TempDir::new("fsutil-read");
        let path = dir.join("text");
        fs::write(&path, "0123456789").expect("write");
        assert_eq!(read_text(&path, 10).expect("at the limit"), "0123456789");
        assert!(matches!(
            read_text(&path, 9),
            Err(ReadError::TooLarge { size: 10, limit: 9 })
        ));
        // /dev/zero has no size and no end: the limit stops the read.
        assert!(matches!(
            read_text(Path::new("/dev/zero"), 4096),
            Err(ReadError::TooLarge {
                size: 4097,
                limit: 4096
            })
        ));
        fs::write(&path, b"ok\n\xff").expect("write");
        assert!(matches!(
            read_text(&path, 100),
            Err(ReadError::NotUtf8 { line: 2, offset: 3 })
        ));
        assert!(matches!(
            read_text(&dir.join("missing"), 10),
            Err(ReadError::Io(_))
        ));
    }
}
