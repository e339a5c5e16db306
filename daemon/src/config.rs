//! The daemon's configuration: one TOML file plus drop-ins.
//!
//! [`load`] reads the main file (default [`DEFAULT_CONFIG_PATH`]) and then every
//! `*.toml` file of the drop-in directory beside it (`otad.toml.d/`), in lexical
//! order of their names. Later files override earlier ones key by key; tables
//! merge, any other value (arrays included, so `[[secondary]]`) is replaced.
//! The merged document is deserialised into [`Config`], whose structs all deny
//! unknown fields, so that a typo is an error naming the key and the file that
//! set it rather than a silently ignored setting. [`parse_str`] does the same for
//! a string, without touching the file system.
//!
//! Every key, its default and an example file are in `docs/configuration.md`; a
//! test checks that every key of these structs is documented there.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where the daemon looks for its configuration unless `--config` says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/secureev/otad.toml";
/// `[backend] director_path`: where Director metadata lives under the backend URL;
/// `{vin}` is replaced by the vehicle's VIN.
pub const DEFAULT_DIRECTOR_PATH: &str = "/director/{vin}";
/// `[backend] image_path`: where Image repository metadata lives (targets under
/// `<image_path>/targets/`).
pub const DEFAULT_IMAGE_PATH: &str = "/image";
/// `[keys] dir`.
pub const DEFAULT_KEYS_DIR: &str = "/var/lib/secureev/keys";
/// `[trust] director_root`.
pub const DEFAULT_DIRECTOR_ROOT: &str = "/etc/secureev/trust/director-root.json";
/// `[trust] image_root`.
pub const DEFAULT_IMAGE_ROOT: &str = "/etc/secureev/trust/image-root.json";
/// `[state] dir`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/secureev/state";
/// `[state] cache_dir`.
pub const DEFAULT_CACHE_DIR: &str = "/var/cache/secureev";
/// `[state] storage_budget_bytes`: 4 GiB.
pub const DEFAULT_STORAGE_BUDGET_BYTES: u64 = 4 << 30;
/// `[checkin] interval_secs`: one hour.
pub const DEFAULT_CHECKIN_INTERVAL_SECS: u64 = 3600;
/// `[checkin] jitter_secs`: up to five minutes added at random.
pub const DEFAULT_CHECKIN_JITTER_SECS: u64 = 300;
/// `[checkin] backoff_max_secs`: six hours.
pub const DEFAULT_CHECKIN_BACKOFF_MAX_SECS: u64 = 6 * 3600;
/// `[download] min_rate_bytes_per_sec`.
pub const DEFAULT_MIN_RATE_BYTES_PER_SEC: u64 = 4096;
/// `[download] min_rate_window_secs`.
pub const DEFAULT_MIN_RATE_WINDOW_SECS: u64 = 60;
/// `[download] timeout_secs`: connecting and receiving the response headers.
pub const DEFAULT_DOWNLOAD_TIMEOUT_SECS: u64 = 30;
/// `[network] connect_timeout_secs`: TCP connect and TLS handshake of every request.
pub const DEFAULT_CONNECT_TIMEOUT_SECS: u64 = 15;
/// `[network] response_timeout_secs`: from a metadata request or the manifest
/// PUT being sent to its response headers.
pub const DEFAULT_RESPONSE_TIMEOUT_SECS: u64 = 30;
/// `[network] metadata_timeout_secs`: a whole metadata fetch, first byte of the
/// request to last byte of the body.
pub const DEFAULT_METADATA_TIMEOUT_SECS: u64 = 120;
/// `[network] manifest_timeout_secs`: the whole manifest PUT, request and answer.
pub const DEFAULT_MANIFEST_TIMEOUT_SECS: u64 = 60;
/// Length of an ISO 3779 VIN.
pub const ISO_3779_VIN_LENGTH: usize = 17;
/// Longest VIN with `vin_format = "free"`.
pub const MAX_FREE_VIN_LENGTH: usize = 64;
/// Longest ECU serial or hardware ID.
pub const MAX_ID_LENGTH: usize = 128;
/// `[install] precondition_max_age_secs`: a required precondition reported
/// longer ago than this no longer counts.
pub const DEFAULT_PRECONDITION_MAX_AGE_SECS: u64 = 300;
/// `[install.file] path` when neither `path` nor `slots` is given.
pub const DEFAULT_INSTALL_FILE_PATH: &str = "/var/lib/secureev/install/image.bin";
/// Default `[install.rauc] bus`: RAUC's service on the system bus.
pub const DEFAULT_RAUC_BUS: &str = "system";
/// Default `[install.rauc] install_timeout_secs`: how long RAUC may take to
/// write a slot.
pub const DEFAULT_RAUC_INSTALL_TIMEOUT_SECS: u64 = 3600;
/// Default `[install.rauc] health_timeout_secs`.
pub const DEFAULT_RAUC_HEALTH_TIMEOUT_SECS: u64 = 300;
/// Default `[install.rauc] boot_id_file`: the kernel's ID of this boot.
pub const DEFAULT_BOOT_ID_FILE: &str = "/proc/sys/kernel/random/boot_id";

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[backend]`.
    pub backend: BackendConfig,
    /// `[vehicle]`.
    pub vehicle: VehicleConfig,
    /// `[keys]`.
    #[serde(default)]
    pub keys: KeysConfig,
    /// `[trust]`.
    #[serde(default)]
    pub trust: TrustConfig,
    /// `[state]`.
    #[serde(default)]
    pub state: StateConfig,
    /// `[checkin]`.
    #[serde(default)]
    pub checkin: CheckinConfig,
    /// `[download]`.
    #[serde(default)]
    pub download: DownloadConfig,
    /// `[network]`.
    #[serde(default)]
    pub network: NetworkConfig,
    /// `[install]`.
    #[serde(default)]
    pub install: InstallConfig,
    /// `[[secondary]]`, one per secondary ECU.
    #[serde(default, rename = "secondary", skip_serializing_if = "Vec::is_empty")]
    pub secondaries: Vec<SecondaryConfig>,
    /// `[dbus]`.
    #[serde(default)]
    pub dbus: DbusConfig,
    /// `[watchdog]`.
    #[serde(default)]
    pub watchdog: WatchdogConfig,
    /// `[push]`.
    #[serde(default)]
    pub push: PushConfig,
}

/// `[backend]`: where the Director and Image repository are and how to reach them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Base URL of the backend; must be `https://`.
    pub url: String,
    /// PEM file with the CA certificate(s) that the backend's certificate must
    /// chain to. The system trust store is never used.
    pub ca_file: PathBuf,
    /// PEM client certificate chain for mutual TLS (with `client_key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
    /// Path of the Director repository under `url`; `{vin}` is replaced.
    #[serde(default = "default_director_path")]
    pub director_path: String,
    /// Path of the Image repository under `url`.
    #[serde(default = "default_image_path")]
    pub image_path: String,
}

fn default_director_path() -> String {
    DEFAULT_DIRECTOR_PATH.to_owned()
}
fn default_image_path() -> String {
    DEFAULT_IMAGE_PATH.to_owned()
}

/// `[vehicle]`: who this vehicle and its Primary are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VehicleConfig {
    /// Vehicle identification number.
    pub vin: String,
    /// ECU serial of the Primary (this head unit).
    pub primary_serial: String,
    /// Hardware ID of the Primary.
    pub hardware_id: String,
    /// Which VINs `vin` may be.
    #[serde(default)]
    pub vin_format: VinFormat,
}

/// `[vehicle] vin_format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VinFormat {
    /// ISO 3779: exactly 17 characters, digits and capital letters except
    /// `I`, `O` and `Q` (the safe default: the VIN goes into URL paths and
    /// signed requests).
    #[default]
    #[serde(rename = "iso-3779")]
    Iso3779,
    /// 1 to 64 ASCII letters, digits, `-` and `_` (test fleets, prototypes).
    Free,
}

impl VinFormat {
    /// Why `vin` is not a VIN of this format, if it is not.
    pub fn check(self, vin: &str) -> std::result::Result<(), String> {
        match self {
            VinFormat::Iso3779 => {
                if vin.chars().count() != ISO_3779_VIN_LENGTH {
                    return Err(format!(
                        "an ISO 3779 VIN has {ISO_3779_VIN_LENGTH} characters, this one {} \
                         (set vin_format = \"free\" for other identifiers)",
                        vin.chars().count()
                    ));
                }
                // ISO 3779 §5: the Arabic numerals and the Roman letters except I, O, Q.
                if let Some(c) = vin
                    .chars()
                    .find(|c| !(c.is_ascii_digit() || c.is_ascii_uppercase()) || "IOQ".contains(*c))
                {
                    return Err(format!(
                        "{c:?} is not an ISO 3779 VIN character (0-9, A-Z except I, O, Q)"
                    ));
                }
                Ok(())
            }
            VinFormat::Free => {
                if vin.is_empty() || vin.len() > MAX_FREE_VIN_LENGTH {
                    return Err(format!("must have 1 to {MAX_FREE_VIN_LENGTH} characters"));
                }
                if let Some(c) = vin
                    .chars()
                    .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
                {
                    return Err(format!(
                        "{c:?} is not allowed (ASCII letters, digits, '-' and '_')"
                    ));
                }
                Ok(())
            }
        }
    }
}

/// `[keys]`: where the Primary's keys live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    /// Directory of the signing and decryption keys (created mode 0700).
    #[serde(default = "default_keys_dir")]
    pub dir: PathBuf,
    /// When missing keys may be created.
    #[serde(default)]
    pub provision: KeyProvisioning,
}

