//! The config loader on arbitrary text: it loads or refuses, never panics;
//! what it loads is valid and survives a YAML round trip. A NUL byte splits
//! the input into two layers (as preset + file).
#![no_main]

use edr_config::{Config, Layer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let layers: Vec<Layer> = text
        .splitn(2, '\0')
        .enumerate()
        .map(|(i, t)| Layer::text(format!("layer {i}"), t))
        .collect();
    if let Ok(c) = Config::load(&layers) {
        assert!(c.validate().is_ok(), "loaded an invalid config");
        let yaml = c.to_yaml();
        let back = Config::from_yaml("round trip", &yaml)
            .unwrap_or_else(|e| panic!("own YAML refused: {e}\n{yaml}"));
        assert_eq!(back, c, "round trip changed the config");
    }
});
