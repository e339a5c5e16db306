//! The token's login lost under a running server (an HSM restart, a network
//! HSM's idle timeout, another application logging out): the next signature
//! and seal log in again instead of failing until a restart. In-process,
//! against a real SoftHSM2 token; the only test in this binary, since it
//! sets `SOFTHSM2_CONF` for the process before any other thread runs.
//! Without SoftHSM2 it prints SKIPPED locally and fails under CI.
#![allow(clippy::unwrap_used)]

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use secureev_server::config::Pkcs11Config;
use secureev_server::hsm::Token;
use secureev_server::keystore::KeyStore;
use std::path::PathBuf;
use std::process::Command;

const MODULES: [&str; 2] = [
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
];

#[test]
fn a_lost_login_is_renewed_before_the_next_operation() {
    let module = std::env::var_os("SECUREEV_SOFTHSM_MODULE")
        .map(PathBuf::from)
        .into_iter()
        .chain(MODULES.iter().map(PathBuf::from))
        .find(|p| p.exists());
    let Some(module) = module else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but SoftHSM2 is missing: server/tests/softhsm-prereqs.sh must install it"
        );
        eprintln!("SKIPPED hsm_session: SoftHSM2 not installed");
        return;
    };
    let root = std::env::temp_dir().join(format!("secureev-hsm-session-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("tokens")).unwrap();
    let conf = root.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            root.join("tokens").display()
        ),
    )
    .unwrap();
    let out = Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", "session-test"])
        .args(["--so-pin", "0000-so", "--pin", "1234-user"])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // Before any other thread of this process reads the environment.
    std::env::set_var("SOFTHSM2_CONF", &conf);
    std::env::set_var("SECUREEV_HSM_SESSION_PIN", "1234-user");
    let cfg = Pkcs11Config {
        module: module.clone(),
        token_label: "session-test".into(),
        pin_file: None,
        pin_env: Some("SECUREEV_HSM_SESSION_PIN".into()),
        label_prefix: "secureev".into(),
    };
    let store = KeyStore::Token(Token::open(&cfg).unwrap());
    let key = store.generate("director", "timestamp").unwrap();
    let kek = store.kek().unwrap();
    let sealed = kek.seal("fw.bin", "a2V5").unwrap();
    let verify = |msg: &[u8], sig_hex: &str| {
        key.verifying_key()
            .verify(msg, &hex::decode(sig_hex).unwrap())
    };
    assert!(verify(b"before", &key.sign_hex(b"before").unwrap()));

    // Another session of this application logs out: the login state is
    // shared, so the server's session is logged out too.
    let other = Pkcs11::new(&module).unwrap();
    let _ = other.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
    let slot = other
        .get_slots_with_initialized_token()
        .unwrap()
        .into_iter()
        .find(|s| other.get_token_info(*s).unwrap().label().trim_end() == "session-test")
        .unwrap();
    let s = other.open_ro_session(slot).unwrap();
    s.logout().unwrap();
    assert_eq!(
        s.get_session_info().unwrap().session_state(),
        cryptoki::session::SessionState::RoPublic
    );

    // The next operations log in again and work.
    assert!(verify(b"after", &key.sign_hex(b"after").unwrap()));
    assert_eq!(kek.unseal("fw.bin", &sealed).unwrap(), "a2V5");
    let again = store.load("director", "timestamp").unwrap();
    assert_eq!(again[0].keyid(), key.keyid());
    let _ = std::fs::remove_dir_all(&root);
}
