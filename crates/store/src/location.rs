//! Where a server keeps its blobs: `--blob-store URL`.
//!
//! - `file:///dir` — the filesystem ([`crate::FsStore`]), the default;
//! - `azure://ACCOUNT/CONTAINER[/PREFIX]` — Azure Blob Storage (account key
//!   or SAS from the `AZURE_STORAGE_*` environment variables or
//!   `--blob-store-option account_key=…`/`sas_key=…`;
//!   `AZURE_STORAGE_USE_EMULATOR=true` for Azurite);
//! - `s3://BUCKET[/PREFIX]` — S3 or a compatible store (`AWS_*` variables,
//!   or `--blob-store-option endpoint=…`, `region=…`, `access_key_id=…`).
//!
//! Each part of the server (registry blobs, build contexts) opens its own
//! area under the location with [`Location::open`].

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::{ObjectStore, RetryConfig};

use crate::{BlobStore, FsStore, ObjectBlobStore, Result, StoreError};

/// A parsed `--blob-store`.
#[derive(Clone)]
pub enum Location {
    File(PathBuf),
    Object {
        store: Arc<dyn ObjectStore>,
        prefix: String,
        /// The URL as given, for errors.
        url: String,
    },
}

/// A store that stops answering fails a request within seconds (a `5xx`
/// the registry client retries), not after object_store's default three
/// minutes of retrying.
fn retry() -> RetryConfig {
    RetryConfig {
        max_retries: 3,
        retry_timeout: std::time::Duration::from_secs(15),
        ..RetryConfig::default()
    }
}

fn bad(url: &str, why: impl std::fmt::Display) -> StoreError {
    StoreError::Io {
        context: format!("--blob-store {url}"),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, why.to_string()),
    }
}

impl Location {
    /// Parse `url` with `options` (`KEY=VALUE`, the object store's config
    /// keys) over what the environment gives.
    pub fn parse(url: &str, options: &[String]) -> Result<Location> {
        let opts: Vec<(&str, &str)> = options
            .iter()
            .map(|o| {
                o.split_once('=')
                    .ok_or_else(|| bad(url, format!("--blob-store-option {o}: expected KEY=VALUE")))
            })
            .collect::<Result<_>>()?;
        if let Some(path) = url.strip_prefix("file://") {
            if !opts.is_empty() {
                return Err(bad(url, "a file:// store takes no --blob-store-option"));
            }
            if !path.starts_with('/') {
                return Err(bad(url, "give an absolute path: file:///DIR"));
            }
            return Ok(Location::File(PathBuf::from(path)));
        }
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            bad(
                url,
                "expected file:///DIR, azure://ACCOUNT/CONTAINER or s3://BUCKET",
            )
        })?;
        let store: Arc<dyn ObjectStore> = match scheme {
            "azure" | "az" => {
                let mut parts = rest.splitn(3, '/');
                let (Some(account), Some(container)) = (parts.next(), parts.next()) else {
                    return Err(bad(url, "expected azure://ACCOUNT/CONTAINER[/PREFIX]"));
                };
                if account.is_empty() || container.is_empty() {
                    return Err(bad(url, "expected azure://ACCOUNT/CONTAINER[/PREFIX]"));
                }
                let mut b = MicrosoftAzureBuilder::from_env()
                    .with_account(account)
                    .with_container_name(container)
                    .with_retry(retry());
                for (k, v) in &opts {
                    let key = AzureConfigKey::from_str(k)
                        .map_err(|e| bad(url, format!("--blob-store-option {k}: {e}")))?;
                    b = b.with_config(key, *v);
                }
                Arc::new(b.build().map_err(|e| bad(url, e))?)
            }
            "s3" => {
                let bucket = rest.split('/').next().unwrap_or_default();
                if bucket.is_empty() {
                    return Err(bad(url, "expected s3://BUCKET[/PREFIX]"));
                }
                let mut b = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(retry());
                for (k, v) in &opts {
                    let key = AmazonS3ConfigKey::from_str(k)
                        .map_err(|e| bad(url, format!("--blob-store-option {k}: {e}")))?;
                    b = b.with_config(key, *v);
                }
                Arc::new(b.build().map_err(|e| bad(url, e))?)
            }
            other => {
                return Err(bad(
                    url,
                    format!("unknown scheme {other}: use file://, azure:// or s3://"),
                ));
            }
        };
        // azure: ACCOUNT/CONTAINER/PREFIX; s3: BUCKET/PREFIX.
        let skip = if matches!(scheme, "azure" | "az") {
            2
        } else {
            1
        };
        let prefix = rest
            .splitn(skip + 1, '/')
            .nth(skip)
            .unwrap_or("")
            .trim_matches('/');
        Ok(Location::Object {
            store,
            prefix: prefix.to_owned(),
            url: url.to_owned(),
        })
    }

    /// The small-value store of area `sub` (`repos`: repository metadata)
    /// at this location.
    pub fn open_kv(&self, sub: &str) -> Arc<dyn crate::kv::Kv> {
        match self {
            Location::File(dir) => Arc::new(crate::kv::FsKv::new(dir.join(sub))),
            Location::Object { store, prefix, .. } => {
                Arc::new(crate::kv::ObjectKv::new(store.clone(), &area(prefix, sub)))
            }
        }
    }

    /// The blob store of area `sub` (`store`, `contexts`) at this location,
    /// checked to answer.
    pub async fn open(&self, sub: &str) -> Result<Arc<dyn BlobStore>> {
        match self {
            Location::File(dir) => Ok(Arc::new(FsStore::open(dir.join(sub)).await?)),
            Location::Object { store, prefix, url } => {
                let s = ObjectBlobStore::new(
                    store.clone(),
                    &area(prefix, sub),
                    format!("{url} ({sub})"),
                );
                s.check().await?;
                Ok(Arc::new(s))
            }
        }
    }
}

/// Area `sub` under the location's `prefix`.
fn area(prefix: &str, sub: &str) -> String {
    if prefix.is_empty() {
        sub.to_owned()
    } else {
        format!("{prefix}/{sub}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_name_what_is_wrong() {
        let e = |u: &str| {
            Location::parse(u, &[])
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(
            matches!(Location::parse("file:///srv/blobs", &[]), Ok(Location::File(p)) if p == std::path::Path::new("/srv/blobs"))
        );
        assert!(e("file://relative").contains("absolute path"));
        assert!(e("ftp://x").contains("unknown scheme ftp"));
        assert!(e("azure://acct").contains("azure://ACCOUNT/CONTAINER"));
        assert!(e("s3://").contains("s3://BUCKET"));
        assert!(e("blobs").contains("expected file:///DIR"));
        let o = Location::parse("s3://b/p", &["nonsense".into()])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(o.contains("KEY=VALUE"), "{o}");
        let o = Location::parse("s3://b/p", &["no_such_key=1".into()])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(o.contains("no_such_key"), "{o}");
    }
}
