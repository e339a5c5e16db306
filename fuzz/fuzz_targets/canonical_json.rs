//! Fuzz canonical JSON: any JSON value either fails to canonicalise (floats) or
//! produces bytes that canonicalise to themselves when parsed back (when they
//! contain no raw control characters, which JSON parsers reject).
#![no_main]

use libfuzzer_sys::fuzz_target;
use secureev_uptane::canonical::to_canonical;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let Ok(canonical) = to_canonical(&value) else {
        return;
    };
    if canonical.iter().any(|&b| b < 0x20) {
        return;
    }
    let back: serde_json::Value =
        serde_json::from_slice(&canonical).expect("canonical JSON parses");
    assert_eq!(back, value);
    assert_eq!(to_canonical(&back).expect("still canonical"), canonical);
});
