//! Image spec files: TOML into `SpecRequest`, then the validation and normalisation a build
//! goes through (`resolve`), and the canonical form the cache key is hashed from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vfarm_core::SpecRequest;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(req) = SpecRequest::from_toml(text) else {
        return;
    };
    // Flags merged over a file take the same path.
    let merged = req.clone().merge(req.clone());
    for r in [req, merged] {
        if let Ok(build) = r.resolve() {
            let _ = build.spec.canonical_json();
            let _ = build.spec.base().slug();
        }
    }
});
