//! A store file and its audit log (and an interrupted commit's `<store>.pending`) loaded
//! together through the real `FileStore::load`: the permission checks, the recovery a reader
//! runs when it sees a pending file (torn-tail removal, roll-forward), the store-against-log
//! integrity verdict, and `FileStore::verify`.
//!
//! Input: the files, framed by `xai_keys_fuzz::split_files` (marker lines `#### store`,
//! `#### log` or `#### chained-log`, `#### pending` or `#### pending-link`; the first section of
//! each kind counts, and a file without one does not exist). `chained-log` is a log whose
//! chained lines get their `prev_hash` and `hash` recomputed, and whose `store_sha256` values
//! `"@store"` and `"@pending"` become those files' digests (see `rechain`), so that mutated
//! logs still verify; `pending-link` makes the pending file a symbolic link to a file holding
//! the content. The files are written (0600) to a fresh 0700 directory as `api_keys.json`,
//! `api_keys.json.log` and `api_keys.json.pending`; an optional `#### modes` section adds group
//! and other bits (lines `dir 755`, `store 644`, `log 666`). Then the store is loaded at a
//! fixed time.
//! Nothing fsyncs (`Durability::UnsafeNoSync`: only the fsync calls differ) and the directory
//! is in `/dev/shm` when there is one, to keep runs fast (~4,000 inputs/s there, ~150/s on a
//! busy disk-backed `/tmp`). Seeds are a few KB; no `-max_len` is needed.
//!
//! Checks, for any bytes:
//! - nothing panics; when the directory, store or log is writable by group or others, `load`
//!   fails with `InsecurePermissions` naming the first of them (in that order) and changes
//!   nothing (no recovery, no lock file); otherwise it fails only with `CorruptStore` naming
//!   the store, exactly when the store file (as left by recovery) does not parse;
//! - a successful load serves exactly what `record::parse_store` gives for the store file,
//!   and `exists` says whether there is one;
//! - its `integrity` is what an independent full-chain check gives (`verify_chain_bytes`:
//!   the last committed line's `store_sha256` against the store's SHA-256) whenever the chain
//!   verifies; `Recorded` always means some chained line records the store's digest;
//! - files change only through recovery, and only when a pending file was there: the log
//!   loses only an uncommitted tail (a partial last line, and intact `tx_continues` lines that
//!   link to the head: never a committed line, so never a committed revocation), the store is
//!   replaced only by a regular pending file whose digest the last committed, intact line
//!   records (never through a link), and the pending file is then gone. When the whole log
//!   verifies, the outcome is exactly that model's. Nothing else is left behind but the empty
//!   `api_keys.json.lock`; a link's target is never touched;
//! - loading again (the same object, and a fresh one) and `verify` change no file and agree:
//!   same records, same verdict; a `verify` that finds the chain and store fine says "store
//!   matches log" exactly when the load's verdict is consistent.
//!
//! Not checked: that a `Recorded` store lacks every key the log says was revoked. The chain is
//! not signed, so a log can record any store; the guarantee the design makes on load is the
//! one above (recovery never drops a committed line nor installs an unrecorded store).
#![no_main]

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use xai_keys_core::Error;
use xai_keys_core::audit::{
    Actor, AuditEvent, GENESIS, continues, is_chained, line_hash, verify_chain_bytes,
};
use xai_keys_core::record::{KeyMap, LoadContext, parse_store};
use xai_keys_core::store::{
    Durability, FileStore, FileStoreOptions, Integrity, KeyStore, Snapshot, VerifyOptions,
};
use xai_keys_core::token::sha256_hex;
use xai_keys_fuzz::split_files;

const NOW: f64 = 1_800_000_000.0;
const DEFAULT_TTL: f64 = 90.0 * 86_400.0;
const CTX: LoadContext = LoadContext {
    now: NOW,
    default_ttl_secs: DEFAULT_TTL,
};

const STORE: &str = "api_keys.json";
const LOG: &str = "api_keys.json.log";
const PENDING: &str = "api_keys.json.pending";
const LOCK: &str = "api_keys.json.lock";
/// What a `pending-link` pending file points to.
const LINK_TARGET: &str = "target";

/// A fresh directory per input, removed after it (left behind by a failing input, to look
/// at). In `/dev/shm` when there is one: every input creates, renames and removes a handful of
/// files, which on a busy disk-backed `/tmp` runs about 20 times slower (nothing `load` does
/// depends on the filesystem).
fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("xai-keys-store-load")
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("a temporary directory")
}

/// A directory entry as the checks see it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    File(Vec<u8>, u32),
    Link(PathBuf),
    Other,
}

