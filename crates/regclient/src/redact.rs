//! URLs as logs and errors may show them: a context or `ADD` URL may carry
//! a credential in its user info or, for blob storage, its query (a SAS
//! token).

/// A URL as it may be logged: without user info, and without its query,
/// which for blob storage is a SAS token (a credential).
pub fn redact_url(url: &str) -> String {
    let (url, fragment) = match url.split_once('#') {
        Some((u, f)) => (u, format!("#{f}")),
        None => (url, String::new()),
    };
    let (url, query) = match url.split_once('?') {
        Some((u, _)) => (u, "?…"),
        None => (url, ""),
    };
    let url = match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            if path.is_empty() && !rest.contains('/') {
                format!("{scheme}://{host}")
            } else {
                format!("{scheme}://{host}/{path}")
            }
        }
        None => url.to_owned(),
    };
    format!("{url}{query}{fragment}")
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn drops_user_info_and_queries() {
        assert_eq!(
            redact_url("http://u:p@h:1/acct/c/ctx.tar?sv=1&sig=SECRET"),
            "http://h:1/acct/c/ctx.tar?…"
        );
        assert_eq!(
            redact_url("https://h/r.git#main:sub"),
            "https://h/r.git#main:sub"
        );
        assert_eq!(redact_url("https://tok@h"), "https://h");
        assert_eq!(
            redact_url("ssh://root@10.0.0.2:2222/srv/repo.git#main"),
            "ssh://10.0.0.2:2222/srv/repo.git#main"
        );
    }
}
