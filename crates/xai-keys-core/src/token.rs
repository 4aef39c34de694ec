//! Key material: generation, recognisable format, checksums and key ids.
//!
//! New keys are `xai_` + 43 base62 characters of OS randomness (256 bits) + 6 base62 characters
//! of CRC32 over everything before them, as GitHub's tokens do: secret scanners can find them and
//! the gateway can refuse a mistyped key without a store lookup. The plaintext lives only in
//! [`PlainToken`], whose `Debug` is redacted and whose memory is zeroed on drop. The store keeps
//! only [`KeyId`], the lowercase hex SHA-256 of the plaintext (the reference's format).

use std::fmt;

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// Fixed prefix of every generated key.
pub const PREFIX: &str = "xai_";
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Random base62 characters: 43 · log2(62) ≈ 256.04 bits.
const BODY_LEN: usize = 43;
const CHECKSUM_LEN: usize = 6;
/// Total length of a generated key.
pub const TOKEN_LEN: usize = PREFIX.len() + BODY_LEN + CHECKSUM_LEN;
/// Minimum length of a caller-supplied secret (bootstrap, HSM flow).
pub const MIN_SUPPLIED_SECRET_LEN: usize = 32;

/// A plaintext key. Shown once, never logged: `Debug` is redacted, memory zeroed on drop.
pub struct PlainToken(Zeroizing<String>);

impl PlainToken {
    /// Generates a new key from the OS CSPRNG.
    pub fn generate() -> Result<Self> {
        let mut out = String::with_capacity(TOKEN_LEN);
        out.push_str(PREFIX);
        let mut pool = Zeroizing::new([0u8; 64]);
        let mut used = pool.len();
        while out.len() < PREFIX.len() + BODY_LEN {
            if used == pool.len() {
                getrandom::fill(pool.as_mut()).map_err(|e| Error::Random(e.to_string()))?;
                used = 0;
            }
            let b = pool[used];
            used += 1;
            // Rejection sampling keeps every character uniform: 248 = 4 · 62.
            if b < 248 {
                out.push(char::from(BASE62[usize::from(b % 62)]));
            }
        }
        let crc = crc32fast::hash(out.as_bytes());
        out.push_str(&encode_checksum(crc));
        Ok(PlainToken(Zeroizing::new(out)))
    }

    /// Wraps a caller-supplied secret (bootstrap, HSM flow) after checking it.
    ///
    /// Surrounding whitespace is removed. Secrets shorter than
    /// [`MIN_SUPPLIED_SECRET_LEN`] are refused (a short secret's unsalted hash is guessable
    /// offline), and a secret that claims our prefix must carry a valid checksum, or the gateway
    /// would refuse it.
    pub fn from_supplied(secret: &str) -> Result<Self> {
        let s = secret.trim();
        if s.chars().count() < MIN_SUPPLIED_SECRET_LEN {
            return Err(Error::InvalidSecret(format!(
                "secret is {} characters long; at least {MIN_SUPPLIED_SECRET_LEN} are required (generate one with `openssl rand -hex 32`)",
                s.chars().count()
            )));
        }
        if s.chars().any(char::is_control) {
            return Err(Error::InvalidSecret(
                "secret contains control characters".into(),
            ));
        }
        if let TokenShape::Malformed(why) = classify(s) {
            return Err(Error::InvalidSecret(format!(
                "secret has the xai_ prefix but {why}"
            )));
        }
        Ok(PlainToken(Zeroizing::new(s.to_string())))
    }

    /// The plaintext. Callers must show it once and never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The key id (SHA-256) of this plaintext.
    pub fn key_id(&self) -> KeyId {
        KeyId::of_plaintext(&self.0)
    }
}

impl fmt::Debug for PlainToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PlainToken(<redacted>)")
    }
}

fn encode_checksum(mut crc: u32) -> String {
    let mut buf = [b'0'; CHECKSUM_LEN];
    for slot in buf.iter_mut().rev() {
        *slot = BASE62[(crc % 62) as usize];
        crc /= 62;
    }
    buf.iter().map(|&b| char::from(b)).collect()
}

/// What a presented credential looks like before any lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenShape {
    /// An `xai_` key with a valid checksum.
    Prefixed,
    /// Has the `xai_` prefix but is mistyped, truncated or forged: refuse without a lookup.
    Malformed(&'static str),
    /// Anything else (legacy 64-hex keys, caller-supplied secrets): look it up.
    Other,
}

/// Classifies a presented credential without touching the store.
pub fn classify(candidate: &str) -> TokenShape {
    let Some(rest) = candidate.strip_prefix(PREFIX) else {
        if is_key_with_mistyped_prefix(candidate) {
            return TokenShape::Malformed("has a mistyped xai_ prefix");
        }
        return TokenShape::Other;
    };
    if rest.len() != BODY_LEN + CHECKSUM_LEN {
        return TokenShape::Malformed("has the wrong length");
    }
    if !rest.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return TokenShape::Malformed("contains characters outside base62");
    }
    let split = candidate.len() - CHECKSUM_LEN;
    let expected = encode_checksum(crc32fast::hash(&candidate.as_bytes()[..split]));
    if expected.as_bytes() != &candidate.as_bytes()[split..] {
        return TokenShape::Malformed("has a bad checksum");
    }
    TokenShape::Prefixed
}

