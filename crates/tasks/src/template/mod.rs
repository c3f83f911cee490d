//! The Go-template engine task files are rendered with: `text/template`
//! syntax plus the Sprig functions task files use.
//!
//! Why not `gtmpl` (the Go-template crate): its parse errors report wrong
//! lines (it counts a newline twice), its execution errors carry no line,
//! a missing key either prints `<no value>` or fails with the whole receiver
//! in the message (which would put every secret of `.Secrets` into a log), and
//! its last release predates thiserror 2. This engine is the subset task files
//! need — text, comments, trim markers, pipelines, variables, `if`/`else
//! if`/`range`/`with` — with every error on its line and missing values named.

mod exec;
pub(crate) mod funcs;
mod parse;
pub(crate) mod value;

pub(crate) use value::Value;

/// A render failure at a line of the template (0 when it has none).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TemplateError {
    pub line: u32,
    pub kind: TemplateErrorKind,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TemplateErrorKind {
    Message(String),
    /// A value was named that the context does not have, e.g. `.Values.tag`.
    Missing(String),
}

impl TemplateError {
    pub(crate) fn at(line: u32, message: String) -> Self {
        TemplateError {
            line,
            kind: TemplateErrorKind::Message(message),
        }
    }
    pub(crate) fn missing(line: u32, name: String) -> Self {
        TemplateError {
            line,
            kind: TemplateErrorKind::Missing(name),
        }
    }
}

/// Renders `text` with `root` as `.` (and `$`).
pub(crate) fn render(text: &str, root: Value) -> Result<String, TemplateError> {
    let nodes = parse::parse(text)?;
    exec::Exec::new(root).run(&nodes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn ctx() -> Value {
        let values: BTreeMap<String, Value> = [
            ("tag".to_owned(), Value::Str("v1".into())),
            ("n".to_owned(), Value::Int(3)),
            (
                "list".to_owned(),
                Value::List(vec![Value::Str("a".into()), Value::Str("b".into())]),
            ),
            ("empty".to_owned(), Value::Str(String::new())),
        ]
        .into_iter()
        .collect();
        Value::Map(
            [("Values".to_owned(), Value::Map(values))]
                .into_iter()
                .collect(),
        )
    }

    fn r(t: &str) -> Result<String, TemplateError> {
        render(t, ctx())
    }

    #[test]
    fn actions_and_pipelines() {
        assert_eq!(r("x{{ .Values.tag }}y").unwrap(), "xv1y");
        assert_eq!(r("{{ .Values.tag | upper | quote }}").unwrap(), "\"V1\"");
        assert_eq!(
            r("{{ printf \"%s-%d\" .Values.tag .Values.n }}").unwrap(),
            "v1-3"
        );
        assert_eq!(r("{{ $x := .Values.tag }}[{{ $x }}]").unwrap(), "[v1]");
        assert_eq!(r("{{ $.Values.tag }}").unwrap(), "v1");
        assert_eq!(r("{{ (.Values.tag | upper) }}").unwrap(), "V1");
        assert_eq!(r("{{ len .Values.list }}").unwrap(), "2");
        assert_eq!(r("{{ index .Values.list 1 }}").unwrap(), "b");
        assert_eq!(r("{{/* a comment */}}z").unwrap(), "z");
        assert_eq!(r("a  {{- \"b\" -}}  \n c").unwrap(), "abc");
        assert_eq!(
            r("{{ 1 }}{{ -2 }}{{ 1.5 }}{{ true }}{{ 'a' }}").unwrap(),
            "1-21.5true97"
        );
        assert_eq!(r("{{ `raw\\n` }}").unwrap(), "raw\\n");
        assert_eq!(
            r("{{ and 1 0 }}|{{ or 0 \"\" \"x\" }}|{{ not .Values.missing }}").unwrap(),
            "0|x|true"
        );
    }

    #[test]
    fn control_structures() {
        assert_eq!(
            r("{{ if .Values.tag }}yes{{ else }}no{{ end }}").unwrap(),
            "yes"
        );
        assert_eq!(
            r("{{ if .Values.nope }}1{{ else if .Values.empty }}2{{ else }}3{{ end }}").unwrap(),
            "3"
        );
        assert_eq!(
            r("{{ if eq .Values.tag \"v1\" \"v2\" }}ok{{ end }}").unwrap(),
            "ok"
        );
        assert_eq!(
            r("{{ range .Values.list }}<{{ . }}>{{ end }}").unwrap(),
            "<a><b>"
        );
        assert_eq!(
            r("{{ range $i, $e := .Values.list }}{{ $i }}={{ $e }};{{ end }}").unwrap(),
            "0=a;1=b;"
        );
        assert_eq!(
            r("{{ range .Values.nope }}x{{ else }}none{{ end }}").unwrap(),
            "none"
        );
        assert_eq!(r("{{ with .Values }}{{ .tag }}{{ end }}").unwrap(), "v1");
        assert_eq!(
            r("{{ with .Values.nope }}x{{ else }}y{{ end }}").unwrap(),
            "y"
        );
        assert_eq!(r("{{ range 3 }}{{ . }}{{ end }}").unwrap(), "012");
    }

    #[test]
    fn missing_values_are_named_with_their_line() {
        let e = r("a\nb {{ .Values.nope }}").unwrap_err();
        assert_eq!(e, TemplateError::missing(2, ".Values.nope".into()));
        let e = r("\n\n{{ .Values.nope | upper }}").unwrap_err();
        assert_eq!(e, TemplateError::missing(3, ".Values.nope".into()));
        assert_eq!(r("{{ .Values.nope | default \"d\" }}").unwrap(), "d");
        assert_eq!(r("{{ .Values.tag.deeper }}").unwrap_err().line, 1);
        let e = r("{{ $x := .Values.a.b }}\n{{ $x }}").unwrap_err();
        assert_eq!(e, TemplateError::missing(2, ".Values.a.b".into()));
    }

    #[test]
    fn parse_errors_have_lines() {
        assert_eq!(r("a\n{{ .Values.tag").unwrap_err().line, 2);
        assert_eq!(r("a\nb\n{{ end }}").unwrap_err().line, 3);
        assert_eq!(r("{{ if 1 }}\nx").unwrap_err().line, 1);
        assert_eq!(r("\n{{ nosuch 1 }}").unwrap_err().line, 2);
        let e = r("{{ env \"HOME\" }}").unwrap_err();
        assert!(matches!(e.kind, TemplateErrorKind::Message(ref m) if m.contains("environment")));
        assert_eq!(r("{{ define \"x\" }}{{ end }}").unwrap_err().line, 1);
    }

    #[test]
    fn lines_after_multiline_actions() {
        let e = r("{{ if\n.Values.tag }}\n{{ end }}\n{{ .Values.gone }}").unwrap_err();
        assert_eq!(e, TemplateError::missing(4, ".Values.gone".into()));
    }
}
