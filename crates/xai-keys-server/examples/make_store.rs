//! Creates a key store of N keys for the gateway benchmarks (`bench/run-gateway`), fast.
//!
//!     cargo run --release -p xai-keys-server --example make_store -- STORE [N]
//!
//! Issuing 10,000 keys one CLI process at a time takes minutes; this uses the core API instead,
//! with `Durability::UnsafeNoSync` (a benchmark fixture, not a production store): one commit
//! adds N-2 generated keys (scopes user, operator, auditor, admin in turn; 90-day expiry), each
//! with its own `issue` audit line exactly as `KeyManager::issue` writes it, then two keys are
//! issued through `KeyManager::issue` itself: the user key and the admin key the load test
//! presents. The store is a normal, hash-chained store (`xai-keys verify` passes on it).
//!
//! Prints one JSON object on stdout: `store`, `keys`, `user_key`, `user_key_id`, `admin_key`,
//! `admin_key_id`, `unknown_key` (well-formed, valid checksum, never stored: a guess that takes
//! the full lookup path), `seconds`. The plaintexts are benchmark keys on a temporary store.

use std::path::PathBuf;
use std::time::Instant;

use xai_keys_core::audit::{Actor, AuditDraft};
use xai_keys_core::ops::{IssueRequest, KeyManager};
use xai_keys_core::policy::{DAY, TtlPolicy, TtlRequest};
use xai_keys_core::record::{KeyMap, KeyRecord, Origin};
use xai_keys_core::store::{Durability, FileStore, FileStoreOptions, KeyStore};
use xai_keys_core::{PlainToken, Scope};

const SCOPES: [Scope; 4] = [Scope::User, Scope::Operator, Scope::Auditor, Scope::Admin];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let Some(store_path) = args.next().map(PathBuf::from) else {
        return Err("usage: make_store STORE [N]".into());
    };
    let n: usize = match args.next() {
        Some(s) => s.parse()?,
        None => 10_000,
    };
    if n < 2 {
        return Err("N must be at least 2".into());
    }
    let started = Instant::now();
    let store = FileStore::new(
        &store_path,
        FileStoreOptions {
            durability: Durability::UnsafeNoSync,
            ..FileStoreOptions::default()
        },
    )?;
    let actor = Actor::Cli {
        user: "bench".into(),
        host: "run-gateway".into(),
    };
    let now = xai_keys_core::now_epoch();

    // N-2 keys in one commit, one `issue` audit line each (the fields KeyManager::issue writes).
    let mut fresh: Vec<(xai_keys_core::KeyId, KeyRecord)> = Vec::with_capacity(n - 2);
    for i in 0..n - 2 {
        let t = PlainToken::generate()?;
        let created = now - 3.0 * DAY + i as f64 * 0.01;
        fresh.push((
            t.key_id(),
            KeyRecord {
                label: format!("bench-{i:06}"),
                created,
                scope: SCOPES[i % 4],
                expires_at: Some(created + 90.0 * DAY),
                permanent: false,
                disabled: false,
                origin: Some(Origin::Generated),
                replaced_by: None,
                extra: None,
                hydration: Default::default(),
            },
        ));
    }
    store.commit(&actor, now, &mut |keys: &mut KeyMap| {
        let mut drafts = Vec::with_capacity(fresh.len());
        for (id, r) in &fresh {
            keys.insert(id.clone(), r.clone());
            drafts.push(
                AuditDraft::new("issue", Some(id.as_str()))
                    .with("label", r.label.clone())
                    .with("scope", r.scope.as_str())
                    .with("expires_at", r.expires_at)
                    .with("permanent", r.permanent)
                    .with("origin", "generated"),
            );
        }
        Ok(drafts)
    })?;

    // The two keys the load test presents, issued the normal way.
    let mgr = KeyManager::new(&store, TtlPolicy::default());
    let issue = |scope: Scope, label: &str| {
        mgr.issue(
            IssueRequest {
                scope,
                label: label.to_string(),
                ttl: TtlRequest::Default,
                secret: None,
            },
            &actor,
            xai_keys_core::now_epoch(),
        )
    };
    let user = issue(Scope::User, "bench-load-user")?;
    let admin = issue(Scope::Admin, "bench-load-admin")?;
    let keys = store.load(xai_keys_core::now_epoch())?.keys.len();
    let out = serde_json::json!({
        "store": store.location(),
        "keys": keys,
        "user_key": user.plaintext.expose(),
        "user_key_id": user.info.key_id.as_str(),
        "admin_key": admin.plaintext.expose(),
        "admin_key_id": admin.info.key_id.as_str(),
        "unknown_key": PlainToken::generate()?.expose(),
        "seconds": started.elapsed().as_secs_f64(),
    });
    println!("{out}");
    Ok(())
}
