//! A Dockerfile build's steps, read from the build child's step lines
//! (`#### [2/5] RUN …`, `#### [2/5] DONE 0.4s`, `#### [2/5] CACHED`), with
//! the times the agent saw them: what the run record and the console show.

use std::sync::{Arc, Mutex};

use api::StepRecord;

/// Cheap to clone; every clone records into the same list.
#[derive(Clone, Default)]
pub struct StepTracker {
    steps: Arc<Mutex<Vec<StepRecord>>>,
}

/// Instruction texts longer than this are cut in the record.
const MAX_TEXT: usize = 200;

impl StepTracker {
    /// Feed one line of the build's output.
    pub fn line(&self, line: &str, now_ms: i64) {
        let Some(rest) = line.trim_end().strip_prefix("#### [") else {
            return;
        };
        let Some((label, what)) = rest.split_once("] ") else {
            return;
        };
        if !label.contains('/') || !label.chars().all(|c| c.is_ascii_digit() || c == '/') {
            return;
        }
        let mut steps = self.steps.lock().unwrap_or_else(|p| p.into_inner());
        let end = |steps: &mut Vec<StepRecord>, state: &str| {
            if let Some(s) = steps.iter_mut().rev().find(|s| s.id == label) {
                s.state = state.to_owned();
                s.finished_at = Some(now_ms);
            }
        };
        if what == "CACHED" {
            end(&mut steps, "cached");
        } else if what.starts_with("DONE ") {
            end(&mut steps, "succeeded");
        } else {
            // A new step: one still running without a DONE line was a
            // config-only instruction (ENV, WORKDIR…), over by now.
            for s in steps.iter_mut().filter(|s| s.state == "running") {
                s.state = "succeeded".into();
                s.finished_at = Some(now_ms);
            }
            let mut text = what.to_owned();
            if text.len() > MAX_TEXT {
                let mut cut = MAX_TEXT;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.truncate(cut);
                text.push('…');
            }
            steps.push(StepRecord {
                id: label.to_owned(),
                kind: "instruction".into(),
                state: "running".into(),
                started_at: Some(now_ms),
                finished_at: None,
                exit_code: None,
                images: Vec::new(),
                message: Some(text),
            });
        }
    }

    /// The steps once the build ended with `code`: a step still running
    /// failed (or, with code 0, ended with the build).
    pub fn finish(&self, code: i32, now_ms: i64) -> Vec<StepRecord> {
        let mut steps = self.steps.lock().unwrap_or_else(|p| p.into_inner());
        for s in steps.iter_mut().filter(|s| s.state == "running") {
            s.finished_at = Some(now_ms);
            if code == 0 {
                s.state = "succeeded".into();
            } else {
                s.state = "failed".into();
                s.exit_code = Some(code);
            }
        }
        steps.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_lines_become_records_with_times() {
        let t = StepTracker::default();
        for (i, l) in [
            "#### pulling reg/base:1 (linux/amd64)",
            "#### [1/4] FROM reg/base:1",
            "#### [2/4] WORKDIR /app",
            "#### [3/4] COPY . /app",
            "#### [3/4] CACHED",
            "#### [4/4] RUN make",
            "make: *** [all] Error 2",
            "#### [not a step] x",
        ]
        .iter()
        .enumerate()
        {
            t.line(l, i as i64 * 10);
        }
        let steps = t.finish(2, 100);
        let view: Vec<(&str, &str, Option<i64>, Option<i64>)> = steps
            .iter()
            .map(|s| (s.id.as_str(), s.state.as_str(), s.started_at, s.finished_at))
            .collect();
        assert_eq!(
            view,
            [
                ("1/4", "succeeded", Some(10), Some(20)),
                ("2/4", "succeeded", Some(20), Some(30)),
                ("3/4", "cached", Some(30), Some(40)),
                ("4/4", "failed", Some(50), Some(100)),
            ]
        );
        assert_eq!(steps[3].message.as_deref(), Some("RUN make"));
        assert_eq!(steps[3].exit_code, Some(2));
    }
}
