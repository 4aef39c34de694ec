//! Restore semantics the CLI tests cannot stage: a live log that is not a continuation of the
//! backup's, with revocations whose timestamps predate the backup.

use std::io::Write;

use xai_keys_core::ops::KeyManager;
use xai_keys_core::store::KeyStore;

use crate::common::*;

#[test]
fn revocations_in_an_unrelated_live_log_are_honoured_whatever_their_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    let store_path = store_path(dir.path());
    let store = fast(&store_path);
    let mgr = KeyManager::new(&store, policy());
    let now = 1_800_000_000.0;
    let k1 = issue(&mgr, "one", now);
    let k2 = issue(&mgr, "two", now);
    let backup = dir.path().join("backup");
    store.backup(&backup, now + 10.0).unwrap();

    // The live log is replaced by one that is not a continuation of the backup's (say, rotated
    // by an operator); it records k1's revocation with a timestamp *before* the backup, as a
    // command that waited on the lock while the backup ran would.
    let log = sibling(&store_path, ".log");
    std::fs::remove_file(&log).unwrap();
    std::fs::remove_file(&store_path).unwrap();
    let mut f = std::fs::File::create(&log).unwrap();
    writeln!(
        f,
        "{{\"timestamp\": {}, \"action\": \"revoke\", \"key_id\": \"{k1}\"}}",
        now + 5.0
    )
    .unwrap();
    // k2 was revoked and then re-registered: its latest event is an issue, so it stays.
    writeln!(
        f,
        "{{\"timestamp\": {}, \"action\": \"revoke\", \"key_id\": \"{k2}\"}}",
        now + 6.0
    )
    .unwrap();
    writeln!(
        f,
        "{{\"timestamp\": {}, \"action\": \"issue\", \"key_id\": \"{k2}\"}}",
        now + 7.0
    )
    .unwrap();
    drop(f);

    let fresh = fast(&store_path);
    let rep = fresh.restore(&backup, &actor(), now + 20.0).unwrap();
    assert_eq!(rep.revoked_since_backup, vec![k1.clone()]);
    let ids = ids_in_file(&store_path);
    assert!(
        !ids.contains(&k1),
        "a revoked key came back from the backup"
    );
    assert!(ids.contains(&k2));
    let v = fresh
        .verify(&actor(), now + 30.0, Default::default())
        .unwrap();
    assert!(v.ok, "{v:?}");
}
