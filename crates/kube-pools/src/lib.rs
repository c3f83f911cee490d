//! Agent pools as Kubernetes workloads. A pool's agents run as a
//! Deployment labelled `slipway.dev/pool: NAME` (as `deploy/kubernetes`
//! makes them); [`Scaler::reconcile`] sets each such Deployment's replicas
//! to its pool's `count` through the `scale` subresource, so
//! `slipway pool update NAME --count N` is all an operator does. A
//! Deployment whose pool the server does not know is left alone, and so is
//! one already at its count. The control plane calls it on every pool
//! change and periodically, which also undoes a hand-made `kubectl scale`.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// The label naming an agent Deployment's pool.
pub const POOL_LABEL: &str = "slipway.dev/pool";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KubeError {
    #[error("kubeconfig {path}: {message}")]
    Config { path: String, message: String },
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
}

/// One change [`Scaler::reconcile`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scaled {
    pub deployment: String,
    pub pool: String,
    pub from: i32,
    pub to: i32,
}

/// Scales the agent Deployments of one namespace.
pub struct Scaler {
    deployments: Api<Deployment>,
    namespace: String,
}

impl Scaler {
    /// Connect with `kubeconfig` (a file, or `in-cluster` for the pod's
    /// service account) to `namespace` (default: the kubeconfig's, else
    /// `default`), and check the API answers for it.
    pub async fn connect(kubeconfig: &str, namespace: Option<&str>) -> Result<Scaler, KubeError> {
        let bad = |message: String| KubeError::Config {
            path: kubeconfig.to_owned(),
            message,
        };
        let config = if kubeconfig == "in-cluster" {
            Config::incluster().map_err(|e| bad(e.to_string()))?
        } else {
            let file = Kubeconfig::read_from(kubeconfig).map_err(|e| bad(e.to_string()))?;
            Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(|e| bad(e.to_string()))?
        };
        let namespace = namespace
            .map(str::to_owned)
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = Client::try_from(config).map_err(|e| bad(e.to_string()))?;
        let scaler = Scaler {
            deployments: Api::namespaced(client, &namespace),
            namespace,
        };
        // A wrong address, token or namespace shows now, not at the first pool change.
        scaler
            .deployments
            .list(&ListParams::default().labels(POOL_LABEL).limit(1))
            .await
            .map_err(|source| KubeError::Api {
                what: format!("listing Deployments in namespace {}", scaler.namespace),
                source,
            })?;
        Ok(scaler)
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Set every agent Deployment's replicas to its pool's count in
    /// `pools` (name → count); returns what changed.
    pub async fn reconcile(&self, pools: &BTreeMap<String, u32>) -> Result<Vec<Scaled>, KubeError> {
        let list = self
            .deployments
            .list(&ListParams::default().labels(POOL_LABEL))
            .await
            .map_err(|source| KubeError::Api {
                what: format!("listing Deployments in namespace {}", self.namespace),
                source,
            })?;
        let mut changed = Vec::new();
        for d in list.items {
            let (Some(name), Some(pool)) = (
                d.metadata.name.clone(),
                d.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(POOL_LABEL))
                    .cloned(),
            ) else {
                continue;
            };
            let Some(&want) = pools.get(&pool) else {
                continue;
            };
            let want = i32::try_from(want).unwrap_or(i32::MAX);
            // A Deployment without replicas runs one.
            let have = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            if have == want {
                continue;
            }
            let patch = serde_json::json!({ "spec": { "replicas": want } });
            self.deployments
                .patch_scale(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|source| KubeError::Api {
                    what: format!("scaling Deployment {}/{name}", self.namespace),
                    source,
                })?;
            changed.push(Scaled {
                deployment: name,
                pool,
                from: have,
                to: want,
            });
        }
        Ok(changed)
    }
}
