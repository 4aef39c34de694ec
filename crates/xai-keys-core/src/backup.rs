//! Backup and restore of a file store.
//!
//! A backup is a directory holding the store, the complete audit log and `manifest.json` with
//! SHA-256 sums, written under the store lock (a consistent snapshot) into a temporary directory
//! that is renamed into place only when complete. A restore verifies the manifest and the backup's
//! chain, never truncates the live log (it appends a `restore` line), and applies every
//! revocation, suspension or shortened expiry that the live log records after the backup was
//! taken, so a restore can never bring a revoked key back.

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

pub(crate) fn backup_file_store(
    fs_store: &FileStore,
    out: &Path,
    now: f64,
) -> Result<BackupManifest> {
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
    let name = |p: &Path, fallback: &str| {
        p.file_name().map_or_else(
            || fallback.to_string(),
            |n| n.to_string_lossy().into_owned(),
        )
    };
    let store_file = name(fs_store.store_path(), "api_keys.json");
    let log_file = name(fs_store.log_path(), "api_keys.json.log");
    let manifest = BackupManifest {
        format: FORMAT.into(),
        created: now,
        source: fs_store.store_path().display().to_string(),
        store_file: store_file.clone(),
        store_sha256: sha256_hex(&store_bytes),
        store_bytes: store_bytes.len() as u64,
        keys: keys.len(),
        log_file: log_file.clone(),
        log_sha256: sha256_hex(&log_bytes),
        log_bytes: log_bytes.len() as u64,
        log_lines: log_bytes.iter().filter(|&&b| b == b'\n').count(),
        log_last_hash: last_hash(&log_bytes),
    };
    let mut tmp_name = out.as_os_str().to_owned();
    tmp_name.push(format!(".partial-{}", std::process::id()));
    let tmp = PathBuf::from(tmp_name);
    let write_all = || -> Result<()> {
        fsutil::ensure_dir(&tmp)?;
        fsutil::write_new(&tmp.join(&store_file), &store_bytes, true)?;
        fsutil::write_new(&tmp.join(&log_file), &log_bytes, true)?;
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

/// Reads and checks a backup: manifest, sums, store parse, log chain.
fn read_backup(from: &Path, now: f64) -> Result<(BackupManifest, KeyMap, Vec<u8>)> {
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
        let mut keys = backup_keys.clone();
        // Which live lines can matter: those after the backup when the backup's log is a byte
        // prefix of the live one; otherwise every live line. Timestamps are not trusted for
        // this (a command takes its time before waiting for the lock, so a revocation committed
        // after the backup can carry an earlier timestamp). Each key's *latest* lifecycle event
        // decides, and only restrictions are applied: a restore never revives or loosens.
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
        let dropped: Vec<String> = live
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
        if let Some(w) = window.as_ref() {
            draft = draft.with("change_window", w.ticket.clone());
        }
        report = Some(RestoreReport {
            restored_keys: keys.len(),
            revoked_since_backup: revoked,
            restricted_since_backup: restricted,
            dropped_keys: dropped,
        });
        Ok((keys, vec![draft]))
    })?;
    report.ok_or_else(|| backup_err(from, "restore planned nothing"))
}
