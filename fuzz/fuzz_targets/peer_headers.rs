//! Peer signature verification (`peer::precheck_peer_request`, `verify_peer_request`) on
//! arbitrary signature headers, methods, paths and bodies, and the keyring file parser
//! (`KeyRing::parse_file_text`).
//!
//! Input: an optional keyring file, a line `----`, then a request in the text format of
//! `xai_keys_fuzz`. Without a keyring section, or when it does not parse or names no current
//! key, the ring is `RING` below (the seeds are signed with its keys at `NOW`).
//!
//! Checks: nothing panics; a keyring error never echoes a key; a parsed ring has distinct 16-hex-digit fingerprints and a current
//! key when it has any; the precheck and the full verification agree (a precheck refusal is the
//! verification's refusal; after a passing precheck only the body, signature and nonce checks
//! can refuse); a request that verifies names a key of the ring and its node, and is refused
//! as a replay the second time; and signing round-trips: whatever the method, path and body,
//! a request signed with the ring's current key verifies, and refuses once its body or path is
//! changed.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use xai_keys_core::peer::{
    H_NODE, HEADERS, KeyRing, MIN_KEY_CHARS, NonceCache, PeerKey, PeerRefusal, RequestParts,
    VerifyPolicy, has_signature_headers, precheck_peer_request, sign_peer_request,
    verify_peer_request,
};
use xai_keys_fuzz::{parse_request, split_section};

/// The time every request is judged at (the seeds' timestamp).
const NOW: f64 = 1_800_000_000.0;
/// The fixed ring's keys (test values, not secrets).
const CURRENT: &str = "xaipeer_fuzz-current-0123456789abcdefABCDEF";
const NEXT: &str = "xaipeer_fuzz-next-0123456789abcdefABCDEF012";
const PREVIOUS: &str = "xaipeer_fuzz-previous-0123456789abcdefABCD";

fn fixed_ring() -> KeyRing {
    let k = |s: &str| PeerKey::parse(s, "fuzz").ok();
    KeyRing {
        current: k(CURRENT),
        next: k(NEXT),
        previous: k(PREVIOUS),
    }
}

fn is_fingerprint(s: &str) -> bool {
    s.len() == 16 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fuzz_target!(|data: &[u8]| {
    let (ring_text, request) = match split_section(data) {
        Some((r, q)) => (Some(r), q),
        None => (None, data),
    };
    let parsed = ring_text
        .and_then(|t| std::str::from_utf8(t).ok())
        .map(|t| KeyRing::parse_file_text(t, Path::new("/fuzz/peer-keyring.env")));
    let ring = match parsed {
        Some(Ok(r)) => {
            let fps: Vec<&str> = r.keys().map(|(_, k)| k.fingerprint()).collect();
            assert!(fps.iter().all(|f| is_fingerprint(f)));
            for (i, f) in fps.iter().enumerate() {
                assert!(!fps[i + 1..].contains(f), "a ring holds distinct keys");
            }
            assert!(
                r.current.is_some() || fps.is_empty(),
                "a ring has a current key"
            );
            if r.is_configured() { r } else { fixed_ring() }
        }
        Some(Err(e)) => {
            // Errors never echo a key: no word of the file long enough to be one
            // (`MIN_KEY_CHARS`) appears in the message, except words that look like variable
            // names (`A-Z`, `0-9`, `_`), which are echoed on purpose ("unknown name").
            let msg = e.to_string();
            let text = ring_text
                .and_then(|t| std::str::from_utf8(t).ok())
                .unwrap_or("");
            let name_like = |w: &str| {
                w.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            };
            for word in text.split(|c: char| c.is_whitespace() || "='\"".contains(c)) {
                assert!(
                    word.chars().count() < MIN_KEY_CHARS || name_like(word) || !msg.contains(word),
                    "a keyring error echoes {word:?}: {msg}"
                );
            }
            fixed_ring()
        }
        None => fixed_ring(),
    };

    let req = parse_request(request);
    let headers = req.header_map();
    let get = |h: &str| -> Vec<String> {
        headers
            .get_all(h)
            .iter()
            .map(|v| v.to_str().map(str::to_string).unwrap_or_default())
            .collect()
    };
    assert_eq!(
        has_signature_headers(&get),
        HEADERS.iter().any(|h| headers.contains_key(*h))
    );
    let policy = VerifyPolicy::default();
    let parts = RequestParts {
        method: req.method,
        path_and_query: req.target,
        body: req.body,
    };
    let nonces = NonceCache::new(1000);
    let pre = precheck_peer_request(&ring, policy, &get, NOW);
    let verdict = verify_peer_request(&ring, &nonces, policy, &get, &parts, NOW);
    match (&pre, &verdict) {
        (Err(p), v) => assert_eq!(Err(p), v.as_ref(), "the precheck's refusal stands"),
        (Ok(()), Err(r)) => assert!(
            matches!(
                r,
                PeerRefusal::BodyMismatch | PeerRefusal::BadSignature | PeerRefusal::Replay
            ),
            "after a passing precheck: {r:?}"
        ),
        (Ok(()), Ok(v)) => {
            assert!(ring.by_fingerprint(&v.fingerprint).is_some());
            assert_eq!(get(H_NODE), vec![v.node_id.clone()]);
            let again = verify_peer_request(&ring, &nonces, policy, &get, &parts, NOW + 1.0);
            assert_eq!(again, Err(PeerRefusal::Replay), "a nonce verifies once");
        }
    }
    if let Some(v) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        let _ = ring.legacy_match(v);
    }

    // Signing round-trips, whatever the request.
    let Some(key) = ring.current.as_ref() else {
        return;
    };
    let node = req
        .header_text(H_NODE)
        .map(str::trim)
        .filter(|n| xai_keys_core::peer::check_node_id(n).is_ok())
        .unwrap_or("fuzz-node");
    let signed = match sign_peer_request(key, node, &parts, NOW) {
        Ok(h) => h,
        Err(e) => panic!("signing with a valid node id fails: {e}"),
    };
    let sget = |h: &str| -> Vec<String> {
        signed
            .iter()
            .filter(|(k, _)| *k == h)
            .map(|(_, v)| v.clone())
            .collect()
    };
    let fresh = NonceCache::new(1000);
    let ok = verify_peer_request(&ring, &fresh, policy, &sget, &parts, NOW + 2.0);
    match ok {
        Ok(v) => {
            assert_eq!(v.fingerprint, key.fingerprint());
            assert_eq!(v.node_id, node);
        }
        Err(r) => panic!("a freshly signed request is refused: {r:?}"),
    }
    let mut body = req.body.to_vec();
    body.push(b'x');
    let other_body = RequestParts {
        body: &body,
        ..parts
    };
    assert_eq!(
        verify_peer_request(&ring, &NonceCache::new(10), policy, &sget, &other_body, NOW),
        Err(PeerRefusal::BodyMismatch)
    );
    let path = format!("{}x", req.target);
    let other_path = RequestParts {
        path_and_query: &path,
        ..parts
    };
    assert_eq!(
        verify_peer_request(&ring, &NonceCache::new(10), policy, &sget, &other_path, NOW),
        Err(PeerRefusal::BadSignature)
    );
});
