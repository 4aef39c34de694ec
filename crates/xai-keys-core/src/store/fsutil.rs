//! Filesystem helpers: owner-only creation, permission checks, directory fsync.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::error::{Error, Result};

/// Permission bits that make a file or directory writable by group or others.
const GROUP_OTHER_WRITE: u32 = 0o022;
const GROUP_OTHER_READ: u32 = 0o044;

/// Creates `dir` (and parents) with mode 0700 if missing.
pub fn ensure_dir(dir: &Path) -> Result<()> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Error::InvalidInput(format!(
            "{} exists and is not a directory",
            dir.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io("create directory", dir, e)),
        Err(e) => Err(Error::io("stat directory", dir, e)),
    }
}

/// Outcome of a permission check on an existing path.
pub enum PermCheck {
    Missing,
    Ok,
    /// Readable by group or others: a warning.
    Readable(u32),
}

/// Refuses a path writable by group or others; reports one readable by them.
pub fn check_perms(path: &Path) -> Result<PermCheck> {
    match fs::metadata(path) {
        Ok(m) => {
            let mode = m.permissions().mode() & 0o7777;
            if mode & GROUP_OTHER_WRITE != 0 {
                return Err(Error::InsecurePermissions {
                    path: path.to_path_buf(),
                    mode,
                });
            }
            if mode & GROUP_OTHER_READ != 0 {
                return Ok(PermCheck::Readable(mode));
            }
            Ok(PermCheck::Ok)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PermCheck::Missing),
        Err(e) => Err(Error::io("stat", path, e)),
    }
}

/// Checks several paths, collecting warnings for readable ones.
pub fn check_all(paths: &[&Path], warnings: &mut Vec<String>) -> Result<()> {
    for p in paths {
        if let PermCheck::Readable(mode) = check_perms(p)? {
            warnings.push(format!(
                "{} is readable by group or others (mode {mode:04o}); run `chmod {} {}`",
                p.display(),
                if p.is_dir() { "700" } else { "600" },
                p.display()
            ));
        }
    }
    Ok(())
}

/// Opens (creating 0600) a file for writing from scratch.
pub fn create_owner_only(path: &Path) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io("create", path, e))
}

/// Opens (creating 0600) a file for appending.
pub fn open_append(path: &Path) -> Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io("open for append", path, e))
}

/// fsyncs a directory so a rename or creation in it is durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync directory", dir, e))
}

/// Writes `bytes` to a new owner-only file and fsyncs it (when `sync`).
pub fn write_new(path: &Path, bytes: &[u8], sync: bool) -> Result<()> {
    let mut f = create_owner_only(path)?;
    f.write_all(bytes)
        .map_err(|e| Error::io("write", path, e))?;
    if sync {
        f.sync_all().map_err(|e| Error::io("fsync", path, e))?;
    }
    Ok(())
}

/// Writes `bytes` to a file that must not exist yet (`O_EXCL`: never through a symbolic link
/// or into a file someone else prepared), owner-only, and fsyncs it (when `sync`).
pub fn write_exclusive(path: &Path, bytes: &[u8], sync: bool) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io("create", path, e))?;
    f.write_all(bytes)
        .map_err(|e| Error::io("write", path, e))?;
    if sync {
        f.sync_all().map_err(|e| Error::io("fsync", path, e))?;
    }
    Ok(())
}

/// Reads a file, `None` if it does not exist.
pub fn read_optional(path: &Path) -> Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read", path, e)),
    }
}