/// `[keys] provision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyProvisioning {
    /// Create missing keys only on the first start, while the state
    /// directory holds no trusted metadata yet. Once the vehicle has state, a
    /// missing key (an unmounted partition, a wrong `dir`) stops start-up
    /// instead of silently giving the vehicle a new identity.
    #[default]
    FirstBoot,
    /// Never create keys: they are provisioned at the factory.
    Never,
}

fn default_keys_dir() -> PathBuf {
    DEFAULT_KEYS_DIR.into()
}

impl Default for KeysConfig {
    fn default() -> Self {
        KeysConfig {
            dir: default_keys_dir(),
            provision: KeyProvisioning::default(),
        }
    }
}

/// `[trust]`: the initial roots of trust.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustConfig {
    /// Initial Director root metadata, used when the state has none yet.
    #[serde(default = "default_director_root")]
    pub director_root: PathBuf,
    /// Initial Image repository root metadata.
    #[serde(default = "default_image_root")]
    pub image_root: PathBuf,
    /// Which roles the Director serves.
    #[serde(default)]
    pub director_layout: DirectorLayout,
}

fn default_director_root() -> PathBuf {
    DEFAULT_DIRECTOR_ROOT.into()
}
fn default_image_root() -> PathBuf {
    DEFAULT_IMAGE_ROOT.into()
}

impl Default for TrustConfig {
    fn default() -> Self {
        TrustConfig {
            director_root: default_director_root(),
            image_root: default_image_root(),
            director_layout: DirectorLayout::default(),
        }
    }
}

/// `[trust] director_layout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DirectorLayout {
    /// All four TUF roles (the safe default: timestamp and snapshot protect
    /// against freeze and mix-and-match).
    #[default]
    Tuf,
    /// Only root and targets, for Uptane 1.x-era Directors.
    RootAndTargets,
}

impl DirectorLayout {
    /// The core's layout.
    pub fn to_core(self) -> secureev_uptane::trusted::Layout {
        match self {
            DirectorLayout::Tuf => secureev_uptane::trusted::Layout::Tuf,
            DirectorLayout::RootAndTargets => secureev_uptane::trusted::Layout::RootAndTargetsOnly,
        }
    }
}

/// `[state]`: persistent state and the download cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// State directory (metadata, installed versions, journal).
    #[serde(default = "default_state_dir")]
    pub dir: PathBuf,
    /// Download cache directory.
    #[serde(default = "default_cache_dir")]
    pub cache_dir: PathBuf,
    /// Most bytes the cache may hold; a download that would exceed it is refused
    /// before it starts.
    #[serde(default = "default_storage_budget")]
    pub storage_budget_bytes: u64,
}

fn default_state_dir() -> PathBuf {
    DEFAULT_STATE_DIR.into()
}
fn default_cache_dir() -> PathBuf {
    DEFAULT_CACHE_DIR.into()
}
fn default_storage_budget() -> u64 {
    DEFAULT_STORAGE_BUDGET_BYTES
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            dir: default_state_dir(),
            cache_dir: default_cache_dir(),
            storage_budget_bytes: DEFAULT_STORAGE_BUDGET_BYTES,
        }
    }
}

/// `[checkin]`: when to contact the backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckinConfig {
    /// Seconds between check-ins.
    #[serde(default = "default_interval")]
    pub interval_secs: u64,
    /// Up to this many seconds are added at random to each wait.
    #[serde(default = "default_jitter")]
    pub jitter_secs: u64,
    /// Longest wait after repeated failures (the wait doubles per failure).
    #[serde(default = "default_backoff_max")]
    pub backoff_max_secs: u64,
}

fn default_interval() -> u64 {
    DEFAULT_CHECKIN_INTERVAL_SECS
}
fn default_jitter() -> u64 {
    DEFAULT_CHECKIN_JITTER_SECS
}
fn default_backoff_max() -> u64 {
    DEFAULT_CHECKIN_BACKOFF_MAX_SECS
}

impl Default for CheckinConfig {
    fn default() -> Self {
        CheckinConfig {
            interval_secs: DEFAULT_CHECKIN_INTERVAL_SECS,
            jitter_secs: DEFAULT_CHECKIN_JITTER_SECS,
            backoff_max_secs: DEFAULT_CHECKIN_BACKOFF_MAX_SECS,
        }
    }
}

/// `[download]`: limits of image downloads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownloadConfig {
    /// A download slower than this over a whole window is refused (slow
    /// retrieval attack).
    #[serde(default = "default_min_rate")]
    pub min_rate_bytes_per_sec: u64,
    /// Length of the window over which the rate is measured.
    #[serde(default = "default_min_rate_window")]
    pub min_rate_window_secs: u64,
    /// Seconds allowed to connect and receive the response headers.
    #[serde(default = "default_download_timeout")]
    pub timeout_secs: u64,
}

fn default_min_rate() -> u64 {
    DEFAULT_MIN_RATE_BYTES_PER_SEC
}
fn default_min_rate_window() -> u64 {
    DEFAULT_MIN_RATE_WINDOW_SECS
}
fn default_download_timeout() -> u64 {
    DEFAULT_DOWNLOAD_TIMEOUT_SECS
}

impl Default for DownloadConfig {
    fn default() -> Self {
        DownloadConfig {
            min_rate_bytes_per_sec: DEFAULT_MIN_RATE_BYTES_PER_SEC,
            min_rate_window_secs: DEFAULT_MIN_RATE_WINDOW_SECS,
            timeout_secs: DEFAULT_DOWNLOAD_TIMEOUT_SECS,
        }
    }
}

/// `[network]`: bounds of every request to the backend (metadata, manifest,
/// registration). Image downloads have the bounds of `[download]` and the
/// connect timeout of this table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// Seconds to connect and complete the TLS handshake.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    /// Seconds from sending a request to its response headers.
    #[serde(default = "default_response_timeout")]
    pub response_timeout_secs: u64,
    /// Seconds for a whole metadata fetch, body included.
    #[serde(default = "default_metadata_timeout")]
    pub metadata_timeout_secs: u64,
    /// Seconds for the whole manifest PUT.
    #[serde(default = "default_manifest_timeout")]
    pub manifest_timeout_secs: u64,
}

fn default_connect_timeout() -> u64 {
    DEFAULT_CONNECT_TIMEOUT_SECS
}
fn default_response_timeout() -> u64 {
    DEFAULT_RESPONSE_TIMEOUT_SECS
}
fn default_metadata_timeout() -> u64 {
    DEFAULT_METADATA_TIMEOUT_SECS
}
fn default_manifest_timeout() -> u64 {
    DEFAULT_MANIFEST_TIMEOUT_SECS
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            connect_timeout_secs: DEFAULT_CONNECT_TIMEOUT_SECS,
            response_timeout_secs: DEFAULT_RESPONSE_TIMEOUT_SECS,
            metadata_timeout_secs: DEFAULT_METADATA_TIMEOUT_SECS,
            manifest_timeout_secs: DEFAULT_MANIFEST_TIMEOUT_SECS,
        }
    }
}

/// `[install]`: when and how the Primary's own images are installed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallConfig {
    /// Whether a verified update installs at once or waits for the user.
    #[serde(default)]
    pub policy: InstallPolicy,
    /// Which installer the Primary's images go through.
    #[serde(default)]
    pub installer: InstallerKind,
    /// `[install.file]`, for `installer = "file"`.
    #[serde(default)]
    pub file: FileInstallConfig,
    /// `[install.command]`, required for `installer = "command"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<CommandInstallConfig>,
    /// `[install.rauc]`, for `installer = "rauc"` (defaults when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rauc: Option<RaucInstallConfig>,
    /// Directory of inhibit files: while it holds a file, installs wait; the
    /// file name names the precondition and its content is the reason (default
    /// `/run/secureev-inhibit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inhibit_dir: Option<PathBuf>,
    /// Preconditions that must have been reported satisfied (by their owner,
    /// with `SetPrecondition`) within `precondition_max_age_secs` before an
    /// install starts; one never reported holds installs back.
    #[serde(default)]
    pub required_preconditions: Vec<String>,
    /// How old a required precondition's report may be (default
    /// [`DEFAULT_PRECONDITION_MAX_AGE_SECS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precondition_max_age_secs: Option<u64>,
}

/// `[install] policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstallPolicy {
    /// Install as soon as an update is verified.
    Auto,
    /// Wait for an `Install` call over D-Bus bound to the update shown (the safe
    /// default: nothing changes on the vehicle without the user).
    #[default]
    Consent,
}

/// `[install] installer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstallerKind {
    /// Write the image to a file or an A/B slot ([`crate::install::FileInstaller`]).
    #[default]
    File,
    /// Run a program ([`crate::install::CommandInstaller`]).
    Command,
    /// Hand RAUC bundles to the RAUC service over D-Bus
    /// ([`crate::install::rauc::RaucInstaller`]).
    Rauc,
}

/// `[install.rauc]`: the RAUC installer (docs/configuration.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RaucInstallConfig {
    /// `"system"` (RAUC's service on the system bus) or a D-Bus address.
    #[serde(default = "default_rauc_bus")]
    pub bus: String,
    /// Whether the install must be bound to the inspected bundle's manifest
    /// hash (`require-manifest-hash`).
    #[serde(default)]
    pub manifest_hash: ManifestHashPolicy,
    /// How long RAUC may take for one install.
    #[serde(default = "default_rauc_install_timeout")]
    pub install_timeout_secs: u64,
    /// Program and arguments run after a reboot into the new slot, before it
    /// is marked good; exit status 0 means healthy. Empty: no check.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub health_check: Vec<String>,
    /// How long the health check may take.
    #[serde(default = "default_rauc_health_timeout")]
    pub health_timeout_secs: u64,
    /// File holding an ID that changes with every boot.
    #[serde(default = "default_boot_id_file")]
    pub boot_id_file: PathBuf,
}

