#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls this).
#
# Installs what the tests need when it is missing: Debian packages (the list
# in scripts/apt-packages), Go peers built from their
# modules (crane, the OCI distribution-spec conformance suite, kustomize,
# BuildKit's buildkitd and buildctl, kube-apiserver) cached under
# $SLIPWAY_CACHE, and cargo-nextest. Then: fmt, clippy, every test, and
# the registry's and control plane's tests again on PostgreSQL + Azurite
# and PostgreSQL + S3 (SLIPWAY_TEST_BACKEND).
# Tests start and stop their own servers, on loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${SLIPWAY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/slipway-test}
PEERS="$CACHE/bin"
mkdir -p "$PEERS"

CRANE_VERSION=v0.22.1
CONFORMANCE_VERSION=v0.0.0-20260831232431-97274622c111
# BuildKit is the reference of the differential build tests (crates/cli/tests/it/differential.rs).
BUILDKIT_VERSION=v0.34.2

log() { printf '==> %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# One list of Debian packages, shared with the suite's check that each exists.
# A line `PACKAGE COMMAND` counts as installed when COMMAND is on the PATH
# (Node.js from another source brings its own npm, say).
missing=()
while read -r p cmd _; do
  case "$p" in ''|'#'*) continue ;; esac
  if [ -n "$cmd" ] && [ "${cmd:0:1}" != "#" ]; then
    command -v "$cmd" >/dev/null 2>&1 && continue
  fi
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done < scripts/apt-packages
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  # Installing docker-registry must not start a registry on :5000 here.
  as_root env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  export PATH="/usr/local/go/bin:$PATH"
fi
command -v go >/dev/null 2>&1 || { echo "error: Go is needed to build the registry peers (crane, conformance)" >&2; exit 1; }
# The peers are kept as binaries in $PEERS, so Go's build cache (gigabytes
# for kube-apiserver) is worth nothing afterwards: build in a throw-away one.
GO_BUILD_CACHE=$(mktemp -d)
export GOCACHE="$GO_BUILD_CACHE"
trap 'rm -rf "$GO_BUILD_CACHE"' EXIT

