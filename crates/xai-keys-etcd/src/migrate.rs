//! `xai-keys migrate --from FILE --to etcd://…`: moving a file store into etcd.
//!
//! The file side is read as a backup (under the file store's lock, so the store and its log are
//! one consistent pair) and its whole hash chain is verified before anything is written. Into an
//! empty prefix, the log lines are copied first, then the records, in transactions that each
//! require the head to be absent, so no reader ever takes a half-copied prefix for a store (it
//! sees "interrupted migration" and refuses to serve it). A last transaction writes the head
//! with one `migrate` audit line chained after the file's last line. The etcd side's chain is
//! then verified in full, and its first lines must be the file's, byte for byte.
//!
//! Re-running is safe: a prefix holding an interrupted copy of the same log is completed; a
//! prefix already migrated from this log reports so and writes nothing; anything else is
//! refused, with nothing written.

use std::path::{Path, PathBuf};

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use serde::Serialize;
use xai_keys_core::audit::{self, Actor, AuditDraft, AuditEvent};
use xai_keys_core::record::KeyMap;
use xai_keys_core::store::{Integrity, KeyStore};
use xai_keys_core::{Error, Result};

use crate::store::{EtcdStore, Step};

/// Bytes of values per copy transaction (below etcd's default 1.5 MiB request limit).
const CHUNK_BYTES: usize = 1 << 20;

/// What a migration did.
#[derive(Debug, Clone, Serialize)]
pub struct MigrateReport {
    pub from: String,
    pub to: String,
    pub keys: usize,
    /// Lines of the file's log.
    pub log_lines: usize,
    /// Log lines written by this run (0 when it was already migrated).
    pub copied_lines: usize,
    /// The prefix already held this migration: nothing was written.
    pub already_migrated: bool,
    /// Changes made on etcd since the migration (when already migrated).
    pub changes_since: usize,
    /// The chain checks on both sides.
    pub file_chain: String,
    pub etcd_chain: String,
    pub last_hash: Option<String>,
}

fn lines(log: &[u8]) -> Vec<&[u8]> {
    log.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect()
}

fn migrate_err(to: &EtcdStore, problem: impl Into<String>) -> Error {
    Error::Migration {
        store: to.location(),
        problem: problem.into(),
    }
}

/// Writes `log`'s lines into an empty prefix's log (no head), continuing an interrupted copy
/// of the same lines. Each transaction requires the head to be absent.
pub(crate) fn seed_log(to: &EtcdStore, log: &[u8]) -> Result<usize> {
    let want = lines(log);
    let (have_bytes, _) = to.dump_log(0)?;
    let have = lines(&have_bytes);
    if have.len() > want.len() || have.iter().zip(&want).any(|(a, b)| a != b) {
        return Err(migrate_err(
            to,
            format!(
                "its audit log ({} lines) is not a prefix of the log being copied: the prefix holds another store. Choose an empty prefix",
                have.len()
            ),
        ));
    }
    let layout = &to.inner.layout;
    let max_ops = to.inner.opts.max_txn_ops.max(8) - 1;
    let mut copied = 0;
    let mut i = have.len();
    while i < want.len() {
        let mut ops = Vec::new();
        let mut bytes = 0;
        let first = i;
        while i < want.len() && ops.len() < max_ops && (ops.is_empty() || bytes < CHUNK_BYTES) {
            bytes += want[i].len();
            ops.push(TxnOp::put(layout.log(i as u64 + 1), want[i].to_vec(), None));
            i += 1;
        }
        let txn = Txn::new()
            .when(vec![
                Compare::version(layout.head(), CompareOp::Equal, 0),
                Compare::version(layout.log(first as u64 + 1), CompareOp::Equal, 0),
            ])
            .and_then(ops);
        let mut kv = to.inner.client.kv_client();
        let ok = to
            .inner
            .bridge
            .run("copy audit lines", async move { kv.txn(txn).await })?
            .succeeded();
        if !ok {
            return Err(migrate_err(
                to,
                "another writer changed the prefix during the copy; nothing more was written. Run the migration again once it is alone",
            ));
        }
        copied += i - first;
    }
    Ok(copied)
}

/// Writes `keys` as the prefix's records (no head yet), replacing any left by an interrupted
/// run. Each transaction requires the head to be absent.
fn seed_records(to: &EtcdStore, keys: &KeyMap, now: f64) -> Result<()> {
    let layout = &to.inner.layout;
    let st = to.read_state(now)?;
    let max_ops = to.inner.opts.max_txn_ops.max(8) - 1;
    let mut ops: Vec<TxnOp> = Vec::new();
    let mut bytes = 0;
    let flush = |ops: &mut Vec<TxnOp>| -> Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        let txn = Txn::new()
            .when(vec![Compare::version(layout.head(), CompareOp::Equal, 0)])
            .and_then(std::mem::take(ops));
        let mut kv = to.inner.client.kv_client();
        let ok = to
            .inner
            .bridge
            .run("copy key records", async move { kv.txn(txn).await })?
            .succeeded();
        if ok {
            Ok(())
        } else {
            Err(migrate_err(
                to,
                "another writer created the store's head during the copy; nothing more was written",
            ))
        }
    };
    let kept: std::collections::BTreeSet<&str> = keys.keys().map(|k| k.as_str()).collect();
    for id in st.raw.records.keys() {
        if !kept.contains(&**id) {
            ops.push(TxnOp::delete(layout.key(id), None));
            if ops.len() >= max_ops {
                flush(&mut ops)?;
            }
        }
    }
    for (id, rec) in keys {
        let v = serde_json::to_vec(rec).map_err(|e| Error::InvalidInput(e.to_string()))?;
        if st.raw.records.get(id.as_str()).map(|s| &s[..]) == Some(&v[..]) {
            continue;
        }
        bytes += v.len();
        ops.push(TxnOp::put(layout.key(id.as_str()), v, None));
        if ops.len() >= max_ops || bytes >= CHUNK_BYTES {
            flush(&mut ops)?;
            bytes = 0;
        }
    }
    flush(&mut ops)
}