fn default_rauc_bus() -> String {
    DEFAULT_RAUC_BUS.to_owned()
}
fn default_rauc_install_timeout() -> u64 {
    DEFAULT_RAUC_INSTALL_TIMEOUT_SECS
}
fn default_rauc_health_timeout() -> u64 {
    DEFAULT_RAUC_HEALTH_TIMEOUT_SECS
}
fn default_boot_id_file() -> PathBuf {
    PathBuf::from(DEFAULT_BOOT_ID_FILE)
}

impl Default for RaucInstallConfig {
    fn default() -> Self {
        RaucInstallConfig {
            bus: default_rauc_bus(),
            manifest_hash: ManifestHashPolicy::default(),
            install_timeout_secs: DEFAULT_RAUC_INSTALL_TIMEOUT_SECS,
            health_check: Vec::new(),
            health_timeout_secs: DEFAULT_RAUC_HEALTH_TIMEOUT_SECS,
            boot_id_file: default_boot_id_file(),
        }
    }
}

/// `[install.rauc] manifest_hash`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ManifestHashPolicy {
    /// Ask RAUC for the bundle's manifest hash (`InspectBundle`) and install
    /// with `require-manifest-hash`; refuse a RAUC that cannot (the safe
    /// default).
    #[default]
    Require,
    /// As `require`, but install without the binding when RAUC has no
    /// `InspectBundle` (RAUC 1.8), with a warning.
    IfSupported,
}

/// `[install.file]`: a single target file, or two slots with an atomic switch.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileInstallConfig {
    /// Single file replaced atomically (default [`DEFAULT_INSTALL_FILE_PATH`] when
    /// `slots` is not set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Two slot files, A and B; the image goes to the inactive one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<Vec<PathBuf>>,
    /// Symlink naming the active slot, switched atomically (required with
    /// `slots`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<PathBuf>,
}

/// `[install.command]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandInstallConfig {
    /// Program to run (absolute path); the image path is its last argument.
    pub program: PathBuf,
    /// Arguments before the image path.
    #[serde(default)]
    pub args: Vec<String>,
}

/// `[[secondary]]`: one secondary ECU behind the Primary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecondaryConfig {
    /// ECU serial.
    pub serial: String,
    /// Hardware ID.
    pub hardware_id: String,
    /// How much metadata the secondary checks itself.
    #[serde(default)]
    pub verification: Verification,
    /// How the Primary reaches it.
    pub transport: TransportKind,
    /// `[secondary.can]`, for `transport = "can"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub can: Option<CanConfig>,
    /// `[secondary.doip]`, for `transport = "doip"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub doip: Option<DoipConfig>,
    /// The SecurityAccess secret of this ECU (hex, 32 bytes); default
    /// `<keys.dir>/secondaries/<serial>.secret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_secret_file: Option<PathBuf>,
}

/// `[[secondary]] verification`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verification {
    /// Uptane 2.1 §5.4.4.1: Director targets only.
    Partial,
    /// Uptane 2.1 §5.4.4.2: both repositories (the safe default).
    #[default]
    Full,
}

/// `[[secondary]] transport`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TransportKind {
    /// UDS over ISO-TP on a CAN interface.
    Can,
    /// UDS over DoIP (ISO 13400) on IP.
    Doip,
}

/// `[secondary.can]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanConfig {
    /// SocketCAN interface, e.g. `can0`.
    pub interface: String,
    /// CAN ID the Primary sends to (11-bit, or 29-bit up to 0x1FFFFFFF).
    pub tx_id: u32,
    /// CAN ID the secondary answers on.
    pub rx_id: u32,
    /// Use CAN FD frames.
    #[serde(default)]
    pub fd: bool,
    /// CAN FD: data length of transmitted frames (8, 12, 16, 20, 24, 32, 48
    /// or 64).
    #[serde(default = "default_fd_tx_dl")]
    pub fd_tx_dl: u8,
    /// CAN FD: bit rate switch in the data phase.
    #[serde(default = "default_true")]
    pub fd_brs: bool,
    /// Padding of frames: `"tx"` (pad ours, accept the secondary's padded or
    /// not), `"strict"` (pad ours, refuse unpadded ones) or `"none"`.
    #[serde(default)]
    pub padding: CanPadding,
    /// The padding byte.
    #[serde(default = "default_padding_byte")]
    pub padding_byte: u8,
    /// Block size in the Primary's flow control (0: no further flow control).
    #[serde(default)]
    pub block_size: u8,
    /// STmin the Primary asks the secondary for in its flow control, in µs
    /// (0, 100 … 900, or whole milliseconds up to 127 000).
    #[serde(default)]
    pub st_min_us: u32,
    /// Minimum gap between the Primary's consecutive frames in µs, whatever
    /// STmin the secondary asks for: a cap on the bus load of a flash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_gap_us: Option<u32>,
    /// ISO-TP extended addressing: `[address the Primary sends, address it
    /// expects]` as the first data byte of each frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extended_addresses: Option<[u8; 2]>,
}

/// `[secondary.can] padding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CanPadding {
    /// Pad transmitted frames; accept received frames padded or not.
    #[default]
    Tx,
    /// Pad transmitted frames and require received ones to be padded.
    Strict,
    /// No padding.
    None,
}

fn default_fd_tx_dl() -> u8 {
    64
}
fn default_true() -> bool {
    true
}
fn default_padding_byte() -> u8 {
    secureev_can::DEFAULT_PAD_BYTE
}

impl CanConfig {
    /// The kernel ISO-TP configuration of the Primary's end.
    pub fn isotp(&self) -> std::result::Result<secureev_can::IsoTpConfig, secureev_can::Error> {
        use secureev_can::{Addressing, FdConfig, IsoTpConfig, Padding, StMin};
        let mut c = IsoTpConfig::new(self.tx_id, self.rx_id);
        if self.tx_id > 0x7FF || self.rx_id > 0x7FF {
            c = c.with_extended_ids();
        }
        if self.fd {
            c.fd = Some(FdConfig {
                tx_dl: self.fd_tx_dl,
                bit_rate_switch: self.fd_brs,
            });
        }
        c.padding = match self.padding {
            CanPadding::Tx => Padding::Tx(self.padding_byte),
            CanPadding::Strict => Padding::Strict(self.padding_byte),
            CanPadding::None => Padding::None,
        };
        c.block_size = self.block_size;
        c.st_min = StMin::from_micros_total(self.st_min_us)?;
        c.force_tx_st_min = self
            .tx_gap_us
            .map(|us| std::time::Duration::from_micros(u64::from(us)));
        if let Some([tx, rx]) = self.extended_addresses {
            c.addressing = Addressing::Extended { tx, rx };
        }
        c.to_sockopts()?;
        Ok(c)
    }
}

/// `[secondary.doip]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DoipConfig {
    /// `host:port` of the DoIP entity.
    pub address: String,
    /// The secondary's DoIP logical address.
    pub logical_address: u16,
}

/// `[dbus] reader_groups`: may read history (and, by the bus policy,
/// properties and signals).
pub const DEFAULT_READER_GROUPS: &[&str] = &["secureev-ui", "secureev-vehicle"];
/// `[dbus] consent_groups`: the HMI (check, install, postpone, cancel).
pub const DEFAULT_CONSENT_GROUPS: &[&str] = &["secureev-ui"];
/// `[dbus] precondition_groups`: vehicle services (`SetPrecondition`).
pub const DEFAULT_PRECONDITION_GROUPS: &[&str] = &["secureev-vehicle"];

fn groups(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}
fn default_reader_groups() -> Vec<String> {
    groups(DEFAULT_READER_GROUPS)
}
fn default_consent_groups() -> Vec<String> {
    groups(DEFAULT_CONSENT_GROUPS)
}
fn default_precondition_groups() -> Vec<String> {
    groups(DEFAULT_PRECONDITION_GROUPS)
}

/// `[dbus]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DbusConfig {
    /// `"system"`, `"session"` or a D-Bus address (`unix:path=...`).
    #[serde(default)]
    pub bus: Bus,
    /// Groups holding the read role (`GetHistory`).
    #[serde(default = "default_reader_groups")]
    pub reader_groups: Vec<String>,
    /// Groups holding the consent role (`CheckForUpdates`, `Install`,
    /// `Postpone`, `Cancel`).
    #[serde(default = "default_consent_groups")]
    pub consent_groups: Vec<String>,
    /// Groups holding the preconditions role (`SetPrecondition`).
    #[serde(default = "default_precondition_groups")]
    pub precondition_groups: Vec<String>,
    /// Groups holding the provision role (`Provision`); root always does.
    #[serde(default)]
    pub provision_groups: Vec<String>,
    /// Who decides the roles of callers other than root and the daemon's
    /// user: the groups above, or polkit (actions `io.secureev.Ota1.<role>`).
    #[serde(default)]
    pub authorization: Authorization,
    /// The bound on one polkit check (milliseconds); no answer in time is a
    /// refusal.
    #[serde(default = "default_polkit_timeout_ms")]
    pub polkit_timeout_ms: u64,
}

fn default_polkit_timeout_ms() -> u64 {
    5000
}

/// `[dbus] authorization`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Authorization {
    /// Roles from the caller's groups (`*_groups`).
    #[default]
    Groups,
    /// Roles from polkit's `CheckAuthorization`; fails closed.
    Polkit,
}

impl Default for DbusConfig {
    fn default() -> Self {
        DbusConfig {
            bus: Bus::default(),
            reader_groups: default_reader_groups(),
            consent_groups: default_consent_groups(),
            precondition_groups: default_precondition_groups(),
            provision_groups: Vec::new(),
            authorization: Authorization::default(),
            polkit_timeout_ms: default_polkit_timeout_ms(),
        }
    }
}

