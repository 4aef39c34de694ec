//! (d) The key format's checksum catches every single-character typo; (e) id-prefix resolution
//! only ever returns a key that starts with the prefix.

use proptest::prelude::*;
use proptest::sample::Index;
use xai_keys_core::record::KeyMap;
use xai_keys_core::token::{self, TokenShape, classify};
use xai_keys_core::{Error, KeyId, PlainToken, ops};

use crate::props_store::arb_record;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_single_character_substitution_is_malformed(
        pos in any::<Index>(),
        replacement in any::<char>(),
    ) {
        let t = PlainToken::generate().unwrap();
        let s = t.expose();
        prop_assert_eq!(classify(s), TokenShape::Prefixed);
        let chars: Vec<char> = s.chars().collect();
        let i = pos.index(chars.len());
        prop_assume!(chars[i] != replacement);
        let mut typo = chars.clone();
        typo[i] = replacement;
        let typo: String = typo.into_iter().collect();
        let shape = classify(&typo);
        prop_assert!(
            matches!(shape, TokenShape::Malformed(_)),
            "{:?} at {} of {}: {:?}", replacement, i, s, shape
        );
    }

    #[test]
    fn truncated_or_extended_tokens_are_malformed(cut in 1usize..token::TOKEN_LEN - 4, extra in "[0-9A-Za-z]{1,3}") {
        let t = PlainToken::generate().unwrap();
        let s = t.expose();
        let short = &s[..token::TOKEN_LEN - cut];
        prop_assert!(matches!(classify(short), TokenShape::Malformed(_)), "{}", short);
        let long = format!("{s}{extra}");
        prop_assert!(matches!(classify(&long), TokenShape::Malformed(_)), "{}", long);
    }
}

/// Ids drawn from a tiny alphabet share long prefixes, so ambiguity is common.
fn clustered_id() -> impl Strategy<Value = KeyId> {
    ("[ab]{14}", "[0-9a-f]{50}").prop_map(|(a, b)| KeyId::parse(&format!("{a}{b}")).unwrap())
}

fn keymap() -> impl Strategy<Value = KeyMap> {
    prop::collection::btree_map(clustered_id(), arb_record(), 0..12)
}

/// A prefix of an existing id (in any case, padded with spaces), or arbitrary text.
fn given(keys: &KeyMap) -> BoxedStrategy<String> {
    let ids: Vec<String> = keys.keys().map(|k| k.to_string()).collect();
    let arbitrary = prop_oneof!["[0-9a-fA-F]{0,66}", "[ab]{10,16}", ".{0,70}"];
    if ids.is_empty() {
        return arbitrary.boxed();
    }
    prop_oneof![
        3 => (prop::sample::select(ids), 0usize..=64, any::<bool>(), any::<bool>()).prop_map(
            |(id, n, upper, pad)| {
                let p = &id[..n];
                let p = if upper { p.to_ascii_uppercase() } else { p.to_string() };
                if pad { format!("  {p}\t") } else { p }
            }
        ),
        1 => arbitrary,
    ]
    .boxed()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn resolve_returns_only_matching_keys(
        (keys, given) in keymap().prop_flat_map(|k| { let g = given(&k); (Just(k), g) })
    ) {
        let norm = given.trim().to_ascii_lowercase();
        let matching: Vec<String> = keys
            .keys()
            .map(|k| k.to_string())
            .filter(|k| k.starts_with(&norm))
            .collect();
        let valid = norm.len() >= ops::MIN_PREFIX
            && norm.len() <= 64
            && norm.bytes().all(|b| b.is_ascii_hexdigit());
        match ops::resolve(&keys, &given) {
            Ok(id) => {
                prop_assert!(id.as_str().starts_with(&norm), "{} for {:?}", id, given);
                prop_assert!(keys.contains_key(&id));
                prop_assert!(valid);
                prop_assert_eq!(matching, vec![id.to_string()]);
            }
            Err(Error::Ambiguous { prefix, candidates }) => {
                prop_assert!(valid);
                prop_assert_eq!(&prefix, &norm);
                prop_assert!(candidates.len() >= 2);
                prop_assert_eq!(candidates, matching);
            }
            Err(Error::NotFound(_)) => {
                prop_assert!(valid);
                prop_assert!(matching.is_empty(), "{:?} matches {:?}", given, matching);
            }
            Err(Error::InvalidKeyId { .. }) => prop_assert!(!valid, "{:?} refused", given),
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }
}
