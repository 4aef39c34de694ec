//! Change windows against a real file store: the window file, its audit lines, the ticket on
//! lifecycle lines, and that a bad window file never blocks a change.

use xai_keys_core::ops::KeyManager;
use xai_keys_core::store::KeyStore;
use xai_keys_core::window::{self, OpenWindow};

use crate::common::*;

const T0: f64 = 1_800_000_000.0;

#[test]
fn a_window_marks_the_lines_written_while_it_is_open_and_expires_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_path(dir.path());
    let store = fast(&path);
    let mgr = KeyManager::new(&store, policy());
    let w = window::open(
        &store,
        &OpenWindow {
            ticket: "CHG-7".into(),
            reason: "quarterly rotation".into(),
            duration_secs: 3600.0,
        },
        &actor(),
        T0,
    )
    .unwrap();
    assert_eq!(w.expires_at, T0 + 3600.0);
    {
        use std::os::unix::fs::PermissionsExt;
        let m = std::fs::metadata(sibling(&path, ".window"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(m & 0o777, 0o600);
    }
    issue(&mgr, "inside", T0 + 10.0);
    // After the end, nothing is marked, without anyone closing it.
    issue(&mgr, "after", T0 + 3600.0);
    assert!(window::current(&store, T0 + 3600.0).unwrap().is_none());
    let lines = log_events(&sibling(&path, ".log"));
    let by = |a: &str, label: &str| {
        lines
            .iter()
            .find(|e| action(e) == a && e.get("label").and_then(|v| v.as_str()) == Some(label))
            .cloned()
            .unwrap()
    };
    assert_eq!(by("issue", "inside")["change_window"], "CHG-7");
    assert!(by("issue", "after").get("change_window").is_none());
    let open = lines.iter().find(|e| action(e) == "window_open").unwrap();
    assert_eq!(open["ticket"], "CHG-7");
    assert_eq!(open["reason"], "quarterly rotation");
    // The log still verifies with the window lines in it.
    let report = store
        .verify(&actor(), T0 + 4000.0, Default::default())
        .unwrap();
    assert!(report.ok, "{report:?}");
}

#[test]
fn closing_removes_the_window_and_is_audited_and_a_second_open_is_refused_while_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_path(dir.path());
    let store = fast(&path);
    let req = |t: &str| OpenWindow {
        ticket: t.into(),
        reason: String::new(),
        duration_secs: 600.0,
    };
    window::open(&store, &req("A"), &actor(), T0).unwrap();
    let e = window::open(&store, &req("B"), &actor(), T0 + 1.0).unwrap_err();
    assert_eq!(e.code(), "window_open");
    assert!(e.to_string().contains("\"A\""), "{e}");
    let closed = window::close(&store, "done early", &actor(), T0 + 2.0).unwrap();
    assert_eq!(closed.map(|w| w.ticket).as_deref(), Some("A"));
    assert!(!sibling(&path, ".window").exists());
    assert!(
        window::close(&store, "", &actor(), T0 + 3.0)
            .unwrap()
            .is_none()
    );
    window::open(&store, &req("B"), &actor(), T0 + 4.0).unwrap();
    let lines = log_events(&sibling(&path, ".log"));
    let actions: Vec<&str> = lines.iter().map(action).collect();
    assert_eq!(actions, ["window_open", "window_close", "window_open"]);
    assert_eq!(lines[1]["reason"], "done early");
}

#[test]
fn a_corrupt_window_file_never_blocks_a_change() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_path(dir.path());
    let store = fast(&path);
    let mgr = KeyManager::new(&store, policy());
    let id = issue(&mgr, "k", T0);
    std::fs::write(sibling(&path, ".window"), b"{not json").unwrap();
    let e = store.change_window().unwrap_err();
    assert_eq!(e.code(), "corrupt_window");
    assert!(e.to_string().contains("rm "), "{e}");
    // The emergency revoke goes ahead, recorded as outside a window, with a warning.
    mgr.revoke(&id, None, &actor(), T0 + 1.0).unwrap();
    let warnings = mgr.take_warnings();
    assert!(
        warnings.iter().any(|w| w.contains("change window unknown")),
        "{warnings:?}"
    );
    let lines = log_events(&sibling(&path, ".log"));
    let revoke = lines.iter().find(|e| action(e) == "revoke").unwrap();
    assert!(revoke.get("change_window").is_none());
}

