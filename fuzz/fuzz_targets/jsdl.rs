//! JSDL 1.0 job definitions: the tolerant parser, the mapping to a queue request, the
//! writer, and standalone range elements.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(xml) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(parsed) = vfarm_jsdl::parse(xml) {
        let _ = parsed.value.to_job_request();
        // What the writer emits from a parsed document must parse again.
        let again = vfarm_jsdl::write(&parsed.value);
        if let Err(e) = vfarm_jsdl::parse(&again) {
            panic!("the writer's output does not parse: {e}\n{again}");
        }
    }
    let _ = vfarm_jsdl::parse_range_value(xml);
});
