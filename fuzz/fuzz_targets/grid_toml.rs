//! Grid files: TOML into the grid model, the checks naming the field, the role stages and
//! the template references (`vfarm_grid::parse`), then the member names derived from it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(grid) = vfarm_grid::parse(text, None) else {
        return;
    };
    for (role, r) in &grid.roles {
        for i in 1..=r.count().min(4) {
            let _ = vfarm_grid::member_name(&grid.name, role, i);
        }
    }
});
