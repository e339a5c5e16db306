//! Uptane over UDS: the identifiers, addresses, formats and result codes of
//! `docs/secondary-protocol.md`, shared by the Primary (tester) and by
//! secondary ECUs.
//!
//! Everything here is data: the [`crate::server::EcuServer`] and
//! [`crate::client::FlashClient`] state machines are generic UDS, and this
//! module gives them the Uptane meaning.

use crate::error::{Error, Result};
use secureev_uptane::Attack;

/// Version of this protocol, reported in [`did::CAPABILITIES`].
pub const PROTOCOL_VERSION: u8 = 1;

/// The SecurityAccess level (requestSeed sub-function; sendKey is 0x12) that
/// unlocks programming.
pub const SECURITY_LEVEL: u8 = 0x11;

/// Data identifiers, all in ISO 14229-1's
/// identificationOptionVehicleManufacturerSpecific range 0xF1A0–0xF1EF.
pub mod did {
    /// R: ECU serial (Uptane ECU identifier), UTF-8.
    pub const ECU_SERIAL: u16 = 0xF1A0;
    /// R: Uptane hardware ID, UTF-8.
    pub const HARDWARE_ID: u16 = 0xF1A1;
    /// R: the ECU's signing public key as a `did:key` string, UTF-8.
    pub const PUBLIC_KEY: u16 = 0xF1A2;
    /// R: the ECU's X25519 image-encryption public key, 32 raw bytes (NRC 0x31
    /// when the ECU has none).
    pub const ENCRYPTION_KEY: u16 = 0xF1A3;
    /// R: [`super::Capabilities`] (8 bytes).
    pub const CAPABILITIES: u16 = 0xF1A4;
    /// W: current time from the Primary, u64 big-endian Unix seconds. R: the
    /// ECU's latest securely attested time, same format.
    pub const TIME: u16 = 0xF1A5;
    /// R: result of the last verify routine: result code, then UTF-8 detail.
    pub const LAST_RESULT: u16 = 0xF1A6;
    /// R: chunk `n` (0..16) of the ECU version report is DID
    /// `REPORT_CHUNK_BASE + n` (0xF1B0..=0xF1BF).
    pub const REPORT_CHUNK_BASE: u16 = 0xF1B0;
    /// W: Director root (one version per write; several writes queue a chain).
    pub const DIRECTOR_ROOT: u16 = 0xF1C0;
    /// W: Director timestamp (full verification).
    pub const DIRECTOR_TIMESTAMP: u16 = 0xF1C1;
    /// W: Director snapshot (full verification).
    pub const DIRECTOR_SNAPSHOT: u16 = 0xF1C2;
    /// W: Director targets.
    pub const DIRECTOR_TARGETS: u16 = 0xF1C3;
    /// W: Image repository root (full verification; several writes queue a chain).
    pub const IMAGE_ROOT: u16 = 0xF1C4;
    /// W: Image repository timestamp (full verification).
    pub const IMAGE_TIMESTAMP: u16 = 0xF1C5;
    /// W: Image repository snapshot (full verification).
    pub const IMAGE_SNAPSHOT: u16 = 0xF1C6;
    /// W: Image repository top-level targets (full verification).
    pub const IMAGE_TARGETS: u16 = 0xF1C7;
    /// Download-only pseudo DID (its address is used, never 0x2E): the Image
    /// repository's delegated targets roles, as a bundle
    /// ([`super::encode_delegations`]).
    pub const IMAGE_DELEGATIONS: u16 = 0xF1C8;
}

/// Routine identifiers (RoutineControl 0x31, startRoutine). Ours are in ISO
/// 14229-1's vehicle-manufacturer-specific range 0x0200–0xDFFF.
pub mod routine {
    /// ISO eraseMemory; option record `ALFID address size` (ALFID 0x44).
    pub const ERASE_MEMORY: u16 = 0xFF00;
    /// ISO checkProgrammingDependencies; status `[result]`.
    pub const CHECK_PROGRAMMING_DEPENDENCIES: u16 = 0xFF01;
    /// Verify the staged metadata (partial or full verification); status
    /// `[result][detail]`.
    pub const VERIFY_METADATA: u16 = 0xD000;
    /// Verify (and decrypt) the downloaded image against the verified
    /// metadata; status `[result][detail]`.
    pub const VERIFY_IMAGE: u16 = 0xD001;
    /// Activate the verified image (switch the A/B slot at the next reset);
    /// status `[result][detail]`.
    pub const ACTIVATE: u16 = 0xD002;
    /// Sign a fresh ECU version report; option record = 16-byte nonce; status
    /// `[result]` + [`super::ReportInfo`].
    pub const GENERATE_REPORT: u16 = 0xD003;
    /// The Director accepted a manifest carrying this ECU's version report:
    /// option record = its `report_counter`, u64 big-endian; status
    /// `[result]`. The ECU keeps the attacks and the installation result it
    /// reported until this routine names a report that carried them
    /// (`docs/secondary-protocol.md` §5.3).
    pub const REPORT_DELIVERED: u16 = 0xD004;
}

