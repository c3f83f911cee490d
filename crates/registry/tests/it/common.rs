//! The shared harness: a registry served on 127.0.0.1 and small helpers to
//! push blobs, images and manifests through its HTTP API.

use std::net::SocketAddr;
use std::sync::Arc;

use oci::Digest;
use oci::media_type::{
    DOCKER_CONFIG, DOCKER_LAYER_GZIP, DOCKER_MANIFEST, OCI_CONFIG, OCI_LAYER_GZIP,
};
use registry::{Registry, RegistryConfig};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};

/// The credentials a request carries.
#[derive(Debug, Clone)]
pub enum Cred {
    Anonymous,
    /// An API token as the Basic password.
    Basic(String),
    /// A token from the `/token` endpoint.
    Bearer(String),
}

/// A registry over a temporary data directory, served until the test ends.
pub struct Server {
    pub reg: Arc<Registry>,
    pub addr: SocketAddr,
    pub admin: Cred,
    http: reqwest::Client,
    /// The blob store's service when the suite's back end is object
    /// storage (`SLIPWAY_TEST_BACKEND`), stopped with the server.
    _backend: (testkit::services::Running, tempfile::TempDir),
    _dir: tempfile::TempDir,
}

impl Server {
    pub async fn start() -> Server {
        Server::start_with(|_| {}).await
    }

    /// A server whose config `tune` changes first (limits, say).
    pub async fn start_with(tune: impl FnOnce(&mut RegistryConfig)) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut config = RegistryConfig::new(dir.path());
        tune(&mut config);
        let backend = testkit::services::Backend::from_env();
        // Apart from the data dir, which tests look into.
        let services = tempfile::tempdir().unwrap();
        let running = testkit::services::Running::start_store(backend, services.path());
        let reg = match running.blob_store() {
            Some((url, opts)) => {
                let l = store::Location::parse(&url, &opts).unwrap();
                let blobs = l.open("store").await.unwrap();
                let meta = registry::meta::Meta::with_kv(l.open_kv("repos"));
                Registry::open_with(config, blobs, meta).unwrap()
            }
            None => Registry::open(config).await.unwrap(),
        };
        let admin = reg.auth().create_token("admin", true, vec![]).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = reg.router();
        tokio::spawn(async move { axum::serve(listener, router).await });
        Server {
            reg,
            addr,
            admin: Cred::Basic(admin),
            http: reqwest::Client::new(),
            _backend: (running, services),
            _dir: dir,
        }
    }

    pub fn data(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// `path` (or an absolute URL, as in a `Location`) against this server.
    pub fn url(&self, path: &str) -> String {
        if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("http://{}{path}", self.addr)
        }
    }

    pub fn req(&self, cred: &Cred, method: Method, path: &str) -> RequestBuilder {
        let r = self.http.request(method, self.url(path));
        match cred {
            Cred::Anonymous => r,
            Cred::Basic(token) => r.basic_auth("someone", Some(token)),
            Cred::Bearer(token) => r.bearer_auth(token),
        }
    }

    pub fn admin(&self, method: Method, path: &str) -> RequestBuilder {
        self.req(&self.admin, method, path)
    }

    /// A monolithic `POST …/blobs/uploads/?digest=` of `bytes`.
    pub async fn post_blob(&self, cred: &Cred, repo: &str, bytes: &[u8], d: &Digest) -> Response {
        self.req(
            cred,
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
        )
        .header("content-type", "application/octet-stream")
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap()
    }

    /// Push `bytes` into `repo` as admin and return their sha256 digest.
    pub async fn push_blob(&self, repo: &str, bytes: &[u8]) -> Digest {
        let d = Digest::sha256(bytes);
        let resp = self.post_blob(&self.admin, repo, bytes, &d).await;
        assert_eq!(resp.status(), StatusCode::CREATED, "pushing blob {d}");
        d
    }

    pub async fn put_manifest(
        &self,
        cred: &Cred,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Response {
        self.req(
            cred,
            Method::PUT,
            &format!("/v2/{repo}/manifests/{reference}"),
        )
        .header("content-type", media_type)
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
    }

    /// Push the config and layer of an image derived from `seed` and return
    /// its manifest of `media_type` (OCI or Docker schema 2), not yet pushed.
    pub async fn image(&self, repo: &str, seed: &str, media_type: &'static str) -> Image {
        let (config_type, layer_type) = if media_type == DOCKER_MANIFEST {
            (DOCKER_CONFIG, DOCKER_LAYER_GZIP)
        } else {
            (OCI_CONFIG, OCI_LAYER_GZIP)
        };
        let config = json!({"architecture": "amd64", "os": "linux", "seed": seed}).to_string();
        let layer = format!("layer bytes of {seed}");
        let config_d = self.push_blob(repo, config.as_bytes()).await;
        let layer_d = self.push_blob(repo, layer.as_bytes()).await;
        let bytes = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": desc(config_type, config.as_bytes()),
            "layers": [desc(layer_type, layer.as_bytes())],
        }))
        .unwrap();
        Image {
            digest: Digest::sha256(&bytes),
            bytes,
            media_type,
            blobs: vec![config_d, layer_d],
        }
    }

    /// Push an OCI image derived from `seed` under `tag` as admin.
    pub async fn push_image(&self, repo: &str, tag: &str, seed: &str) -> Image {
        let img = self.image(repo, seed, oci::media_type::OCI_MANIFEST).await;
        self.push(repo, tag, &img).await;
        img
    }

    /// Push a manifest as admin and check it was created under its digest.
    pub async fn push(&self, repo: &str, reference: &str, img: &Image) {
        let resp = self
            .put_manifest(&self.admin, repo, reference, img.media_type, &img.bytes)
            .await;
        assert_eq!(
            resp.status(),
            StatusCode::CREATED,
            "pushing {repo}:{reference}"
        );
        assert_eq!(
            header(&resp, "docker-content-digest"),
            img.digest.to_string()
        );
        assert_eq!(
            header(&resp, "location"),
            format!("/v2/{repo}/manifests/{}", img.digest)
        );
    }
}

/// A manifest (image, index or artifact) and the blobs it references.
pub struct Image {
    pub bytes: Vec<u8>,
    pub digest: Digest,
    pub media_type: &'static str,
    pub blobs: Vec<Digest>,
}

impl Image {
    /// A manifest that references no pushed blobs of its own.
    pub fn from_json(media_type: &'static str, v: &Value) -> Image {
        let bytes = serde_json::to_vec(v).unwrap();
        Image {
            digest: Digest::sha256(&bytes),
            bytes,
            media_type,
            blobs: Vec::new(),
        }
    }

    /// Its descriptor, as an index or a `subject` holds it.
    pub fn desc(&self) -> Value {
        desc(self.media_type, &self.bytes)
    }
}

/// The descriptor of `bytes` as content of `media_type`.
pub fn desc(media_type: &str, bytes: &[u8]) -> Value {
    json!({"mediaType": media_type, "digest": Digest::sha256(bytes), "size": bytes.len()})
}

/// A response header as text ("" when absent).
pub fn header<'a>(resp: &'a Response, name: &str) -> &'a str {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or("")
}

/// Check a spec error response: its status and `errors[0].code`.
pub async fn assert_error(resp: Response, status: StatusCode, code: &str) {
    assert_eq!(resp.status(), status, "{}", resp.url());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], code, "{body}");
}
