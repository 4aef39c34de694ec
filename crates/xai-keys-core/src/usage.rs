//! Last-use statistics ("usage"): per key, when it was last used, how often, and by which
//! client on which route.
//!
//! The gateway counts uses in memory and flushes the counts every few seconds (and on
//! shutdown) with [`crate::store::KeyStore::record_usage`]; the CLI reads them with
//! [`crate::store::KeyStore::usage`] (`list`'s LAST USED column, `revoke --if-idle`). They are
//! statistics, not audit records: they are not hash-chained, not backed up, and a lost or
//! deleted file loses nothing else. For the file store they live in `<store>.usage`:
//!
//! ```json
//! {"format": "xai-keys-usage/1", "updated": 1795662608.86,
//!  "keys": {"5e88…": {"last_used": 1795662600.1, "count": 42,
//!                     "last_client": "10.0.0.7", "last_route": "/api/v1/tx"}}}
//! ```
//!
//! A writer takes an exclusive `flock` on `<store>.usage.lock` (never the store's lock, so a
//! flush never waits for a commit), reads the file, merges its deltas, drops the keys that no
//! longer exist, and replaces the file atomically (a unique temporary file, fsync, rename, fsync
//! of the directory): two gateways on one store never lose each other's counts, and readers
//! take no lock. The file holds at most one entry per live key.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::store::fsutil;

/// The `format` of the usage file this version reads and writes.
pub const USAGE_FORMAT: &str = "xai-keys-usage/1";

/// Longest `last_client` / `last_route` kept (longer values are cut at a character boundary),
/// so that the file stays small whatever a request carried.
pub const MAX_USAGE_TEXT_CHARS: usize = 256;

/// What is known about one key's use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyUsage {
    /// The latest use, epoch seconds.
    pub last_used: f64,
    /// How many uses were recorded.
    #[serde(default)]
    pub count: u64,
    /// The client of the latest use (an address), empty when unknown.
    #[serde(default)]
    pub last_client: String,
    /// The route of the latest use, empty when unknown.
    #[serde(default)]
    pub last_route: String,
}

/// Usage per key, by key id (lowercase hex).
pub type UsageMap = BTreeMap<String, KeyUsage>;

impl KeyUsage {
    /// Folds `other` into `self`: counts add (saturating); the last use, client and route are
    /// those of whichever side has the later `last_used` (`other` on a tie).
    pub fn absorb(&mut self, other: &KeyUsage) {
        self.count = self.count.saturating_add(other.count);
        if other.last_used >= self.last_used {
            self.last_used = other.last_used;
            self.last_client.clone_from(&other.last_client);
            self.last_route.clone_from(&other.last_route);
        }
    }
}

/// Merges `deltas` into `into` key by key with [`KeyUsage::absorb`]. The gateway uses it to
/// combine its unflushed counts with the file; `record_usage` to combine the file with a flush.
pub fn merge(into: &mut UsageMap, deltas: &UsageMap) {
    for (id, d) in deltas {
        match into.get_mut(id) {
            Some(u) => u.absorb(d),
            None => {
                into.insert(id.clone(), d.clone());
            }
        }
    }
}

/// The file's layout.
#[derive(Debug, Serialize, Deserialize)]
struct UsageFile {
    format: String,
    updated: f64,
    keys: UsageMap,
}

/// The files of one usage record, and how to write them.
#[derive(Debug)]
pub(crate) struct UsagePaths<'a> {
    /// `<store>.usage`.
    pub file: &'a Path,
    /// `<store>.usage.lock`.
    pub lock: &'a Path,
    /// The store file (whose owner a root-run writer keeps).
    pub store: &'a Path,
    /// The directory holding all of them.
    pub dir: &'a Path,
    /// fsync the file and the directory.
    pub sync: bool,
    pub lock_timeout: Duration,
}

/// Reads and parses the usage file: `None` when it does not exist.
pub(crate) fn read(path: &Path) -> Result<Option<UsageMap>> {
    fsutil::read_optional(path)?
        .map(|b| parse(&b, path))
        .transpose()
}

fn parse(bytes: &[u8], path: &Path) -> Result<UsageMap> {
    let corrupt = |problem: String| Error::CorruptUsage {
        path: path.to_path_buf(),
        problem,
    };
    let f: UsageFile = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    if f.format != USAGE_FORMAT {
        return Err(corrupt(format!(
            "unknown format {:?} (this version reads {USAGE_FORMAT})",
            f.format
        )));
    }
    Ok(f.keys)
}

/// The first `max` characters of `s`.
fn clip(s: &mut String, max: usize) {
    if let Some((i, _)) = s.char_indices().nth(max) {
        s.truncate(i);
    }
}