#[test]
fn a_hostile_window_file_is_refused_without_blocking_or_believing_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_path(dir.path());
    let store = fast(&path);
    let mgr = KeyManager::new(&store, policy());
    let id = issue(&mgr, "k", T0);
    let wpath = sibling(&path, ".window");
    // A window of years, written by hand: not believed.
    std::fs::write(
        &wpath,
        br#"{"ticket":"X","reason":"","opened_at":0,"expires_at":1e12,"opened_by":"me"}"#,
    )
    .unwrap();
    let e = store.change_window().unwrap_err();
    assert_eq!(e.code(), "corrupt_window");
    assert!(e.to_string().contains("cannot write"), "{e}");
    // A FIFO: refused at once instead of blocking every command.
    std::fs::remove_file(&wpath).unwrap();
    let st = std::process::Command::new("mkfifo")
        .arg(&wpath)
        .status()
        .unwrap();
    assert!(st.success());
    let started = std::time::Instant::now();
    let e = store.change_window().unwrap_err();
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    assert!(e.to_string().contains("not a regular file"), "{e}");
    // A symbolic link is not followed.
    std::fs::remove_file(&wpath).unwrap();
    let real = dir.path().join("elsewhere");
    std::fs::write(
        &real,
        br#"{"ticket":"Y","reason":"","opened_at":1,"expires_at":2,"opened_by":"me"}"#,
    )
    .unwrap();
    std::os::unix::fs::symlink(&real, &wpath).unwrap();
    assert!(store.change_window().is_err());
    // None of it blocks a revoke, which is recorded as outside a window.
    mgr.revoke(&id, None, &actor(), T0 + 1.0).unwrap();
    let lines = log_events(&sibling(&path, ".log"));
    let revoke = lines.iter().find(|e| action(e) == "revoke").unwrap();
    assert!(revoke.get("change_window").is_none());
}

#[test]
fn a_follower_resumes_on_a_copied_log_by_the_hash_of_its_last_line() {
    use xai_keys_core::audit::FollowFrom;
    let dir = tempfile::tempdir().unwrap();
    let path = store_path(dir.path());
    let store = fast(&path);
    let mgr = KeyManager::new(&store, policy());
    issue(&mgr, "a", T0);
    issue(&mgr, "b", T0 + 1.0);
    let log = sibling(&path, ".log");
    let mut f = store
        .log_follower(Some(FollowFrom {
            offset: 0,
            file_id: None,
            last_hash: None,
        }))
        .unwrap();
    let seen = f.poll().unwrap().events;
    assert_eq!(seen.len(), 2);
    let saved = FollowFrom {
        offset: f.offset(),
        file_id: f.file_id(),
        last_hash: seen[1]
            .get("hash")
            .and_then(|v| v.as_str())
            .map(str::to_string),
    };
    // The log is copied (a snapshot restore, another device): a new inode, the same bytes.
    let copy = dir.path().join("copy");
    std::fs::copy(&log, &copy).unwrap();
    std::fs::rename(&copy, &log).unwrap();
    issue(&mgr, "c", T0 + 2.0);
    let mut f = store.log_follower(Some(saved.clone())).unwrap();
    let b = f.poll().unwrap();
    assert!(b.reset.is_none(), "{:?}", b.reset);
    assert_eq!(b.events.len(), 1, "only the new line");
    assert_eq!(b.events[0]["label"], "c");
    // A different log at the same place (its line at the offset is another): read from the start.
    let mut other = saved;
    other.last_hash = Some("0".repeat(64));
    let mut f = store.log_follower(Some(other)).unwrap();
    let b = f.poll().unwrap();
    assert!(b.reset.is_some());
    assert_eq!(b.events.len(), 3);
}