/// RequestDownload memory addresses (ALFID 0x44: 4-byte address, 4-byte size).
pub mod address {
    /// The image: the ECU writes it to its inactive slot.
    pub const IMAGE: u32 = 0x0000_0000;
    /// Metadata region base: a role's address is `METADATA_BASE | its DID`.
    pub const METADATA_BASE: u32 = 0xFE00_0000;

    /// The download address of the metadata written by DID `did`.
    pub const fn metadata(did: u16) -> u32 {
        METADATA_BASE | did as u32
    }
}

/// RequestDownload dataFormatIdentifier values (high nibble compression, low
/// nibble encryption).
pub mod data_format {
    /// Plain bytes (all metadata; unencrypted images).
    pub const PLAIN: u8 = 0x00;
    /// An image encrypted with `aes256gcm-chunked-v1`, its key wrapped to this
    /// ECU's X25519 key in the Director targets' `custom.encryption`.
    pub const ENCRYPTED: u8 = 0x01;
}

/// The addressAndLengthFormatIdentifier this protocol uses.
pub const ADDRESS_AND_LENGTH_FORMAT: u8 = 0x44;

/// A metadata file an ECU can be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MetadataRole {
    /// Director root.
    DirectorRoot,
    /// Director timestamp.
    DirectorTimestamp,
    /// Director snapshot.
    DirectorSnapshot,
    /// Director targets.
    DirectorTargets,
    /// Image repository root.
    ImageRoot,
    /// Image repository timestamp.
    ImageTimestamp,
    /// Image repository snapshot.
    ImageSnapshot,
    /// Image repository top-level targets.
    ImageTargets,
    /// Image repository delegated targets (bundle; download only).
    ImageDelegations,
}

impl MetadataRole {
    /// All roles, in the order a Primary sends them.
    pub const ALL: [MetadataRole; 9] = [
        MetadataRole::DirectorRoot,
        MetadataRole::DirectorTimestamp,
        MetadataRole::DirectorSnapshot,
        MetadataRole::DirectorTargets,
        MetadataRole::ImageRoot,
        MetadataRole::ImageTimestamp,
        MetadataRole::ImageSnapshot,
        MetadataRole::ImageTargets,
        MetadataRole::ImageDelegations,
    ];

    /// Its data identifier.
    pub fn did(self) -> u16 {
        match self {
            MetadataRole::DirectorRoot => did::DIRECTOR_ROOT,
            MetadataRole::DirectorTimestamp => did::DIRECTOR_TIMESTAMP,
            MetadataRole::DirectorSnapshot => did::DIRECTOR_SNAPSHOT,
            MetadataRole::DirectorTargets => did::DIRECTOR_TARGETS,
            MetadataRole::ImageRoot => did::IMAGE_ROOT,
            MetadataRole::ImageTimestamp => did::IMAGE_TIMESTAMP,
            MetadataRole::ImageSnapshot => did::IMAGE_SNAPSHOT,
            MetadataRole::ImageTargets => did::IMAGE_TARGETS,
            MetadataRole::ImageDelegations => did::IMAGE_DELEGATIONS,
        }
    }

    /// The role a DID writes.
    pub fn from_did(d: u16) -> Option<Self> {
        MetadataRole::ALL.into_iter().find(|r| r.did() == d)
    }

    /// Its RequestDownload address.
    pub fn address(self) -> u32 {
        address::metadata(self.did())
    }

    /// Whether it can be written with WriteDataByIdentifier (all but the
    /// delegation bundle).
    pub fn writable_by_did(self) -> bool {
        self != MetadataRole::ImageDelegations
    }

