//! Task files under `tests/files/` loaded as a run would load them, their
//! plans compared with reviewed snapshots; files under `tests/files/errors/`
//! must fail with the message their `# expect:` lines give.
//!
//! A file's own comment lines (dropped by rendering, as on ACR) set up its
//! run: `# test: set K=V`, `# test: secret K=V`, `# test: values NAME`
//! (from `tests/files/values/`), `# test: alias-src URI=NAME` (text from
//! `tests/files/values/`), `# test: allow-privileged`, `# test: dry-run`.

// The helpers below run only inside tests: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use tasks::{Policy, RenderContext, RunInfo};

fn files_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/files")
}

/// The run every test file is rendered for.
fn run(task_name: &str) -> RunInfo {
    RunInfo {
        id: "ca1".to_owned(),
        shared_volume: "slipway-shared-ca1".to_owned(),
        registry: "myregistry.internal:5000".to_owned(),
        // 2024-05-03 04:33:42 UTC
        date: UNIX_EPOCH + Duration::from_secs(1_714_710_822),
        os: "linux".to_owned(),
        architecture: "amd64".to_owned(),
        commit: "8f1c2d3e4b5a69788796a5b4c3d2e1f0a9b8c7d6".to_owned(),
        branch: "main".to_owned(),
        repository: "https://git.internal/team/app.git".to_owned(),
        task_name: task_name.to_owned(),
        ..RunInfo::default()
    }
}

/// The images a Slipway server would be configured with.
fn image_aliases(ctx: &mut RenderContext) {
    for (alias, image) in [
        ("acr", "myregistry.internal:5000/tools/acr-cli:0.19"),
        ("az", "myregistry.internal:5000/tools/azure-cli:2.61"),
        ("bash", "myregistry.internal:5000/tools/bash:5.2"),
        ("curl", "myregistry.internal:5000/tools/curl:8.7"),
        ("purge", "myregistry.internal:5000/tools/acr-cli:0.19 purge"),
        ("docker", "myregistry.internal:5000/tools/slipway-docker:1"),
    ] {
        ctx.image_aliases.insert(alias.to_owned(), image.to_owned());
    }
}

struct Case {
    text: String,
    origin: String,
    ctx: RenderContext,
    policy: Policy,
    expect: Vec<String>,
}