type Listing = BTreeMap<String, Entry>;

fn list(dir: &Path) -> Listing {
    let mut out = BTreeMap::new();
    for e in fs::read_dir(dir).expect("read the store directory") {
        let e = e.expect("a directory entry");
        let name = e.file_name().to_string_lossy().into_owned();
        let p = e.path();
        let m = fs::symlink_metadata(&p).expect("stat an entry");
        let entry = if m.file_type().is_symlink() {
            Entry::Link(fs::read_link(&p).expect("read a link"))
        } else if m.is_file() {
            Entry::File(
                fs::read(&p).expect("read a file"),
                m.permissions().mode() & 0o7777,
            )
        } else {
            Entry::Other
        };
        out.insert(name, entry);
    }
    out
}

fn content<'a>(l: &'a Listing, name: &str) -> Option<&'a [u8]> {
    match l.get(name) {
        Some(Entry::File(b, _)) => Some(b),
        _ => None,
    }
}

fn write_0600(path: &Path, bytes: &[u8]) {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .expect("create a file");
    f.write_all(bytes).expect("write a file");
}

/// A `chained-log` section: every complete line that parses as a chained audit line (it has
/// `hash` or `prev_hash`) is rewritten with the `prev_hash` and `hash` that make the chain
/// intact, and a `store_sha256` of `"@store"` or `"@pending"` becomes that file's SHA-256 (an
/// empty string when there is no such file). Other lines, and a final partial line, are kept
/// as they are. So mutations reach the states only an intact chain gets to (recovery, the
/// roll-forward, `Recorded`) instead of stopping at the first hash check.
fn rechain(log: &[u8], store: Option<&[u8]>, pending: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(log.len() + 64);
    let mut prev: Option<String> = None;
    for line in log.split_inclusive(|&b| b == b'\n') {
        let Some(body) = line.strip_suffix(b"\n") else {
            out.extend_from_slice(line);
            break;
        };
        match serde_json::from_slice::<AuditEvent>(body) {
            Ok(mut obj) if is_chained(&obj) => {
                for (tag, file) in [("@store", store), ("@pending", pending)] {
                    if str_of(&obj, "store_sha256") == Some(tag) {
                        let d = file.map_or_else(String::new, sha256_hex);
                        obj.insert("store_sha256".into(), Value::from(d));
                    }
                }
                // The chain's first line links to 64 zeros, or to the legacy prefix's SHA-256.
                let link = prev.take().unwrap_or_else(|| {
                    if out.is_empty() {
                        GENESIS.to_string()
                    } else {
                        sha256_hex(&out)
                    }
                });
                obj.insert("prev_hash".into(), Value::from(link));
                let h = line_hash(&obj);
                obj.insert("hash".into(), Value::from(h.clone()));
                out.extend_from_slice(Value::Object(obj).to_string().as_bytes());
                out.push(b'\n');
                prev = Some(h);
            }
            _ => out.extend_from_slice(line),
        }
    }
    out
}

/// The `hash` the first line appended after `kept` (a log ending on a line boundary) links to,
/// as the store computes it: the last line's `hash` when it is chained, 64 zeros for an empty
/// log, else the SHA-256 of the whole (legacy) prefix.
fn link_target(kept: &[u8]) -> String {
    let Some(body) = kept.strip_suffix(b"\n") else {
        assert!(kept.is_empty(), "recovery cut the log inside a line");
        return GENESIS.to_string();
    };
    let last = body.rsplit(|&b| b == b'\n').next().unwrap_or(body);
    match serde_json::from_slice::<AuditEvent>(last) {
        Ok(obj) if is_chained(&obj) => str_of(&obj, "hash").unwrap_or_default().to_string(),
        _ => sha256_hex(kept),
    }
}

fn str_of<'a>(obj: &'a AuditEvent, k: &str) -> Option<&'a str> {
    obj.get(k).and_then(Value::as_str)
}

