//! Percent-encoding of role names and target paths, for URLs and file names:
//! the shared implementation in [`secureev_uptane::quote`] (the daemon uses
//! the same functions).

pub use secureev_uptane::quote::{quote_component, quote_path};