/// Whether `candidate` is one of our keys with exactly one character of the prefix mistyped:
/// the checksum covers the prefix too, so the rest validates against the real prefix.
fn is_key_with_mistyped_prefix(candidate: &str) -> bool {
    let mut chars = candidate.chars();
    let head: Vec<char> = chars.by_ref().take(PREFIX.len()).collect();
    let rest = chars.as_str();
    let typos = head
        .iter()
        .zip(PREFIX.chars())
        .filter(|(a, b)| *a != b)
        .count();
    if typos != 1 || rest.len() != BODY_LEN + CHECKSUM_LEN {
        return false;
    }
    if !rest.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return false;
    }
    let (body, sum) = rest.split_at(BODY_LEN);
    let mut h = crc32fast::Hasher::new();
    h.update(PREFIX.as_bytes());
    h.update(body.as_bytes());
    encode_checksum(h.finalize()) == sum
}

/// A key id: lowercase hex SHA-256 of the plaintext. Not secret.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(String);

impl KeyId {
    /// Hashes a plaintext.
    pub fn of_plaintext(plaintext: &str) -> Self {
        KeyId(hex(&Sha256::digest(plaintext.as_bytes())))
    }

    /// Parses a full key id (64 hex characters; upper case is folded).
    pub fn parse(s: &str) -> Result<Self> {
        let t = s.trim();
        if t.len() != 64 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::InvalidKeyId {
                given: s.to_string(),
                reason: "a key id is 64 hexadecimal characters (the SHA-256 of the key)".into(),
            });
        }
        Ok(KeyId(t.to_ascii_lowercase()))
    }

    /// Wraps a string already known to be a valid id (store keys are checked at load).
    pub(crate) fn from_trusted(s: String) -> Self {
        KeyId(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The bootstrap "fingerprint": the first 12 hex characters.
    pub fn fingerprint(&self) -> &str {
        &self.0[..12.min(self.0.len())]
    }

    /// Raw digest bytes, for constant-time comparison.
    pub fn digest_bytes(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, chunk) in self.0.as_bytes().chunks(2).enumerate().take(32) {
            let hi = hex_val(chunk[0]);
            let lo = chunk.get(1).map_or(0, |&c| hex_val(c));
            out[i] = (hi << 4) | lo;
        }
        out
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn hex_val(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => 0,
    }
}

/// Constant-time equality of two key ids' digests.
pub fn key_ids_equal(a: &KeyId, b: &KeyId) -> bool {
    use subtle::ConstantTimeEq;
    a.digest_bytes().ct_eq(&b.digest_bytes()).into()
}

/// The first 12 characters of an id-like string for messages, safe on any input (values read
/// from a tampered file may not be hex, or even ASCII).
pub fn short(s: &str) -> &str {
    s.char_indices().nth(12).map_or(s, |(i, _)| &s[..i])
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(char::from(H[usize::from(b >> 4)]));
        s.push(char::from(H[usize::from(b & 15)]));
    }
    s
}

/// Lowercase hex SHA-256 of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_prefix_length_and_valid_checksum() {
        let t = PlainToken::generate().unwrap();
        assert_eq!(t.expose().len(), TOKEN_LEN);
        assert!(t.expose().starts_with(PREFIX));
        assert_eq!(classify(t.expose()), TokenShape::Prefixed);
        assert_ne!(t.expose(), PlainToken::generate().unwrap().expose());
    }

    #[test]
    fn a_single_typo_is_detected_without_lookup() {
        let t = PlainToken::generate().unwrap();
        let mut s = t.expose().to_string().into_bytes();
        s[10] = if s[10] == b'a' { b'b' } else { b'a' };
        let typo = String::from_utf8(s).unwrap();
        assert!(matches!(classify(&typo), TokenShape::Malformed(_)));
        assert!(matches!(
            classify(&t.expose()[..TOKEN_LEN - 1]),
            TokenShape::Malformed(_)
        ));
    }

    #[test]
    fn legacy_hex_keys_are_other() {
        assert_eq!(classify(&"ab".repeat(32)), TokenShape::Other);
    }

    #[test]
    fn debug_is_redacted() {
        let t = PlainToken::generate().unwrap();
        let d = format!("{t:?}");
        assert!(!d.contains(&t.expose()[4..20]));
    }

    #[test]
    fn short_never_splits_a_character() {
        assert_eq!(short("0123456789abcdef"), "0123456789ab");
        assert_eq!(short("abc"), "abc");
        assert_eq!(
            short(&format!("a{}", "é".repeat(20))),
            format!("a{}", "é".repeat(11))
        );
    }

    #[test]
    fn key_id_is_sha256_hex() {
        // sha256("abc")
        assert_eq!(
            KeyId::of_plaintext("abc").as_str(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let id = KeyId::of_plaintext("abc");
        assert_eq!(hex(&id.digest_bytes()), id.as_str());
    }

    #[test]
    fn supplied_secrets_need_32_chars_and_valid_prefix_checksum() {
        assert!(PlainToken::from_supplied("short").is_err());
        assert!(PlainToken::from_supplied(&"x".repeat(32)).is_ok());
        let bad = format!("xai_{}", "A".repeat(49));
        assert!(PlainToken::from_supplied(&bad).is_err());
        assert!(KeyId::parse("zz").is_err());
        assert_eq!(
            KeyId::parse(&"AB".repeat(32)).unwrap().as_str(),
            "ab".repeat(32)
        );
    }
}