/// Recovery removed `removed` from the end of the log, leaving `kept`: it must be what a crash
/// can leave, an append that never reached its commit point (complete lines all marked
/// `tx_continues`, intact and linked from the head, then at most one partial line).
fn check_removed_tail(kept: &[u8], removed: &[u8]) {
    let complete = match removed.iter().rposition(|&b| b == b'\n') {
        Some(i) => &removed[..=i],
        None => &[][..],
    };
    let mut prev = link_target(kept);
    for line in complete.split_inclusive(|&b| b == b'\n') {
        let body = &line[..line.len() - 1];
        let obj: AuditEvent = match serde_json::from_slice(body) {
            Ok(o) => o,
            Err(e) => panic!(
                "recovery removed a complete line that is not an audit line ({e}): {}",
                String::from_utf8_lossy(body)
            ),
        };
        assert!(
            continues(&obj),
            "recovery removed a committed line: {}",
            String::from_utf8_lossy(body)
        );
        assert_eq!(
            str_of(&obj, "prev_hash"),
            Some(prev.as_str()),
            "recovery removed a line that does not link to the head"
        );
        let hash = line_hash(&obj);
        assert_eq!(
            str_of(&obj, "hash"),
            Some(hash.as_str()),
            "recovery removed an edited line"
        );
        prev = hash;
    }
}

/// `store_sha256` of the last line of `log` when it is a committed, intact chained line.
fn committed_anchor(log: &[u8]) -> Option<String> {
    let body = log.strip_suffix(b"\n")?;
    let last = body.rsplit(|&b| b == b'\n').next().unwrap_or(body);
    let obj: AuditEvent = serde_json::from_slice(last).ok()?;
    let ok = is_chained(&obj)
        && !continues(&obj)
        && str_of(&obj, "hash") == Some(line_hash(&obj).as_str());
    ok.then(|| str_of(&obj, "store_sha256").map(str::to_string))
        .flatten()
}

/// What `load` did to the files, against what the design allows.
fn check_changes(before: &Listing, after: &Listing) {
    for (name, e) in after {
        // A store rolled forward where there was none is checked below.
        if before.contains_key(name) || name == STORE {
            continue;
        }
        assert_eq!(name, LOCK, "load left a new file {name}: {e:?}");
        assert!(
            matches!(e, Entry::File(b, 0o600) if b.is_empty()),
            "the lock file is empty and 0600: {e:?}"
        );
    }
    assert_eq!(
        before.get(LINK_TARGET),
        after.get(LINK_TARGET),
        "a pending link's target changed"
    );
    let Some(pending) = before.get(PENDING) else {
        // No recovery: nothing may change.
        for n in [STORE, LOG] {
            assert_eq!(
                before.get(n),
                after.get(n),
                "{n} changed without a recovery"
            );
        }
        return;
    };
    if after.contains_key(PENDING) {
        // Recovery refused (a damaged log tail): it changed nothing.
        assert_eq!(
            after.get(PENDING),
            Some(pending),
            "the pending file changed"
        );
        for n in [STORE, LOG] {
            assert_eq!(
                before.get(n),
                after.get(n),
                "{n} changed by a refused recovery"
            );
        }
        return;
    }
    // Recovery ran. The log lost at most an uncommitted tail.
    let log0 = content(before, LOG);
    let log1 = content(after, LOG);
    match (log0, log1) {
        (Some(a), Some(b)) => {
            assert!(a.starts_with(b), "recovery rewrote the log");
            if a.len() != b.len() {
                check_removed_tail(b, &a[b.len()..]);
            }
        }
        (None, None) => {}
        _ => panic!("recovery created or deleted the log"),
    }
    let store0 = before.get(STORE);
    let store1 = after.get(STORE);
    if store0 != store1 {
        let Entry::File(p, _) = pending else {
            panic!("the store was replaced from a pending file that is a link: {pending:?}");
        };
        assert_eq!(
            store1,
            Some(pending),
            "the store was replaced by something else than the pending file"
        );
        let want = committed_anchor(log1.unwrap_or_default());
        assert_eq!(
            want.as_deref(),
            Some(sha256_hex(p).as_str()),
            "rolled forward to a pending file the last committed line does not record"
        );
    }

    // When the whole log verifies, the outcome is exactly the protocol's.
    let path = Path::new(LOG);
    let rep = verify_chain_bytes(log0.unwrap_or_default(), path).expect("in memory");
    if rep.first_error.is_some() {
        return;
    }
    let log0 = log0.unwrap_or_default();
    let kept = &log0[..log0.len() - rep.torn_bytes as usize];
    assert_eq!(
        log1.unwrap_or_default(),
        kept,
        "recovery removed other than the torn bytes `verify` finds"
    );
    let store_digest = content(before, STORE).map(sha256_hex);
    let roll = match (&rep.last_store_sha256, pending) {
        (Some(want), Entry::File(p, _)) => {
            store_digest.as_deref() != Some(want.as_str()) && sha256_hex(p) == *want
        }
        _ => false,
    };
    let expected_store = if roll { Some(pending) } else { store0 };
    assert_eq!(
        store1, expected_store,
        "roll-forward decision differs from the protocol (roll forward: {roll})"
    );
}