/// Validates a flush before anything is touched: every time must be finite (JSON has no NaN or
/// infinity, and a non-finite time would make the file unreadable).
fn check_inputs(deltas: &UsageMap, now: f64) -> Result<()> {
    if !now.is_finite() {
        return Err(Error::InvalidInput(format!(
            "record_usage: now must be a finite epoch time, got {now}"
        )));
    }
    if let Some((id, u)) = deltas.iter().find(|(_, u)| !u.last_used.is_finite()) {
        return Err(Error::InvalidInput(format!(
            "record_usage: last_used of key {id} must be a finite epoch time, got {}",
            u.last_used
        )));
    }
    Ok(())
}

/// Merges `deltas` into the usage file under its lock, keeps only keys `live` accepts, and
/// replaces the file atomically when anything changed.
pub(crate) fn record(
    p: &UsagePaths<'_>,
    deltas: &UsageMap,
    live: &dyn Fn(&str) -> bool,
    now: f64,
) -> Result<()> {
    check_inputs(deltas, now)?;
    // The store's rules: nothing is created or trusted in a directory, or through files,
    // that group or others can write.
    fsutil::check_all(&[p.dir, p.file, p.lock], &mut Vec::new())?;
    fsutil::ensure_dir(p.dir)?;
    let _lock = fsutil::lock_exclusive(
        p.lock,
        fsutil::owner_to_keep(&[p.dir])?,
        p.lock_timeout,
        Duration::MAX,
        None,
    )?;
    let existing = read(p.file)?;
    let mut keys = existing.clone().unwrap_or_default();
    let mut deltas = deltas.clone();
    for u in deltas.values_mut() {
        clip(&mut u.last_client, MAX_USAGE_TEXT_CHARS);
        clip(&mut u.last_route, MAX_USAGE_TEXT_CHARS);
    }
    merge(&mut keys, &deltas);
    keys.retain(|id, _| live(id));
    let unchanged = match &existing {
        Some(old) => *old == keys,
        None => keys.is_empty(),
    };
    if unchanged {
        return Ok(());
    }
    let mut bytes = serde_json::to_vec_pretty(&UsageFile {
        format: USAGE_FORMAT.into(),
        updated: now,
        keys,
    })
    .map_err(|e| Error::InvalidInput(format!("cannot render usage statistics: {e}")))?;
    bytes.push(b'\n');
    remove_stale_temps(p.file, p.dir);
    let tmp = temp_path(p.file)?;
    fsutil::write_exclusive(
        &tmp,
        &bytes,
        p.sync,
        fsutil::owner_to_keep(&[p.store, p.dir])?,
    )?;
    if let Err(e) = fs::rename(&tmp, p.file) {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io("rename usage file into place", p.file, e));
    }
    if p.sync {
        fsutil::sync_dir(p.dir)?;
    }
    Ok(())
}

/// Temporary files are `<store>.usage.<pid>-<random>.tmp`.
const TEMP_SUFFIX: &str = ".tmp";

fn temp_prefix(file: &Path) -> Option<String> {
    file.file_name()
        .and_then(|n| n.to_str())
        .map(|n| format!("{n}."))
}

/// A fresh temporary name beside `file` (created with `O_EXCL`, so a collision fails safely).
pub(crate) fn temp_path(file: &Path) -> Result<PathBuf> {
    let mut r = [0u8; 8];
    getrandom::fill(&mut r).map_err(|e| Error::Random(e.to_string()))?;
    let hex: String = r.iter().map(|b| format!("{b:02x}")).collect();
    let mut s = file.as_os_str().to_owned();
    s.push(format!(".{}-{hex}{TEMP_SUFFIX}", std::process::id()));
    Ok(PathBuf::from(s))
}

