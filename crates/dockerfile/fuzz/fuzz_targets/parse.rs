//! Parse, lower, expand and graph arbitrary bytes: errors are fine, panics
//! are bugs. Every error must carry a line inside the input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let lines = text.lines().count().max(1) as u32;
    let mut opts = dockerfile::BuildOptions::default();
    opts.build_args.insert("A".into(), "x y".into());
    match dockerfile::check(&text, &opts, None) {
        Ok((_, expanded, _)) => {
            let _ = serde_json::to_string(&expanded);
        }
        Err(errors) => {
            for e in errors.0 {
                assert!(e.pos.line >= 1 && e.pos.line <= lines + 1, "{e}");
                let _ = e.to_string();
            }
        }
    }
});