/// Which bus the service is on.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Bus {
    /// The system bus.
    #[default]
    System,
    /// The session bus.
    Session,
    /// A bus at this address.
    Address(String),
}

impl TryFrom<String> for Bus {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        match s.as_str() {
            "system" => Ok(Bus::System),
            "session" => Ok(Bus::Session),
            a if a.contains(':') && a.contains('=') => Ok(Bus::Address(s)),
            _ => Err(format!(
                "expected \"system\", \"session\" or a D-Bus address like \"unix:path=/run/bus\", got {s:?}"
            )),
        }
    }
}

impl From<Bus> for String {
    fn from(b: Bus) -> String {
        match b {
            Bus::System => "system".into(),
            Bus::Session => "session".into(),
            Bus::Address(a) => a,
        }
    }
}

/// `[watchdog]`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchdogConfig {
    /// Whether to ping systemd's watchdog.
    #[serde(default)]
    pub mode: WatchdogMode,
}

/// `[watchdog] mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WatchdogMode {
    /// Ping at half of `WatchdogSec=` when systemd sets `WATCHDOG_USEC`.
    #[default]
    Systemd,
    /// Never ping, even when systemd asks for it.
    Off,
}

/// `[push]`: optional push nudges over MQTT. The backend publishes a
/// content-free message to `<topic_prefix>/<VIN>/nudge` when the vehicle's
/// Director metadata changes; on one the daemon checks in at once (the usual
/// full verification: the nudge carries no authority), at most once per
/// `min_interval_secs`. Polling (`[checkin]`) stays the fallback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushConfig {
    /// `mqtts://host:port` (TLS only); unset: no push, polling only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt_url: Option<String>,
    /// CA certificate(s) (PEM) the broker's certificate must chain to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// MQTT username (default: the VIN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// File holding the MQTT password (first line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Client certificate chain (PEM) for TLS client authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
    /// Topic prefix; the daemon subscribes to `<topic_prefix>/<VIN>/nudge`.
    #[serde(default = "default_push_topic_prefix")]
    pub topic_prefix: String,
    /// At most one nudge-triggered check-in per this many seconds.
    #[serde(default = "default_push_min_interval")]
    pub min_interval_secs: u64,
    /// Bound on the TCP connect, TLS handshake and CONNACK.
    #[serde(default = "default_push_connect_timeout")]
    pub connect_timeout_secs: u64,
    /// MQTT keep-alive: a silent broker is noticed within about 1.5× this.
    #[serde(default = "default_push_keep_alive")]
    pub keep_alive_secs: u64,
    /// Longest wait between reconnection attempts (doubling from 1 s).
    #[serde(default = "default_push_backoff_max")]
    pub backoff_max_secs: u64,
}

/// Default `[push] topic_prefix`.
pub const DEFAULT_PUSH_TOPIC_PREFIX: &str = "secureev/v1/vehicles";

fn default_push_topic_prefix() -> String {
    DEFAULT_PUSH_TOPIC_PREFIX.into()
}
fn default_push_min_interval() -> u64 {
    30
}
fn default_push_connect_timeout() -> u64 {
    10
}
fn default_push_keep_alive() -> u64 {
    60
}
fn default_push_backoff_max() -> u64 {
    300
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            mqtt_url: None,
            ca_file: None,
            username: None,
            password_file: None,
            client_cert: None,
            client_key: None,
            topic_prefix: default_push_topic_prefix(),
            min_interval_secs: default_push_min_interval(),
            connect_timeout_secs: default_push_connect_timeout(),
            keep_alive_secs: default_push_keep_alive(),
            backoff_max_secs: default_push_backoff_max(),
        }
    }
}

impl PushConfig {
    /// The topic the vehicle `vin` listens on.
    pub fn topic(&self, vin: &str) -> String {
        format!("{}/{vin}/nudge", self.topic_prefix.trim_end_matches('/'))
    }
}

/// `(host, port)` of an `mqtts://host[:port]` URL (port default 8883).
pub fn parse_mqtt_url(url: &str) -> std::result::Result<(String, u16), String> {
    let rest = url
        .strip_prefix("mqtts://")
        .ok_or("must start with mqtts:// (TLS to the broker is required)")?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() || rest.contains(['/', '@', '?', '#']) {
        return Err("must be mqtts://host[:port], without user, path or query".into());
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("port {p:?} is not a port number"))?,
        ),
        None => (rest, 8883),
    };
    if host.is_empty() || host.contains(':') {
        return Err("needs a host name or IPv4 address".into());
    }
    Ok((host.to_owned(), port))
}

/// One configuration text and the file it came from (for error messages).
#[derive(Debug, Clone)]
pub struct Source {
    /// The file (or a label like `<string>`).
    pub file: PathBuf,
    /// Its contents.
    pub text: String,
}

/// The drop-in directory of a main configuration file: `<path>.d`.
pub fn drop_in_dir(path: &Path) -> PathBuf {
    let mut d = path.as_os_str().to_owned();
    d.push(".d");
    PathBuf::from(d)
}

/// Read the main file and its drop-ins (`*.toml`, lexical order) and parse them.
pub fn load(path: &Path) -> Result<Config> {
    parse_sources(&read_sources(path)?)
}

/// The main file and its drop-ins, in the order they apply.
pub fn read_sources(path: &Path) -> Result<Vec<Source>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
    let mut sources = vec![Source {
        file: path.to_owned(),
        text,
    }];
    let dir = drop_in_dir(path);
    let mut drop_ins: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Error::io("read directory", dir, e)),
    };
    drop_ins.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    for file in drop_ins {
        let text = std::fs::read_to_string(&file).map_err(|e| Error::io("read", &file, e))?;
        sources.push(Source { file, text });
    }
    Ok(sources)
}

/// Parse one configuration text (no drop-ins, no file system).
///
/// ```
/// use secureev_daemon::config::{parse_str, InstallPolicy};
/// use secureev_daemon::Error;
///
/// let text = r#"
///     [backend]
///     url = "https://ota.example.com"
///     ca_file = "/etc/secureev/ca.pem"
///     [vehicle]
///     vin = "WSEV0000000000001"
///     primary_serial = "HU-1"
///     hardware_id = "hu"
/// "#;
/// let config = parse_str(text).unwrap();
/// assert_eq!(config.install.policy, InstallPolicy::Consent); // the safe default
///
/// let typo = format!("{text}\n[download]\nmin_rate = 1\n");
/// match parse_str(&typo) {
///     Err(Error::ConfigUnknownKey { key, .. }) => assert_eq!(key, "download.min_rate"),
///     other => panic!("{other:?}"),
/// }
/// ```
pub fn parse_str(text: &str) -> Result<Config> {
    parse_sources(&[Source {
        file: PathBuf::from("<string>"),
        text: text.to_owned(),
    }])
}

/// Merge `over` into `base`: tables merge recursively, other values replace.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Parsed sources, kept to find which file set a key.
struct Parsed {
    tables: Vec<(PathBuf, toml::Table)>,
}

impl Parsed {
    /// The last file that sets `path` (segments: table keys or array indices), or
    /// the main file.
    fn origin(&self, path: &[String]) -> PathBuf {
        let found = self.tables.iter().rev().find(|(_, t)| {
            let mut v: Option<&toml::Value> = None;
            for (i, seg) in path.iter().enumerate() {
                let next = match (i, v) {
                    (0, _) => t.get(seg),
                    (_, Some(toml::Value::Table(t))) => t.get(seg),
                    (_, Some(toml::Value::Array(a))) => {
                        seg.parse::<usize>().ok().and_then(|n| a.get(n))
                    }
                    _ => None,
                };
                match next {
                    Some(n) => v = Some(n),
                    None => return false,
                }
            }
            true
        });
        match (found, self.tables.first()) {
            (Some((f, _)), _) | (None, Some((f, _))) => f.clone(),
            (None, None) => PathBuf::from("<none>"),
        }
    }

    fn invalid(&self, path: &[&str], reason: impl Into<String>) -> Error {
        let owned: Vec<String> = path.iter().map(|s| s.to_string()).collect();
        Error::ConfigInvalid {
            file: self.origin(&owned),
            key: path.join("."),
            reason: reason.into(),
        }
    }
}

/// Parse and merge `sources` in order, deserialise and validate.
pub fn parse_sources(sources: &[Source]) -> Result<Config> {
    let mut tables = Vec::with_capacity(sources.len());
    for s in sources {
        let table: toml::Table =
            s.text
                .parse()
                .map_err(|e: toml::de::Error| Error::ConfigSyntax {
                    file: s.file.clone(),
                    message: e.to_string().trim_end().to_owned(),
                })?;
        tables.push((s.file.clone(), table));
    }
    let parsed = Parsed { tables };
    let mut merged = toml::Table::new();
    for (_, t) in &parsed.tables {
        merge(&mut merged, t.clone());
    }
    let config: Config = serde_path_to_error::deserialize(toml::Value::Table(merged))
        .map_err(|e| deserialize_error(&parsed, e))?;
    config.validate_with(&parsed)?;
    Ok(config)
}

