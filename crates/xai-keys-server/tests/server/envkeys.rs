//! Keys configured in the environment (`XAI_API_KEYS`, `XAI_API_ADMIN_KEYS`,
//! `XAI_API_ADMIN_TOKEN`): served, listed by hash with `source: env`, counted, never revocable
//! here, and never again once the store manages them (imported, then revoked).

use std::collections::HashMap;
use std::time::Duration;

use xai_keys_core::envkeys::{self, EnvKey};
use xai_keys_core::ops::KeyManager;
use xai_keys_core::policy::TtlRequest;
use xai_keys_core::token::KeyId;

use crate::common::*;

const USER_SECRET: &str = "legacy-user-key-0123456789abcdef";
const ADMIN_SECRET: &str = "legacy-admin-token-0123456789abcd";

fn env_keys() -> Vec<EnvKey> {
    let m: HashMap<&str, &str> = [
        ("XAI_API_KEYS", USER_SECRET),
        ("XAI_API_ADMIN_TOKEN", ADMIN_SECRET),
    ]
    .into_iter()
    .collect();
    envkeys::from_lookup(&|k| m.get(k).map(|v| v.to_string())).unwrap()
}

fn key(secret: &str) -> Key {
    Key {
        secret: secret.to_string(),
        id: KeyId::of_plaintext(secret).to_string(),
    }
}

#[tokio::test]
async fn environment_keys_authenticate_are_listed_counted_and_not_revocable_here() {
    let h = Harness::with(|c| c.env_keys = env_keys());
    let (user, admin) = (key(USER_SECRET), key(ADMIN_SECRET));
    h.secrets.add(USER_SECRET);
    h.secrets.add(ADMIN_SECRET);
    // The user key passes authentication (the missing upstream answers); the admin token works
    // on the admin API.
    let r = h.send(post("/send").key(&user)).await;
    assert_eq!(r.status.as_u16(), 503, "{}", r.text());
    let v = h.send(get("/admin/api-keys").admin(&admin)).await.ok(200);
    assert_eq!(v["manual_keys"], 1);
    assert_eq!(v["manual_admin_keys"], 1);
    let listed = &v["store"][&user.id];
    assert_eq!(listed["source"], "env");
    assert_eq!(listed["variable"], "XAI_API_KEYS");
    assert_eq!(listed["expires_at"], serde_json::Value::Null);
    assert_eq!(v["store"][&admin.id]["scope"], "admin");
    assert!(
        v["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains("import-env")),
        "{v}"
    );
    assert_eq!(
        scrape_value(&h, "xai_api_env_keys{scope=\"user\"}").await,
        1.0
    );
    assert_eq!(
        scrape_value(&h, "xai_api_env_keys{scope=\"admin\"}").await,
        1.0
    );

    // Revoking one here is refused with the way out.
    let r = h
        .send(delete(&format!("/admin/api-keys/{}", user.id)).admin(&h.keys.admin))
        .await;
    let msg = r.err(409, "env_key");
    assert!(
        msg.contains("XAI_API_KEYS") && msg.contains("import-env"),
        "{msg}"
    );
    let r = h
        .send(delete(&format!("/admin/api-keys/{}", &user.id[..12])).admin(&h.keys.admin))
        .await;
    r.err(409, "env_key");
}

#[tokio::test]
async fn an_imported_then_revoked_environment_key_is_refused_whatever_the_environment_says() {
    let h = Harness::with(|c| c.env_keys = env_keys());
    let user = key(USER_SECRET);
    h.secrets.add(USER_SECRET);
    h.secrets.add(ADMIN_SECRET);
    assert_eq!(h.send(post("/send").key(&user)).await.status.as_u16(), 503);

    // Imported and revoked back to back, faster than the gateway polls: it never sees the key
    // in the store, only the audit lines.
    let mgr = KeyManager::new(h.store.as_ref(), policy());
    let env = env_keys();
    let done = envkeys::import(
        &mgr,
        h.store.as_ref(),
        &env,
        TtlRequest::Seconds(30.0 * DAY),
        &cli_actor(),
        h.clock.now(),
    )
    .unwrap();
    assert!(matches!(done[0].1, envkeys::Imported::Added(_)), "{done:?}");
    mgr.revoke(&user.id, Some("compromised"), &cli_actor(), h.clock.now())
        .unwrap();
    let took = wait_until("the revoked environment key to be refused", || {
        let h = &h;
        let user = user.clone();
        async move { h.send(post("/send").key(&user)).await.status.as_u16() == 401 }
    })
    .await;
    assert!(took < Duration::from_secs(1), "{took:?}");

    // A restart with the key still in the environment keeps refusing it.
    let g2 = xai_keys_server::Gateway::start(
        {
            let mut c = test_config();
            c.env_keys = env_keys();
            // Its own event queue: the first gateway still holds the default one.
            c.telemetry.queue_path = Some(h.dir.path().join("second.webhook-queue"));
            c
        },
        h.store.clone(),
        h.clock.clock(),
    )
    .unwrap();
    let idx = g2.state().index.load_full();
    assert!(idx.get(&user.key_id()).is_none());
    // The admin token, imported but not revoked, is the store's key now.
    let admin = idx.get(&key(ADMIN_SECRET).key_id()).unwrap();
    assert_eq!(admin.env_var, None);
    assert!(admin.expires_at.is_some());
    // Importing again: the revoked one is retired, the other already in the store.
    let again = envkeys::import(
        &mgr,
        h.store.as_ref(),
        &env,
        TtlRequest::Seconds(30.0 * DAY),
        &cli_actor(),
        h.clock.now(),
    )
    .unwrap();
    let results: Vec<_> = again.iter().map(|(_, o)| o.clone()).collect();
    assert_eq!(
        results,
        vec![
            envkeys::Imported::Retired,
            envkeys::Imported::AlreadyInStore
        ]
    );
}
