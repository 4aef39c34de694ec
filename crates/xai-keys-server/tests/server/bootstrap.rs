//! The first admin key of a new deployment.

use xai_keys_core::PlainToken;
use xai_keys_core::audit::EventQuery;
use xai_keys_core::ops::KeyManager;
use xai_keys_core::policy::TtlRequest;
use xai_keys_core::scope::Scope;
use xai_keys_core::store::KeyStore;
use xai_keys_server::Gateway;
use xai_keys_server::bootstrap::{AUTO_LABEL, Bootstrap, bootstrap};

use crate::common::*;

fn events(store: &dyn KeyStore) -> usize {
    store
        .events(&EventQuery {
            limit: 1000,
            ..Default::default()
        })
        .map(|p| p.events.len())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_brand_new_store_gets_one_generated_admin_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_path(dir.path());
    let store = open_store(&path);
    let issued = match bootstrap(store.as_ref(), policy(), None, true, T0).unwrap() {
        Bootstrap::Generated(k) => k,
        other => panic!("{other:?}"),
    };
    assert_eq!(issued.info.record.scope, Scope::Admin);
    assert_eq!(issued.info.record.label, AUTO_LABEL);
    assert!(
        !issued.info.record.permanent,
        "the default lifetime applies"
    );
    assert_eq!(events(store.as_ref()), 1, "audited once");
    // Not again.
    assert!(matches!(
        bootstrap(store.as_ref(), policy(), None, true, T0 + 1.0).unwrap(),
        Bootstrap::NotNeeded
    ));
    assert_eq!(store.load(T0).unwrap().keys.len(), 1);
    // The generated key administers a gateway on that store.
    let clock = TestClock::new(T0);
    let gw = Gateway::start(test_config(), store.clone(), clock.clock()).unwrap();
    let key = Key {
        secret: issued.plaintext.expose().to_string(),
        id: issued.info.key_id.to_string(),
    };
    let resp = tower::ServiceExt::oneshot(
        gw.router()
            .layer(axum::extract::connect_info::MockConnectInfo(local_peer())),
        get("/admin/api-keys").admin(&key).build(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
}

#[test]
fn a_store_with_history_is_never_bootstrapped_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&store_path(dir.path()));
    let k = issue(store.as_ref(), Scope::User, "only", TtlRequest::Default, T0);
    KeyManager::new(store.as_ref(), policy())
        .revoke(&k.id, None, &cli_actor(), T0)
        .unwrap();
    assert!(store.load(T0).unwrap().keys.is_empty());
    let before = events(store.as_ref());
    for auto in [true, false] {
        assert!(matches!(
            bootstrap(store.as_ref(), policy(), None, auto, T0).unwrap(),
            Bootstrap::NotNeeded
        ));
    }
    assert!(store.load(T0).unwrap().keys.is_empty());
    assert_eq!(events(store.as_ref()), before, "nothing written");
    // A store that has keys is not bootstrapped either.
    issue(
        store.as_ref(),
        Scope::User,
        "again",
        TtlRequest::Default,
        T0,
    );
    assert!(matches!(
        bootstrap(store.as_ref(), policy(), None, true, T0).unwrap(),
        Bootstrap::NotNeeded
    ));
}

#[test]
fn auto_bootstrap_off_skips_a_new_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_path(dir.path());
    let store = open_store(&path);
    assert!(matches!(
        bootstrap(store.as_ref(), policy(), None, false, T0).unwrap(),
        Bootstrap::Skipped
    ));
    assert!(!path.exists(), "nothing created");
    assert_eq!(events(store.as_ref()), 0);
}

#[test]
fn a_configured_secret_is_registered_idempotently() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&store_path(dir.path()));
    let secret = PlainToken::generate().unwrap();
    let id = secret.key_id();
    let again = PlainToken::from_supplied(secret.expose()).unwrap();
    match bootstrap(store.as_ref(), policy(), Some(secret), false, T0).unwrap() {
        Bootstrap::FromSecret { key_id, created } => {
            assert_eq!(key_id, id);
            assert!(created);
        }
        other => panic!("{other:?}"),
    }
    match bootstrap(store.as_ref(), policy(), Some(again), true, T0 + 5.0).unwrap() {
        Bootstrap::FromSecret { key_id, created } => {
            assert_eq!(key_id, id);
            assert!(!created, "already registered: nothing written");
        }
        other => panic!("{other:?}"),
    }
    let snap = store.load(T0).unwrap();
    assert_eq!(snap.keys.len(), 1);
    assert_eq!(snap.keys[&id].scope, Scope::Admin);
    assert_eq!(events(store.as_ref()), 1);
    // A secret from the environment works on a store that already has other keys too.
    issue(store.as_ref(), Scope::User, "u", TtlRequest::Default, T0);
    let other = PlainToken::from_supplied(&"s3cr3t-".repeat(6)).unwrap();
    assert!(matches!(
        bootstrap(store.as_ref(), policy(), Some(other), true, T0).unwrap(),
        Bootstrap::FromSecret { created: true, .. }
    ));
}

/// Reference defect A's resurrection, by the bootstrap path: the variable stays in the unit's
/// environment, the key is revoked, and the gateway restarts.
#[test]
fn a_revoked_bootstrap_secret_is_not_registered_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&store_path(dir.path()));
    let secret = PlainToken::generate().unwrap();
    let id = secret.key_id();
    let again = PlainToken::from_supplied(secret.expose()).unwrap();
    assert!(matches!(
        bootstrap(store.as_ref(), policy(), Some(secret), true, T0).unwrap(),
        Bootstrap::FromSecret { created: true, .. }
    ));
    KeyManager::new(store.as_ref(), policy())
        .revoke(id.as_str(), None, &cli_actor(), T0 + 1.0)
        .unwrap();
    match bootstrap(store.as_ref(), policy(), Some(again), true, T0 + 2.0).unwrap() {
        Bootstrap::SecretRetired { key_id } => assert_eq!(key_id, id),
        other => panic!("{other:?}"),
    }
    assert!(!store.load(T0 + 2.0).unwrap().keys.contains_key(&id));
    assert_eq!(events(store.as_ref()), 2, "issue and revoke only");
}
