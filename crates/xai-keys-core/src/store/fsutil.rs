//! Filesystem helpers: owner-only creation, permission checks, ownership kept when running
//! as root, directory fsync, exclusive lock files.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

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
    Readable {
        mode: u32,
        is_dir: bool,
    },
}

/// Refuses a path writable by group or others; reports one readable by them.
pub fn check_perms(path: &Path) -> Result<PermCheck> {
    match fs::metadata(path) {
        Ok(m) => {
            let mode = m.permissions().mode() & 0o7777;
            let is_dir = m.is_dir();
            if mode & GROUP_OTHER_WRITE != 0 {
                return Err(Error::InsecurePermissions {
                    path: path.to_path_buf(),
                    mode,
                    is_dir,
                });
            }
            if mode & GROUP_OTHER_READ != 0 {
                return Ok(PermCheck::Readable { mode, is_dir });
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
        if let PermCheck::Readable { mode, is_dir } = check_perms(p)? {
            warnings.push(format!(
                "{} is readable by group or others (mode {mode:04o}); run `chmod {} {}`",
                p.display(),
                if is_dir { "700" } else { "600" },
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

/// The owner (uid, gid) a file is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// When the process runs as root: the owner of the first of `refs` that exists (the store file,
/// then its directory) if that is another user, so that files root writes in a store it does
/// not own keep that store's owner (a root-owned 0600 store would lock its service out).
/// `None` when not root, when root owns the store, or when none of `refs` exists.
pub fn owner_to_keep(refs: &[&Path]) -> Result<Option<Owner>> {
    let euid = rustix::process::geteuid();
    if !euid.is_root() {
        return Ok(None);
    }
    for p in refs {
        match fs::metadata(p) {
            Ok(m) if m.uid() != euid.as_raw() => {
                return Ok(Some(Owner {
                    uid: m.uid(),
                    gid: m.gid(),
                }));
            }
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("stat", p, e)),
        }
    }
    Ok(None)
}

/// Gives the open file `f` (at `path`) to `owner`, if any.
fn give_to(f: &File, path: &Path, owner: Option<Owner>) -> Result<()> {
    match owner {
        Some(o) => std::os::unix::fs::fchown(f, Some(o.uid), Some(o.gid))
            .map_err(|e| Error::io("give the store owner's ownership to", path, e)),
        None => Ok(()),
    }
}

/// Opens `path` with `opts` (which must not create), creating it 0600 first if it is missing.
/// A file this call creates is given `owner` (when set); if that fails it is removed again, so
/// that no file the owner cannot open is left behind.
pub fn open_or_create(
    path: &Path,
    opts: &OpenOptions,
    owner: Option<Owner>,
    op: &'static str,
) -> Result<File> {
    // A file removed between the two opens is created again (a few times at most).
    let mut last = None;
    for _ in 0..3 {
        match opts.clone().create_new(true).mode(0o600).open(path) {
            Ok(f) => {
                if let Err(e) = give_to(&f, path, owner) {
                    let _ = fs::remove_file(path);
                    return Err(e);
                }
                return Ok(f);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io(op, path, e)),
        }
        match opts.open(path) {
            Ok(f) => return Ok(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => last = Some(e),
            Err(e) => return Err(Error::io(op, path, e)),
        }
    }
    Err(Error::io(
        op,
        path,
        last.unwrap_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound)),
    ))
}

/// Opens (creating 0600, given `owner`) a file for appending.
pub fn open_append(path: &Path, owner: Option<Owner>) -> Result<File> {
    open_or_create(
        path,
        OpenOptions::new().append(true),
        owner,
        "open for append",
    )
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
/// or into a file someone else prepared), owner-only and given `owner` (when set), and fsyncs
/// it (when `sync`). A file it created is removed again if anything after that fails.
pub fn write_exclusive(path: &Path, bytes: &[u8], sync: bool, owner: Option<Owner>) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io("create", path, e))?;
    let res = give_to(&f, path, owner)
        .and_then(|()| f.write_all(bytes).map_err(|e| Error::io("write", path, e)))
        .and_then(|()| {
            if sync {
                f.sync_all().map_err(|e| Error::io("fsync", path, e))
            } else {
                Ok(())
            }
        });
    if res.is_err() {
        drop(f);
        let _ = fs::remove_file(path);
    }
    res
}

/// Reads a small regular file, `None` if it does not exist. Never follows a symbolic link,
/// never blocks on a FIFO or device (opened non-blocking, then required to be a regular file),
/// and refuses anything over `max` bytes: for files a hostile local user could replace.
pub fn read_small_regular(path: &Path, max: u64) -> Result<Option<Vec<u8>>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
    let f = match OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("open", path, e)),
    };
    let meta = f.metadata().map_err(|e| Error::io("stat", path, e))?;
    if !meta.file_type().is_file() {
        return Err(Error::InvalidInput(format!(
            "{} is not a regular file; remove it",
            path.display()
        )));
    }
    if meta.len() > max {
        return Err(Error::InvalidInput(format!(
            "{} is {} bytes, more than the {max} this file can hold; remove it",
            path.display(),
            meta.len()
        )));
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    f.take(max + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io("read", path, e))?;
    Ok(Some(buf))
}

/// Reads a file, `None` if it does not exist.
pub fn read_optional(path: &Path) -> Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read", path, e)),
    }
}

/// Opens (creating 0600, given `owner`) the lock file `path` and takes an exclusive `flock` on
/// it, polling up to `timeout` (no deadline when it does not fit the clock). `on_wait` is
/// called once, with `path`, after `notice` of waiting. The lock lasts as long as the file.
pub fn lock_exclusive(
    path: &Path,
    owner: Option<Owner>,
    timeout: Duration,
    notice: Duration,
    on_wait: Option<fn(&Path)>,
) -> Result<File> {
    let f = open_or_create(
        path,
        OpenOptions::new().read(true).write(true),
        owner,
        "open lock file",
    )?;
    let start = Instant::now();
    let deadline = start.checked_add(timeout);
    let mut notify = on_wait;
    let mut pause = Duration::from_millis(1);
    loop {
        match f.try_lock() {
            Ok(()) => return Ok(f),
            Err(fs::TryLockError::WouldBlock) => {
                if let Some(cb) = notify
                    && start.elapsed() >= notice
                {
                    notify = None;
                    cb(path);
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(Error::LockTimeout {
                        path: path.to_path_buf(),
                        seconds: timeout.as_secs(),
                    });
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            Err(fs::TryLockError::Error(e)) => return Err(Error::io("lock", path, e)),
        }
    }
}