/// The verdict an independent full-chain check gives, when the chain verifies.
fn expected_integrity(
    store: Option<&[u8]>,
    keys: &KeyMap,
    log: Option<&[u8]>,
) -> Option<Integrity> {
    let rep = verify_chain_bytes(log.unwrap_or_default(), Path::new(LOG)).expect("in memory");
    if rep.first_error.is_some() {
        return None;
    }
    let digest = store.map(sha256_hex);
    let ours = keys.values().any(|r| r.origin.is_some());
    Some(match rep.last_store_sha256 {
        Some(w) if digest.as_deref() == Some(w.as_str()) => Integrity::Recorded,
        Some(_) => Integrity::Mismatch,
        None if ours => Integrity::Erased,
        None => Integrity::NoChainYet,
    })
}

/// The group and other bits the `modes` section gives `name` (lines `NAME OCTAL`: `dir`,
/// `store` or `log`, e.g. `store 644`), if any; the first line for a name counts.
fn group_other_mode(section: &[u8], name: &str) -> Option<u32> {
    std::str::from_utf8(section)
        .ok()?
        .lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(n, _)| n.trim() == name)
        .and_then(|(_, m)| u32::from_str_radix(m.trim(), 8).ok())
        .map(|m| m & 0o077)
}

/// `FUZZ_VERBOSE=1` prints every load's outcome and the files it changed (to check what the
/// seeds reach).
fn verbose() -> bool {
    static V: OnceLock<bool> = OnceLock::new();
    *V.get_or_init(|| std::env::var_os("FUZZ_VERBOSE").is_some())
}

fn opts() -> FileStoreOptions {
    FileStoreOptions {
        durability: Durability::UnsafeNoSync,
        lock_timeout: Duration::from_secs(5),
        on_lock_wait: None,
        default_ttl_secs: DEFAULT_TTL,
    }
}

