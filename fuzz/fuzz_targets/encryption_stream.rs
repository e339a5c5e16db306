//! Fuzz the ECU side of image encryption with attacker-controlled bytes.
//!
//! The first input byte picks a mode:
//! - 0: arbitrary bytes, split at arbitrary points, into a [`StreamDecryptor`]
//!   with a fixed key and fuzzer-chosen (small) signed parameters. Must not panic
//!   and must never hand out more plaintext than the signed length.
//! - 1: a real stream of fuzzer-chosen plaintext, then one fuzzer-chosen mutation
//!   (bit flips, truncation, appended bytes, a moved span). With an oracle: the
//!   unmodified stream must decrypt to the plaintext in any slicing; any modified
//!   one must fail.
//! - 2: arbitrary JSON as a `WrappedKey` for `unwrap_key`, and as a
//!   `custom.encryption` object for `EncryptionInfo` (validation, length
//!   arithmetic, unwrapping, starting a decryptor). Must not panic or allocate
//!   without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use secureev_uptane::encryption::{
    encrypt_image, unwrap_key, ContentKey, EcuDecryptionKey, EncryptionInfo, KeyBinding,
    StreamDecryptor, WrappedKey,
};

const TARGET: &str = "fuzz-target.bin";
const ECU: &str = "ECU-FUZZ";

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => arbitrary_stream(rest),
        1 => mutated_stream(rest),
        _ => arbitrary_json(rest),
    }
});

fn content_key() -> ContentKey {
    ContentKey::from_bytes(&[0x42; 32])
}

/// Split `bytes` into pieces whose sizes come from `seed`, feed them, finish.
fn decrypt_in_pieces(
    info: &EncryptionInfo,
    bytes: &[u8],
    seed: &[u8],
) -> Result<Vec<u8>, secureev_uptane::Error> {
    let mut decryptor = StreamDecryptor::new(TARGET, &content_key(), info)?;
    let mut out = Vec::new();
    let mut rest = bytes;
    let mut sizes = seed.iter().map(|&b| usize::from(b)).cycle();
    while !rest.is_empty() {
        let mut n = sizes.next().unwrap_or(rest.len());
        if n == 0 {
            // An empty slice must be harmless; then move on by one byte.
            decryptor.update(&[], &mut out)?;
            n = 1;
        }
        let n = n.min(rest.len());
        let step = decryptor.update(&rest[..n], &mut out);
        assert!(out.len() as u64 <= info.plaintext_length);
        step?;
        rest = &rest[n..];
    }
    decryptor.finish()?;
    Ok(out)
}

fn arbitrary_stream(data: &[u8]) {
    if data.len() < 6 {
        return;
    }
    let chunk_size = 1 + u32::from(data[0] % 64);
    let plaintext_length = u64::from(u16::from_le_bytes([data[1], data[2]]));
    let seed = &data[3..6];
    let info = EncryptionInfo::new(chunk_size, plaintext_length, "00".repeat(32));
    let _ = decrypt_in_pieces(&info, &data[6..], seed);
}

fn mutated_stream(data: &[u8]) {
    if data.len() < 8 {
        return;
    }
    let chunk_size = 1 + u32::from(data[0] % 64);
    let op = data[1];
    let at = usize::from(u16::from_le_bytes([data[2], data[3]]));
    let arg = data[4];
    let seed = &data[5..8];
    let plaintext = &data[8..data.len().min(8 + 4096)];

    let Ok((stream, info)) = encrypt_image(&content_key(), plaintext, chunk_size) else {
        panic!("encrypting {} bytes failed", plaintext.len());
    };
    assert_eq!(stream.len() as u64, info.encrypted_length().unwrap_or(0));

    let mut bad = stream.clone();
    let len = bad.len();
    match op % 5 {
        0 => {
            let mask = if arg == 0 { 1 } else { arg };
            bad[at % len] ^= mask;
        }
        1 => bad.truncate(at % len),
        2 => bad.extend(std::iter::repeat_n(arg, 1 + at % 64)),
        3 => {
            // Move a span to another place (reordering).
            let from = at % len;
            let span = (1 + usize::from(arg)).min(len - from);
            let moved: Vec<u8> = bad.drain(from..from + span).collect();
            let to = (at / 7) % (bad.len() + 1);
            bad.splice(to..to, moved);
        }
        _ => {}
    }

    let result = decrypt_in_pieces(&info, &bad, seed);
    if bad == stream {
        assert_eq!(result.ok().as_deref(), Some(plaintext));
    } else {
        assert!(
            result.is_err(),
            "a modified stream decrypted (op {})",
            op % 5
        );
    }
}

fn arbitrary_json(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let ecu = EcuDecryptionKey::from_bytes(&[0x11; 32]);
    let binding = KeyBinding {
        target: TARGET,
        ecu_serial: ECU,
    };
    if let Ok(wrapped) = serde_json::from_value::<WrappedKey>(value.clone()) {
        let _ = unwrap_key(&wrapped, &ecu, &binding);
    }
    let custom = serde_json::json!({ "encryption": value });
    if let Ok(Some(info)) = EncryptionInfo::from_custom(TARGET, Some(&custom)) {
        let _ = info.validate(TARGET);
        let _ = info.encrypted_length();
        let _ = info.unwrap_key_for(TARGET, ECU, &ecu);
        if let Ok(mut decryptor) = StreamDecryptor::new(TARGET, &content_key(), &info) {
            let mut out = Vec::new();
            let _ = decryptor.update(data, &mut out);
            assert!(out.len() as u64 <= info.plaintext_length);
            let _ = decryptor.finish();
        }
    }
}