    /// Whether the role belongs to the Director repository.
    pub fn is_director(self) -> bool {
        matches!(
            self,
            MetadataRole::DirectorRoot
                | MetadataRole::DirectorTimestamp
                | MetadataRole::DirectorSnapshot
                | MetadataRole::DirectorTargets
        )
    }

    /// Role name as in TUF (`root`, `timestamp`, `snapshot`, `targets`;
    /// `delegations` for the bundle).
    pub fn role_name(self) -> &'static str {
        match self {
            MetadataRole::DirectorRoot | MetadataRole::ImageRoot => "root",
            MetadataRole::DirectorTimestamp | MetadataRole::ImageTimestamp => "timestamp",
            MetadataRole::DirectorSnapshot | MetadataRole::ImageSnapshot => "snapshot",
            MetadataRole::DirectorTargets | MetadataRole::ImageTargets => "targets",
            MetadataRole::ImageDelegations => "delegations",
        }
    }
}

/// What a RequestDownload address designates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Region {
    /// The image slot.
    Image,
    /// A metadata file.
    Metadata(MetadataRole),
}

impl Region {
    /// The region at `address`, if the protocol defines one.
    pub fn from_address(address: u64) -> Option<Self> {
        if address == u64::from(address::IMAGE) {
            return Some(Region::Image);
        }
        let a = u32::try_from(address).ok()?;
        if a & 0xFFFF_0000 != address::METADATA_BASE {
            return None;
        }
        MetadataRole::from_did((a & 0xFFFF) as u16).map(Region::Metadata)
    }
}

/// Uptane verification an ECU performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerificationType {
    /// Uptane 2.1 §5.4.4.1: time + Director targets (+ Director root rotation).
    Partial,
    /// Uptane 2.1 §5.4.4.2: both repositories, all roles.
    Full,
}

/// The ECU's protocol capabilities ([`did::CAPABILITIES`], 8 bytes:
/// `version u8, verification u8 (1 partial, 2 full), max_pdu u32 BE,
/// encryption u8 (0 none, 1 x25519-hkdf-sha256-aes256gcm), reserved u8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Protocol version ([`PROTOCOL_VERSION`]).
    pub version: u8,
    /// Verification type.
    pub verification: VerificationType,
    /// Largest UDS message the ECU's transport accepts (4095 on classic
    /// ISO-TP without 32-bit FF_DL).
    pub max_pdu: u32,
    /// Whether the ECU decrypts images itself.
    pub encryption: bool,
}

impl Capabilities {
    /// Encode to the 8-byte DID record.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![
            self.version,
            match self.verification {
                VerificationType::Partial => 1,
                VerificationType::Full => 2,
            },
        ];
        out.extend_from_slice(&self.max_pdu.to_be_bytes());
        out.push(u8::from(self.encryption));
        out.push(0);
        out
    }

    /// Decode the DID record.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let bad = |reason| Error::UnexpectedResponse {
            step: "read capabilities",
            reason,
        };
        let [version, verification, a, b, c, d, encryption, _] = bytes else {
            return Err(bad(format!("{} bytes, expected 8", bytes.len())));
        };
        Ok(Capabilities {
            version: *version,
            verification: match verification {
                1 => VerificationType::Partial,
                2 => VerificationType::Full,
                other => return Err(bad(format!("unknown verification type {other}"))),
            },
            max_pdu: u32::from_be_bytes([*a, *b, *c, *d]),
            encryption: *encryption == 1,
        })
    }
}

/// Encode a time for [`did::TIME`].
pub fn encode_time(unix_seconds: u64) -> Vec<u8> {
    unix_seconds.to_be_bytes().to_vec()
}