/// Copies the file store `from` into the etcd store `to`. See the module documentation.
pub fn migrate(
    from: &dyn KeyStore,
    to: &EtcdStore,
    actor: &Actor,
    now: f64,
) -> Result<MigrateReport> {
    // 1. A consistent copy of the file side, through its own backup (under its lock).
    let mut rnd = [0u8; 8];
    getrandom::fill(&mut rnd).map_err(|e| Error::Random(e.to_string()))?;
    let tmp = std::env::temp_dir().join(format!(
        "xai-keys-migrate-{}",
        xai_keys_core::token::hex(&rnd)
    ));
    let read = (|| {
        from.backup(&tmp, now)?;
        xai_keys_core::backup::read_backup(&tmp, now)
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    let (manifest, keys, log) = read?;
    let file_rep = audit::verify_chain_bytes(&log, Path::new(&format!("{}.log", from.location())))?;
    if let Some((line, p)) = &file_rep.first_error {
        return Err(Error::CorruptLog {
            path: PathBuf::from(format!("{}.log", from.location())),
            problem: format!(
                "line {line}: {p}. Nothing was copied: a broken chain would be carried into etcd. Fix the file store first (`xai-keys verify`)"
            ),
            line: *line,
        });
    }
    let file_lines = lines(&log);
    let n = file_lines.len();
    let mut report = MigrateReport {
        from: from.location(),
        to: to.location(),
        keys: keys.len(),
        log_lines: n,
        copied_lines: 0,
        already_migrated: false,
        changes_since: 0,
        file_chain: format!(
            "ok: {} lines ({} chained, {} legacy)",
            file_rep.lines, file_rep.chained_lines, file_rep.legacy_lines
        ),
        etcd_chain: String::new(),
        last_hash: None,
    };

    // 2. The etcd side.
    let st = to.read_state(now)?;
    if st.head.is_some() {
        let (etcd_log, _) = to.dump_log(st.raw.rev)?;
        let el = lines(&etcd_log);
        let same_prefix = el.len() > n && el[..n] == file_lines[..];
        let is_ours = same_prefix
            && serde_json::from_slice::<AuditEvent>(el[n])
                .ok()
                .is_some_and(|o| audit::str_field(&o, "action") == Some("migrate"));
        if !is_ours {
            return Err(migrate_err(
                to,
                format!(
                    "the prefix already holds a store ({} audit lines) that is not a migration of {}: nothing was written. Choose an empty prefix, or take a backup and clear it (`etcdctl del --prefix`)",
                    el.len(),
                    from.location()
                ),
            ));
        }
        report.already_migrated = true;
        report.changes_since = el.len() - n - 1;
    } else {
        report.copied_lines = seed_log(to, &log)?;
        seed_records(to, &keys, now)?;
        let source = from.location();
        let backup_sha = manifest.store_sha256.clone();
        to.transact(actor, now, false, &mut |st, live| {
            if st.head.is_some() {
                return Err(migrate_err(
                    to,
                    "another writer created the store during the migration",
                ));
            }
            if *live != keys {
                return Err(migrate_err(
                    to,
                    "the copied records changed during the migration (another writer?)",
                ));
            }
            Ok(Some(Step {
                drafts: vec![
                    AuditDraft::new("migrate", None)
                        .with("from", source.clone())
                        .with("keys", live.len())
                        .with("log_lines", n)
                        .with("source_store_sha256", backup_sha.clone()),
                ],
                ops: Vec::new(),
            }))
        })?;
        let marker = serde_json::json!({
            "from": report.from, "at": now, "by": actor.to_string(),
            "keys": report.keys, "log_lines": n,
        });
        let mut kv = to.inner.client.kv_client();
        let key = to.inner.layout.migration();
        to.inner.bridge.run("record the migration", async move {
            kv.put(key, marker.to_string(), None).await.map(|_| ())
        })?;
    }

    // 3. Verify the etcd side in full.
    let st = to.read_state(now)?;
    let (etcd_log, _) = to.dump_log(st.raw.rev)?;
    let rep = audit::verify_chain_bytes(&etcd_log, &to.path_of("log"))?;
    if let Some((line, p)) = &rep.first_error {
        return Err(migrate_err(
            to,
            format!("after the copy, audit line {line}: {p}"),
        ));
    }
    let el = lines(&etcd_log);
    if el.len() < n || el[..n] != file_lines[..] {
        return Err(migrate_err(
            to,
            "after the copy, the etcd log does not begin with the file's lines",
        ));
    }
    if st.integrity != Integrity::Recorded {
        return Err(migrate_err(
            to,
            format!(
                "after the copy, the records do not match the head ({})",
                st.integrity.code()
            ),
        ));
    }
    report.etcd_chain = format!(
        "ok: {} lines ({} chained, {} legacy); the first {n} are the file's, byte for byte",
        rep.lines, rep.chained_lines, rep.legacy_lines
    );
    report.last_hash = rep.last_hash;
    Ok(report)
}