build_peer() { # name package version
  local name=$1 pkg=$2 version=$3
  local stamp="$PEERS/.$name.version"
  if [ -x "$PEERS/$name" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$version" ]; then return; fi
  log "building $name $version from the Go module proxy"
  GOBIN="$PEERS" GOFLAGS=-buildvcs=false go install "$pkg@$version"
  echo "$version" >"$stamp"
}
build_peer crane github.com/google/go-containerregistry/cmd/crane "$CRANE_VERSION"
build_peer conformance github.com/opencontainers/distribution-spec/conformance "$CONFORMANCE_VERSION"
# deploy/kubernetes is rendered with kustomize and checked against Kubernetes'
# schemas with kubernetes-validate (PyPI, in a venv) by crates/cli/tests/it/deploy.rs.
KUSTOMIZE_VERSION=v5.8.1 # v5.8.3 needs Go 1.27
KUBERNETES_VALIDATE_VERSION=1.35.0
build_peer kustomize sigs.k8s.io/kustomize/kustomize/v5 "$KUSTOMIZE_VERSION"
export SLIPWAY_K8S_VALIDATE="$CACHE/venv/bin/kubernetes-validate"
if [ "$("$SLIPWAY_K8S_VALIDATE" --version 2>/dev/null)" != "$KUBERNETES_VALIDATE_VERSION" ]; then
  log "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION into $CACHE/venv"
  [ -x "$CACHE/venv/bin/pip" ] || python3 -m venv "$CACHE/venv"
  "$CACHE/venv/bin/pip" install -q "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi
# The private-network tests (crates/cli/tests/it/private_deps.rs): Azurite
# from npm as the private blob storage (3.36 and later need Node.js 21+), the
# Azure SDK for Python as the client that seeds it.
AZURITE_VERSION=3.35.0
AZURE_STORAGE_BLOB_VERSION=12.31.1
export SLIPWAY_AZURITE="$CACHE/npm/node_modules/.bin/azurite-blob"
if [ ! -x "$SLIPWAY_AZURITE" ] || [ "$(cat "$CACHE/npm/.azurite.version" 2>/dev/null)" != "$AZURITE_VERSION" ]; then
  command -v npm >/dev/null 2>&1 || { echo "error: npm is needed to install Azurite" >&2; exit 1; }
  log "installing azurite $AZURITE_VERSION into $CACHE/npm"
  mkdir -p "$CACHE/npm"
  npm install --prefix "$CACHE/npm" --no-audit --no-fund --loglevel=error "azurite@$AZURITE_VERSION" >/dev/null
  echo "$AZURITE_VERSION" >"$CACHE/npm/.azurite.version"
fi
if ! "$CACHE/venv/bin/python3" -c "import sys, azure.storage.blob as b; sys.exit(b.__version__ != '$AZURE_STORAGE_BLOB_VERSION')" 2>/dev/null; then
  log "installing azure-storage-blob $AZURE_STORAGE_BLOB_VERSION into $CACHE/venv"
  [ -x "$CACHE/venv/bin/pip" ] || python3 -m venv "$CACHE/venv"
  "$CACHE/venv/bin/pip" install -q "azure-storage-blob==$AZURE_STORAGE_BLOB_VERSION"
fi
# S3 for the object-storage tests (crates/cli/tests/it/object_store.rs):
# moto's server, from PyPI, in the same venv.
MOTO_VERSION=5.1.18
if [ "$("$CACHE/venv/bin/python3" -c 'import moto; print(moto.__version__)' 2>/dev/null)" != "$MOTO_VERSION" ] || [ ! -x "$CACHE/venv/bin/moto_server" ]; then
  log "installing moto[server] $MOTO_VERSION into $CACHE/venv"
  [ -x "$CACHE/venv/bin/pip" ] || python3 -m venv "$CACHE/venv"
  "$CACHE/venv/bin/pip" install -q "moto[server]==$MOTO_VERSION"
fi
# The console's browser tests (crates/cli/tests/it/console.rs) drive Debian's
# chromium through playwright-core from npm (no browser download).
PLAYWRIGHT_VERSION=1.65.2
export SLIPWAY_NPM="$CACHE/npm"
if [ "$(node -e "console.log(require('$CACHE/npm/node_modules/playwright-core/package.json').version)" 2>/dev/null)" != "$PLAYWRIGHT_VERSION" ]; then
  log "installing playwright-core $PLAYWRIGHT_VERSION into $CACHE/npm"
  mkdir -p "$CACHE/npm"
  npm install --prefix "$CACHE/npm" --no-audit --no-fund --loglevel=error "playwright-core@$PLAYWRIGHT_VERSION" >/dev/null
fi
# BuildKit's go.mod has exclude directives, which `go install pkg@version`
# refuses: build its commands inside the downloaded module instead.
build_buildkit() { # name
  local name=$1 stamp="$PEERS/.$1.version"
  if [ -x "$PEERS/$name" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$BUILDKIT_VERSION" ]; then return; fi
  log "building $name $BUILDKIT_VERSION from the Go module proxy (several minutes)"
  go mod download github.com/moby/buildkit@"$BUILDKIT_VERSION"
  (cd "$(go env GOMODCACHE)/github.com/moby/buildkit@$BUILDKIT_VERSION" &&
    GOFLAGS=-buildvcs=false go build -o "$PEERS/$name" "./cmd/$name")
  echo "$BUILDKIT_VERSION" >"$stamp"
}
build_buildkit buildkitd
build_buildkit buildctl

# A real Kubernetes API for the pool-scaling test (crates/cli/tests/it/kube.rs):
# kube-apiserver built from k8s.io/kubernetes, on Debian's etcd. That module
# points its k8s.io/* dependencies at in-repo staging copies the module proxy
# does not carry, so a wrapper module names their published v0.X releases.
KUBERNETES_VERSION=v1.37.2
build_kube_apiserver() {
  local stamp="$PEERS/.kube-apiserver.version" dir="$CACHE/kube-apiserver-src"
  if [ -x "$PEERS/kube-apiserver" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$KUBERNETES_VERSION" ]; then return; fi
  log "building kube-apiserver $KUBERNETES_VERSION from the Go module proxy (ten minutes or more)"
  mkdir -p "$dir"
  go mod download k8s.io/kubernetes@"$KUBERNETES_VERSION"
  python3 - "$(go env GOMODCACHE)/k8s.io/kubernetes@$KUBERNETES_VERSION/go.mod" "$KUBERNETES_VERSION" >"$dir/go.mod" <<'PY'
import re, sys
gomod, version = open(sys.argv[1]).read(), sys.argv[2]
staging = re.findall(r"\t(k8s.io/[\w-]+) => ./staging", gomod)
go = re.search(r"^go (\S+)", gomod, re.M).group(1)
print(f"module kube-apiserver-build\n\ngo {go}\n\nrequire k8s.io/kubernetes {version}\n")
for block in re.findall(r"require \((.*?)\)", gomod, re.S):
    print(f"require ({block})")
minor = "v0." + version.split(".", 1)[1]
print("replace (")
for m in staging:
    print(f"\t{m} => {m} {minor}")
print(")")
PY
  (cd "$dir" && GOFLAGS=-mod=mod go build -o "$PEERS/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver)
  echo "$KUBERNETES_VERSION" >"$stamp"
}
build_kube_apiserver
rm -rf "$GO_BUILD_CACHE"
unset GOCACHE

if ! cargo nextest --version >/dev/null 2>&1; then
  log "installing cargo-nextest"
  cargo install --locked cargo-nextest
fi

export SLIPWAY_PEERS_BIN="$PEERS"

# A fresh build of the suite takes about 2 GB in the target directory
# (measured 2026-12-07); running out mid-link fails with an LLVM I/O error
# that names no cause, so say it before building.
NEED_GB=4
target_dir=${CARGO_TARGET_DIR:-target}
mkdir -p "$target_dir"
free_gb=$(df -P -k "$target_dir" | awk 'NR == 2 { print int($4 / 1048576) }')
built_gb=$(du -s -k "$target_dir" 2>/dev/null | awk '{ print int($1 / 1048576) }')
if [ $((free_gb + built_gb)) -lt "$NEED_GB" ]; then
  echo "error: $target_dir has ${free_gb} GB free and holds ${built_gb} GB; building the suite needs about $NEED_GB GB" >&2
  exit 1
fi
# CI builds once from a clean clone: incremental data would only take disk.
if [ -n "${CI:-}" ]; then export CARGO_INCREMENTAL=0; fi

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
status=0
log "tests (SQLite and files)"
cargo nextest run --workspace --no-fail-fast "$@" || status=1
# The back-end matrix: the registry's integration tests and the control
# plane's end-to-end tests again on PostgreSQL + Azurite and on
# PostgreSQL + S3 (moto), each test starting its own (testkit::services).
# (--workspace, as above, so nothing is rebuilt with other features.)
for backend in pg-azurite pg-s3; do
  log "tests on $backend"
  SLIPWAY_TEST_BACKEND=$backend cargo nextest run --workspace --no-fail-fast \
    -E 'package(registry) | test(/^control::/)' "$@" || status=1
done
exit $status