fn deserialize_error(parsed: &Parsed, e: serde_path_to_error::Error<toml::de::Error>) -> Error {
    let mut path: Vec<String> = e
        .path()
        .iter()
        .filter_map(|seg| match seg {
            serde_path_to_error::Segment::Map { key } => Some(key.clone()),
            serde_path_to_error::Segment::Seq { index } => Some(index.to_string()),
            _ => None,
        })
        .collect();
    let message = e.inner().message().to_owned();
    if let Some(rest) = message.strip_prefix("unknown field `") {
        // serde_path_to_error's path ends at the enclosing table; append the key.
        let key = rest.split('`').next().unwrap_or_default().to_owned();
        if path.last() != Some(&key) {
            path.push(key);
        }
        return Error::ConfigUnknownKey {
            file: parsed.origin(&path),
            key: path.join("."),
        };
    }
    if let Some(rest) = message.strip_prefix("missing field `") {
        let key = rest.split('`').next().unwrap_or_default().to_owned();
        let file = parsed.origin(&path);
        path.push(key);
        return Error::ConfigInvalid {
            file,
            key: path.join("."),
            reason: "required key is missing".into(),
        };
    }
    Error::ConfigInvalid {
        file: parsed.origin(&path),
        key: path.join("."),
        reason: message,
    }
}

/// Longest timeout any `*_timeout_secs` key accepts: one day.
pub const MAX_TIMEOUT_SECS: u64 = 24 * 3600;

fn keys(k: &[&str]) -> Vec<String> {
    k.iter().map(|s| (*s).to_owned()).collect()
}

/// `path` without `.` components, for comparing directories as configured.
fn normalised(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect()
}

/// A configured file or directory: absolute, without `..`, no NUL.
fn check_absolute(path: &Path) -> std::result::Result<(), String> {
    if path.as_os_str().is_empty() {
        return Err("must not be empty".into());
    }
    if !path.is_absolute() {
        return Err(format!(
            "must be an absolute path, not {:?} (a relative path depends on the working directory)",
            path.display().to_string()
        ));
    }
    if path
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err("must not contain `..`".into());
    }
    Ok(())
}

/// `[backend] url`: `https://host[:port][/path]`, nothing else.
fn check_backend_url(url: &str) -> std::result::Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    if parsed.scheme() != "https" {
        return Err("must be an https:// URL".into());
    }
    match parsed.host_str() {
        None | Some("") => return Err("must name a host".into()),
        Some(_) => {}
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        // Credentials in a URL end up in logs; the vehicle authenticates with
        // its signing key (and mutual TLS), never with a password.
        return Err("must not contain credentials (user:password@)".into());
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err("must not have a query or fragment".into());
    }
    Ok(())
}

/// Whether a path template must or must not contain `{vin}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PathVin {
    Required,
    Forbidden,
}

/// `[backend] director_path` and `image_path`: an absolute URL path whose
/// segments are plain names, so that substituting the VIN and appending a file
/// name cannot reach another resource on the backend.
fn check_path_template(t: &str, vin: PathVin) -> std::result::Result<(), String> {
    if !t.starts_with('/') {
        return Err("must start with '/'".into());
    }
    let count = t.matches("{vin}").count();
    match vin {
        PathVin::Required if count != 1 => return Err("must contain `{vin}` exactly once".into()),
        PathVin::Forbidden if count != 0 => {
            return Err("must not contain `{vin}` (the Image repository is shared)".into())
        }
        _ => {}
    }
    let plain = t.replace("{vin}", "VIN");
    if let Some(c) = plain
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.' | '~')))
    {
        return Err(format!(
            "{c:?} is not allowed (letters, digits, '/', '-', '_', '.', '~' and `{{vin}}`)"
        ));
    }
    let trimmed = plain.trim_end_matches('/');
    for seg in trimmed.split('/').skip(1) {
        match seg {
            "" => return Err("must not contain an empty segment (`//`)".into()),
            "." | ".." => return Err("must not contain `.` or `..` segments".into()),
            _ => {}
        }
    }
    Ok(())
}

/// An ECU serial or hardware ID: non-empty, bounded, printable ASCII.
fn check_identifier(v: &str) -> std::result::Result<(), String> {
    if v.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if v.len() > MAX_ID_LENGTH {
        return Err(format!("must have at most {MAX_ID_LENGTH} characters"));
    }
    if v.chars().any(|c| !c.is_ascii_graphic()) {
        return Err("must be printable ASCII without spaces".into());
    }
    Ok(())
}