/// A load's outcome, checked: `InsecurePermissions` naming `insecure` when it is set, else
/// `Ok` or `CorruptStore` naming the store, agreeing with a parse of the store file.
fn outcome(
    res: xai_keys_core::Result<Snapshot>,
    store_path: &Path,
    files: &Listing,
    insecure: Option<&(PathBuf, bool)>,
) -> Option<Snapshot> {
    if let Some((want, want_dir)) = insecure {
        match res {
            Err(Error::InsecurePermissions { path, is_dir, .. })
                if path == *want && is_dir == *want_dir =>
            {
                return None;
            }
            other => panic!(
                "{} is writable by others, but load gives {other:?}",
                want.display()
            ),
        }
    }
    let store = content(files, STORE);
    let parsed = store.map(|b| parse_store(b, store_path, CTX));
    match res {
        Ok(snap) => {
            match parsed {
                None => {
                    assert!(snap.keys.is_empty(), "keys served without a store file");
                    assert!(!snap.exists, "a missing store exists");
                }
                Some(Ok(keys)) => {
                    assert!(snap.exists, "an existing store does not exist");
                    assert!(
                        keys == snap.keys,
                        "load served other records than the file holds"
                    );
                }
                Some(Err(e)) => panic!("load succeeded on a store that does not parse: {e}"),
            }
            Some(snap)
        }
        Err(Error::CorruptStore { path, .. }) => {
            assert_eq!(path, store_path, "a corrupt store names its file");
            assert!(
                matches!(parsed, Some(Err(_))),
                "load reported a corrupt store for a file that parses (or none)"
            );
            None
        }
        Err(e) => panic!("load failed with something other than CorruptStore: {e:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let tmp = scratch();
    let dir = tmp.path().join("keys");
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .expect("the store directory");
    // The first section of each kind counts.
    let (mut store_file, mut log_file, mut pending_file) = (None, None, None);
    let mut modes: Option<&[u8]> = None;
    for (name, bytes) in split_files(data) {
        match name {
            b"modes" if modes.is_none() => modes = Some(bytes),
            b"store" if store_file.is_none() => store_file = Some(bytes),
            b"log" | b"chained-log" if log_file.is_none() => {
                log_file = Some((name == b"chained-log", bytes))
            }
            b"pending" | b"pending-link" if pending_file.is_none() => {
                pending_file = Some((name == b"pending-link", bytes))
            }
            _ => {}
        }
    }
    if let Some(b) = store_file {
        write_0600(&dir.join(STORE), b);
    }
    if let Some((chained, b)) = log_file {
        if chained {
            let log = rechain(b, store_file, pending_file.map(|p| p.1));
            write_0600(&dir.join(LOG), &log);
        } else {
            write_0600(&dir.join(LOG), b);
        }
    }
    if let Some((link, b)) = pending_file {
        if link {
            write_0600(&dir.join(LINK_TARGET), b);
            std::os::unix::fs::symlink(LINK_TARGET, dir.join(PENDING)).expect("a pending link");
        } else {
            write_0600(&dir.join(PENDING), b);
        }
    }
    let store_path = dir.join(STORE);
    // Group and other bits (the owner's are always there: the checks below must not depend on
    // running as root). The first of the directory, store and log writable by them is refused.
    let mut insecure = None;
    for (name, path, is_dir) in [
        ("dir", dir.clone(), true),
        ("store", store_path.clone(), false),
        ("log", dir.join(LOG), false),
    ] {
        let Some(m) = group_other_mode(modes.unwrap_or_default(), name) else {
            continue;
        };
        if !path.exists() {
            continue;
        }
        let owner = if is_dir { 0o700 } else { 0o600 };
        fs::set_permissions(&path, fs::Permissions::from_mode(owner | m)).expect("chmod");
        if m & 0o022 != 0 && insecure.is_none() {
            insecure = Some((path, is_dir));
        }
    }
    let before = list(&dir);

    let store = FileStore::new(&store_path, opts()).expect("a store path");
    let first = store.load(NOW);
    let after = list(&dir);
    if insecure.is_some() {
        assert_eq!(before, after, "a refused load changed the files");
    }
    check_changes(&before, &after);
    let snap = outcome(first, &store_path, &after, insecure.as_ref());
    if verbose() {
        let changed: std::collections::BTreeSet<&String> = before
            .keys()
            .chain(after.keys())
            .filter(|n| before.get(*n) != after.get(*n))
            .collect();
        eprintln!(
            "store_load: {} changed {changed:?} warnings {:?}",
            snap.as_ref().map_or("refused".into(), |s| format!(
                "{} keys, {:?},",
                s.keys.len(),
                s.integrity
            )),
            snap.as_ref().map(|s| &s.warnings)
        );
    }

    if let Some(s) = &snap {
        let digest = content(&after, STORE).map(sha256_hex);
        match expected_integrity(content(&after, STORE), &s.keys, content(&after, LOG)) {
            Some(want) => assert_eq!(s.integrity, want, "load's verdict differs from the chain's"),
            None => {
                if s.integrity == Integrity::Recorded {
                    // Some chained line records this store.
                    let d = digest.as_deref().expect("a recorded store exists");
                    let log = content(&after, LOG).unwrap_or_default();
                    let recorded = log.split(|&b| b == b'\n').any(|l| {
                        serde_json::from_slice::<AuditEvent>(l)
                            .is_ok_and(|o| is_chained(&o) && str_of(&o, "store_sha256") == Some(d))
                    });
                    assert!(recorded, "Recorded, but no chained line records the store");
                }
            }
        }
    }

    // Loading again, on the same object (its cache) and on a fresh one: nothing changes.
    let fresh = FileStore::new(&store_path, opts()).expect("a store path");
    for (who, s) in [("the same store", &store), ("a fresh store", &fresh)] {
        let again = s.load(NOW);
        assert_eq!(list(&dir), after, "loading again ({who}) changed the files");
        let again = outcome(again, &store_path, &after, insecure.as_ref());
        match (&snap, &again) {
            (Some(a), Some(b)) => {
                assert!(
                    a.keys == b.keys,
                    "loading again ({who}) served other records"
                );
                assert_eq!(
                    a.integrity, b.integrity,
                    "loading again ({who}): another verdict"
                );
            }
            (None, None) => {}
            _ => panic!("loading again ({who}) succeeded or failed differently"),
        }
    }

    // `verify` agrees with the load's verdict and changes nothing.
    let rep = store
        .verify(&Actor::System, NOW, VerifyOptions::default())
        .expect("verify reports, it does not fail");
    assert_eq!(list(&dir), after, "verify changed the files");
    if let Some(s) = &snap {
        let status = |name: &str| rep.checks.iter().find(|c| c.name == name).map(|c| c.status);
        if rep.ok {
            assert!(
                s.integrity.is_consistent(),
                "verify passes but load says {:?}",
                s.integrity
            );
        }
        if status("audit chain") == Some("ok") && status("store") != Some("fail") {
            assert_eq!(
                status("store matches log") == Some("ok"),
                s.integrity.is_consistent(),
                "verify and load disagree on the store against the log: {:?} / {:?}",
                rep.checks,
                s.integrity
            );
        }
    }
});
