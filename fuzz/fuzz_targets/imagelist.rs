//! HEPiX image lists: the JSON model, and the S/MIME envelope (parsing, embedded
//! certificates, the signer, the signature check against no trust).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vfarm_imagelist::smime::{micalg, SignedMessage};
use vfarm_imagelist::ImageList;

fuzz_target!(|data: &[u8]| {
    if let Ok(list) = ImageList::from_json(data) {
        // What the model writes from an accepted list must be accepted again.
        let out = list.to_json_pretty();
        if let Err(e) = ImageList::from_json(&out) {
            panic!(
                "a written list does not parse: {e}\n{}",
                String::from_utf8_lossy(&out)
            );
        }
        for img in &list.images {
            let _ = list.image(&img.identifier);
        }
    }
    let _ = micalg(data);
    if let Ok(msg) = SignedMessage::parse(data) {
        let _ = msg.certificates();
        let _ = msg.signer();
        let _ = msg.check_signature();
        let _ = ImageList::from_json(&msg.content);
    }
});