/// Decode a [`did::TIME`] record.
pub fn decode_time(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

macro_rules! result_codes {
    ($($(#[$doc:meta])* $name:ident = $value:literal, $text:literal;)*) => {
        /// The first byte of an Uptane routine's status record.
        ///
        /// Verification failures are *results* of a routine that ran, not
        /// negative responses: an NRC cannot carry the attack name that the ECU
        /// version report and the Primary's logs need.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ResultCode {
            $($(#[$doc])* $name,)*
            /// A code this version does not know.
            Other(u8),
        }

        impl ResultCode {
            /// From the byte.
            pub fn from_byte(b: u8) -> Self {
                match b { $($value => ResultCode::$name,)* other => ResultCode::Other(other) }
            }
            /// The byte.
            pub fn as_byte(self) -> u8 {
                match self { $(ResultCode::$name => $value,)* ResultCode::Other(b) => b }
            }
            /// Stable name (Uptane attack names where one applies).
            pub fn name(self) -> &'static str {
                match ResultCode::from_byte(self.as_byte()) { $(ResultCode::$name => $text,)* ResultCode::Other(_) => "unknown" }
            }
        }
    };
}

result_codes! {
    /// Success (verified, and an update is assigned to this ECU).
    Ok = 0x00, "ok";
    /// Verified, but the Director assigns nothing new to this ECU.
    NoUpdate = 0x01, "no-update";
    /// Bad signatures, hashes or lengths: arbitrary software attack.
    ArbitrarySoftware = 0x10, "arbitrary-software";
    /// Metadata version rollback.
    Rollback = 0x11, "rollback";
    /// Expired metadata: freeze attack.
    Freeze = 0x12, "freeze";
    /// Inconsistent roles or repositories: mix-and-match attack.
    MixAndMatch = 0x13, "mix-and-match";
    /// More data than the metadata allows: endless data attack.
    EndlessData = 0x14, "endless-data";
    /// The image is for other hardware.
    WrongHardwareId = 0x15, "wrong-hardware-id";
    /// The metadata is for another ECU or vehicle.
    WrongEcu = 0x16, "wrong-ecu";
    /// Release counter lower than the installed one.
    ReleaseCounterRollback = 0x17, "release-counter-rollback";
    /// Metadata that does not parse.
    Malformed = 0x20, "malformed";
    /// A required file (or the downloaded image) is missing.
    MissingMetadata = 0x21, "missing-metadata";
    /// No time has been written since power-up.
    NoTime = 0x22, "no-time";
    /// The ECU cannot do this (full-verification roles to a partial ECU, an
    /// encrypted image without an encryption key).
    Unsupported = 0x23, "unsupported";
    /// Any other failure.
    Failed = 0x2F, "failed";
}

impl ResultCode {
    /// Whether the routine succeeded.
    pub fn is_success(self) -> bool {
        matches!(self, ResultCode::Ok | ResultCode::NoUpdate)
    }

    /// The code for an attack class.
    pub fn from_attack(attack: Attack) -> Self {
        match attack {
            Attack::ArbitrarySoftware => ResultCode::ArbitrarySoftware,
            Attack::Rollback => ResultCode::Rollback,
            Attack::Freeze => ResultCode::Freeze,
            Attack::MixAndMatch => ResultCode::MixAndMatch,
            Attack::EndlessData => ResultCode::EndlessData,
            Attack::WrongHardwareId => ResultCode::WrongHardwareId,
            Attack::WrongEcu => ResultCode::WrongEcu,
            Attack::ReleaseCounterRollback => ResultCode::ReleaseCounterRollback,
            _ => ResultCode::Failed,
        }
    }

    /// The code for a verification error of the Uptane core.
    pub fn from_uptane_error(error: &secureev_uptane::Error) -> Self {
        use secureev_uptane::Error as E;
        if let Some(attack) = error.attack() {
            return ResultCode::from_attack(attack);
        }
        match error {
            E::Malformed { .. }
            | E::Canonical(_)
            | E::WrongType { .. }
            | E::UnsupportedSpecVersion { .. }
            | E::InvalidTime(_)
            | E::InvalidKey { .. }
            | E::InvalidCustom { .. }
            | E::InvalidRole { .. }
            | E::InvalidDelegation { .. } => ResultCode::Malformed,
            E::Workflow(_) => ResultCode::MissingMetadata,
            _ => ResultCode::Failed,
        }
    }
}

/// Largest detail text an ECU puts in a status record.
pub const MAX_DETAIL_LEN: usize = 200;

/// Build a routine status record `[code][detail UTF-8]`, the detail cut to
/// [`MAX_DETAIL_LEN`] bytes on a character boundary.
pub fn routine_status(code: ResultCode, detail: &str) -> Vec<u8> {
    let mut end = detail.len().min(MAX_DETAIL_LEN);
    while !detail.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = vec![code.as_byte()];
    out.extend_from_slice(&detail.as_bytes()[..end]);
    out
}

/// Split a routine status record into code and detail (lossy UTF-8). An empty
/// record reads as [`ResultCode::Ok`] (ISO routines such as 0xFF00 often send
/// none).
pub fn parse_routine_status(status: &[u8]) -> (ResultCode, String) {
    match status.split_first() {
        None => (ResultCode::Ok, String::new()),
        Some((&code, detail)) => (
            ResultCode::from_byte(code),
            String::from_utf8_lossy(detail).into_owned(),
        ),
    }
}

/// Most chunks a version report can have.
pub const MAX_REPORT_CHUNKS: u8 = 16;

/// Chunk size an ECU on classic ISO-TP uses (a 4095-byte PDU minus `62 DID`,
/// rounded down).
pub const CLASSIC_REPORT_CHUNK: u16 = 4000;

/// What [`routine::GENERATE_REPORT`] returns after the result byte: `length
/// u32 BE, chunk_size u16 BE, chunk_count u8, sha256 [32]` (39 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportInfo {
    /// Length of the signed report JSON.
    pub length: u32,
    /// Bytes per chunk (the last may be shorter).
    pub chunk_size: u16,
    /// Number of chunks (DIDs `REPORT_CHUNK_BASE..REPORT_CHUNK_BASE+count`).
    pub chunk_count: u8,
    /// SHA-256 of the whole report (transport integrity only; the report is
    /// signed by the ECU key).
    pub sha256: [u8; 32],
}

impl ReportInfo {
    /// Describe a report of these bytes cut in chunks of `chunk_size`.
    pub fn for_report(report: &[u8], chunk_size: u16) -> Result<Self> {
        use sha2::Digest;
        let chunk = usize::from(chunk_size.max(1));
        let count = report.len().div_ceil(chunk);
        let too_big = || Error::OutOfRange {
            sid: 0x31,
            reason: "version report too large",
        };
        Ok(ReportInfo {
            length: u32::try_from(report.len()).map_err(|_| too_big())?,
            chunk_size: chunk_size.max(1),
            chunk_count: u8::try_from(count)
                .ok()
                .filter(|c| *c <= MAX_REPORT_CHUNKS)
                .ok_or_else(too_big)?,
            sha256: sha2::Sha256::digest(report).into(),
        })
    }

    /// Encode (39 bytes, without the result byte).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(39);
        out.extend_from_slice(&self.length.to_be_bytes());
        out.extend_from_slice(&self.chunk_size.to_be_bytes());
        out.push(self.chunk_count);
        out.extend_from_slice(&self.sha256);
        out
    }

    /// Decode (39 bytes, without the result byte), checking consistency.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let bad = |reason: String| Error::UnexpectedResponse {
            step: "generate report",
            reason,
        };
        if bytes.len() != 39 {
            return Err(bad(format!(
                "report info of {} bytes, expected 39",
                bytes.len()
            )));
        }
        let length = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let chunk_size = u16::from_be_bytes([bytes[4], bytes[5]]);
        let chunk_count = bytes[6];
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(&bytes[7..]);
        let needed = (length as usize).div_ceil(usize::from(chunk_size.max(1)));
        if chunk_size == 0 || chunk_count > MAX_REPORT_CHUNKS || needed != usize::from(chunk_count)
        {
            return Err(bad(format!(
                "inconsistent report info: {length} bytes in {chunk_count} chunks of {chunk_size}"
            )));
        }
        Ok(ReportInfo {
            length,
            chunk_size,
            chunk_count,
            sha256,
        })
    }

    /// The bytes of chunk `index` of `report`.
    pub fn chunk<'a>(&self, report: &'a [u8], index: u8) -> Option<&'a [u8]> {
        if index >= self.chunk_count {
            return None;
        }
        let start = usize::from(index) * usize::from(self.chunk_size);
        let end = (start + usize::from(self.chunk_size)).min(report.len());
        report.get(start..end)
    }
}

