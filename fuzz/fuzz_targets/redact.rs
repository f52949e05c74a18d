//! Redaction on arbitrary arguments and environment entries: never panics,
//! and a second pass changes nothing (redacted output holds no secret
//! shape left to find).
#![no_main]

use edr_agent::redact::{redact_args, redact_env_entry, redact_value};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let args: Vec<String> = text.split('\0').map(str::to_string).collect();
    let once = redact_args(&args);
    assert_eq!(once.len(), args.len(), "argument count changed");
    for a in &args {
        let v = redact_value(a);
        assert_eq!(redact_value(&v), v, "redact_value not idempotent on {a:?}");
        let _ = redact_env_entry(a);
    }
});
