//! The OS-Farm one-URL order (`/osfarm/create?...`): query string into a spec request, then
//! the same `resolve` a build runs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok((spec, _format, _download, _synchronous)) = vfarm_api::osfarm_spec(query) {
        let _ = spec.resolve();
    }
});