fn case(path: &Path) -> Case {
    let text = std::fs::read_to_string(path).unwrap();
    let origin = path.file_name().unwrap().to_string_lossy().into_owned();
    let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
    let mut ctx = RenderContext::new(run(&stem));
    image_aliases(&mut ctx);
    let mut policy = Policy::default();
    let mut expect = Vec::new();
    for line in text.lines() {
        if let Some(e) = line.strip_prefix("# expect: ") {
            expect.push(e.to_owned());
            continue;
        }
        let Some(d) = line.strip_prefix("# test: ") else {
            continue;
        };
        let (verb, arg) = d.split_once(' ').unwrap_or((d, ""));
        match verb {
            "set" => ctx.set(arg).unwrap(),
            "secret" => {
                let (k, v) = arg.split_once('=').unwrap();
                ctx.secrets.insert(k.to_owned(), v.replace("\\n", "\n"));
            }
            "values" => {
                let values = std::fs::read_to_string(files_dir().join("values").join(arg)).unwrap();
                ctx.add_values_yaml(&values, arg).unwrap();
            }
            "alias-src" => {
                let (uri, name) = arg.split_once('=').unwrap();
                let src = std::fs::read_to_string(files_dir().join("values").join(name)).unwrap();
                ctx.alias_sources.insert(uri.to_owned(), src);
            }
            "allow-privileged" => policy.allow_privileged = true,
            "dry-run" => ctx.placeholder_secrets = true,
            other => panic!("{origin}: unknown test directive {other}"),
        }
    }
    Case {
        text,
        origin,
        ctx,
        policy,
        expect,
    }
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn task_files_plan_as_reviewed() {
    insta::glob!("../files", "*.yaml", |path| {
        let c = case(path);
        let plan =
            tasks::load(&c.text, &c.origin, &c.ctx, &c.policy).unwrap_or_else(|e| panic!("{e}"));
        let shown = plan.display();
        for secret in c.ctx.secrets.values() {
            assert!(
                !shown.contains(secret.as_str()),
                "{}: a secret value is shown",
                c.origin
            );
        }
        insta::assert_snapshot!(shown);
    });
}

#[test]
fn at_least_forty_task_files() {
    let n = yaml_files(&files_dir()).len();
    assert!(n >= 40, "only {n} task files");
}

#[test]
fn error_files_fail_with_their_line_or_key() {
    let mut report = String::new();
    let mut wrong = Vec::new();
    let files = yaml_files(&files_dir().join("errors"));
    assert!(files.len() >= 20, "only {} error files", files.len());
    for path in files {
        let c = case(&path);
        assert!(!c.expect.is_empty(), "{}: no # expect: line", c.origin);
        let err = match tasks::load(&c.text, &c.origin, &c.ctx, &c.policy) {
            Ok(plan) => {
                wrong.push(format!(
                    "{}: planned, expected an error:\n{}",
                    c.origin,
                    plan.display()
                ));
                continue;
            }
            Err(e) => e.to_string(),
        };
        for e in &c.expect {
            if !err.contains(e.as_str()) {
                wrong.push(format!("{}: {err:?} does not contain {e:?}", c.origin));
            }
        }
        report.push_str(&err);
        report.push('\n');
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    insta::assert_snapshot!("error_messages", report);
}

#[test]
fn run_record_json_hides_secrets() {
    for name in ["secrets-store.yaml", "secret-volume.yaml"] {
        let c = case(&files_dir().join(name));
        let plan = tasks::load(&c.text, &c.origin, &c.ctx, &c.policy).unwrap();
        let json = serde_json::to_string_pretty(&plan).unwrap();
        for secret in c.ctx.secrets.values() {
            assert!(
                !json.contains(secret.as_str()),
                "{name}: a secret value is in the record"
            );
        }
        // The executor still has the real values.
        let debug = format!("{:?}", plan.steps);
        assert!(
            c.ctx.secrets.values().any(|s| debug.contains(s.as_str()))
                || name == "secret-volume.yaml"
        );
        insta::assert_snapshot!(format!("json_{name}"), json);
    }
}

#[test]
fn rendered_text_of_an_alias_file() {
    let c = case(&files_dir().join("alias-values.yaml"));
    let rendered = tasks::render(&c.text, &c.origin, &c.ctx).unwrap();
    insta::assert_snapshot!("rendered_alias_values", rendered);
}

#[test]
fn parse_render_plan_separately_match_load() {
    let c = case(&files_dir().join("parallel-branches.yaml"));
    let rendered = tasks::render(&c.text, &c.origin, &c.ctx).unwrap();
    let file = tasks::parse(&rendered, &c.origin).unwrap();
    let plan = tasks::plan(&file, &c.policy).unwrap();
    assert_eq!(
        plan,
        tasks::load(&c.text, &c.origin, &c.ctx, &c.policy).unwrap()
    );
    let ids: Vec<&str> = plan.steps.iter().map(|s| s.id.as_str()).collect();
    assert!(ids.len() >= 4);
}

/// Every prefix of every test file (a truncated upload, a half-typed
/// template) loads or fails with an error: nothing panics.
#[test]
fn truncations_never_panic() {
    let mut files = yaml_files(&files_dir());
    files.extend(yaml_files(&files_dir().join("errors")));
    let mut loads = 0;
    for path in files {
        let c = case(&path);
        for (i, _) in c.text.char_indices() {
            let _ = tasks::load(&c.text[..i], &c.origin, &c.ctx, &c.policy);
            loads += 1;
        }
    }
    assert!(loads > 10_000);
}

/// Templates that are hostile rather than wrong are refused, not obeyed.
#[test]
fn hostile_templates_are_bounded() {
    let ctx = RenderContext::default();
    for text in [
        "a: {{ repeat 100000000 \"xxxxxxxx\" }}",
        "a: {{ range 1000000000 }}x{{ end }}",
        "a: {{ range 90000 }}{{ range 90000 }}xxxxxxxxxx{{ end }}{{ end }}",
    ] {
        let err = tasks::render(text, "hostile.yaml", &ctx).unwrap_err();
        assert!(err.to_string().starts_with("hostile.yaml"), "{err}");
    }
    // Nesting deep enough to overflow a stack is refused; ordinary nesting is fine.
    let parens = |n: usize| format!("a: {{{{ {}1{} }}}}", "(".repeat(n), ")".repeat(n));
    assert_eq!(tasks::render(&parens(20), "f", &ctx).unwrap(), "a: 1");
    let err = tasks::render(&parens(5000), "f", &ctx).unwrap_err();
    assert!(err.to_string().contains("nested more than"), "{err}");
    let ifs = |n: usize| format!("{}x{}", "{{ if true }}".repeat(n), "{{ end }}".repeat(n));
    assert_eq!(tasks::render(&ifs(20), "f", &ctx).unwrap(), "x");
    let err = tasks::render(&ifs(5000), "f", &ctx).unwrap_err();
    assert!(err.to_string().contains("nested more than"), "{err}");
    // YAML nesting and alias bombs are the YAML reader's budget to refuse.
    let deep_yaml = format!("steps: {}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(tasks::parse(&deep_yaml, "f").is_err());
    let bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n\
                c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n\
                e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n\
                g: [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]\n";
    let mut values = RenderContext::default();
    assert!(values.add_values_yaml(bomb, "bomb.yaml").is_err());
}
