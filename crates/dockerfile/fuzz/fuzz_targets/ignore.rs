//! `.dockerignore` patterns and paths from arbitrary bytes: never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (patterns, paths) = text.split_once('\0').unwrap_or((&text, "a/b/c"));
    if let Ok(m) = dockerfile::IgnoreMatcher::parse(patterns) {
        for p in paths.split('\n') {
            let _ = m.decide(p, true);
            let _ = m.decide(p, false);
        }
    }
});
