//! Shared helpers: a temporary store, a command builder with a clean environment, JSON runs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;
use serde_json::Value;
use tempfile::TempDir;

/// Path of the binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_xai-keys");

/// A private directory holding one store.
pub struct Env {
    pub dir: TempDir,
    pub store: PathBuf,
}

impl Env {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("keys").join("api_keys.json");
        Env { dir, store }
    }

    pub fn log(&self) -> PathBuf {
        let mut s = self.store.clone().into_os_string();
        s.push(".log");
        PathBuf::from(s)
    }

    /// `xai-keys --store <store> -o json …` with every XAI_* variable removed.
    pub fn cmd(&self) -> Command {
        let mut c = base_cmd();
        c.arg("--store").arg(&self.store).arg("-o").arg("json");
        c
    }

    /// Runs and asserts exit 0; parses stdout as JSON.
    pub fn ok(&self, args: &[&str]) -> Value {
        let out = self.cmd().args(args).output().unwrap();
        assert_exit(&out, 0, args);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout of {args:?} is not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Runs and asserts the exit code; returns stderr.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.cmd().args(args).output().unwrap();
        assert_exit(&out, code, args);
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Issues a key; returns (plaintext, key_id).
    pub fn issue(&self, scope: &str, label: &str) -> (String, String) {
        let v = self.ok(&["issue", "--scope", scope, "--label", label]);
        (
            v["api_key"].as_str().unwrap().to_string(),
            v["key_id"].as_str().unwrap().to_string(),
        )
    }

    /// Key ids currently in the store, via `list`.
    pub fn ids(&self) -> Vec<String> {
        let v = self.ok(&["list"]);
        v.as_object().unwrap().keys().cloned().collect()
    }

    /// `verify` exit code and JSON report.
    pub fn verify(&self) -> (i32, Value) {
        let out = self.cmd().arg("verify").output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
        )
    }
}

/// The binary with a clean environment (no XAI_* leaking in from the machine).
pub fn base_cmd() -> Command {
    let mut c = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("XAI_") {
            c.env_remove(k);
        }
    }
    c
}

pub fn assert_exit(out: &Output, code: i32, args: &[&str]) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "xai-keys {args:?}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap()
}

pub fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}
