//! v1.1.0 aliases: the `alias:` block, the `$name` directive and `$$`, as
//! acr-builder's preprocessor applies them before templates are rendered.

use std::collections::BTreeMap;

/// acr-builder's default directive.
pub(crate) const DEFAULT_DIRECTIVE: char = '$';

/// The `version:` value as acr-builder finds it before parsing: the first
/// top-level `version:` line, quotes trimmed.
pub(crate) fn find_version(text: &str) -> Option<String> {
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let unquoted = line.trim_start_matches(['\'', '"']);
        if unquoted.starts_with("version")
            && let Some((key, value)) = line.split_once(':')
            && key.trim().trim_matches(['\'', '"']) == "version"
        {
            return Some(value.trim().trim_matches(['\'', '"']).to_owned());
        }
    }
    None
}

/// The `alias:` block's lines and the rest, each with the other's lines
/// blanked so both keep the file's line numbers. `None` without a block.
pub(crate) struct Split {
    /// 0-based index of the `alias:` line.
    pub line_index: usize,
    pub alias: String,
    pub rest: String,
}

pub(crate) fn split_alias_block(text: &str) -> Option<Split> {
    let mut inside = false;
    let mut start = None;
    let mut alias = String::with_capacity(text.len());
    let mut rest = String::with_capacity(text.len());
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            alias.push('\n');
            rest.push('\n');
        }
        // As acr-builder: the block starts at a top-level `alias:` and ends
        // at the next top-level `key:` line; comments belong to neither.
        let is_comment = line.trim_start().starts_with('#');
        if !is_comment {
            if !inside && start.is_none() && is_alias_key(line) {
                inside = true;
                start = Some(i);
            } else if inside && is_top_level_key(line) {
                inside = false;
            }
        }
        if inside && !is_comment {
            alias.push_str(line);
        } else if !inside {
            rest.push_str(line);
        }
    }
    start.map(|line_index| Split {
        line_index,
        alias,
        rest,
    })
}

fn is_alias_key(line: &str) -> bool {
    line.strip_prefix("alias")
        .is_some_and(|r| r.trim_start().starts_with(':'))
}

fn is_top_level_key(line: &str) -> bool {
    let Some(first) = line.chars().next() else {
        return false;
    };
    !first.is_whitespace() && first != ':' && line.contains(':')
}

/// Keys are letters and digits only (acr-builder's rule).
pub(crate) fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric())
}

/// acr-builder's substitution: `<d>name` → the alias' value when `name` is a
/// defined alias (a name ends at the first character that is not a letter
/// or digit), `<d><d>` → `<d>`, anything else stays as written (so `$HOME`
/// and `${VAR}` reach the shell).
pub(crate) fn substitute(text: &str, directive: char, table: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut name = String::new();
    let mut in_cmd = false;
    // A trailing space closes a name that ends the text; removed below.
    for c in text.chars().chain(std::iter::once(' ')) {
        if in_cmd {
            if c == directive && name.is_empty() {
                out.push(directive);
                in_cmd = false;
            } else if !c.is_ascii_alphanumeric() {
                match table.get(&name) {
                    None => {
                        out.push(directive);
                        out.push_str(&name);
                        out.push(c);
                        in_cmd = false;
                    }
                    Some(value) => {
                        out.push_str(value);
                        // `$a$b`: the directive right after a name starts the next one.
                        if c != directive {
                            in_cmd = false;
                            out.push(c);
                        }
                    }
                }
                name.clear();
            } else {
                name.push(c);
            }
        } else if c == directive {
            in_cmd = true;
        } else {
            out.push(c);
        }
    }
    out.pop();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> BTreeMap<String, String> {
        [
            ("ID", "run-1"),
            ("bash", "reg/bash:5"),
            ("a", "A"),
            ("b", "B"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    #[test]
    fn substitution_follows_acr_builder() {
        let t = table();
        assert_eq!(substitute("img:$ID", '$', &t), "img:run-1");
        assert_eq!(
            substitute("$bash echo $HOME ${X}", '$', &t),
            "reg/bash:5 echo $HOME ${X}"
        );
        assert_eq!(substitute("cost $$5 and $$ID", '$', &t), "cost $5 and $ID");
        assert_eq!(substitute("$a$b-", '$', &t), "AB-");
        assert_eq!(substitute("@ID and $ID", '@', &t), "run-1 and $ID");
        assert_eq!(substitute("end $ID", '$', &t), "end run-1");
    }

    #[test]
    fn alias_block_is_split_keeping_lines() {
        let text = "version: v1.1.0\nalias:\n  values:\n    a: b\n# c\nsteps:\n  - cmd: x\n";
        let s = split_alias_block(text).unwrap();
        assert_eq!(s.line_index, 1);
        assert_eq!(s.alias, "\nalias:\n  values:\n    a: b\n\n\n\n");
        // A comment inside the block belongs to neither (acr-builder drops it).
        assert_eq!(s.rest, "version: v1.1.0\n\n\n\n\nsteps:\n  - cmd: x\n");
    }

    #[test]
    fn version_is_found_before_parsing() {
        assert_eq!(
            find_version("# v\nversion: 'v1.1.0'\n").as_deref(),
            Some("v1.1.0")
        );
        assert_eq!(find_version("steps: []\n  version: x\n"), None);
    }
}
