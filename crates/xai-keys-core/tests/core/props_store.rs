//! (a) The store file round-trips: arbitrary key maps render, parse back to the same map and
//! re-render to identical bytes.

use std::path::Path;

use proptest::prelude::*;
use serde_json::{Map, Value};
use xai_keys_core::record::{self, Hydration, KeyMap, KeyRecord, LoadContext, Origin};
use xai_keys_core::{KeyId, Scope};

/// Field names the record parser interprets (or, for `expired`, drops).
const KNOWN: [&str; 9] = [
    "label",
    "created",
    "scope",
    "expires_at",
    "permanent",
    "disabled",
    "origin",
    "replaced_by",
    "expired",
];

pub fn arb_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-z0-9 \"'\\\\/{}:,é漢字😀\u{2028}\u{0}\t\n-]{0,16}",
        Just(String::new()),
    ]
}

pub fn arb_finite() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>().prop_filter("finite", |f| f.is_finite()),
        (0u64..4_000_000_000_000).prop_map(|ms| ms as f64 / 1000.0),
        (-5i64..5).prop_map(|i| i as f64),
        Just(-0.0),
    ]
}

/// Arbitrary JSON (finite numbers only: JSON has no NaN).
pub fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        arb_finite().prop_map(Value::from),
        arb_text().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((arb_text(), inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn arb_extra() -> impl Strategy<Value = Option<Box<Map<String, Value>>>> {
    prop::collection::vec(
        (
            arb_text().prop_filter("unknown field", |k| !KNOWN.contains(&k.as_str())),
            arb_json(),
        ),
        0..4,
    )
    .prop_map(|kv| {
        let m: Map<String, Value> = kv.into_iter().collect();
        (!m.is_empty()).then(|| Box::new(m))
    })
}

fn arb_origin() -> impl Strategy<Value = Option<Origin>> {
    prop::option::of(prop::sample::select(vec![
        Origin::Generated,
        Origin::Supplied,
        Origin::Imported,
        Origin::Bootstrap,
    ]))
}

/// A record as the store can hold it: `permanent` exactly when there is no expiry.
pub fn arb_record() -> impl Strategy<Value = KeyRecord> {
    (
        arb_text(),
        arb_finite(),
        prop::sample::select(Scope::ALL.to_vec()),
        prop::option::of(arb_finite()),
        any::<bool>(),
        arb_origin(),
        prop::option::of(arb_text()),
        arb_extra(),
    )
        .prop_map(
            |(label, created, scope, expires_at, disabled, origin, replaced_by, extra)| KeyRecord {
                label,
                created,
                scope,
                expires_at,
                permanent: expires_at.is_none(),
                disabled,
                origin,
                replaced_by,
                extra,
                hydration: Hydration::default(),
            },
        )
}

pub fn arb_id() -> impl Strategy<Value = KeyId> {
    "[0-9a-f]{64}".prop_map(|s| KeyId::parse(&s).unwrap())
}

pub fn arb_keymap() -> impl Strategy<Value = KeyMap> {
    prop::collection::btree_map(arb_id(), arb_record(), 0..8)
}

type Fields = Vec<(String, Value)>;

fn parse(bytes: &[u8]) -> KeyMap {
    record::parse_store(
        bytes,
        Path::new("api_keys.json"),
        LoadContext {
            now: 1_760_000_000.0,
            default_ttl_secs: 86_400.0,
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", String::from_utf8_lossy(bytes)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn store_round_trips(keys in arb_keymap()) {
        let bytes = record::render_store(&keys);
        let back = parse(&bytes);
        prop_assert_eq!(&back, &keys);
        prop_assert_eq!(record::render_store(&back), bytes);
    }

    /// A store written by another tool with any field order and spacing parses to the same map
    /// as our own rendering of it.
    #[test]
    fn field_order_and_whitespace_do_not_matter(keys in arb_keymap(), seed in any::<u64>()) {
        let canonical = record::render_store(&keys);
        let v: Value = serde_json::from_slice(&canonical).unwrap();
        let mut shuffled = Map::new();
        for (id, rec) in v.as_object().unwrap() {
            // Known fields in a rotated order, unknown ones (kept in their order) first.
            let (mut known, extra): (Fields, Fields) = rec
                .as_object()
                .unwrap()
                .clone()
                .into_iter()
                .partition(|(k, _)| KNOWN.contains(&k.as_str()));
            let n = known.len().max(1);
            known.rotate_left((seed as usize) % n);
            let fields = extra.into_iter().chain(known);
            shuffled.insert(id.clone(), Value::Object(fields.collect()));
        }
        let compact = serde_json::to_vec(&Value::Object(shuffled)).unwrap();
        let back = parse(&compact);
        prop_assert_eq!(&back, &keys);
        prop_assert_eq!(record::render_store(&back), canonical);
    }
}
