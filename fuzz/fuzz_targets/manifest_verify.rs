//! Fuzz vehicle version manifest and ECU report verification: arbitrary bytes
//! must never panic and never verify against a key the fuzzer does not hold.
#![no_main]

use libfuzzer_sys::fuzz_target;
use secureev_uptane::manifest::{verify_ecu_report, verify_manifest};
use secureev_uptane::SigningKey;
use std::sync::OnceLock;

fn key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| SigningKey::p256_from_bytes(&[7u8; 32]).expect("valid scalar"))
}

fuzz_target!(|data: &[u8]| {
    let public = key().verifying_key();
    assert!(verify_manifest(data, &public, |_| Some(public.clone())).is_err());
    assert!(verify_ecu_report(data, &public, "E1").is_err());
});
