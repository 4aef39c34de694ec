//! Operator experience: ownership kept when root runs a command, permission refusals that name
//! the right fix, readers held to the writers' checks, `verify` on a corrupt store, refusals
//! that name the way out, text rules that name their field, and a writer waiting for a lock.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use xai_keys_core::ops::{IssueRequest, KeyManager, RotateRequest, is_unsafe_text_char};
use xai_keys_core::policy::TtlRequest;
use xai_keys_core::store::{Durability, FileStore, FileStoreOptions, KeyStore, VerifyOptions};
use xai_keys_core::{Error, PlainToken, Scope};

use crate::common::*;

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// `id -u nobody`, `id -g nobody`.
fn nobody() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = std::process::Command::new("id")
            .args([flag, "nobody"])
            .output()
            .unwrap();
        assert!(out.status.success(), "id {flag} nobody failed");
        String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    (id("-u"), id("-g"))
}

/// `chown -R uid:gid path`.
fn chown_tree(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
    if path.is_dir() {
        for e in std::fs::read_dir(path).unwrap() {
            chown_tree(&e.unwrap().path(), uid, gid);
        }
    }
}

fn owner(p: &Path) -> (u32, u32) {
    let m = std::fs::metadata(p).unwrap();
    (m.uid(), m.gid())
}

fn request(label: &str) -> IssueRequest {
    IssueRequest {
        scope: Scope::User,
        label: label.into(),
        ttl: TtlRequest::Default,
        secret: None,
    }
}

// ---------------------------------------------------------------------------------------------
// C3: root keeps the store's owner

/// `sudo xai-keys issue` on a store `nobody` owns used to leave a root-owned 0600 store (and,
/// on a fresh store, a root-owned log and lock file): the service running as `nobody` then got
/// EACCES. Files root writes keep the store's (or, for a new store, the directory's) owner.
#[test]
fn running_as_root_keeps_the_store_with_its_owner() {
    if !is_root() {
        eprintln!("skipped: not running as root");
        return;
    }
    let (uid, gid) = nobody();
    let dir = tempfile::tempdir().unwrap();
    let sp = store_path(dir.path());
    let keys_dir = sp.parent().unwrap().to_path_buf();
    let files = [sp.clone(), sibling(&sp, ".log"), sibling(&sp, ".lock")];

    // An existing store, chown -R nobody.
    let store = fast(&sp);
    let m = KeyManager::new(&store, policy());
    issue(&m, "a", T0);
    chown_tree(&keys_dir, uid, gid);
    let id = issue(&m, "b", T0 + 1.0);
    for f in &files {
        assert_eq!(
            owner(f),
            (uid, gid),
            "{} was taken from nobody",
            f.display()
        );
        assert_eq!(std::fs::metadata(f).unwrap().mode() & 0o777, 0o600);
    }
    // Every kind of commit: revoke, rotate, verify --adopt.
    m.revoke(&id, None, &actor(), T0 + 2.0).unwrap();
    let k = issue(&m, "c", T0 + 3.0);
    m.rotate(&k, RotateRequest::default(), &actor(), T0 + 4.0)
        .unwrap();
    store
        .verify(&actor(), T0 + 5.0, VerifyOptions { adopt: true })
        .unwrap();
    for f in &files {
        assert_eq!(
            owner(f),
            (uid, gid),
            "{} was taken from nobody",
            f.display()
        );
    }

    // A fresh store in a directory nobody owns: store, log and lock are nobody's.
    let dir2 = tempfile::tempdir().unwrap();
    let sp2 = store_path(dir2.path());
    std::fs::create_dir(sp2.parent().unwrap()).unwrap();
    chmod(sp2.parent().unwrap(), 0o700);
    chown_tree(sp2.parent().unwrap(), uid, gid);
    let store2 = fast(&sp2);
    issue(&KeyManager::new(&store2, policy()), "first", T0);
    for f in [sp2.clone(), sibling(&sp2, ".log"), sibling(&sp2, ".lock")] {
        assert_eq!(owner(&f), (uid, gid), "{} is not nobody's", f.display());
    }

    // Root's own store stays root's.
    let dir3 = tempfile::tempdir().unwrap();
    let sp3 = store_path(dir3.path());
    issue(&KeyManager::new(&fast(&sp3), policy()), "root", T0);
    assert_eq!(owner(&sp3).0, 0);
}

