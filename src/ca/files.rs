//! File helpers for key material: reads that stop at a size cap, and writes
//! that never replace a file that is already there.
//!
//! A new file is written under a temporary name in the same directory,
//! flushed to disk, and only then hard-linked to its final name. `link(2)`
//! fails when the final name exists, so an existing key is never overwritten,
//! and a reader never sees a half-written file under the final name.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::Rng;

/// Why a capped read did not return the contents.
#[derive(Debug)]
pub(crate) enum CappedReadError {
    Io(io::Error),
    /// The input is larger than the cap. `size` is the size the file
    /// reported, when it reported one; a pipe or a growing file has none.
    TooLarge {
        size: Option<u64>,
    },
}

/// Reads all of `file`, refusing anything over `cap` bytes.
///
/// A regular file is refused from its metadata before a single byte is read;
/// whatever the metadata said, at most `cap + 1` bytes are read, so a pipe or
/// a file that grows while it is read is capped too.
pub(crate) fn read_capped_file(file: &File, cap: u64) -> Result<Vec<u8>, CappedReadError> {
    let meta = file.metadata().map_err(CappedReadError::Io)?;
    if meta.is_file() && meta.len() > cap {
        return Err(CappedReadError::TooLarge {
            size: Some(meta.len()),
        });
    }
    read_capped(file, cap)
}

/// Reads `reader` to its end, reading at most `cap + 1` bytes.
pub(crate) fn read_capped(reader: impl Read, cap: u64) -> Result<Vec<u8>, CappedReadError> {
    let mut bytes = Vec::new();
    reader
        .take(cap.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(CappedReadError::Io)?;
    if bytes.len() as u64 > cap {
        return Err(CappedReadError::TooLarge { size: None });
    }
    Ok(bytes)
}

/// Why [`write_new`] did not create the file.
#[derive(Debug)]
pub(crate) enum WriteNewError {
    /// The final name is taken; nothing was changed.
    Exists(PathBuf),
    /// An I/O step failed on `path`.
    Io { path: PathBuf, error: io::Error },
}

/// Creates `dir` with mode 0700 (and any missing parents) if it does not
/// exist yet. An existing directory is left as it is.
pub(crate) fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Writes `contents` to `dir/name` with `mode`, failing with
/// [`WriteNewError::Exists`] if that name already exists.
///
/// The file is complete and fsynced before it appears under its final name,
/// and the directory is fsynced after. Needs a file system with hard links.
pub(crate) fn write_new(
    dir: &Path,
    name: &str,
    contents: &[u8],
    mode: u32,
) -> Result<PathBuf, WriteNewError> {
    let target = dir.join(name);
    if target.symlink_metadata().is_ok() {
        return Err(WriteNewError::Exists(target));
    }

    let mut suffix = [0u8; 8];
    rand::rng().fill_bytes(&mut suffix);
    let temp = dir.join(format!(".{name}.tmp-{}", hex::encode(suffix)));
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |error| WriteNewError::Io { path, error }
    };

    write_temp(&temp, contents, mode).map_err(|e| {
        let _ = fs::remove_file(&temp);
        io_err(&temp)(e)
    })?;

    let linked = fs::hard_link(&temp, &target);
    let removed = fs::remove_file(&temp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(WriteNewError::Exists(target));
        }
        Err(e) => return Err(io_err(&target)(e)),
    }
    removed.map_err(io_err(&temp))?;

    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))?;
    Ok(target)
}

/// Creates `path` exclusively, sets `mode` (whatever the umask), writes and
/// fsyncs it.
fn write_temp(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped_read_stops_an_endless_stream() {
        let endless = io::repeat(b'A');
        match read_capped(endless, 1024) {
            Err(CappedReadError::TooLarge { size: None }) => {}
            other => panic!("expected a size refusal, got {other:?}"),
        }
    }

    #[test]
    fn capped_read_accepts_input_at_the_cap() {
        let bytes = read_capped(&[7u8; 1024][..], 1024).expect("at the cap");
        assert_eq!(bytes.len(), 1024);
    }

    #[test]
    fn capped_file_read_refuses_from_metadata() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("big");
        fs::write(&path, vec![b'x'; 5000]).expect("write");
        let file = File::open(&path).expect("open");
        match read_capped_file(&file, 4096) {
            Err(CappedReadError::TooLarge { size: Some(5000) }) => {}
            other => panic!("expected a size refusal, got {other:?}"),
        }
    }

    #[test]
    fn write_new_sets_mode_and_never_overwrites() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_new(dir.path(), "k", b"first", 0o600).expect("first write");
        let mode = fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        match write_new(dir.path(), "k", b"second", 0o600) {
            Err(WriteNewError::Exists(p)) => assert_eq!(p, path),
            other => panic!("expected Exists, got {other:?}"),
        }
        assert_eq!(fs::read(&path).expect("read"), b"first");
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .expect("list")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }

    #[test]
    fn write_new_refuses_a_dangling_symlink_at_the_target() {
        let dir = tempfile::tempdir().expect("tempdir");
        let link = dir.path().join("k");
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), &link).expect("symlink");
        assert!(matches!(
            write_new(dir.path(), "k", b"x", 0o600),
            Err(WriteNewError::Exists(_))
        ));
        assert!(!dir.path().join("elsewhere").exists());
    }

    #[test]
    fn private_dir_is_created_with_mode_0700() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sub = dir.path().join("a/b");
        ensure_private_dir(&sub).expect("create");
        let mode = fs::metadata(&sub).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }
}
