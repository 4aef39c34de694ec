//! The store file parser (`record::parse_store`, what `FileStore` loads).
//!
//! Checks, for any bytes: parsing never panics; a store that parses renders
//! (`record::render_store`) to text that parses back to the same records (hydrated legacy
//! fields become stored fields; unknown fields are kept verbatim) and renders to the same bytes
//! again (rendering is a fixed point); the incremental renderer (`render_store_cached`) and its
//! digest agree byte for byte with the plain renderer and a full SHA-256; and a store that does
//! not parse is reported as `CorruptStore` naming the file.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use xai_keys_core::Error;
use xai_keys_core::record::{
    Hydration, KeyMap, KeyRecord, LoadContext, RenderCache, parse_store, render_store,
    render_store_cached,
};

const CTX: LoadContext = LoadContext {
    now: 1_800_000_000.0,
    default_ttl_secs: 90.0 * 86_400.0,
};

/// A record as it is persisted (what loading had to fill in is not part of it).
fn persisted(r: &KeyRecord) -> KeyRecord {
    KeyRecord {
        hydration: Hydration::default(),
        ..r.clone()
    }
}

fn same(a: &KeyMap, b: &KeyMap) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b.iter())
            .all(|((ia, ra), (ib, rb))| ia == ib && persisted(ra) == persisted(rb))
}

fuzz_target!(|data: &[u8]| {
    let path = Path::new("/fuzz/api_keys.json");
    let keys = match parse_store(data, path, CTX) {
        Ok(k) => k,
        Err(Error::CorruptStore { path: p, .. }) => {
            assert_eq!(p, path, "a corrupt store names its file");
            return;
        }
        Err(e) => panic!("parse_store failed with something other than CorruptStore: {e:?}"),
    };
    for rec in keys.values() {
        // The lifecycle queries are total.
        let _ = rec.state(CTX.now);
        let _ = rec.ttl_secs();
        assert!(rec.created.is_finite(), "created is always finite");
        assert!(
            rec.expires_at.is_none_or(f64::is_finite),
            "expires_at is finite or absent"
        );
        assert_eq!(
            rec.permanent,
            rec.expires_at.is_none(),
            "permanent exactly when there is no expiry"
        );
    }
    let text = render_store(&keys);
    let again = match parse_store(&text, path, CTX) {
        Ok(k) => k,
        Err(e) => panic!(
            "a rendered store does not parse: {e}\n{}",
            String::from_utf8_lossy(&text)
        ),
    };
    assert!(
        same(&keys, &again),
        "records changed through render and parse"
    );
    assert!(
        again.values().all(|r| !r.hydration.any()),
        "a rendered store needs no hydration"
    );
    assert_eq!(render_store(&again), text, "rendering is a fixed point");

    // The incremental renderer: first from scratch, then through its cache, then after a change.
    let mut cache = RenderCache::default();
    assert_eq!(render_store_cached(&keys, &mut cache), text);
    assert_eq!(render_store_cached(&keys, &mut cache), text);
    let mut changed = keys.clone();
    if let Some(first) = changed.keys().next().cloned() {
        changed.remove(&first);
    }
    let plain = render_store(&changed);
    assert_eq!(render_store_cached(&changed, &mut cache), plain);
    assert_eq!(
        cache.digest(&plain),
        xai_keys_core::token::hex(&sha256(&plain))
    );
});

fn sha256(b: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(b).to_vec()
}