impl Config {
    /// Checks that serde cannot express: URL scheme, required sub-tables, ranges.
    /// Everything that would fail or misbehave only at run time is refused
    /// here, so that `--check-config` catches it; each message names the key.
    fn validate_with(&self, p: &Parsed) -> Result<()> {
        let b = &self.backend;
        check_backend_url(&b.url).map_err(|r| p.invalid(&["backend", "url"], r))?;
        if b.client_cert.is_some() != b.client_key.is_some() {
            return Err(p.invalid(
                &["backend", "client_cert"],
                "client_cert and client_key must be given together",
            ));
        }
        check_path_template(&b.director_path, PathVin::Required)
            .map_err(|r| p.invalid(&["backend", "director_path"], r))?;
        check_path_template(&b.image_path, PathVin::Forbidden)
            .map_err(|r| p.invalid(&["backend", "image_path"], r))?;
        self.vehicle
            .vin_format
            .check(&self.vehicle.vin)
            .map_err(|r| p.invalid(&["vehicle", "vin"], r))?;
        for (key, v) in [
            ("primary_serial", &self.vehicle.primary_serial),
            ("hardware_id", &self.vehicle.hardware_id),
        ] {
            check_identifier(v).map_err(|r| p.invalid(&["vehicle", key], r))?;
        }
        if !(1..=60_000).contains(&self.dbus.polkit_timeout_ms) {
            return Err(p.invalid(
                &["dbus", "polkit_timeout_ms"],
                "must be 1 to 60000 (milliseconds)",
            ));
        }
        let mut files: Vec<(Vec<String>, &Path)> = vec![
            (keys(&["backend", "ca_file"]), b.ca_file.as_path()),
            (keys(&["keys", "dir"]), self.keys.dir.as_path()),
            (
                keys(&["trust", "director_root"]),
                self.trust.director_root.as_path(),
            ),
            (
                keys(&["trust", "image_root"]),
                self.trust.image_root.as_path(),
            ),
            (keys(&["state", "dir"]), self.state.dir.as_path()),
            (
                keys(&["state", "cache_dir"]),
                self.state.cache_dir.as_path(),
            ),
        ];
        for (key, v) in [
            ("client_cert", &b.client_cert),
            ("client_key", &b.client_key),
        ] {
            if let Some(v) = v {
                files.push((keys(&["backend", key]), v.as_path()));
            }
        }
        let push = &self.push;
        if let Some(url) = &push.mqtt_url {
            parse_mqtt_url(url).map_err(|r| p.invalid(&["push", "mqtt_url"], r))?;
            if push.ca_file.is_none() {
                return Err(p.invalid(&["push", "ca_file"], "is required with push.mqtt_url"));
            }
            if push.password_file.is_none() && push.client_cert.is_none() {
                return Err(p.invalid(
                    &["push", "password_file"],
                    "push.mqtt_url needs credentials: password_file or client_cert/client_key",
                ));
            }
        }
        if push.client_cert.is_some() != push.client_key.is_some() {
            return Err(p.invalid(
                &["push", "client_cert"],
                "client_cert and client_key must be given together",
            ));
        }
        if push.topic_prefix.is_empty() || push.topic_prefix.contains(['+', '#']) {
            return Err(p.invalid(
                &["push", "topic_prefix"],
                "must be non-empty and without MQTT wildcards",
            ));
        }
        for (key, v) in [
            ("min_interval_secs", push.min_interval_secs),
            ("connect_timeout_secs", push.connect_timeout_secs),
            ("keep_alive_secs", push.keep_alive_secs),
            ("backoff_max_secs", push.backoff_max_secs),
        ] {
            if v == 0 {
                return Err(p.invalid(&["push", key], "must be at least 1"));
            }
        }
        for (key, v) in [
            ("ca_file", &push.ca_file),
            ("password_file", &push.password_file),
            ("client_cert", &push.client_cert),
            ("client_key", &push.client_key),
        ] {
            if let Some(v) = v {
                files.push((keys(&["push", key]), v.as_path()));
            }
        }
        if let Some(d) = &self.install.inhibit_dir {
            files.push((keys(&["install", "inhibit_dir"]), d.as_path()));
        }
        if let Some(f) = &self.install.file.path {
            files.push((keys(&["install", "file", "path"]), f.as_path()));
        }
        if let Some(c) = &self.install.file.current {
            files.push((keys(&["install", "file", "current"]), c.as_path()));
        }
        for (i, slot) in self.install.file.slots.iter().flatten().enumerate() {
            files.push((
                keys(&["install", "file", "slots", &i.to_string()]),
                slot.as_path(),
            ));
        }
        for (i, s) in self.secondaries.iter().enumerate() {
            if let Some(f) = &s.security_secret_file {
                files.push((
                    keys(&["secondary", &i.to_string(), "security_secret_file"]),
                    f.as_path(),
                ));
            }
        }
        for (key, path) in &files {
            check_absolute(path).map_err(|r| {
                let key: Vec<&str> = key.iter().map(String::as_str).collect();
                p.invalid(&key, r)
            })?;
        }
        // The cache is pruned of every file named like a cache entry; it must not
        // be the directory of the state or the keys.
        for (key, other) in [("dir", &self.state.dir), ("keys", &self.keys.dir)] {
            if normalised(&self.state.cache_dir) == normalised(other) {
                return Err(p.invalid(
                    &["state", "cache_dir"],
                    format!(
                        "must not be the same directory as {}",
                        if key == "dir" {
                            "state.dir"
                        } else {
                            "keys.dir"
                        }
                    ),
                ));
            }
        }
        if normalised(&self.state.dir) == normalised(&self.keys.dir) {
            return Err(p.invalid(
                &["keys", "dir"],
                "must not be the same directory as state.dir",
            ));
        }
        if self.state.storage_budget_bytes == 0 {
            return Err(p.invalid(&["state", "storage_budget_bytes"], "must be at least 1"));
        }
        if self.checkin.interval_secs == 0 {
            return Err(p.invalid(&["checkin", "interval_secs"], "must be at least 1"));
        }
        if self.checkin.backoff_max_secs < self.checkin.interval_secs {
            return Err(p.invalid(
                &["checkin", "backoff_max_secs"],
                "must not be below interval_secs",
            ));
        }
        if self.download.min_rate_window_secs == 0 {
            return Err(p.invalid(&["download", "min_rate_window_secs"], "must be at least 1"));
        }
        if self.download.timeout_secs == 0 {
            return Err(p.invalid(&["download", "timeout_secs"], "must be at least 1"));
        }
        let n = &self.network;
        for (key, v) in [
            ("connect_timeout_secs", n.connect_timeout_secs),
            ("response_timeout_secs", n.response_timeout_secs),
            ("metadata_timeout_secs", n.metadata_timeout_secs),
            ("manifest_timeout_secs", n.manifest_timeout_secs),
        ] {
            if v == 0 {
                return Err(p.invalid(&["network", key], "must be at least 1"));
            }
            if v > MAX_TIMEOUT_SECS {
                return Err(p.invalid(
                    &["network", key],
                    format!("must be at most {MAX_TIMEOUT_SECS} (one day)"),
                ));
            }
        }
        // The response timeout runs from sending the request, connecting
        // included: at or below the connect timeout a withheld handshake
        // would be reported as a withheld response.
        for key in [
            "response_timeout_secs",
            "metadata_timeout_secs",
            "manifest_timeout_secs",
        ] {
            let v = match key {
                "response_timeout_secs" => n.response_timeout_secs,
                "metadata_timeout_secs" => n.metadata_timeout_secs,
                _ => n.manifest_timeout_secs,
            };
            if v <= n.connect_timeout_secs {
                return Err(p.invalid(
                    &["network", key],
                    "must be above network.connect_timeout_secs",
                ));
            }
        }
        let f = &self.install.file;
        match self.install.installer {
            InstallerKind::File => match (&f.path, &f.slots) {
                (Some(_), Some(_)) => {
                    return Err(p.invalid(
                        &["install", "file", "slots"],
                        "give either path or slots, not both",
                    ))
                }
                (_, Some(slots)) => {
                    if slots.len() != 2 || slots[0] == slots[1] {
                        return Err(p.invalid(
                            &["install", "file", "slots"],
                            "must be two different files",
                        ));
                    }
                    if f.current.is_none() {
                        return Err(
                            p.invalid(&["install", "file", "current"], "required with slots")
                        );
                    }
                }
                _ => {}
            },
            InstallerKind::Command => match &self.install.command {
                None => {
                    return Err(p.invalid(
                        &["install", "command"],
                        "installer = \"command\" needs an [install.command] table",
                    ))
                }
                Some(c) if !c.program.is_absolute() => {
                    return Err(p.invalid(
                        &["install", "command", "program"],
                        "must be an absolute path",
                    ))
                }
                Some(_) => {}
            },
            InstallerKind::Rauc => {
                let r = self.install.rauc.clone().unwrap_or_default();
                if r.install_timeout_secs == 0 {
                    return Err(p.invalid(
                        &["install", "rauc", "install_timeout_secs"],
                        "must be at least 1",
                    ));
                }
                if r.health_timeout_secs == 0 {
                    return Err(p.invalid(
                        &["install", "rauc", "health_timeout_secs"],
                        "must be at least 1",
                    ));
                }
                if r.health_check
                    .first()
                    .is_some_and(|p| !Path::new(p).is_absolute())
                {
                    return Err(p.invalid(
                        &["install", "rauc", "health_check"],
                        "the program (first element) must be an absolute path",
                    ));
                }
                if r.bus != DEFAULT_RAUC_BUS && !r.bus.contains(':') {
                    return Err(p.invalid(
                        &["install", "rauc", "bus"],
                        "must be \"system\" or a D-Bus address (unix:path=...)",
                    ));
                }
            }
        }
        let mut serials = std::collections::BTreeSet::new();
        serials.insert(self.vehicle.primary_serial.as_str());
        for (i, s) in self.secondaries.iter().enumerate() {
            let idx = i.to_string();
            for (key, v) in [("serial", &s.serial), ("hardware_id", &s.hardware_id)] {
                check_identifier(v).map_err(|r| p.invalid(&["secondary", &idx, key], r))?;
            }
            if !serials.insert(s.serial.as_str()) {
                return Err(p.invalid(
                    &["secondary", &idx, "serial"],
                    format!("ECU serial {:?} used twice", s.serial),
                ));
            }
            match s.transport {
                TransportKind::Can => match &s.can {
                    None => {
                        return Err(p.invalid(
                            &["secondary", &idx, "can"],
                            "transport = \"can\" needs [secondary.can]",
                        ))
                    }
                    Some(c) => {
                        for (key, id) in [("tx_id", c.tx_id), ("rx_id", c.rx_id)] {
                            if id > 0x1FFF_FFFF {
                                return Err(p.invalid(
                                    &["secondary", &idx, "can", key],
                                    "above 0x1FFFFFFF",
                                ));
                            }
                        }
                        if let Err(e) = c.isotp() {
                            return Err(p.invalid(&["secondary", &idx, "can"], e.to_string()));
                        }
                    }
                },
                TransportKind::Doip => {
                    if s.doip.is_none() {
                        return Err(p.invalid(
                            &["secondary", &idx, "doip"],
                            "transport = \"doip\" needs [secondary.doip]",
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The Director repository's base URL for this vehicle.
    pub fn director_url(&self) -> String {
        format!(
            "{}{}",
            self.backend.url.trim_end_matches('/'),
            self.backend
                .director_path
                .replace("{vin}", &self.vehicle.vin)
        )
    }

    /// The Image repository's base URL.
    pub fn image_url(&self) -> String {
        format!(
            "{}{}",
            self.backend.url.trim_end_matches('/'),
            self.backend.image_path
        )
    }

    /// The effective single install file when the file installer has no slots.
    pub fn install_file_path(&self) -> PathBuf {
        self.install
            .file
            .path
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_INSTALL_FILE_PATH))
    }
}

/// A configuration file with every default written out, for
/// `secureev-otad --print-default-config`. The keys without defaults carry
/// placeholder values that must be replaced.
pub fn default_config_toml() -> String {
    format!(
        r#"# secureev-otad configuration; see docs/configuration.md.

[backend]
url = "https://ota.example.com"          # required
ca_file = "/etc/secureev/backend-ca.pem" # required
# client_cert = "/etc/secureev/client.pem"
# client_key = "/etc/secureev/client.key"
director_path = "{DEFAULT_DIRECTOR_PATH}"
image_path = "{DEFAULT_IMAGE_PATH}"

[vehicle]
vin = "XXXXXXXXXXXXXXXXX"                # required: the 17-character VIN
primary_serial = "HU-PLACEHOLDER"        # required
hardware_id = "head-unit"                # required
vin_format = "iso-3779"

[keys]
dir = "{DEFAULT_KEYS_DIR}"
provision = "first-boot"

[trust]
director_root = "{DEFAULT_DIRECTOR_ROOT}"
image_root = "{DEFAULT_IMAGE_ROOT}"
director_layout = "tuf"

[state]
dir = "{DEFAULT_STATE_DIR}"
cache_dir = "{DEFAULT_CACHE_DIR}"
storage_budget_bytes = {DEFAULT_STORAGE_BUDGET_BYTES}

[checkin]
interval_secs = {DEFAULT_CHECKIN_INTERVAL_SECS}
jitter_secs = {DEFAULT_CHECKIN_JITTER_SECS}
backoff_max_secs = {DEFAULT_CHECKIN_BACKOFF_MAX_SECS}

[download]
min_rate_bytes_per_sec = {DEFAULT_MIN_RATE_BYTES_PER_SEC}
min_rate_window_secs = {DEFAULT_MIN_RATE_WINDOW_SECS}
timeout_secs = {DEFAULT_DOWNLOAD_TIMEOUT_SECS}

[network]
connect_timeout_secs = {DEFAULT_CONNECT_TIMEOUT_SECS}
response_timeout_secs = {DEFAULT_RESPONSE_TIMEOUT_SECS}
metadata_timeout_secs = {DEFAULT_METADATA_TIMEOUT_SECS}
manifest_timeout_secs = {DEFAULT_MANIFEST_TIMEOUT_SECS}

[install]
policy = "consent"
installer = "file"

[install.file]
path = "{DEFAULT_INSTALL_FILE_PATH}"

[dbus]
bus = "system"

[watchdog]
mode = "systemd"

[push]                                  # optional: check in at once on an MQTT nudge
# mqtt_url = "mqtts://mqtt.example.com:8883"
# ca_file = "/etc/secureev/mqtt-ca.pem"
# password_file = "/etc/secureev/mqtt-password"   # username defaults to the VIN
min_interval_secs = 30                  # at most one nudged check-in per 30 s
"#
    )
}

/// A D-Bus connection builder for the configured bus.
pub fn dbus_builder(c: &DbusConfig) -> zbus::Result<zbus::connection::Builder<'static>> {
    match &c.bus {
        Bus::System => zbus::connection::Builder::system(),
        Bus::Session => zbus::connection::Builder::session(),
        Bus::Address(a) => zbus::connection::Builder::address(a.as_str()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[backend]
url = "https://ota.example.com"
ca_file = "/etc/ca.pem"
[vehicle]
vin = "WSEV0000000000001"
primary_serial = "HU-1"
hardware_id = "hu"
"#;

    #[test]
    fn minimal_config_gets_safe_defaults() {
        let c = parse_str(MINIMAL).unwrap();
        assert_eq!(c.install.policy, InstallPolicy::Consent);
        assert_eq!(c.trust.director_layout, DirectorLayout::Tuf);
        assert_eq!(c.checkin.interval_secs, DEFAULT_CHECKIN_INTERVAL_SECS);
        assert_eq!(c.state.storage_budget_bytes, DEFAULT_STORAGE_BUDGET_BYTES);
        assert_eq!(c.dbus.bus, Bus::System);
        assert_eq!(
            c.director_url(),
            "https://ota.example.com/director/WSEV0000000000001"
        );
        assert_eq!(c.image_url(), "https://ota.example.com/image");
        assert_eq!(
            c.install_file_path(),
            PathBuf::from(DEFAULT_INSTALL_FILE_PATH)
        );
    }

    #[test]
    fn default_config_text_parses_to_the_defaults() {
        let c = parse_str(&default_config_toml()).unwrap();
        assert_eq!(c.keys, KeysConfig::default());
        assert_eq!(c.trust, TrustConfig::default());
        assert_eq!(c.state, StateConfig::default());
        assert_eq!(c.checkin, CheckinConfig::default());
        assert_eq!(c.download, DownloadConfig::default());
        assert_eq!(c.network, NetworkConfig::default());
        assert_eq!(c.vehicle.vin_format, VinFormat::Iso3779);
        assert_eq!(c.install.policy, InstallPolicy::Consent);
        assert_eq!(c.watchdog, WatchdogConfig::default());
    }

    #[test]
    fn authorization_is_groups_unless_polkit_is_asked_for() {
        let c = parse_str(MINIMAL).unwrap();
        assert_eq!(c.dbus.authorization, Authorization::Groups);
        assert_eq!(c.dbus.polkit_timeout_ms, 5000);
        let c = parse_str(&format!(
            "{MINIMAL}\n[dbus]\nauthorization = \"polkit\"\npolkit_timeout_ms = 750\n"
        ))
        .unwrap();
        assert_eq!(c.dbus.authorization, Authorization::Polkit);
        assert_eq!(c.dbus.polkit_timeout_ms, 750);
        assert!(parse_str(&format!("{MINIMAL}\n[dbus]\nauthorization = \"uid\"\n")).is_err());
        let err = parse_str(&format!("{MINIMAL}\n[dbus]\npolkit_timeout_ms = 0\n")).unwrap_err();
        assert!(err.to_string().contains("polkit_timeout_ms"), "{err}");
    }

    #[test]
    fn unknown_key_is_named_with_its_file() {
        let err = parse_str(&format!("{MINIMAL}\n[checkin]\nintervall_secs = 5\n")).unwrap_err();
        match &err {
            Error::ConfigUnknownKey { key, file } => {
                assert_eq!(key, "checkin.intervall_secs");
                assert_eq!(file, &PathBuf::from("<string>"));
            }
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("checkin.intervall_secs"), "{err}");
        let err = parse_str(&format!("{MINIMAL}\n[surprise]\n")).unwrap_err();
        assert!(
            matches!(err, Error::ConfigUnknownKey { ref key, .. } if key == "surprise"),
            "{err}"
        );
        let err = parse_str(&format!(
            "{MINIMAL}\n[[secondary]]\nserial = \"B\"\nhardware_id = \"h\"\ntransport = \"can\"\ncan = {{ interface = \"can0\", tx_id = 1, rx_id = 2, bitrate = 5 }}\n"
        ))
        .unwrap_err();
        assert!(
            matches!(err, Error::ConfigUnknownKey { ref key, .. } if key == "secondary.0.can.bitrate"),
            "{err}"
        );
    }

    #[test]
    fn can_link_options_map_to_isotp_and_bad_ones_are_refused() {
        let secondary = |can: &str| {
            format!(
                "{MINIMAL}\n[[secondary]]\nserial = \"B\"\nhardware_id = \"h\"\ntransport = \"can\"\ncan = {{ interface = \"can0\", tx_id = 0x7E0, rx_id = 0x7E8, {can} }}\n"
            )
        };
        let c = parse_str(&secondary(
            "fd = true, fd_tx_dl = 32, fd_brs = false, padding = \"strict\", padding_byte = 0xAA, \
             block_size = 8, st_min_us = 500, tx_gap_us = 1000, extended_addresses = [0x10, 0xF1]",
        ))
        .unwrap();
        let isotp = c.secondaries[0].can.as_ref().unwrap().isotp().unwrap();
        assert_eq!(
            isotp.fd,
            Some(secureev_can::FdConfig {
                tx_dl: 32,
                bit_rate_switch: false
            })
        );
        assert_eq!(isotp.padding, secureev_can::Padding::Strict(0xAA));
        assert_eq!(isotp.block_size, 8);
        assert_eq!(isotp.st_min.as_byte(), 0xF5);
        assert_eq!(
            isotp.force_tx_st_min,
            Some(std::time::Duration::from_millis(1))
        );
        assert_eq!(
            isotp.addressing,
            secureev_can::Addressing::Extended { tx: 0x10, rx: 0xF1 }
        );
        // Defaults: classic, padded with 0xCC, no flow-control limits.
        let c = parse_str(&secondary("fd = false")).unwrap();
        let isotp = c.secondaries[0].can.as_ref().unwrap().isotp().unwrap();
        assert_eq!(isotp.padding, secureev_can::Padding::Tx(0xCC));
        assert_eq!(
            (isotp.fd, isotp.block_size, isotp.st_min.as_byte()),
            (None, 0, 0)
        );
        for bad in [
            "st_min_us = 1500",
            "fd = true, fd_tx_dl = 13",
            "padding = \"sometimes\"",
        ] {
            let err = parse_str(&secondary(bad)).unwrap_err();
            assert!(
                matches!(err, Error::ConfigInvalid { ref key, .. } if key.starts_with("secondary.0.can"))
                    || matches!(err, Error::ConfigSyntax { .. }),
                "{bad}: {err:?}"
            );
        }
    }

    #[test]
    fn drop_ins_override_merge_and_blame_the_right_file() {
        let s = |f: &str, t: &str| Source {
            file: f.into(),
            text: t.into(),
        };
        let c = parse_sources(&[
            s("main.toml", MINIMAL),
            s(
                "10-a.toml",
                "[checkin]\ninterval_secs = 60\njitter_secs = 1\n",
            ),
            s("20-b.toml", "[checkin]\ninterval_secs = 120\n"),
        ])
        .unwrap();
        assert_eq!(c.checkin.interval_secs, 120);
        assert_eq!(c.checkin.jitter_secs, 1);
        assert_eq!(c.backend.url, "https://ota.example.com");
        let err = parse_sources(&[
            s("main.toml", MINIMAL),
            s("30-typo.toml", "[state]\nbudget = 1\n"),
        ])
        .unwrap_err();
        assert_eq!(err.to_string(), "30-typo.toml: unknown key `state.budget`");
        let err = parse_sources(&[
            s("main.toml", MINIMAL),
            s("40-bad.toml", "[install]\npolicy = \"yolo\"\n"),
        ])
        .unwrap_err();
        match err {
            Error::ConfigInvalid { file, key, .. } => {
                assert_eq!(file, PathBuf::from("40-bad.toml"));
                assert_eq!(key, "install.policy");
            }
            other => panic!("{other:?}"),
        }
        let err =
            parse_sources(&[s("main.toml", MINIMAL), s("50-syntax.toml", "[state\n")]).unwrap_err();
        assert!(
            matches!(err, Error::ConfigSyntax { ref file, .. } if file == Path::new("50-syntax.toml")),
            "{err}"
        );
    }

    #[test]
    fn drop_in_files_are_read_in_lexical_order() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("otad.toml");
        std::fs::write(&main, MINIMAL).unwrap();
        let d = drop_in_dir(&main);
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("20-late.toml"), "[checkin]\ninterval_secs = 20\n").unwrap();
        std::fs::write(d.join("10-early.toml"), "[checkin]\ninterval_secs = 10\n").unwrap();
        std::fs::write(d.join("99-ignored.conf"), "garbage").unwrap();
        assert_eq!(load(&main).unwrap().checkin.interval_secs, 20);
    }

    #[test]
    fn invalid_combinations_are_refused() {
        for (extra, key) in [
            ("[backend]\nurl = \"http://plain\"\n", "backend.url"),
            ("[install]\ninstaller = \"command\"\n", "install.command"),
            ("[install.command]\nprogram = \"relative\"\n[install]\ninstaller = \"command\"\n", "install.command.program"),
            ("[install.file]\nslots = [\"/a\"]\ncurrent = \"/c\"\n", "install.file.slots"),
            ("[install.file]\nslots = [\"/a\", \"/b\"]\n", "install.file.current"),
            ("[checkin]\ninterval_secs = 0\n", "checkin.interval_secs"),
            ("[[secondary]]\nserial = \"X\"\nhardware_id = \"h\"\ntransport = \"doip\"\n", "secondary.0.doip"),
            ("[[secondary]]\nserial = \"HU-1\"\nhardware_id = \"h\"\ntransport = \"doip\"\ndoip = { address = \"a:1\", logical_address = 1 }\n", "secondary.0.serial"),
            ("[dbus]\nbus = \"nonsense\"\n", "dbus.bus"),
            ("[push]\nmqtt_url = \"mqtt://plain:1883\"\nca_file = \"/c\"\npassword_file = \"/p\"\n", "push.mqtt_url"),
            ("[push]\nmqtt_url = \"mqtts://b\"\npassword_file = \"/p\"\n", "push.ca_file"),
            ("[push]\nmqtt_url = \"mqtts://b\"\nca_file = \"/c\"\n", "push.password_file"),
            ("[push]\nclient_cert = \"/c\"\n", "push.client_cert"),
            ("[push]\ntopic_prefix = \"a/#\"\n", "push.topic_prefix"),
            ("[push]\nmin_interval_secs = 0\n", "push.min_interval_secs"),
            ("[push]\nmqtt_url = \"mqtts://b\"\nca_file = \"rel.pem\"\npassword_file = \"/p\"\n", "push.ca_file"),
        ] {
            // Merge as a drop-in so that `[backend]` can be overridden.
            let err = parse_sources(&[
                Source { file: "main.toml".into(), text: MINIMAL.into() },
                Source { file: "drop.toml".into(), text: extra.into() },
            ])
            .unwrap_err();
            match err {
                Error::ConfigInvalid { key: k, .. } => assert_eq!(k, key, "{extra}"),
                other => panic!("{extra}: {other:?}"),
            }
        }
    }

    /// Issue 11: every value `--check-config` used to accept and that failed
    /// or misbehaved only at run time, with the key its message must name.
    #[test]
    fn values_that_fail_at_run_time_are_refused_up_front() {
        let long_vin = "A".repeat(10_000);
        let cases: Vec<(String, &str, &str)> = vec![
            // VINs: path characters, NUL, length, ISO 3779 letters.
            (
                "[vehicle]\nvin = \"WSEV0000000000/..\"\n".into(),
                "vehicle.vin",
                "'/'",
            ),
            (
                "[vehicle]\nvin = \"WSEV00000000000\\u00001\"\n".into(),
                "vehicle.vin",
                "ISO 3779",
            ),
            (
                format!("[vehicle]\nvin = \"{long_vin}\"\n"),
                "vehicle.vin",
                "17 characters",
            ),
            (
                "[vehicle]\nvin = \"WSEV00000000000I1\"\n".into(),
                "vehicle.vin",
                "'I'",
            ),
            (
                "[vehicle]\nvin = \"wsev0000000000001\"\n".into(),
                "vehicle.vin",
                "'w'",
            ),
            (
                "[vehicle]\nvin = \"\"\n".into(),
                "vehicle.vin",
                "17 characters",
            ),
            (
                "[vehicle]\nvin_format = \"free\"\nvin = \"a/../b\"\n".into(),
                "vehicle.vin",
                "'/'",
            ),
            (
                format!("[vehicle]\nvin_format = \"free\"\nvin = \"{long_vin}\"\n"),
                "vehicle.vin",
                "1 to 64",
            ),
            (
                "[vehicle]\nvin_format = \"free\"\nvin = \"a\\u0000b\"\n".into(),
                "vehicle.vin",
                "not allowed",
            ),
            (
                "[vehicle]\nprimary_serial = \"HU 1\"\n".into(),
                "vehicle.primary_serial",
                "printable",
            ),
            // URLs: no host, credentials, wrong scheme, query.
            ("[backend]\nurl = \"https://\"\n".into(), "backend.url", ""),
            (
                "[backend]\nurl = \"https://user:secret@ota.example.com\"\n".into(),
                "backend.url",
                "credentials",
            ),
            (
                "[backend]\nurl = \"https://token@ota.example.com\"\n".into(),
                "backend.url",
                "credentials",
            ),
            (
                "[backend]\nurl = \"http://ota.example.com\"\n".into(),
                "backend.url",
                "https",
            ),
            (
                "[backend]\nurl = \"ftp://ota.example.com\"\n".into(),
                "backend.url",
                "https",
            ),
            (
                "[backend]\nurl = \"https://ota.example.com/?x=1\"\n".into(),
                "backend.url",
                "query",
            ),
            (
                "[backend]\nurl = \"not a url\"\n".into(),
                "backend.url",
                "not a URL",
            ),
            // Path templates that escape, or lose the VIN.
            (
                "[backend]\ndirector_path = \"/director/{vin}/../../admin\"\n".into(),
                "backend.director_path",
                "`..`",
            ),
            (
                "[backend]\ndirector_path = \"/director/./{vin}\"\n".into(),
                "backend.director_path",
                "`..`",
            ),
            (
                "[backend]\ndirector_path = \"/director\"\n".into(),
                "backend.director_path",
                "{vin}",
            ),
            (
                "[backend]\ndirector_path = \"/d/{vin}/{vin}\"\n".into(),
                "backend.director_path",
                "exactly once",
            ),
            (
                "[backend]\ndirector_path = \"director/{vin}\"\n".into(),
                "backend.director_path",
                "start with",
            ),
            (
                "[backend]\ndirector_path = \"/d//{vin}\"\n".into(),
                "backend.director_path",
                "empty segment",
            ),
            (
                "[backend]\ndirector_path = \"/d/{vin}?admin=1\"\n".into(),
                "backend.director_path",
                "'?'",
            ),
            (
                "[backend]\ndirector_path = \"/d/%2e%2e/{vin}\"\n".into(),
                "backend.director_path",
                "'%'",
            ),
            (
                "[backend]\nimage_path = \"/image/..\"\n".into(),
                "backend.image_path",
                "`..`",
            ),
            (
                "[backend]\nimage_path = \"/image/{vin}\"\n".into(),
                "backend.image_path",
                "{vin}",
            ),
            // Directories: empty, relative, `..`, shared.
            ("[state]\ndir = \"\"\n".into(), "state.dir", "empty"),
            ("[state]\ndir = \"state\"\n".into(), "state.dir", "absolute"),
            ("[keys]\ndir = \"\"\n".into(), "keys.dir", "empty"),
            ("[keys]\ndir = \"keys\"\n".into(), "keys.dir", "absolute"),
            ("[keys]\ndir = \"./keys\"\n".into(), "keys.dir", "absolute"),
            (
                "[keys]\ndir = \"/var/lib/../keys\"\n".into(),
                "keys.dir",
                "`..`",
            ),
            (
                "[state]\ncache_dir = \"cache\"\n".into(),
                "state.cache_dir",
                "absolute",
            ),
            (
                "[state]\ncache_dir = \"/var/lib/secureev/state\"\n".into(),
                "state.cache_dir",
                "state.dir",
            ),
            (
                "[keys]\ndir = \"/var/lib/secureev/state\"\n".into(),
                "keys.dir",
                "state.dir",
            ),
            (
                "[trust]\ndirector_root = \"root.json\"\n".into(),
                "trust.director_root",
                "absolute",
            ),
            (
                "[backend]\nca_file = \"ca.pem\"\n".into(),
                "backend.ca_file",
                "absolute",
            ),
            (
                "[install]\ninhibit_dir = \"inhibit\"\n".into(),
                "install.inhibit_dir",
                "absolute",
            ),
            (
                "[install.file]\npath = \"image.bin\"\n".into(),
                "install.file.path",
                "absolute",
            ),
            // Budgets and bounds.
            (
                "[state]\nstorage_budget_bytes = 0\n".into(),
                "state.storage_budget_bytes",
                "at least 1",
            ),
            (
                "[network]\nconnect_timeout_secs = 0\n".into(),
                "network.connect_timeout_secs",
                "at least 1",
            ),
            (
                "[network]\nresponse_timeout_secs = 0\n".into(),
                "network.response_timeout_secs",
                "at least 1",
            ),
            (
                "[network]\nmetadata_timeout_secs = 0\n".into(),
                "network.metadata_timeout_secs",
                "at least 1",
            ),
            (
                "[network]\nmanifest_timeout_secs = 999999999\n".into(),
                "network.manifest_timeout_secs",
                "at most",
            ),
            (
                "[download]\ntimeout_secs = 0\n".into(),
                "download.timeout_secs",
                "at least 1",
            ),
            (
                "[keys]\nprovision = \"always\"\n".into(),
                "keys.provision",
                "",
            ),
        ];
        for (extra, key, needle) in &cases {
            let err = parse_sources(&[
                Source {
                    file: "main.toml".into(),
                    text: MINIMAL.into(),
                },
                Source {
                    file: "drop.toml".into(),
                    text: extra.clone(),
                },
            ])
            .map(|_| ())
            .unwrap_err();
            match &err {
                Error::ConfigInvalid {
                    key: k,
                    file,
                    reason,
                } => {
                    assert_eq!(k, key, "{extra}: {err}");
                    assert_eq!(file, Path::new("drop.toml"), "{extra}: {err}");
                    assert!(reason.contains(needle), "{extra}: {err}");
                    assert!(err.to_string().contains(key), "{err}");
                }
                other => panic!("{extra}: {other:?}"),
            }
        }
        // And what stays accepted.
        for ok in [
            "[vehicle]\nvin = \"1HGCM82633A004352\"\n",
            "[vehicle]\nvin_format = \"free\"\nvin = \"VIN-RUN_1\"\n",
            "[backend]\nurl = \"https://ota.example.com:8443/base/\"\ndirector_path = \"/v1/director/{vin}/\"\nimage_path = \"/v1/image\"\n",
            "[backend]\nurl = \"https://[::1]:8443\"\n",
            "[keys]\nprovision = \"never\"\n",
        ] {
            parse_sources(&[
                Source { file: "main.toml".into(), text: MINIMAL.into() },
                Source { file: "drop.toml".into(), text: ok.into() },
            ])
            .unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn missing_required_key_is_named() {
        let err =
            parse_str("[vehicle]\nvin = \"v\"\nprimary_serial = \"p\"\nhardware_id = \"h\"\n")
                .unwrap_err();
        assert!(
            matches!(err, Error::ConfigInvalid { ref key, .. } if key == "backend"),
            "{err}"
        );
    }
}
