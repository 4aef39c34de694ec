//! Emergency lockdown against a real file store: the lockdown file and its audit lines, the
//! fail-safe order, a damaged file, and that lockdown never blocks key changes.

use xai_keys_core::lockdown::{self, EngageLockdown};
use xai_keys_core::ops::KeyManager;
use xai_keys_core::store::KeyStore;

use crate::common::*;

const T0: f64 = 1_800_000_000.0;

fn actions(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(sibling(path, ".log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn on_and_off_are_audited_and_the_file_is_what_gateways_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_path(dir.path());
    let store = fast(&path);
    assert_eq!(store.lockdown().unwrap(), None);
    // Off when not on: nothing written.
    assert!(
        lockdown::release(&store, "nothing", &actor(), T0)
            .unwrap()
            .is_none()
    );
    assert!(actions(&path).is_empty());

    let l = lockdown::engage(
        &store,
        &EngageLockdown {
            reason: "suspected admin key leak".into(),
            ticket: "INC-42".into(),
            admin_networks: vec!["10.8.1.2/16".into(), "fd00:8::/48".into()],
        },
        &actor(),
        T0,
    )
    .unwrap();
    assert_eq!(l.admin_networks, vec!["10.8.0.0/16", "fd00:8::/48"]);
    assert_eq!(store.lockdown().unwrap(), Some(l.clone()));
    {
        use std::os::unix::fs::PermissionsExt;
        let m = std::fs::metadata(sibling(&path, ".lockdown"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(m & 0o777, 0o600);
    }
    let log = actions(&path);
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["action"], "lockdown_on");
    assert_eq!(log[0]["ticket"], "INC-42");
    assert_eq!(log[0]["admin_networks"][0], "10.8.0.0/16");

    // Replacing it keeps its start and says so.
    let l2 = lockdown::engage(
        &store,
        &EngageLockdown {
            reason: "widen to the VPN".into(),
            ..Default::default()
        },
        &actor(),
        T0 + 60.0,
    )
    .unwrap();
    assert_eq!(l2.since, T0);
    assert_eq!(l2.effective_networks(), vec!["127.0.0.0/8", "::1/128"]);
    assert_eq!(actions(&path)[1]["replaces_previous"], true);

    // Key changes go on during a lockdown (revoking is what one does in an incident).
    let mgr = KeyManager::new(&store, policy());
    issue(&mgr, "during", T0 + 70.0);

    let off = lockdown::release(&store, "contained", &actor(), T0 + 600.0)
        .unwrap()
        .unwrap();
    assert_eq!(off.reason, "widen to the VPN");
    assert_eq!(store.lockdown().unwrap(), None);
    assert!(!sibling(&path, ".lockdown").exists());
    let log = actions(&path);
    let last = log.last().unwrap();
    assert_eq!(last["action"], "lockdown_off");
    assert_eq!(last["duration_seconds"], 600.0);
    assert!(
        store
            .verify(&actor(), T0 + 601.0, Default::default())
            .unwrap()
            .ok
    );
}

#[test]
fn bad_requests_are_refused_by_name_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_path(dir.path());
    let store = fast(&path);
    let e = lockdown::engage(&store, &EngageLockdown::default(), &actor(), T0).unwrap_err();
    assert!(e.to_string().contains("reason"), "{e}");
    let e = lockdown::engage(
        &store,
        &EngageLockdown {
            reason: "x".into(),
            admin_networks: vec!["10.0.0.0/40".into()],
            ..Default::default()
        },
        &actor(),
        T0,
    )
    .unwrap_err();
    assert!(e.to_string().contains("10.0.0.0/40"), "{e}");
    assert!(!sibling(&path, ".lockdown").exists());
    assert!(actions(&path).is_empty());
}

#[test]
fn a_damaged_lockdown_file_is_reported_and_can_be_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_path(dir.path());
    let store = fast(&path);
    let mgr = KeyManager::new(&store, policy());
    issue(&mgr, "first", T0);
    std::fs::write(sibling(&path, ".lockdown"), b"{\"reason\": 12").unwrap();
    let e = store.lockdown().unwrap_err();
    assert_eq!(e.code(), "corrupt_lockdown");
    assert!(e.to_string().contains("loopback only"), "{e}");
    // Off writes its line and removes the damaged file.
    let info = store
        .set_lockdown(
            &actor(),
            T0 + 1.0,
            None,
            xai_keys_core::audit::AuditDraft::new("lockdown_off", None).with("reason", "cleanup"),
        )
        .unwrap();
    assert!(info.is_some());
    assert!(!sibling(&path, ".lockdown").exists());
    // A link in place of the file is refused, never followed.
    std::os::unix::fs::symlink("/etc/hostname", sibling(&path, ".lockdown")).unwrap();
    assert!(store.lockdown().is_err());
}
