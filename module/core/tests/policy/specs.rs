//! The persisted encoding of policy specs.

use lockwarden_core::policy::{Mode, PolicySpec, decode_specs, encode_specs};
use proptest::prelude::*;

fn spec(name: &str) -> PolicySpec {
    PolicySpec {
        name: name.into(),
        keys: b"orders:*".to_vec(),
        mode: Mode::Audit,
        settings: br#"{"max_ms":1000}"#.to_vec(),
        wasm: b"\0asm\x01\0\0\0".to_vec(),
    }
}

fn arb_spec() -> impl Strategy<Value = PolicySpec> {
    (
        ".{0,20}",
        proptest::collection::vec(any::<u8>(), 0..20),
        any::<bool>(),
        proptest::collection::vec(any::<u8>(), 0..50),
        proptest::collection::vec(any::<u8>(), 0..200),
    )
        .prop_map(|(name, keys, audit, settings, wasm)| PolicySpec {
            name,
            keys,
            mode: if audit { Mode::Audit } else { Mode::Enforce },
            settings,
            wasm,
        })
}

proptest! {
    #[test]
    fn specs_round_trip(specs in proptest::collection::vec(arb_spec(), 0..5)) {
        let bytes = encode_specs(&specs);
        prop_assert_eq!(decode_specs(&bytes), Ok(specs));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode_specs(&bytes);
        let mut framed = b"LWPS\x01".to_vec();
        framed.extend_from_slice(&bytes);
        let _ = decode_specs(&framed);
    }

    #[test]
    fn any_corruption_is_caught_or_harmless(index in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let specs = vec![spec("a"), spec("b")];
        let mut bytes = encode_specs(&specs);
        let i = index.index(bytes.len());
        bytes[i] = byte;
        if let Ok(decoded) = decode_specs(&bytes) {
            prop_assert_eq!(decoded.len(), 2);
        }
    }
}

#[test]
fn every_truncation_is_refused() {
    let bytes = encode_specs(&[spec("a"), spec("b")]);
    for cut in 0..bytes.len() {
        assert!(decode_specs(&bytes[..cut]).is_err(), "cut at {cut}");
    }
}

#[test]
fn malformed_sets_say_what_is_wrong() {
    let good = encode_specs(&[spec("a")]);
    let with = |i: usize, byte: u8| {
        let mut b = good.clone();
        b[i] = byte;
        decode_specs(&b).unwrap_err()
    };
    assert_eq!(
        decode_specs(b"RDB!\x01").unwrap_err(),
        "not a lockwarden policy set"
    );
    assert_eq!(
        with(4, 2),
        "policy set encoding version 2 is not supported (this build reads version 1)"
    );
    let mut trailing = good.clone();
    trailing.push(0);
    assert_eq!(
        decode_specs(&trailing).unwrap_err(),
        "1 unexpected bytes after the policy set"
    );
    // The count claims more specs than the bytes can hold.
    let mut huge = good.clone();
    huge[5..13].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(decode_specs(&huge).unwrap_err().contains("too short"));
    // A length field larger than the data.
    let mut long = good.clone();
    long[13..21].copy_from_slice(&u64::MAX.to_le_bytes());
    assert_eq!(decode_specs(&long).unwrap_err(), "policy set is truncated");
    // Name "a" at 21, keys length at 22..30 and 8 key bytes, then the mode.
    assert_eq!(with(38, 7), "unknown policy mode 7");
    assert_eq!(with(21, 0xff), "policy name is not UTF-8");
}

#[test]
fn an_empty_set_round_trips() {
    let none: [PolicySpec; 0] = [];
    assert_eq!(decode_specs(&encode_specs(&none)), Ok(vec![]));
}
