//! `peer keygen|fingerprint|sign` end to end: keys round-trip through the fingerprint, the
//! ring comes from the environment or a keyring file (never both), signed headers verify with
//! the library, and no command but `keygen` ever prints a key.

use std::process::Output;

use serde_json::Value;
use xai_keys_core::now_epoch;
use xai_keys_core::peer::{
    KeyRing, NonceCache, PeerKey, PeerRefusal, RequestParts, VerifiedPeer, VerifyPolicy,
    verify_peer_request,
};

use crate::common::*;

/// `xai-keys -o <format> peer ARGS` with a clean environment plus `vars`, and `stdin`.
fn peer(format: &str, args: &[&str], vars: &[(&str, &str)], stdin: &[u8]) -> Output {
    let mut c = base_cmd();
    c.args(["-o", format, "peer"]).args(args);
    for (k, v) in vars {
        c.env(k, v);
    }
    c.write_stdin(stdin.to_vec()).output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Neither stdout nor stderr holds any of `secrets`.
fn assert_no_secret(o: &Output, secrets: &[&str], what: &str) {
    for s in secrets {
        assert!(
            !stdout(o).contains(s) && !stderr(o).contains(s),
            "{what} printed a key:\nstdout: {}\nstderr: {}",
            stdout(o),
            stderr(o)
        );
    }
}

fn keys3() -> (PeerKey, PeerKey, PeerKey) {
    (
        PeerKey::generate().unwrap(),
        PeerKey::generate().unwrap(),
        PeerKey::generate().unwrap(),
    )
}

/// The `Name: value` lines of `peer sign`, as (lower-case name, value).
fn header_lines(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(|l| {
            let (k, v) = l
                .split_once(": ")
                .unwrap_or_else(|| panic!("not a header line: {l:?}"));
            (k.to_ascii_lowercase(), v.to_string())
        })
        .collect()
}

fn verify(
    ring: &KeyRing,
    headers: &[(String, String)],
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<VerifiedPeer, PeerRefusal> {
    let get = |name: &str| -> Vec<String> {
        headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    };
    verify_peer_request(
        ring,
        &NonceCache::new(100),
        VerifyPolicy::default(),
        &get,
        &RequestParts {
            method,
            path_and_query: path,
            body,
        },
        now_epoch(),
    )
}

fn ring_of(k: &PeerKey) -> KeyRing {
    KeyRing {
        current: Some(k.clone()),
        ..Default::default()
    }
}

#[test]
fn keygen_prints_a_key_whose_fingerprint_it_reports() {
    let out = peer("table", &["keygen"], &[], b"");
    assert_exit(&out, 0, &["peer", "keygen"]);
    let key = stdout(&out).trim().to_string();
    assert_eq!(stdout(&out).lines().count(), 1, "only the key on stdout");
    assert!(key.starts_with("xaipeer_") && key.len() == 8 + 43, "{key}");
    let err = stderr(&out);
    assert!(!err.contains(&key), "the key is printed once, on stdout");
    assert!(
        err.contains("XAI_PEER_API_KEY_NEXT") && err.contains("not kept"),
        "{err}"
    );
    let fp = err
        .lines()
        .find_map(|l| l.strip_prefix("fingerprint: "))
        .unwrap_or_else(|| panic!("no fingerprint line: {err}"))
        .trim()
        .to_string();
    assert_eq!(PeerKey::parse(&key, "test").unwrap().fingerprint(), fp);

    // The same fingerprint through `peer fingerprint --stdin` (first line; a trailing newline
    // and further lines are fine), which never prints the key.
    let input = format!("{key}\nsomething else\n");
    let f = peer("table", &["fingerprint", "--stdin"], &[], input.as_bytes());
    assert_exit(&f, 0, &["peer", "fingerprint", "--stdin"]);
    assert_eq!(
        stdout(&f).split_whitespace().collect::<Vec<_>>(),
        ["stdin", fp.as_str()]
    );
    assert_no_secret(&f, &[&key], "fingerprint --stdin");
    let j = peer("json", &["fingerprint", "--stdin"], &[], key.as_bytes());
    assert_exit(&j, 0, &["peer", "fingerprint", "--stdin"]);
    let v: Value = serde_json::from_slice(&j.stdout).unwrap();
    assert_eq!(v, serde_json::json!([{"role": "stdin", "fingerprint": fp}]));

    // Two keys differ.
    let again = peer("table", &["keygen"], &[], b"");
    assert_exit(&again, 0, &["peer", "keygen"]);
    assert_ne!(stdout(&again).trim(), key);
}

#[test]
fn keygen_json_is_one_object_with_the_key_and_its_fingerprint() {
    let out = peer("json", &["keygen"], &[], b"");
    assert_exit(&out, 0, &["peer", "keygen"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let o = v.as_object().unwrap();
    assert_eq!(
        o.keys().map(String::as_str).collect::<Vec<_>>(),
        ["peer_key", "fingerprint"]
    );
    let key = v["peer_key"].as_str().unwrap();
    let fp = v["fingerprint"].as_str().unwrap();
    assert!(key.starts_with("xaipeer_"), "{key}");
    assert!(
        fp.len() == 16 && fp.bytes().all(|b| b.is_ascii_hexdigit()),
        "{fp}"
    );
    assert_eq!(PeerKey::parse(key, "test").unwrap().fingerprint(), fp);
    assert!(!stderr(&out).contains(key));
    assert!(stderr(&out).contains("XAI_PEER_API_KEY_NEXT"));
}

#[test]
fn fingerprint_lists_every_role_of_the_environment_ring_and_never_a_key() {
    let (a, b, c) = keys3();
    let vars = [
        ("XAI_PEER_API_KEY", a.expose()),
        ("XAI_PEER_API_KEY_NEXT", b.expose()),
        ("XAI_PEER_API_KEY_PREVIOUS", c.expose()),
    ];
    let secrets = [a.expose(), b.expose(), c.expose()];
    let out = peer("table", &["fingerprint"], &vars, b"");
    assert_exit(&out, 0, &["peer", "fingerprint"]);
    let rows: Vec<Vec<String>> = stdout(&out)
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect();
    assert_eq!(
        rows,
        [
            ["current", a.fingerprint()],
            ["next", b.fingerprint()],
            ["previous", c.fingerprint()],
        ]
    );
    assert_no_secret(&out, &secrets, "fingerprint");

    let out = peer("json", &["fingerprint"], &vars, b"");
    assert_exit(&out, 0, &["peer", "fingerprint"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v,
        serde_json::json!([
            {"role": "current", "fingerprint": a.fingerprint()},
            {"role": "next", "fingerprint": b.fingerprint()},
            {"role": "previous", "fingerprint": c.fingerprint()},
        ])
    );
    assert_no_secret(&out, &secrets, "fingerprint -o json");

    // Only the current key: one line.
    let out = peer("table", &["fingerprint"], &vars[..1], b"");
    assert_exit(&out, 0, &["peer", "fingerprint"]);
    assert_eq!(stdout(&out).lines().count(), 1);
}

#[test]
fn fingerprint_reads_a_keyring_file_but_not_a_file_and_variables_together() {
    let env = Env::new();
    let (a, b, _) = keys3();
    let file = env.dir.path().join("peer-ring.env");
    std::fs::write(
        &file,
        format!(
            "# written by the vault agent\nXAI_PEER_API_KEY={}\nexport XAI_PEER_API_KEY_PREVIOUS=\"{}\"\n",
            a.expose(),
            b.expose()
        ),
    )
    .unwrap();
    chmod600(&file);
    let file_s = file.to_str().unwrap();
    let out = peer(
        "json",
        &["fingerprint"],
        &[("XAI_PEER_KEYRING_FILE", file_s)],
        b"",
    );
    assert_exit(&out, 0, &["peer", "fingerprint"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v,
        serde_json::json!([
            {"role": "current", "fingerprint": a.fingerprint()},
            {"role": "previous", "fingerprint": b.fingerprint()},
        ])
    );
    assert_no_secret(&out, &[a.expose(), b.expose()], "fingerprint of a file");

    // Both the file and a key variable: refused, naming both, for `fingerprint` and `sign`.
    let c = PeerKey::generate().unwrap();
    let both = [
        ("XAI_PEER_KEYRING_FILE", file_s),
        ("XAI_PEER_API_KEY_NEXT", c.expose()),
    ];
    for args in [
        &["fingerprint"][..],
        &[
            "sign",
            "--method",
            "POST",
            "--path",
            "/sync",
            "--node-id",
            "n1",
        ][..],
    ] {
        let out = peer("table", args, &both, b"");
        assert_exit(&out, 1, args);
        let err = stderr(&out);
        assert!(
            err.contains("XAI_PEER_KEYRING_FILE") && err.contains("XAI_PEER_API_KEY_NEXT"),
            "{err}"
        );
        assert!(out.stdout.is_empty());
        assert_no_secret(&out, &[a.expose(), b.expose(), c.expose()], "a conflict");
    }

    // A missing file is named.
    let gone = env.dir.path().join("missing.env");
    let out = peer(
        "table",
        &["fingerprint"],
        &[("XAI_PEER_KEYRING_FILE", gone.to_str().unwrap())],
        b"",
    );
    assert_exit(&out, 1, &["peer", "fingerprint"]);
    assert!(stderr(&out).contains("missing.env"), "{}", stderr(&out));
}

#[test]
fn bad_or_missing_keys_are_refused_without_showing_them() {
    // A short key in the environment and on stdin: the error names the source, not the value.
    let short = "shortpeersecret-QZX9";
    let out = peer(
        "table",
        &["fingerprint"],
        &[("XAI_PEER_API_KEY", short)],
        b"",
    );
    assert_exit(&out, 1, &["peer", "fingerprint"]);
    let err = stderr(&out);
    assert!(
        err.contains("XAI_PEER_API_KEY") && err.contains("at least 32"),
        "{err}"
    );
    assert_no_secret(&out, &[short], "a short key");
    let out = peer("json", &["fingerprint", "--stdin"], &[], short.as_bytes());
    assert_exit(&out, 1, &["peer", "fingerprint", "--stdin"]);
    let e: Value = serde_json::from_str(stderr(&out).lines().last().unwrap()).unwrap();
    assert_eq!(e["error"], "invalid_secret");
    assert_no_secret(&out, &[short], "a short key on stdin");

    // No ring at all: the message names the variables.
    let out = peer("json", &["fingerprint"], &[], b"");
    assert_exit(&out, 1, &["peer", "fingerprint"]);
    let e: Value = serde_json::from_str(stderr(&out).lines().last().unwrap()).unwrap();
    assert_eq!(e["error"], "no_peer_key");
    let msg = e["message"].as_str().unwrap();
    for var in ["XAI_PEER_API_KEY", "XAI_PEER_KEYRING_FILE", "peer keygen"] {
        assert!(msg.contains(var), "{msg}");
    }
    assert!(out.stdout.is_empty());
}

#[test]
fn signed_headers_verify_with_the_library_and_cover_the_body() {
    let env = Env::new();
    let (a, b, _) = keys3();
    let body = b"{\"block\": 7,\n \"txs\": []}\n";
    let body_file = env.dir.path().join("block.json");
    std::fs::write(&body_file, body).unwrap();
    let vars = [
        ("XAI_PEER_API_KEY", a.expose()),
        ("XAI_PEER_API_KEY_NEXT", b.expose()),
    ];
    let args = [
        "sign",
        "--method",
        "POST",
        "--path",
        "/block/receive?from=node-a",
        "--body-file",
        body_file.to_str().unwrap(),
        "--node-id",
        "node-a",
    ];
    let out = peer("table", &args, &vars, b"");
    assert_exit(&out, 0, &args);
    assert_no_secret(&out, &[a.expose(), b.expose()], "sign");
    let h = header_lines(&stdout(&out));
    assert_eq!(
        h.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        xai_keys_core::peer::HEADERS,
        "every signature header, once"
    );
    let ring = ring_of(&a);
    let v = verify(&ring, &h, "POST", "/block/receive?from=node-a", body).unwrap();
    assert_eq!(
        v.fingerprint,
        a.fingerprint(),
        "signed with the current key"
    );
    assert_eq!(v.node_id, "node-a");
    // A tampered body, another path or method: refused.
    assert_eq!(
        verify(
            &ring,
            &h,
            "POST",
            "/block/receive?from=node-a",
            b"{\"block\": 8}"
        )
        .unwrap_err(),
        PeerRefusal::BodyMismatch
    );
    assert_eq!(
        verify(&ring, &h, "POST", "/block/receive", body).unwrap_err(),
        PeerRefusal::BadSignature
    );
    assert_eq!(
        verify(&ring, &h, "PUT", "/block/receive?from=node-a", body).unwrap_err(),
        PeerRefusal::BadSignature
    );
    // A ring without the current key does not know the signature's key.
    assert_eq!(
        verify(&ring_of(&b), &h, "POST", "/block/receive?from=node-a", body).unwrap_err(),
        PeerRefusal::UnknownKey
    );

    // JSON, the body from stdin, the node id from XAI_PEER_NODE_ID.
    let vars = [
        ("XAI_PEER_API_KEY", a.expose()),
        ("XAI_PEER_NODE_ID", "validator-3.eu:1"),
    ];
    let args = [
        "sign",
        "--method",
        "post",
        "--path",
        "/transaction/receive",
        "--body-file",
        "-",
    ];
    let out = peer("json", &args, &vars, body);
    assert_exit(&out, 0, &args);
    assert_no_secret(&out, &[a.expose()], "sign -o json");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let h: Vec<(String, String)> = v
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    assert_eq!(h.len(), 6);
    let ok = verify(&ring, &h, "POST", "/transaction/receive", body).unwrap();
    assert_eq!(ok.node_id, "validator-3.eu:1");

    // No body and no node id: an empty body, the host name as the node id.
    let args = ["sign", "--method", "GET", "--path", "/sync"];
    let out = peer("table", &args, &vars[..1], b"");
    assert_exit(&out, 0, &args);
    let h = header_lines(&stdout(&out));
    let ok = verify(&ring, &h, "GET", "/sync", b"").unwrap();
    assert!(!ok.node_id.is_empty());
    assert!(stderr(&out).contains("host name"), "{}", stderr(&out));
}

#[test]
fn sign_refuses_clearly_and_never_shows_the_key() {
    let env = Env::new();
    let a = PeerKey::generate().unwrap();
    let key = [("XAI_PEER_API_KEY", a.expose())];
    let base = ["sign", "--method", "POST", "--path", "/sync"];
    let run = |extra: &[&str], vars: &[(&str, &str)]| {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let out = peer("table", &args, vars, b"");
        assert_exit(&out, 1, &args);
        assert!(out.stdout.is_empty(), "{}", stdout(&out));
        assert_no_secret(&out, &[a.expose()], "a refused sign");
        stderr(&out)
    };

    // No current key.
    let err = run(&["--node-id", "n1"], &[]);
    assert!(
        err.contains("no current peer key")
            && err.contains("XAI_PEER_API_KEY")
            && err.contains("peer keygen"),
        "{err}"
    );
    // A keyring file without a current key.
    let empty = env.dir.path().join("empty.env");
    std::fs::write(&empty, "# nothing yet\n").unwrap();
    chmod600(&empty);
    let err = run(
        &["--node-id", "n1"],
        &[("XAI_PEER_KEYRING_FILE", empty.to_str().unwrap())],
    );
    assert!(
        err.contains("empty.env") && err.contains("XAI_PEER_API_KEY"),
        "{err}"
    );
    // An unreadable body file.
    let gone = env.dir.path().join("no-such-body.json");
    let err = run(
        &["--node-id", "n1", "--body-file", gone.to_str().unwrap()],
        &key,
    );
    assert!(
        err.contains("no-such-body.json") && err.contains("--body-file"),
        "{err}"
    );
    // A bad node id, from the flag or the environment.
    let err = run(&["--node-id", "node a"], &key);
    assert!(
        err.contains("--node-id") && err.contains("not a valid node id"),
        "{err}"
    );
    let err = run(&[], &[key[0], ("XAI_PEER_NODE_ID", "node/a")]);
    assert!(err.contains("XAI_PEER_NODE_ID"), "{err}");
    // A URL instead of a path.
    let args = [
        "sign",
        "--method",
        "POST",
        "--path",
        "http://peer:8080/sync",
        "--node-id",
        "n1",
    ];
    let out = peer("table", &args, &key, b"");
    assert_exit(&out, 1, &args);
    assert!(stderr(&out).contains("is a URL"), "{}", stderr(&out));
}

#[test]
fn peer_help_names_the_commands_and_the_variables() {
    let out = peer("table", &["--help"], &[], b"");
    assert_exit(&out, 0, &["peer", "--help"]);
    let text = stdout(&out);
    for w in ["keygen", "fingerprint", "sign", "XAI_PEER_KEYRING_FILE"] {
        assert!(text.contains(w), "{text}");
    }
    let out = peer("table", &["sign", "--help"], &[], b"");
    assert_exit(&out, 0, &["peer", "sign", "--help"]);
    let text = stdout(&out);
    for w in [
        "--body-file",
        "XAI_PEER_NODE_ID",
        "mapfile",
        "--data-binary",
    ] {
        assert!(text.contains(w), "{text}");
    }
}

#[test]
fn status_lists_each_fingerprint_with_its_role_and_who_last_used_it() {
    let (cur, next, _) = keys3();
    let old = PeerKey::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("api_keys.json");
    std::fs::write(
        dir.path().join("api_keys.json.peer-usage"),
        serde_json::json!({
            "format": "xai-keys-peer-usage/1",
            "updated": 1.0,
            "keys": {
                cur.fingerprint(): {"val-a": {"last_used": 1_800_000_000.0, "count": 12}},
                old.fingerprint(): {"val-b": {"last_used": 1_700_000_000.0, "count": 3}},
            }
        })
        .to_string(),
    )
    .unwrap();
    let vars = [
        ("XAI_API_KEY_STORE", store.to_str().unwrap()),
        ("XAI_PEER_API_KEY", cur.expose()),
        ("XAI_PEER_API_KEY_NEXT", next.expose()),
    ];
    let out = peer("json", &["status"], &vars, b"");
    assert_exit(&out, 0, &["peer", "status"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let find = |fp: &str| {
        v.as_array()
            .unwrap()
            .iter()
            .find(|e| e["fingerprint"] == fp)
            .cloned()
            .unwrap()
    };
    assert_eq!(find(cur.fingerprint())["role"], "current");
    assert_eq!(find(cur.fingerprint())["peers"][0]["node"], "val-a");
    assert_eq!(find(cur.fingerprint())["peers"][0]["count"], 12);
    assert_eq!(find(next.fingerprint())["role"], "next");
    assert_eq!(
        find(next.fingerprint())["peers"].as_array().unwrap().len(),
        0
    );
    assert_eq!(find(old.fingerprint())["role"], "not in this ring");
    assert_no_secret(&out, &[cur.expose(), next.expose()], "peer status");
    let out = peer("table", &["status"], &vars, b"");
    assert_exit(&out, 0, &["peer", "status"]);
    let t = stdout(&out);
    assert!(
        t.contains("never") && t.contains("val-b") && t.contains("not in this ring"),
        "{t}"
    );
    // A damaged file says it only holds statistics.
    std::fs::write(dir.path().join("api_keys.json.peer-usage"), b"{oops").unwrap();
    let out = peer("table", &["status"], &vars, b"");
    assert_exit(&out, 1, &["peer", "status"]);
    assert!(stderr(&out).contains("can be deleted"), "{}", stderr(&out));
}

fn chmod600(p: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn a_keyring_file_others_can_read_is_refused() {
    let env = Env::new();
    let (a, _, _) = keys3();
    let file = env.dir.path().join("ring.env");
    std::fs::write(&file, format!("XAI_PEER_API_KEY={}\n", a.expose())).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = peer(
        "table",
        &["fingerprint"],
        &[("XAI_PEER_KEYRING_FILE", file.to_str().unwrap())],
        b"",
    );
    assert_exit(&out, 1, &["peer", "fingerprint"]);
    assert!(stderr(&out).contains("chmod 600"), "{}", stderr(&out));
    assert_no_secret(&out, &[a.expose()], "refused ring");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = peer(
        "table",
        &["fingerprint"],
        &[("XAI_PEER_KEYRING_FILE", file.to_str().unwrap())],
        b"",
    );
    assert_exit(&out, 0, &["peer", "fingerprint"]);
}
