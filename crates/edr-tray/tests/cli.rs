//! `edr-tray`'s command line: it takes no arguments but `--help`. (Its
//! menu, engine and dashboard are tested in `src-tauri/tests/light_tray.rs`,
//! which runs this binary beside the app's.)

use std::process::Command;

const TRAY: &str = env!("CARGO_BIN_EXE_edr-tray");

#[test]
fn help_says_what_it_reads_and_an_unknown_argument_is_refused() {
    let out = Command::new(TRAY).arg("--help").output().expect("runs");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    for env in [
        "EDR_APP_CONFIG",
        "EDR_APP_API_SOCKET",
        "EDR_TRAY_SOCKET",
        "EDR_TRAY_VIEWER",
    ] {
        assert!(text.contains(env), "{env} missing from:\n{text}");
    }

    let out = Command::new(TRAY).arg("--bogus").output().expect("runs");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unexpected argument `--bogus`"), "{err}");
}
