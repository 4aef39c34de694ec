//! Credential extraction and the client address (`credentials::extract`, `client_addr`,
//! `parse_networks`, `strip_api_key`), on arbitrary headers and queries.
//!
//! Input: the text request format of `xai_keys_fuzz` (request line, headers, blank line). Two
//! pseudo-headers steer the harness: `x-fuzz-peer` (the socket address, default 10.0.0.5) and
//! `x-fuzz-trusted` (`XAI_TRUSTED_PROXIES`, default `10.0.0.0/8, ::1`).
//!
//! Checks: nothing panics; presented values are trimmed; a query key is taken only when
//! allowed (and then refusal is never flagged); header credentials do not depend on the query
//! setting; `strip_api_key` removes exactly what `query_api_key` would find, and a stripped
//! query holds no key; the client address is the socket's (canonical) unless the socket is a
//! trusted proxy, and is otherwise an address written in `X-Forwarded-For`, never an
//! IPv4-mapped IPv6 address; parsed networks print and parse back to themselves.
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use xai_keys_fuzz::parse_request;
use xai_keys_server::credentials::{
    Source, canonical, client_addr, extract, parse_networks, query_api_key, strip_api_key,
};

fuzz_target!(|data: &[u8]| {
    let req = parse_request(data);
    let headers = req.header_map();
    let query = req.query();

    let with = extract(&headers, query, true);
    let without = extract(&headers, query, false);
    assert_eq!(with.is_ok(), without.is_ok(), "only headers can be refused");
    if let (Ok(w), Ok(wo)) = (&with, &without) {
        for p in [&w.api_key, &w.admin_token, &wo.api_key, &wo.admin_token]
            .into_iter()
            .flatten()
        {
            assert_eq!(p.value, p.value.trim(), "{:?} is trimmed", p.source);
        }
        assert!(!w.query_key_refused, "an allowed query key is not refused");
        assert!(
            wo.api_key
                .as_ref()
                .is_none_or(|k| k.source != Source::Query),
            "a query key is taken only when allowed"
        );
        assert_eq!(
            wo.admin_token.as_ref().map(|t| (t.source, &t.value)),
            w.admin_token.as_ref().map(|t| (t.source, &t.value)),
            "admin tokens do not depend on the query setting"
        );
        match (&w.api_key, &wo.api_key) {
            (Some(a), _) if a.source == Source::Query => {
                assert!(wo.api_key.is_none() && wo.query_key_refused);
                assert_eq!(
                    Some(a.value.as_str()),
                    query_api_key(query).as_deref().map(str::trim)
                );
            }
            (a, b) => assert_eq!(
                a.as_ref().map(|k| (k.source, &k.value)),
                b.as_ref().map(|k| (k.source, &k.value)),
                "header keys do not depend on the query setting"
            ),
        }
    }

    if let Some(q) = query {
        let found = query_api_key(Some(q));
        let stripped = strip_api_key(q);
        assert_eq!(
            found.is_some(),
            stripped.is_some(),
            "strip_api_key removes what query_api_key finds"
        );
        if let Some(s) = stripped {
            assert_eq!(
                query_api_key(Some(&s)),
                None,
                "a stripped query holds no key"
            );
            assert_eq!(strip_api_key(&s), None, "stripping is idempotent");
        }
    }

    let trusted_raw = req
        .header_text("x-fuzz-trusted")
        .unwrap_or("10.0.0.0/8, ::1");
    let trusted = match parse_networks("XAI_TRUSTED_PROXIES", trusted_raw) {
        Ok(nets) => {
            for n in &nets {
                let back = parse_networks("T", &n.to_string());
                assert_eq!(back, Ok(vec![*n]), "{n} prints and parses back");
            }
            nets
        }
        Err(e) => {
            assert!(e.starts_with("XAI_TRUSTED_PROXIES: "), "{e}");
            Vec::new()
        }
    };
    let peer: IpAddr = req
        .header_text("x-fuzz-peer")
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or(IpAddr::from([10, 0, 0, 5]));
    let client = client_addr(peer, &headers, &trusted);
    assert_eq!(canonical(client), client, "the client address is canonical");
    let peer_c = canonical(peer);
    if !trusted.iter().any(|n| n.contains(&peer_c)) {
        assert_eq!(client, peer_c, "an untrusted socket is the client");
    } else if client != peer_c {
        let written = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|s| s.split(','))
            .filter_map(|e| e.trim().parse::<IpAddr>().ok())
            .any(|ip| canonical(ip) == client);
        assert!(written, "the client address comes from X-Forwarded-For");
    }
});
