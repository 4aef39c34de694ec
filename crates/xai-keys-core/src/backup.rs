//! Backup and restore: the file store's, and the backend-neutral pieces other backends reuse.
//!
//! A backup is a directory holding the store, the complete audit log and `manifest.json` with
//! SHA-256 sums, written under the store lock (a consistent snapshot) into a temporary directory
//! that is renamed into place only when complete. A restore verifies the manifest and the backup's
//! chain, never truncates the live log (it appends a `restore` line), and applies every
//! revocation, suspension or shortened expiry that the live log records after the backup was
//! taken, so a restore can never bring a revoked key back.
//!
//! [`write_backup_dir`] writes a backup from a consistent (store, log) pair, [`read_backup`]
//! reads and checks one, and [`plan_restore`] computes what a restore writes from the backup and
//! the live state; a backend only supplies its locking and its commit around them.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::audit::{self, Actor, AuditDraft, AuditEvent, str_field};
use crate::error::{Error, Result};
use crate::record::{self, KeyMap, LoadContext};
use crate::store::fsutil;
use crate::store::{BackupManifest, FileStore, RestoreReport};
use crate::token::{KeyId, sha256_hex};

const FORMAT: &str = "xai-keys-backup/1";
const MANIFEST: &str = "manifest.json";

fn backup_err(path: &Path, problem: impl Into<String>) -> Error {
    Error::Backup {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

fn last_hash(log: &[u8]) -> Option<String> {
    let body = log.strip_suffix(b"\n")?;
    let start = body.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let obj: AuditEvent = serde_json::from_slice(&body[start..]).ok()?;
    str_field(&obj, "hash").map(str::to_string)
}

/// The directory a backup `out` is written into, once `out` is known not to exist yet.
fn check_out_dir(out: &Path) -> Result<&Path> {
    if out.exists() {
        return Err(backup_err(
            out,
            "already exists; choose a new directory for the backup",
        ));
    }
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !parent.is_dir() {
        return Err(backup_err(
            out,
            format!("parent directory {} does not exist", parent.display()),
        ));
    }
    Ok(parent)
}

/// Writes a backup of one consistent state of a store into the new directory `out`.
///
/// `store_bytes` is the store in the file store's format (the keys `record::parse_store` reads,
/// `keys` of them) and `log_bytes` the complete audit log that records exactly that state (no
/// torn last commit), both read together under the backend's lock; `source` names the store
/// (its path, or a URL such as `etcd://…`) for the manifest. `out` must not exist and its parent
/// must. Everything is written owner-only (files 0600, directory 0700) and synced into a
/// temporary sibling directory that is renamed to `out` only when complete, then the parent is
/// synced; on failure the temporary directory is removed.
///
/// The files are named after the store when `source` is an absolute path (`<name>` and
/// `<name>.log`), else `api_keys.json` and `api_keys.json.log`.
pub fn write_backup_dir(
    out: &Path,
    source: &str,
    store_bytes: &[u8],
    keys: usize,
    log_bytes: &[u8],
    now: f64,
) -> Result<BackupManifest> {
    let parent = check_out_dir(out)?;
    let source_path = Path::new(source);
    let store_file = source_path
        .file_name()
        .filter(|_| source_path.is_absolute())
        .map_or_else(
            || "api_keys.json".to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
    let log_file = format!("{store_file}.log");
    let manifest = BackupManifest {
        format: FORMAT.into(),
        created: now,
        source: source.to_string(),
        store_file: store_file.clone(),
        store_sha256: sha256_hex(store_bytes),
        store_bytes: store_bytes.len() as u64,
        keys,
        log_file: log_file.clone(),
        log_sha256: sha256_hex(log_bytes),
        log_bytes: log_bytes.len() as u64,
        log_lines: log_bytes.iter().filter(|&&b| b == b'\n').count(),
        log_last_hash: last_hash(log_bytes),
    };
    let mut tmp_name = out.as_os_str().to_owned();
    tmp_name.push(format!(".partial-{}", std::process::id()));
    let tmp = PathBuf::from(tmp_name);
    let write_all = || -> Result<()> {
        fsutil::ensure_dir(&tmp)?;
        fsutil::write_new(&tmp.join(&store_file), store_bytes, true)?;
        fsutil::write_new(&tmp.join(&log_file), log_bytes, true)?;
        let mut m = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| backup_err(out, format!("cannot encode manifest: {e}")))?;
        m.push(b'\n');
        fsutil::write_new(&tmp.join(MANIFEST), &m, true)?;
        fsutil::sync_dir(&tmp)?;
        fs::rename(&tmp, out).map_err(|e| Error::io("rename backup into place", out, e))?;
        fsutil::sync_dir(parent)
    };
    if let Err(e) = write_all() {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    Ok(manifest)
}

pub(crate) fn backup_file_store(
    fs_store: &FileStore,
    out: &Path,
    now: f64,
) -> Result<BackupManifest> {
    // Checked before the lock is taken too: a bad destination fails without waiting.
    check_out_dir(out)?;
    let (store_bytes, log_bytes) = fs_store.with_locked_files(now, |s, l| {
        Ok((
            s.map_or_else(|| b"{}\n".to_vec(), <[u8]>::to_vec),
            l.to_vec(),
        ))
    })?;
    let ctx = LoadContext {
        now,
        default_ttl_secs: 0.0,
    };
    let keys = record::parse_store(&store_bytes, fs_store.store_path(), ctx)?;
    write_backup_dir(
        out,
        &fs_store.store_path().display().to_string(),
        &store_bytes,
        keys.len(),
        &log_bytes,
        now,
    )
}

/// Largest `manifest.json` read.
const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// Reads a backup file that must be a regular file of at most `max` bytes (a link to a device
/// or a FIFO, or an oversized file, is refused instead of being read without bound).
fn read_backup_file(path: &Path, max: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let meta = fs::metadata(path).map_err(|e| Error::io("read backup file", path, e))?;
    if !meta.file_type().is_file() {
        return Err(backup_err(path, "is not a regular file"));
    }
    let f = fs::File::open(path).map_err(|e| Error::io("read backup file", path, e))?;
    let mut out = Vec::new();
    f.take(max.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| Error::io("read backup file", path, e))?;
    if out.len() as u64 > max {
        return Err(backup_err(
            path,
            format!("is larger than expected ({max} bytes): the backup is damaged or was modified"),
        ));
    }
    Ok(out)
}

/// Reads and checks the backup directory `from`: the manifest (format, file names), each file's
/// size and SHA-256 against it, the store (parsed as of `now`), the log's hash chain (intact,
/// no torn commit) and that the store is the state the log last records. Returns the manifest,
/// the backup's keys and its audit log bytes.
pub fn read_backup(from: &Path, now: f64) -> Result<(BackupManifest, KeyMap, Vec<u8>)> {
    let mpath = from.join(MANIFEST);
    let mbytes = read_backup_file(&mpath, MAX_MANIFEST_BYTES)?;
    let manifest: BackupManifest = serde_json::from_slice(&mbytes)
        .map_err(|e| backup_err(&mpath, format!("manifest is not valid: {e}")))?;
    if manifest.format != FORMAT {
        return Err(backup_err(
            &mpath,
            format!(
                "unknown backup format {:?} (expected {FORMAT})",
                manifest.format
            ),
        ));
    }
    for n in [&manifest.store_file, &manifest.log_file] {
        if n.contains('/') || n == ".." || n.is_empty() {
            return Err(backup_err(
                &mpath,
                format!("manifest names an invalid file {n:?}"),
            ));
        }
    }
    let spath = from.join(&manifest.store_file);
    let lpath = from.join(&manifest.log_file);
    let store = read_backup_file(&spath, manifest.store_bytes)?;
    let log = read_backup_file(&lpath, manifest.log_bytes)?;
    if sha256_hex(&store) != manifest.store_sha256 || store.len() as u64 != manifest.store_bytes {
        return Err(backup_err(
            &spath,
            "SHA-256 does not match the manifest: the backup is damaged or was modified",
        ));
    }
    if sha256_hex(&log) != manifest.log_sha256 || log.len() as u64 != manifest.log_bytes {
        return Err(backup_err(
            &lpath,
            "SHA-256 does not match the manifest: the backup is damaged or was modified",
        ));
    }
    let keys = record::parse_store(
        &store,
        &spath,
        LoadContext {
            now,
            default_ttl_secs: 90.0 * 86_400.0,
        },
    )?;
    let chain = audit::verify_chain_bytes(&log, &lpath)?;
    if let Some((line, why)) = chain.first_error {
        return Err(backup_err(
            &lpath,
            format!("audit chain broken at line {line}: {why}"),
        ));
    }
    // A backup holds the complete part of the log and the store that part records: anything
    // else was not written by `backup` (a restore plans from where the backup's log ends, so
    // a store from another moment could bring back keys revoked in between).
    if chain.torn_bytes > 0 {
        return Err(backup_err(
            &lpath,
            "ends with an incomplete commit, which a backup never contains",
        ));
    }
    if let Some(want) = &chain.last_store_sha256
        && *want != manifest.store_sha256
    {
        return Err(backup_err(
            &spath,
            format!(
                "is not the state its audit log records (store_sha256 {} expected): the backup was not made by `xai-keys backup` or was modified",
                crate::token::short(want)
            ),
        ));
    }
    Ok((manifest, keys, log))
}

/// Plans restoring a backup over a live store, without touching anything.
///
/// `from` is the backup directory (recorded in the audit line), `manifest`, `backup_keys` and
/// `backup_log` what [`read_backup`] returned for it, `live_log` the live audit log's committed
/// bytes and `live_keys` the live keys, both read under the backend's exclusive lock, and
/// `window` the change window open at the time (recorded as `change_window`).
///
/// The live lines that matter are those after the backup when the backup's log is a byte prefix
/// of the live one, else every live line (timestamps are not trusted for this). Each key's
/// latest lifecycle event there decides, and only restrictions are applied: a key revoked
/// since is left out, one disabled since stays disabled, a shortened expiry is kept; a restore
/// never revives or loosens. Live keys the backup does not have are dropped and reported.
///
/// Returns the keys to write, the `restore` audit line to commit with them, and the report.
pub fn plan_restore(
    from: &Path,
    manifest: &BackupManifest,
    backup_keys: &KeyMap,
    backup_log: &[u8],
    live_log: &[u8],
    live_keys: &KeyMap,
    window: Option<&crate::window::ChangeWindow>,
) -> (KeyMap, AuditDraft, RestoreReport) {
    let mut keys = backup_keys.clone();
    // A command takes its time before waiting for the lock, so a revocation committed after
    // the backup can carry an earlier timestamp: position decides, not time.
    let b = backup_log.len();
    let by_position = live_log.len() >= b && sha256_hex(&live_log[..b]) == manifest.log_sha256;
    let relevant: &[u8] = if by_position {
        &live_log[b..]
    } else {
        live_log
    };
    let mut revoked_last: BTreeMap<KeyId, bool> = BTreeMap::new();
    let mut disabled_last: BTreeMap<KeyId, bool> = BTreeMap::new();
    let mut shortest_expiry: BTreeMap<KeyId, f64> = BTreeMap::new();
    for line in relevant.split(|&c| c == b'\n') {
        let Ok(ev) = serde_json::from_slice::<AuditEvent>(line) else {
            continue;
        };
        let Some(id) = str_field(&ev, "key_id").and_then(|k| KeyId::parse(k).ok()) else {
            continue;
        };
        match str_field(&ev, "action") {
            Some("revoke") => {
                revoked_last.insert(id, true);
            }
            Some("issue") => {
                revoked_last.insert(id, false);
            }
            Some("disable") => {
                disabled_last.insert(id, true);
            }
            Some("enable") => {
                disabled_last.insert(id, false);
            }
            Some("expire") => {
                if let Some(at) = ev.get("expires_at").and_then(Value::as_f64) {
                    let e = shortest_expiry.entry(id).or_insert(at);
                    *e = e.min(at);
                }
            }
            _ => {}
        }
    }
    let mut revoked = Vec::new();
    let mut restricted = Vec::new();
    for (id, _) in revoked_last.iter().filter(|(_, r)| **r) {
        if keys.remove(id).is_some() {
            revoked.push(id.to_string());
        }
    }
    for (id, _) in disabled_last.iter().filter(|(_, d)| **d) {
        if let Some(r) = keys.get_mut(id)
            && !r.disabled
        {
            r.disabled = true;
            restricted.push(id.to_string());
        }
    }
    for (id, at) in &shortest_expiry {
        if let Some(r) = keys.get_mut(id)
            && r.expires_at.is_none_or(|e| e > *at)
        {
            r.expires_at = Some(*at);
            r.permanent = false;
            restricted.push(id.to_string());
        }
    }
    restricted.sort();
    restricted.dedup();
    // Keys that exist live but not in the backup are dropped by the restore; say which.
    let dropped: Vec<String> = live_keys
        .keys()
        .filter(|k| !keys.contains_key(*k))
        .map(ToString::to_string)
        .collect();
    let mut draft = AuditDraft::new("restore", None)
        .with(
            "backup",
            std::path::absolute(from)
                .unwrap_or_else(|_| from.to_path_buf())
                .display()
                .to_string(),
        )
        .with("backup_created", manifest.created)
        .with("backup_store_sha256", manifest.store_sha256.clone())
        .with("restored_keys", keys.len())
        .with("revoked_since_backup", revoked.clone())
        .with("restricted_since_backup", restricted.clone())
        .with("dropped_keys", dropped.clone());
    if let Some(w) = window {
        draft = draft.with("change_window", w.ticket.clone());
    }
    let report = RestoreReport {
        restored_keys: keys.len(),
        revoked_since_backup: revoked,
        restricted_since_backup: restricted,
        dropped_keys: dropped,
        transactions: 1,
    };
    (keys, draft, report)
}

pub(crate) fn restore_file_store(
    fs_store: &FileStore,
    from: &Path,
    actor: &Actor,
    now: f64,
) -> Result<RestoreReport> {
    let (manifest, backup_keys, backup_log) = read_backup(from, now)?;
    // Unreadable window: the restore goes ahead, recorded as outside a window.
    let window = crate::window::current(fs_store, now).ok().flatten();
    let mut report = None;
    fs_store.commit_replacement(actor, now, &backup_log, &mut |live_log: &[u8]| {
        // The live keys as committed (read under the lock, after recovery); an unreadable
        // store reports nothing dropped.
        let live = fsutil::read_optional(fs_store.store_path())?
            .and_then(|b| {
                record::parse_store(
                    &b,
                    fs_store.store_path(),
                    LoadContext {
                        now,
                        default_ttl_secs: 0.0,
                    },
                )
                .ok()
            })
            .unwrap_or_default();
        let (keys, draft, planned) = plan_restore(
            from,
            &manifest,
            &backup_keys,
            &backup_log,
            live_log,
            &live,
            window.as_ref(),
        );
        report = Some(planned);
        Ok((keys, vec![draft]))
    })?;
    report.ok_or_else(|| backup_err(from, "restore planned nothing"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Scope;
    use crate::audit::{GENESIS, build_line};
    use crate::record::{Hydration, KeyRecord, Origin};
    use crate::window::ChangeWindow;

    fn id(n: u8) -> KeyId {
        KeyId::parse(&format!("{n:064x}")).unwrap()
    }

    fn rec(label: &str) -> KeyRecord {
        KeyRecord {
            label: label.into(),
            created: 10.0,
            scope: Scope::User,
            expires_at: Some(1_000_000.0),
            permanent: false,
            disabled: false,
            origin: Some(Origin::Generated),
            replaced_by: None,
            extra: None,
            hydration: Hydration::default(),
        }
    }

    /// Appends chained lines `(action, key)` to `log`, continuing its chain from `prev`.
    fn append(log: &mut Vec<u8>, prev: &mut String, lines: &[(&'static str, u8)]) {
        for (i, (action, k)) in lines.iter().enumerate() {
            let d = AuditDraft::new(action, Some(&id(*k).to_string()));
            let (line, h) = build_line(100.0 + i as f64, &d, &Actor::System, "s", prev);
            log.extend_from_slice(line.as_bytes());
            log.push(b'\n');
            *prev = h;
        }
    }

    struct Fixture {
        manifest: BackupManifest,
        backup_keys: KeyMap,
        backup_log: Vec<u8>,
        live_log: Vec<u8>,
        live_keys: KeyMap,
    }

    /// A backup holding keys 1, 2 and 3; since then key 1 was revoked, key 2 disabled and
    /// key 4 issued.
    fn fixture() -> Fixture {
        let mut prev = GENESIS.to_string();
        let mut backup_log = Vec::new();
        append(
            &mut backup_log,
            &mut prev,
            &[("issue", 1), ("issue", 2), ("issue", 3)],
        );
        let backup_keys: KeyMap = [1, 2, 3].map(|n| (id(n), rec(&format!("k{n}")))).into();
        let mut live_log = backup_log.clone();
        append(
            &mut live_log,
            &mut prev,
            &[("revoke", 1), ("disable", 2), ("issue", 4)],
        );
        let mut live_keys = backup_keys.clone();
        live_keys.remove(&id(1));
        if let Some(r) = live_keys.get_mut(&id(2)) {
            r.disabled = true;
        }
        live_keys.insert(id(4), rec("k4"));
        let manifest = BackupManifest {
            format: FORMAT.into(),
            created: 50.0,
            source: "/srv/keys/api_keys.json".into(),
            store_file: "api_keys.json".into(),
            store_sha256: "ab".repeat(32),
            store_bytes: 0,
            keys: 3,
            log_file: "api_keys.json.log".into(),
            log_sha256: sha256_hex(&backup_log),
            log_bytes: backup_log.len() as u64,
            log_lines: 3,
            log_last_hash: last_hash(&backup_log),
        };
        Fixture {
            manifest,
            backup_keys,
            backup_log,
            live_log,
            live_keys,
        }
    }

    fn plan(f: &Fixture, window: Option<&ChangeWindow>) -> (KeyMap, AuditDraft, RestoreReport) {
        plan_restore(
            Path::new("/backups/b1"),
            &f.manifest,
            &f.backup_keys,
            &f.backup_log,
            &f.live_log,
            &f.live_keys,
            window,
        )
    }

    fn field<'a>(d: &'a AuditDraft, name: &str) -> Option<&'a Value> {
        d.fields.iter().find(|(k, _)| *k == name).map(|(_, v)| v)
    }

    #[test]
    fn plan_restore_does_not_revive_a_key_revoked_after_the_backup() {
        let f = fixture();
        let (keys, draft, report) = plan(&f, None);
        assert!(!keys.contains_key(&id(1)));
        assert_eq!(report.revoked_since_backup, vec![id(1).to_string()]);
        assert_eq!(report.restored_keys, 2);
        assert_eq!(keys.len(), 2);
        assert_eq!(draft.action, "restore");
        assert_eq!(draft.key_id, None);
        assert_eq!(
            field(&draft, "revoked_since_backup"),
            Some(&Value::from(vec![id(1).to_string()]))
        );
        assert_eq!(field(&draft, "backup"), Some(&Value::from("/backups/b1")));
        assert_eq!(field(&draft, "backup_created"), Some(&Value::from(50.0)));
        assert_eq!(
            field(&draft, "backup_store_sha256"),
            Some(&Value::from("ab".repeat(32)))
        );
        assert_eq!(field(&draft, "restored_keys"), Some(&Value::from(2)));
        assert_eq!(field(&draft, "change_window"), None);
        // Revoked and then issued again (the same id): the latest event decides.
        let mut g = fixture();
        let mut prev = last_hash(&g.live_log).unwrap();
        append(&mut g.live_log, &mut prev, &[("issue", 1)]);
        let (keys, _, report) = plan(&g, None);
        assert!(keys.contains_key(&id(1)));
        assert!(report.revoked_since_backup.is_empty());
    }

    #[test]
    fn plan_restore_keeps_a_key_disabled_after_the_backup_disabled() {
        let f = fixture();
        let window = ChangeWindow {
            ticket: "CHG-42".into(),
            reason: String::new(),
            opened_at: 0.0,
            expires_at: 1e9,
            opened_by: String::new(),
        };
        let (keys, draft, report) = plan(&f, Some(&window));
        assert!(f.backup_keys.get(&id(2)).is_some_and(|r| !r.disabled));
        assert!(keys.get(&id(2)).is_some_and(|r| r.disabled));
        assert!(keys.get(&id(3)).is_some_and(|r| !r.disabled));
        assert_eq!(report.restricted_since_backup, vec![id(2).to_string()]);
        assert_eq!(
            field(&draft, "restricted_since_backup"),
            Some(&Value::from(vec![id(2).to_string()]))
        );
        assert_eq!(field(&draft, "change_window"), Some(&Value::from("CHG-42")));
    }

    #[test]
    fn plan_restore_reports_a_key_issued_after_the_backup_as_dropped() {
        let f = fixture();
        let (keys, draft, report) = plan(&f, None);
        assert!(!keys.contains_key(&id(4)));
        assert_eq!(report.dropped_keys, vec![id(4).to_string()]);
        assert_eq!(
            field(&draft, "dropped_keys"),
            Some(&Value::from(vec![id(4).to_string()]))
        );
    }

    /// A live log that does not continue the backup's (replaced, or rotated): every live line
    /// counts, so the revocation is still seen.
    #[test]
    fn plan_restore_reads_the_whole_live_log_when_it_does_not_extend_the_backup() {
        let mut f = fixture();
        let mut prev = GENESIS.to_string();
        f.live_log.clear();
        append(&mut f.live_log, &mut prev, &[("revoke", 1)]);
        let (keys, _, report) = plan(&f, None);
        assert!(!keys.contains_key(&id(1)));
        assert_eq!(report.revoked_since_backup, vec![id(1).to_string()]);
    }
}
