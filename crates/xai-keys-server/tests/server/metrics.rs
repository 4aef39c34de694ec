//! `GET /metrics`: Prometheus text with bounded labels.

use crate::common::*;

#[tokio::test]
async fn metrics_count_authentication_decisions_by_result_scope_and_route_class() {
    let h = Harness::new();
    h.send(post("/send").key(&h.keys.user))
        .await
        .passed_to_upstream();
    h.send(get("/admin/api-keys").admin(&h.keys.admin))
        .await
        .ok(200);
    h.send(post("/send").h("x-api-key", "unknown-key-for-metrics"))
        .await
        .denied(401, "unknown_key");
    h.send(post("/send").key(&h.keys.auditor))
        .await
        .denied(403, "insufficient_scope");
    h.send(get("/blocks")).await.passed_to_upstream();

    let r = h.send(get("/metrics")).await;
    assert_eq!(r.status.as_u16(), 200);
    let ct = r.header("content-type").unwrap();
    assert!(ct.starts_with("text/plain"), "{ct}");
    let text = r.text();
    assert!(
        text.contains("# TYPE xai_api_auth_requests_total counter"),
        "{text}"
    );
    let has = |result: &str, scope: &str, class: &str| {
        text.lines().any(|l| {
            l.starts_with("xai_api_auth_requests_total{")
                && l.contains(&format!("result=\"{result}\""))
                && l.contains(&format!("scope=\"{scope}\""))
                && l.contains(&format!("route_class=\"{class}\""))
                && l.rsplit(' ')
                    .next()
                    .and_then(|n| n.parse::<f64>().ok())
                    .is_some_and(|n| n >= 1.0)
        })
    };
    assert!(has("allowed", "user", "user"), "{text}");
    assert!(has("allowed", "admin", "admin"), "{text}");
    assert!(has("unknown_key", "none", "user"), "{text}");
    assert!(has("insufficient_scope", "none", "user"), "{text}");
    assert!(has("allowed", "none", "public"), "{text}");
    assert!(text.contains("xai_gateway_upstream_requests_total{outcome=\"no_upstream\"}"));
    assert!(text.contains("xai_keys_index_keys 4"), "{text}");
    assert!(
        text.contains("xai_api_auth_decision_seconds_bucket"),
        "{text}"
    );
    // Every sample line is `name{labels} value` with a Prometheus metric name.
    for l in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = l.rsplit_once(' ').unwrap();
        assert!(
            value.parse::<f64>().is_ok() || value == "+Inf",
            "bad value in {l:?}"
        );
        let name = series.split('{').next().unwrap();
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !name.starts_with(|c: char| c.is_ascii_digit()),
            "bad metric name in {l:?}"
        );
        assert!(
            series.contains('{') == series.ends_with('}'),
            "bad labels in {l:?}"
        );
    }
}
