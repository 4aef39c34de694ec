//! Where things live under the store's prefix, and the head record that anchors them.
//!
//! ```text
//! <prefix>/head              {"format","seq","hash","store_sha256","keys","updated"}: the anchor
//! <prefix>/keys/<key_id>     one key record (the JSON the file store holds under that id)
//! <prefix>/log/<seq:016>     one audit line, exactly as the file store's log holds it
//! <prefix>/window            the change window in force (absent: none)
//! <prefix>/lockdown          the emergency lockdown in force (absent: none)
//! <prefix>/usage/<xx>        last-use statistics of the keys whose id starts with hex `xx`
//! <prefix>/migration         what `xai-keys migrate` copied, and from where
//! ```
//!
//! Every change is one transaction that compares the head's `mod_revision` with the one it
//! read and, if no one else committed meanwhile, writes the changed records, its audit lines
//! and the new head together.

use serde::{Deserialize, Serialize};

/// The head's `format`.
pub(crate) const HEAD_FORMAT: &str = "xai-keys-etcd/1";

/// Key names under one prefix.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    prefix: String,
}

impl Layout {
    pub(crate) fn new(prefix: &str) -> Layout {
        Layout {
            prefix: prefix.to_string(),
        }
    }
    /// Everything under the prefix (`<prefix>/`).
    pub(crate) fn all(&self) -> String {
        format!("{}/", self.prefix)
    }
    pub(crate) fn head(&self) -> String {
        format!("{}/head", self.prefix)
    }
    pub(crate) fn keys_dir(&self) -> String {
        format!("{}/keys/", self.prefix)
    }
    pub(crate) fn key(&self, id: &str) -> String {
        format!("{}/keys/{id}", self.prefix)
    }
    pub(crate) fn log_dir(&self) -> String {
        format!("{}/log/", self.prefix)
    }
    pub(crate) fn log(&self, seq: u64) -> String {
        format!("{}/log/{seq:016}", self.prefix)
    }
    pub(crate) fn window(&self) -> String {
        format!("{}/window", self.prefix)
    }
    pub(crate) fn lockdown(&self) -> String {
        format!("{}/lockdown", self.prefix)
    }
    pub(crate) fn usage_dir(&self) -> String {
        format!("{}/usage/", self.prefix)
    }
    pub(crate) fn usage(&self, shard: &str) -> String {
        format!("{}/usage/{shard}", self.prefix)
    }
    pub(crate) fn migration(&self) -> String {
        format!("{}/migration", self.prefix)
    }

    /// The sequence number of a log key (`None` for anything else).
    pub(crate) fn log_seq(&self, key: &[u8]) -> Option<u64> {
        let rest = key.strip_prefix(self.log_dir().as_bytes())?;
        std::str::from_utf8(rest).ok()?.parse().ok()
    }

    /// The key id of a record key (`None` for anything else).
    pub(crate) fn key_id<'a>(&self, key: &'a [u8]) -> Option<&'a str> {
        let rest = key.strip_prefix(self.keys_dir().as_bytes())?;
        std::str::from_utf8(rest).ok()
    }
}

/// The end of the range of keys starting with `prefix` (etcd's `--prefix`).
pub(crate) fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The usage shard of a key id: its first two hex characters.
pub(crate) fn usage_shard(id: &str) -> String {
    id.get(..2).unwrap_or("00").to_ascii_lowercase()
}

/// The anchor: what the last commit recorded. Readers compare the records with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Head {
    pub format: String,
    /// The sequence number of the last audit line (lines are numbered from 1).
    pub seq: u64,
    /// The `hash` of that line (the next line's `prev_hash`).
    pub hash: String,
    /// SHA-256 of the records rendered as the file store's JSON.
    pub store_sha256: String,
    pub keys: usize,
    pub updated: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ranges() {
        let l = Layout::new("/xai/main");
        assert_eq!(l.log(42), "/xai/main/log/0000000000000042");
        assert_eq!(l.log_seq(l.log(42).as_bytes()), Some(42));
        assert_eq!(l.log_seq(b"/xai/main/keys/ab"), None);
        assert_eq!(l.key_id(l.key("ab12").as_bytes()), Some("ab12"));
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
        assert_eq!(usage_shard("AB12"), "ab");
        // Prefixes never overlap: "/xai/main/" is not a prefix of "/xai/mainnet/…".
        assert!(!"/xai/mainnet/head".starts_with(&l.all()));
    }
}
