//! The route policy: the policy file parser (`RoutePolicy::parse`), path normalisation
//! (`normalize_path`, `normalize_path_with`) and `classify`, on arbitrary files and paths.
//!
//! Input: a policy file (TOML), a line `----`, then request lines `METHOD path` (one per
//! line). Without a `----` line the whole input is request lines and the policy is the
//! built-in one; a file that does not parse is checked for its error and replaced by the
//! built-in policy too.
//!
//! Checks: nothing panics; errors name their source; normalisation is idempotent (on paths
//! whose normalised form holds no `%`, which a second pass would decode again), keeps paths
//! absolute, and never leaves `..`, `//` or a version prefix; `classify` of a path and of its
//! normalised form with a trailing `/` agree; and the documented guarantee holds: no policy file makes a path under `/admin` public,
//! user or peer.
#![no_main]

use axum::http::Method;
use libfuzzer_sys::fuzz_target;
use xai_keys_fuzz::split_section;
use xai_keys_server::policy::{Access, RoutePolicy, normalize_path, normalize_path_with};

const METHODS: [Method; 7] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
];

fuzz_target!(|data: &[u8]| {
    let (policy_text, requests) = match split_section(data) {
        Some((p, r)) => (Some(p), r),
        None => (None, data),
    };
    let policy = match policy_text.map(std::str::from_utf8) {
        Some(Ok(text)) => match RoutePolicy::parse(text, "fuzz.toml") {
            Ok(p) => p,
            Err(e) => {
                assert!(e.to_string().starts_with("route policy fuzz.toml: "), "{e}");
                RoutePolicy::builtin()
            }
        },
        _ => RoutePolicy::builtin(),
    };
    let versions = ["beta".to_string(), "v1".to_string()];
    for line in requests.split(|&b| b == b'\n') {
        let Ok(line) = std::str::from_utf8(line) else {
            continue;
        };
        let (method, raw) = line.split_once(' ').unwrap_or(("GET", line));
        let method = Method::from_bytes(method.as_bytes()).unwrap_or(Method::GET);
        let _ = normalize_path_with(raw, &versions);
        let Ok(norm) = normalize_path(raw) else {
            continue;
        };
        assert!(norm.starts_with('/'), "{raw:?} -> {norm:?}");
        assert!(norm == "/" || !norm.ends_with('/'), "{raw:?} -> {norm:?}");
        assert!(!norm.contains("//"), "{raw:?} -> {norm:?}");
        let segs: Vec<&str> = norm.split('/').skip(1).collect();
        assert!(
            !segs.iter().any(|s| *s == "." || *s == ".."),
            "{raw:?} -> {norm:?}"
        );
        if !norm.contains('%') {
            assert_eq!(
                normalize_path(&norm).as_ref(),
                Ok(&norm),
                "normalisation is idempotent ({raw:?})"
            );
        }
        let route = policy.classify(&method, &norm);
        let slash = format!("{norm}/");
        assert_eq!(
            policy.classify(&method, &slash),
            route,
            "a trailing '/' changes nothing"
        );
        if segs.first() == Some(&"admin") {
            for m in &METHODS {
                let a = policy.classify(m, &norm).access;
                assert!(
                    !matches!(a, Access::Public | Access::User | Access::Peer),
                    "the policy makes {m} {norm} {a}: routes under /admin are operator, auditor or admin"
                );
            }
        }
    }
});
