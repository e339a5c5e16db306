//! Serves `io.secureev.Ota1` with the fake controller, for trying the API with
//! `busctl`, `gdbus`, `secureevctl` or a UI without a vehicle:
//!
//! ```sh
//! cargo run -p secureev-dbus --features test-util --example fake-service
//! # prints: DBUS_ADDRESS=unix:path=/tmp/.../bus,guid=...
//! busctl --address=<that address> call io.secureev.Ota1 /io/secureev/Ota1 \
//!     io.secureev.Ota1 CheckForUpdates 'a{sv}' 0
//! secureevctl --bus <that address> watch
//! ```
//!
//! With `--session` it uses the session bus instead of starting a private one.
#![allow(missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use secureev_dbus::testing::{FakeController, PrivateBus};
use secureev_dbus::StateHandle;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let session = std::env::args().any(|a| a == "--session");
    let state = StateHandle::new();
    let fake = FakeController::new(state.clone(), Duration::from_secs(1));
    let (bus, builder) = if session {
        (None, zbus::connection::Builder::session()?)
    } else {
        let bus = PrivateBus::start()?;
        println!("DBUS_ADDRESS={}", bus.address());
        let builder = bus.builder()?;
        (Some(bus), builder)
    };
    let _conn = state.serve(builder, Arc::new(fake)).await?;
    println!("serving io.secureev.Ota1; Ctrl-C to stop");
    tokio::signal::ctrl_c().await?;
    drop(bus);
    Ok(())
}
