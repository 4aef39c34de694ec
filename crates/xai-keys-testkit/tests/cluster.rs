//! End-to-end check of the etcd test cluster: start, failover, restart, full stop and compaction.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Instant;

use xai_keys_testkit::EtcdCluster;

fn get(cluster: &EtcdCluster, key: &str) -> String {
    let out = cluster
        .etcdctl(&["get", key, "--print-value-only"])
        .unwrap_or_else(|e| panic!("get {key}: {e}"));
    out.trim_end().to_owned()
}

fn put(cluster: &EtcdCluster, key: &str, value: &str) {
    let out = cluster
        .etcdctl(&["put", key, value])
        .unwrap_or_else(|e| panic!("put {key}: {e}"));
    assert_eq!(out.trim(), "OK");
}

#[test]
fn three_members_survive_failover_and_full_restart() {
    let t0 = Instant::now();
    let mut cluster = EtcdCluster::start(3).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("started in {:?}: {cluster:?}", t0.elapsed());
    let eps = cluster.endpoints();
    assert_eq!(eps.len(), 3);
    assert!(eps.iter().all(|e| e.starts_with("127.0.0.1:")));
    assert!(
        !eps.iter()
            .any(|e| e.ends_with(":2379") || e.ends_with(":2380"))
    );
    assert_eq!(
        cluster.url("/xai/keys"),
        format!("etcd://{}/xai/keys", eps.join(","))
    );
    assert_eq!(cluster.url("p"), format!("etcd://{}/p", eps.join(",")));

    put(&cluster, "/xai/a", "one");
    assert_eq!(get(&cluster, "/xai/a"), "one");

    // Lose one member: the other two keep a quorum.
    cluster.kill(1);
    assert!(!cluster.is_running(1));
    assert!(cluster.is_running(0) && cluster.is_running(2));
    // If it was the leader, a write made before the others elect a new one (~0.5-1 s) is lost
    // and times out; wait_healthy() waits for a live leader.
    cluster
        .wait_healthy()
        .unwrap_or_else(|e| panic!("after kill: {e}"));
    put(&cluster, "/xai/b", "two");
    assert_eq!(get(&cluster, "/xai/a"), "one");

    // It comes back with the same data dir and ports and catches up.
    cluster
        .restart(1)
        .unwrap_or_else(|e| panic!("restart 1: {e}"));
    assert!(cluster.is_running(1));
    let m1 = cluster.endpoints()[1].clone();
    let out = cluster
        .etcdctl(&[
            &format!("--endpoints={m1}"),
            "get",
            "/xai/b",
            "--print-value-only",
            "--consistency=s",
        ])
        .unwrap_or_else(|e| panic!("get from member 1: {e}"));
    assert_eq!(out.trim_end(), "two");

    // A hung member (SIGSTOP) does not block the others once they have a leader.
    cluster.pause(2).unwrap_or_else(|e| panic!("pause 2: {e}"));
    cluster
        .wait_healthy()
        .unwrap_or_else(|e| panic!("after pause: {e}"));
    put(&cluster, "/xai/c", "three");
    cluster
        .resume(2)
        .unwrap_or_else(|e| panic!("resume 2: {e}"));
    cluster
        .wait_healthy()
        .unwrap_or_else(|e| panic!("after resume: {e}"));

    // Full outage and recovery.
    cluster.stop_all();
    assert!((0..3).all(|i| !cluster.is_running(i)));
    assert!(cluster.etcdctl(&["get", "/xai/a"]).is_err());
    cluster
        .restart_all()
        .unwrap_or_else(|e| panic!("restart_all: {e}"));
    assert!((0..3).all(|i| cluster.is_running(i)));
    assert_eq!(get(&cluster, "/xai/a"), "one");
    assert_eq!(get(&cluster, "/xai/b"), "two");
    assert_eq!(get(&cluster, "/xai/c"), "three");

    // Compaction drops old revisions; compacting twice is fine.
    put(&cluster, "/xai/a", "uno");
    let rev = cluster.compact().unwrap_or_else(|e| panic!("compact: {e}"));
    assert!(rev >= 5, "revision {rev}");
    let old = cluster.etcdctl(&["get", "/xai/a", "--rev=2"]);
    assert!(
        old.as_ref().is_err_and(|e| e.contains("compacted")),
        "{old:?}"
    );
    assert_eq!(cluster.compact(), Ok(rev));
    assert_eq!(get(&cluster, "/xai/a"), "uno");

    let dir = cluster.dir().map(std::path::Path::to_path_buf);
    drop(cluster);
    if let Some(dir) = dir.filter(|_| std::env::var_os("XAI_TEST_ETCD_KEEP").is_none()) {
        assert!(!dir.exists(), "{} not removed", dir.display());
    }
    eprintln!("whole test took {:?}", t0.elapsed());
}

#[test]
fn single_member_cluster() {
    let cluster = EtcdCluster::start(1).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cluster.endpoints().len(), 1);
    put(&cluster, "k", "v");
    assert_eq!(get(&cluster, "k"), "v");
    assert!(cluster.compact().is_ok_and(|rev| rev >= 2));
}

#[test]
fn missing_binary_is_a_clear_error() {
    // Tests run in parallel threads, so the variable is set in a child process (this test
    // re-run alone) rather than in this process's environment.
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("{e}"));
    if std::env::var_os("XAI_TESTKIT_CHILD").is_some() {
        let err = EtcdCluster::start(1).err().unwrap_or_default();
        assert!(err.contains("apt-get install etcd-server"), "{err}");
        return;
    }
    let out = std::process::Command::new(exe)
        .args(["--exact", "missing_binary_is_a_clear_error", "--nocapture"])
        .env("XAI_TESTKIT_CHILD", "1")
        .env("XAI_TEST_ETCD_BIN", "/nonexistent/etcd")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