/// Removes temporary files a crashed writer left behind. Called under the usage lock, when no
/// other writer can be between creating and renaming one. Best effort.
fn remove_stale_temps(file: &Path, dir: &Path) {
    let Some(prefix) = temp_prefix(file) else {
        return;
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(n) = name.to_str() else { continue };
        if n.starts_with(&prefix)
            && n.ends_with(TEMP_SUFFIX)
            && e.file_type().is_ok_and(|t| !t.is_dir())
        {
            let _ = fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::store::{Durability, FileStore, FileStoreOptions, KeyStore};
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;

    const T: f64 = 1_800_000_000.0;

    fn u(last_used: f64, count: u64, client: &str, route: &str) -> KeyUsage {
        KeyUsage {
            last_used,
            count,
            last_client: client.into(),
            last_route: route.into(),
        }
    }

    fn id(n: u8) -> String {
        format!("{n:02x}").repeat(32)
    }

    fn one(k: &str, v: KeyUsage) -> UsageMap {
        UsageMap::from([(k.to_string(), v)])
    }

    fn store(dir: &Path) -> FileStore {
        FileStore::new(
            dir.join("keys").join("api_keys.json"),
            FileStoreOptions {
                durability: Durability::UnsafeNoSync,
                ..FileStoreOptions::default()
            },
        )
        .unwrap()
    }

    fn all(_: &str) -> bool {
        true
    }

    #[test]
    fn merge_adds_counts_and_keeps_the_later_use() {
        let mut a = u(T, 3, "10.0.0.1", "/a");
        a.absorb(&u(T - 10.0, 2, "10.0.0.2", "/b"));
        assert_eq!(a, u(T, 5, "10.0.0.1", "/a"));
        a.absorb(&u(T + 1.0, 1, "10.0.0.3", "/c"));
        assert_eq!(a, u(T + 1.0, 6, "10.0.0.3", "/c"));
        // On a tie, the delta (the newer report) wins.
        a.absorb(&u(T + 1.0, 0, "10.0.0.4", "/d"));
        assert_eq!(a, u(T + 1.0, 6, "10.0.0.4", "/d"));
        a.absorb(&u(T, u64::MAX, "", ""));
        assert_eq!(a.count, u64::MAX);

        let mut m = one(&id(1), u(T, 1, "c", "r"));
        merge(&mut m, &one(&id(2), u(T, 4, "c2", "r2")));
        merge(&mut m, &one(&id(1), u(T + 5.0, 2, "c3", "r3")));
        assert_eq!(m[&id(1)], u(T + 5.0, 3, "c3", "r3"));
        assert_eq!(m[&id(2)], u(T, 4, "c2", "r2"));
    }

    #[test]
    fn the_file_store_records_merges_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        assert!(s.usage().unwrap().is_empty());
        // Nothing to record writes nothing.
        s.record_usage(&UsageMap::new(), &all, T).unwrap();
        assert!(!s.usage_path().exists());
        s.record_usage(&one(&id(1), u(T, 2, "10.0.0.1", "/a")), &all, T)
            .unwrap();
        s.record_usage(&one(&id(1), u(T - 5.0, 3, "10.0.0.2", "/b")), &all, T + 1.0)
            .unwrap();
        s.record_usage(&one(&id(2), u(T + 2.0, 1, "10.0.0.3", "/c")), &all, T + 2.0)
            .unwrap();
        let m = s.usage().unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[&id(1)], u(T, 5, "10.0.0.1", "/a"));
        assert_eq!(m[&id(2)], u(T + 2.0, 1, "10.0.0.3", "/c"));
        let v: serde_json::Value =
            serde_json::from_slice(&fs::read(s.usage_path()).unwrap()).unwrap();
        assert_eq!(v["format"], USAGE_FORMAT);
        assert_eq!(v["updated"], T + 2.0);
        // No temporary file is left behind.
        let names: Vec<String> = fs::read_dir(dir.path().join("keys"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    }

    #[test]
    fn revoked_keys_are_pruned_and_text_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let mut m = one(&id(1), u(T, 1, "c", "r"));
        m.insert(id(2), u(T, 1, "c", "r"));
        s.record_usage(&m, &all, T).unwrap();
        // id(2) was revoked: a flush that does not mention it still drops it.
        let live = |k: &str| k != id(2);
        s.record_usage(&one(&id(3), u(T, 1, "c", "r")), &live, T + 1.0)
            .unwrap();
        let got = s.usage().unwrap();
        assert_eq!(got.keys().cloned().collect::<Vec<_>>(), vec![id(1), id(3)]);
        // A flush for a key that is gone records nothing for it.
        s.record_usage(&one(&id(2), u(T + 2.0, 1, "c", "r")), &live, T + 2.0)
            .unwrap();
        assert!(!s.usage().unwrap().contains_key(&id(2)));
        // Pruning everything leaves an empty record.
        s.record_usage(&UsageMap::new(), &|_: &str| false, T + 3.0)
            .unwrap();
        assert!(s.usage().unwrap().is_empty());
        let long = "é".repeat(MAX_USAGE_TEXT_CHARS + 10);
        s.record_usage(&one(&id(1), u(T + 4.0, 1, &long, &long)), &all, T + 4.0)
            .unwrap();
        let got = &s.usage().unwrap()[&id(1)];
        assert_eq!(got.last_client.chars().count(), MAX_USAGE_TEXT_CHARS);
        assert_eq!(got.last_route.chars().count(), MAX_USAGE_TEXT_CHARS);
    }

    #[test]
    fn concurrent_writers_lose_no_counts() {
        const THREADS: u64 = 4;
        const FLUSHES: u64 = 25;
        let dir = tempfile::tempdir().unwrap();
        let shared = Arc::new(store(dir.path()));
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                // Half the writers share a store, the others open their own (another process).
                let s = if t % 2 == 0 {
                    Arc::clone(&shared)
                } else {
                    Arc::new(store(dir.path()))
                };
                std::thread::spawn(move || {
                    for i in 0..FLUSHES {
                        let now = T + (t * 1000 + i) as f64;
                        let mut d = one(&id(1), u(now, 1, &format!("t{t}"), "/x"));
                        d.insert(id(10 + t as u8), u(now, 2, "own", "/y"));
                        s.record_usage(&d, &all, now).unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let m = shared.usage().unwrap();
        assert_eq!(m[&id(1)].count, THREADS * FLUSHES);
        assert_eq!(
            m[&id(1)].last_used,
            T + ((THREADS - 1) * 1000 + FLUSHES - 1) as f64
        );
        for t in 0..THREADS {
            assert_eq!(m[&id(10 + t as u8)].count, 2 * FLUSHES);
        }
    }

    #[test]
    fn a_corrupt_file_is_named_and_called_safe_to_delete() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        s.record_usage(&one(&id(1), u(T, 1, "c", "r")), &all, T)
            .unwrap();
        for bad in [
            &b"{\"format\": \"xai-keys-usage/1\", \"keys\": "[..],
            b"",
            br#"{"format": "xai-keys-usage/9", "updated": 1, "keys": {}}"#,
            br#"{"format": "xai-keys-usage/1", "updated": 1, "keys": {"a": {"count": 1}}}"#,
        ] {
            fs::write(s.usage_path(), bad).unwrap();
            let e = s.usage().unwrap_err();
            assert_eq!(e.code(), "corrupt_usage");
            let msg = e.to_string();
            assert!(msg.contains(&s.usage_path().display().to_string()), "{msg}");
            assert!(msg.contains("deleted safely"), "{msg}");
            // A writer refuses too (it would otherwise drop what the file held).
            let e = s
                .record_usage(&one(&id(1), u(T, 1, "c", "r")), &all, T)
                .unwrap_err();
            assert_eq!(e.code(), "corrupt_usage");
        }
        fs::remove_file(s.usage_path()).unwrap();
        assert!(s.usage().unwrap().is_empty());
        // Unknown fields are tolerated (a newer writer of the same format).
        fs::write(
            s.usage_path(),
            br#"{"format": "xai-keys-usage/1", "updated": 1, "more": 1, "keys": {"ab": {"last_used": 5, "x": 1}}}"#,
        )
        .unwrap();
        assert_eq!(s.usage().unwrap()["ab"], u(5.0, 0, "", ""));
    }

    #[test]
    fn files_are_owner_only_and_insecure_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        s.record_usage(&one(&id(1), u(T, 1, "c", "r")), &all, T)
            .unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let lock = {
            let mut p = s.usage_path().as_os_str().to_owned();
            p.push(".lock");
            PathBuf::from(p)
        };
        assert_eq!(mode(s.usage_path()), 0o600);
        assert_eq!(mode(&lock), 0o600);
        assert_eq!(mode(&dir.path().join("keys")), 0o700);
        fs::set_permissions(s.usage_path(), fs::Permissions::from_mode(0o620)).unwrap();
        let e = s
            .record_usage(&one(&id(1), u(T, 1, "c", "r")), &all, T)
            .unwrap_err();
        assert_eq!(e.code(), "insecure_permissions");
        assert_eq!(s.usage().unwrap_err().code(), "insecure_permissions");
        fs::set_permissions(s.usage_path(), fs::Permissions::from_mode(0o600)).unwrap();
        fs::set_permissions(&lock, fs::Permissions::from_mode(0o666)).unwrap();
        let e = s
            .record_usage(&one(&id(1), u(T, 1, "c", "r")), &all, T)
            .unwrap_err();
        assert_eq!(e.code(), "insecure_permissions");
    }

    #[test]
    fn non_finite_times_are_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let e = s
            .record_usage(&one(&id(1), u(f64::NAN, 1, "c", "r")), &all, T)
            .unwrap_err();
        assert_eq!(e.code(), "invalid_input");
        let e = s
            .record_usage(&one(&id(1), u(T, 1, "c", "r")), &all, f64::INFINITY)
            .unwrap_err();
        assert_eq!(e.code(), "invalid_input");
        assert!(!dir.path().join("keys").exists());
    }
}