// ---------------------------------------------------------------------------------------------
// C4: the fix for a directory is chmod 700

#[test]
fn insecure_permissions_name_chmod_700_for_a_directory_and_600_for_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let sp = store_path(dir.path());
    let store = fast(&sp);
    let m = KeyManager::new(&store, policy());
    issue(&m, "a", T0);
    let keys_dir = sp.parent().unwrap();

    chmod(keys_dir, 0o777);
    let e = m.issue(request("x"), &actor(), T0 + 1.0).unwrap_err();
    assert_eq!(e.code(), "insecure_permissions");
    let msg = e.to_string();
    let d = keys_dir.display();
    assert!(msg.contains(&format!("chmod 700 {d}")), "{msg}");
    assert!(!msg.contains("chmod 600"), "{msg}");
    chmod(keys_dir, 0o700);

    chmod(&sp, 0o666);
    let e = m.issue(request("x"), &actor(), T0 + 1.0).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("chmod 600 {}", sp.display())),
        "{msg}"
    );
    assert!(!msg.contains("chmod 700"), "{msg}");
    chmod(&sp, 0o600);

    // The readable-by-others warning says the same.
    chmod(keys_dir, 0o750);
    let w = store.load(T0 + 2.0).unwrap().warnings;
    assert!(
        w.iter().any(|w| w.contains(&format!("chmod 700 {d}"))),
        "{w:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// C5: readers apply the writers' directory check, before any roll-forward

#[test]
fn readers_refuse_a_directory_writable_by_others_and_warn_when_readable() {
    let dir = tempfile::tempdir().unwrap();
    let sp = store_path(dir.path());
    let store = fast(&sp);
    let id = issue(&KeyManager::new(&store, policy()), "a", T0);
    let keys_dir = sp.parent().unwrap();

    for mode in [0o770, 0o707, 0o777] {
        chmod(keys_dir, mode);
        let e = fast(&sp).load(T0 + 1.0).unwrap_err();
        assert!(
            matches!(&e, Error::InsecurePermissions { path, is_dir: true, .. } if path == keys_dir),
            "mode {mode:o}: {e:?}"
        );
        assert!(e.to_string().contains("chmod 700"), "{e}");
    }
    chmod(keys_dir, 0o750);
    let snap = fast(&sp).load(T0 + 1.0).unwrap();
    assert!(snap.keys.keys().any(|k| k.as_str() == id));
    assert!(
        snap.warnings
            .iter()
            .any(|w| w.contains(&keys_dir.display().to_string()) && w.contains("readable")),
        "{:?}",
        snap.warnings
    );
    chmod(keys_dir, 0o700);
    assert!(fast(&sp).load(T0 + 1.0).unwrap().warnings.is_empty());
}

/// A commit interrupted after its audit lines (pending file complete, store not yet renamed)
/// is completed by the next reader, but never in a directory others can write to: there the
/// pending file may be theirs. Neither `load` nor `verify` (nor `backup`, nor `restore`) rolls
/// forward before the check.
#[test]
fn readers_do_not_roll_forward_before_the_permission_checks() {
    let dir = tempfile::tempdir().unwrap();
    let sp = store_path(dir.path());
    let pending = sibling(&sp, ".pending");
    let store = fast(&sp);
    let m = KeyManager::new(&store, policy());
    issue(&m, "a", T0);
    let bk = dir.path().join("bk");
    store.backup(&bk, T0).unwrap();
    let old = std::fs::read(&sp).unwrap();
    let id = issue(&m, "b", T0 + 1.0);
    let new = std::fs::read(&sp).unwrap();
    // The crash: the log has the second issue, the store is the old one, pending the new one.
    write_private(&pending, &new);
    std::fs::write(&sp, &old).unwrap();
    let keys_dir = sp.parent().unwrap();
    chmod(keys_dir, 0o770);

    let e = fast(&sp).load(T0 + 2.0).unwrap_err();
    assert_eq!(e.code(), "insecure_permissions", "{e}");
    assert!(pending.exists(), "a reader rolled forward before refusing");
    assert_eq!(std::fs::read(&sp).unwrap(), old);

    let rep = fast(&sp)
        .verify(&actor(), T0 + 2.0, VerifyOptions::default())
        .unwrap();
    assert!(!rep.ok);
    assert!(pending.exists(), "verify rolled forward despite {rep:?}");
    assert_eq!(std::fs::read(&sp).unwrap(), old);

    let e = fast(&sp)
        .backup(&dir.path().join("bk2"), T0 + 2.0)
        .unwrap_err();
    assert_eq!(e.code(), "insecure_permissions", "{e}");
    let e = fast(&sp).restore(&bk, &actor(), T0 + 2.0).unwrap_err();
    assert_eq!(e.code(), "insecure_permissions", "{e}");
    assert!(
        pending.exists(),
        "backup or restore rolled forward before refusing"
    );
    assert_eq!(std::fs::read(&sp).unwrap(), old);

    chmod(keys_dir, 0o700);
    let snap = fast(&sp).load(T0 + 3.0).unwrap();
    assert!(snap.keys.keys().any(|k| k.as_str() == id));
    assert!(!pending.exists());
    assert_eq!(std::fs::read(&sp).unwrap(), new);
}

// ---------------------------------------------------------------------------------------------
// C7: verify does not suggest adopting a store it cannot read

#[test]
fn verify_does_not_suggest_adopting_a_corrupt_store() {
    let dir = tempfile::tempdir().unwrap();
    let sp = store_path(dir.path());
    let store = fast(&sp);
    issue(&KeyManager::new(&store, policy()), "a", T0);
    std::fs::write(&sp, b"{\"truncated\": ").unwrap();
    let rep = store
        .verify(&actor(), T0 + 1.0, VerifyOptions::default())
        .unwrap();
    assert!(!rep.ok, "{rep:?}");
    let check = |name: &str| {
        rep.checks
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no {name} check in {rep:?}"))
    };
    assert_eq!(check("store").status, "fail");
    let m = check("store matches log");
    assert_ne!(m.status, "fail", "{m:?}");
    assert!(!m.detail.contains("--adopt"), "{m:?}");
    assert!(m.detail.contains("not checked"), "{m:?}");
    // A store that parses but is not the logged state still fails, with the way out.
    std::fs::write(&sp, b"{}\n").unwrap();
    let rep = store
        .verify(&actor(), T0 + 1.0, VerifyOptions::default())
        .unwrap();
    let m = rep
        .checks
        .iter()
        .find(|c| c.name == "store matches log")
        .unwrap();
    assert_eq!(m.status, "fail", "{m:?}");
    assert!(m.detail.contains("--adopt"), "{m:?}");
}

// ---------------------------------------------------------------------------------------------
// C8: refusals name the way out (codes unchanged)

#[test]
fn state_and_duplicate_refusals_name_the_way_out() {
    let dir = tempfile::tempdir().unwrap();
    let sp = store_path(dir.path());
    let store = fast(&sp);
    let m = KeyManager::new(&store, policy());

    // Disabled: enable first.
    let id = issue(&m, "d", T0);
    m.set_disabled(&id, true, &actor(), T0 + 1.0).unwrap();
    let e = m
        .rotate(&id, RotateRequest::default(), &actor(), T0 + 2.0)
        .unwrap_err();
    assert_eq!(e.code(), "key_state");
    assert!(
        e.to_string().contains(&format!("xai-keys enable {id}")),
        "{e}"
    );

    // Expired: issue a new key.
    let exp = m
        .issue(
            IssueRequest {
                ttl: TtlRequest::Seconds(10.0),
                ..request("e")
            },
            &actor(),
            T0,
        )
        .unwrap()
        .info
        .key_id
        .to_string();
    let e = m
        .rotate(&exp, RotateRequest::default(), &actor(), T0 + 100.0)
        .unwrap_err();
    assert_eq!(e.code(), "key_state");
    assert!(
        e.to_string().contains("expired") && e.to_string().contains("xai-keys issue"),
        "{e}"
    );

    // Already rotated: rotate the replacement.
    let old = issue(&m, "r", T0);
    let r = m
        .rotate(
            &old,
            RotateRequest {
                grace_secs: 3600.0,
                ..RotateRequest::default()
            },
            &actor(),
            T0 + 1.0,
        )
        .unwrap();
    let e = m
        .rotate(&old, RotateRequest::default(), &actor(), T0 + 2.0)
        .unwrap_err();
    assert_eq!(e.code(), "key_state");
    let new_id = r.new.info.key_id.to_string();
    assert!(
        e.to_string().contains(&format!("xai-keys rotate {new_id}")),
        "{e}"
    );

    // A secret already registered as a user key cannot become the admin key.
    let secret = "s".repeat(40);
    m.issue(
        IssueRequest {
            secret: Some(PlainToken::from_supplied(&secret).unwrap()),
            ..request("user")
        },
        &actor(),
        T0,
    )
    .unwrap();
    let e = m
        .bootstrap_admin(
            &PlainToken::from_supplied(&secret).unwrap(),
            "admin",
            TtlRequest::Default,
            &actor(),
            T0 + 1.0,
        )
        .unwrap_err();
    assert_eq!(e.code(), "key_state");
    assert!(e.to_string().contains("different secret"), "{e}");

    // Duplicate: already registered, use a new one.
    let e = m
        .issue(
            IssueRequest {
                secret: Some(PlainToken::from_supplied(&secret).unwrap()),
                ..request("again")
            },
            &actor(),
            T0 + 2.0,
        )
        .unwrap_err();
    assert_eq!(e.code(), "duplicate");
    let msg = e.to_string();
    assert!(
        msg.contains("already registered") && msg.contains("xai-keys list") && msg.contains("new"),
        "{msg}"
    );
}

// ---------------------------------------------------------------------------------------------
// C9, C10: text rules name their field and refuse bidirectional controls

#[test]
fn a_bad_reason_is_reported_as_the_reason_not_the_label() {
    let dir = tempfile::tempdir().unwrap();
    let sp = store_path(dir.path());
    let store = fast(&sp);
    let m = KeyManager::new(&store, policy());
    let id = issue(&m, "a", T0);
    let log_before = std::fs::read(sibling(&sp, ".log")).unwrap();
    for reason in ["two\nlines".to_string(), "r".repeat(300)] {
        let e = m
            .revoke(&id, Some(&reason), &actor(), T0 + 1.0)
            .unwrap_err();
        assert_eq!(e.code(), "invalid_reason", "{e}");
        let msg = e.to_string();
        assert!(msg.contains("reason") && !msg.contains("label"), "{msg}");
    }
    assert_eq!(std::fs::read(sibling(&sp, ".log")).unwrap(), log_before);
    m.revoke(&id, Some("INC-42"), &actor(), T0 + 2.0).unwrap();
}

#[test]
fn labels_and_reasons_refuse_unicode_bidirectional_controls() {
    let bidi = [
        '\u{061C}', '\u{200E}', '\u{200F}', '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}',
        '\u{202E}', '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}',
    ];
    for c in bidi {
        assert!(is_unsafe_text_char(c), "U+{:04X}", c as u32);
    }
    for c in ['a', 'é', '日', ' ', '-', '\u{200D}', '\u{2070}', '\u{202F}'] {
        assert!(!is_unsafe_text_char(c), "U+{:04X}", c as u32);
    }
    assert!(is_unsafe_text_char('\n') && is_unsafe_text_char('\u{1b}'));

    let dir = tempfile::tempdir().unwrap();
    let sp = store_path(dir.path());
    let store = fast(&sp);
    let m = KeyManager::new(&store, policy());
    let id = issue(&m, "a", T0);
    for c in bidi {
        let label = format!("prod{c}dorp");
        let e = m.issue(request(&label), &actor(), T0).unwrap_err();
        assert_eq!(e.code(), "invalid_label", "U+{:04X}: {e}", c as u32);
        assert!(e.to_string().contains("bidirectional"), "{e}");
        let e = m
            .import(
                &"c".repeat(64),
                Scope::User,
                &label,
                TtlRequest::Default,
                &actor(),
                T0,
            )
            .unwrap_err();
        assert_eq!(e.code(), "invalid_label");
        let e = m
            .rotate(
                &id,
                RotateRequest {
                    label: Some(label.clone()),
                    ..RotateRequest::default()
                },
                &actor(),
                T0,
            )
            .unwrap_err();
        assert_eq!(e.code(), "invalid_label");
        let e = m.revoke(&id, Some(&label), &actor(), T0).unwrap_err();
        assert_eq!(e.code(), "invalid_reason");
    }
    assert_eq!(ids_in_file(&sp).len(), 1);
}

// ---------------------------------------------------------------------------------------------
// C11: a writer waiting for the lock says so

static LOCK_WAITS: AtomicUsize = AtomicUsize::new(0);

fn count_lock_wait(p: &Path) {
    assert!(p.to_string_lossy().ends_with(".lock"), "{}", p.display());
    LOCK_WAITS.fetch_add(1, Ordering::SeqCst);
}

/// Holds `lock` with util-linux `flock` (another process) until killed; `None` without it.
fn hold_lock(lock: &Path, secs: u32) -> Option<std::process::Child> {
    let child = std::process::Command::new("flock")
        .arg("-o")
        .arg(lock)
        .args(["sleep", &secs.to_string()])
        .spawn()
        .ok()?;
    // Wait until it holds the lock.
    let probe = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(lock)
        .unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        match probe.try_lock() {
            Ok(()) => {
                probe.unlock().unwrap();
                assert!(Instant::now() < until, "flock never took the lock");
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(std::fs::TryLockError::WouldBlock) => return Some(child),
            Err(e) => panic!("probing the lock: {e:?}"),
        }
    }
}

#[test]
fn a_writer_waiting_for_another_processs_lock_says_so_once() {
    let dir = tempfile::tempdir().unwrap();
    let sp = store_path(dir.path());
    issue(&KeyManager::new(&fast(&sp), policy()), "a", T0);
    let Some(mut holder) = hold_lock(&sibling(&sp, ".lock"), 4) else {
        eprintln!("skipped: no `flock` binary");
        return;
    };
    let store = FileStore::new(
        &sp,
        FileStoreOptions {
            durability: Durability::UnsafeNoSync,
            lock_timeout: Duration::from_millis(1600),
            on_lock_wait: Some(count_lock_wait),
            ..FileStoreOptions::default()
        },
    )
    .unwrap();
    let started = Instant::now();
    let e = KeyManager::new(&store, policy())
        .issue(request("b"), &actor(), T0 + 1.0)
        .unwrap_err();
    let waited = started.elapsed();
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert_eq!(e.code(), "lock_timeout", "{e}");
    assert!(waited >= Duration::from_millis(1600), "{waited:?}");
    assert_eq!(LOCK_WAITS.load(Ordering::SeqCst), 1);
    // Free again: no wait, no call.
    KeyManager::new(&store, policy())
        .issue(request("c"), &actor(), T0 + 2.0)
        .unwrap();
    assert_eq!(LOCK_WAITS.load(Ordering::SeqCst), 1);
}
