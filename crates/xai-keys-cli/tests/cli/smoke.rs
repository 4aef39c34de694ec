//! A first end-to-end pass: issue, list, revoke, verify.

use crate::common::*;

#[test]
fn issue_list_revoke_verify() {
    let env = Env::new();
    let (plain, id) = env.issue("user", "svc");
    assert!(plain.starts_with("xai_"));
    assert_eq!(env.ids(), vec![id.clone()]);
    if !env.is_etcd() {
        assert_eq!(mode(&env.store), 0o600);
        assert_eq!(mode(env.store.parent().unwrap()), 0o700);
    }
    assert!(!env.persisted().contains(&plain));
    let v = env.ok(&["revoke", &id[..12]]);
    assert_eq!(v["revoked"], true);
    assert!(env.ids().is_empty());
    let (code, rep) = env.verify();
    assert_eq!(code, 0, "{rep}");
}