/// Encode delegated targets roles for [`did::IMAGE_DELEGATIONS`]: for each,
/// `name_len u16 BE, name UTF-8, len u32 BE, bytes`, in the order the Image
/// repository's delegation search visits them.
pub fn encode_delegations(roles: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, bytes) in roles {
        let name = &name.as_bytes()[..name.len().min(usize::from(u16::MAX))];
        out.extend_from_slice(&(name.len() as u16).to_be_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(bytes);
    }
    out
}

fn split(bytes: &[u8], at: usize) -> Option<(&[u8], &[u8])> {
    (at <= bytes.len()).then(|| bytes.split_at(at))
}

/// Decode a delegation bundle (untrusted bytes).
pub fn decode_delegations(mut bytes: &[u8]) -> Result<Vec<(String, Vec<u8>)>> {
    let bad = |reason| Error::OutOfRange { sid: 0x36, reason };
    let mut roles = Vec::new();
    while !bytes.is_empty() {
        let (n, rest) = split(bytes, 2).ok_or(bad("truncated delegation name length"))?;
        let n = usize::from(u16::from_be_bytes([n[0], n[1]]));
        let (name, rest) = split(rest, n).ok_or(bad("truncated delegation name"))?;
        let name = std::str::from_utf8(name).map_err(|_| bad("delegation name is not UTF-8"))?;
        let (l, rest) = split(rest, 4).ok_or(bad("truncated delegation length"))?;
        let l = u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize;
        let (body, rest) = split(rest, l).ok_or(bad("truncated delegation body"))?;
        roles.push((name.to_owned(), body.to_vec()));
        bytes = rest;
    }
    Ok(roles)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_regions() {
        assert_eq!(MetadataRole::DirectorTargets.address(), 0xFE00_F1C3);
        assert_eq!(
            Region::from_address(0xFE00_F1C3),
            Some(Region::Metadata(MetadataRole::DirectorTargets))
        );
        assert_eq!(
            Region::from_address(0xFE00_F1C8),
            Some(Region::Metadata(MetadataRole::ImageDelegations))
        );
        assert_eq!(Region::from_address(0), Some(Region::Image));
        assert_eq!(Region::from_address(0xFE00_F1A0), None);
        assert_eq!(Region::from_address(0x1_FE00_F1C3), None);
        for r in MetadataRole::ALL {
            assert!(
                (0xF1A0..=0xF1EF).contains(&r.did()),
                "{r:?} in the VM-specific range"
            );
        }
    }

    #[test]
    fn result_codes_name_attacks() {
        let e = secureev_uptane::Error::WrongHardwareId {
            target: "fw.bin".into(),
            ecu: "ECU1".into(),
            ecu_hardware_id: "a".into(),
            image_hardware_ids: vec!["b".into()],
        };
        let code = ResultCode::from_uptane_error(&e);
        assert_eq!(code, ResultCode::WrongHardwareId);
        assert_eq!(
            code.name(),
            secureev_uptane::Attack::WrongHardwareId.as_str()
        );
        let e = secureev_uptane::Error::Expired {
            role: "targets".into(),
            expires: "x".into(),
            now: "y".into(),
        };
        assert_eq!(ResultCode::from_uptane_error(&e).as_byte(), 0x12);
        assert_eq!(
            parse_routine_status(&routine_status(ResultCode::Freeze, "targets expired")),
            (ResultCode::Freeze, "targets expired".into())
        );
        let long = "é".repeat(150);
        assert!(routine_status(ResultCode::Failed, &long).len() <= 1 + MAX_DETAIL_LEN);
    }

    #[test]
    fn capabilities_and_report_info() {
        let c = Capabilities {
            version: 1,
            verification: VerificationType::Full,
            max_pdu: 4095,
            encryption: true,
        };
        assert_eq!(c.encode(), [1, 2, 0, 0, 0x0F, 0xFF, 1, 0]);
        assert_eq!(Capabilities::decode(&c.encode()).unwrap(), c);
        let report = vec![7u8; 9001];
        let info = ReportInfo::for_report(&report, CLASSIC_REPORT_CHUNK).unwrap();
        assert_eq!(info.chunk_count, 3);
        assert_eq!(ReportInfo::decode(&info.encode()).unwrap(), info);
        assert_eq!(info.chunk(&report, 2).unwrap().len(), 1001);
        assert!(info.chunk(&report, 3).is_none());
        assert!(ReportInfo::for_report(&vec![0; 16 * 4000 + 1], 4000).is_err());
        let mut bad = info.encode();
        bad[6] = 9;
        assert!(ReportInfo::decode(&bad).is_err());
    }

    #[test]
    fn delegation_bundles() {
        let roles = vec![("a".to_owned(), b"{}".to_vec()), ("b/c".to_owned(), vec![])];
        assert_eq!(
            decode_delegations(&encode_delegations(&roles)).unwrap(),
            roles
        );
        assert!(decode_delegations(&[0, 5, b'a']).is_err());
        assert!(decode_delegations(&[]).unwrap().is_empty());
    }
}
