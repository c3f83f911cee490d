#!/usr/bin/env bash
# The main job on the embedded default, in one command (the README's first):
# build slipway, start `slipway up` (server, registry, SQLite and a local
# pool of 2 agents on 127.0.0.1:5000, data in ./.slipway), make a base image
# from the host's busybox (no internet needed), build examples/hello on the
# local pool and print the pushed image reference. `--keep` leaves `up`
# running afterwards; otherwise it is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

LISTEN=${SLIPWAY_LISTEN:-127.0.0.1:5000}
DATA=${SLIPWAY_DATA:-.slipway}
keep=0
[ "${1:-}" = "--keep" ] && keep=1

if ! [ -x /bin/busybox ] || ! /bin/busybox --list >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends busybox-static >/dev/null
  else
    echo "error: needs /bin/busybox for the base image: sudo apt-get install busybox-static" >&2
    exit 1
  fi
fi

cargo build --release --bin slipway
SLIPWAY=$PWD/target/release/slipway
mkdir -p "$DATA"
"$SLIPWAY" up --listen "$LISTEN" --data "$DATA" --agents 2 >"$DATA/up.log" 2>&1 &
UP=$!
stop() { kill -INT "$UP" 2>/dev/null && wait "$UP" 2>/dev/null || true; }
[ "$keep" = 1 ] || trap stop EXIT
for _ in $(seq 100); do
  grep -q "to build, paste" "$DATA/up.log" 2>/dev/null && break
  kill -0 "$UP" 2>/dev/null || { cat "$DATA/up.log" >&2; exit 1; }
  sleep 0.1
done

export SLIPWAY_SERVER="http://$LISTEN" SLIPWAY_TOKEN
SLIPWAY_TOKEN=$(cat "$DATA/admin-token")

# A base image from the host's busybox, pushed with the admin token.
work=$(mktemp -d)
trap 'rm -rf "$work"; [ "$keep" = 1 ] || stop' EXIT
mkdir -p "$work/rootfs/bin" "$work/rootfs/tmp" "$work/docker"
cp /bin/busybox "$work/rootfs/bin/busybox"
for a in sh cat echo ls uname; do ln -s busybox "$work/rootfs/bin/$a"; done
printf '{"auths":{"%s":{"auth":"%s"}}}' "$LISTEN" "$(printf 'admin:%s' "$SLIPWAY_TOKEN" | base64 -w0)" >"$work/docker/config.json"
DOCKER_CONFIG=$work/docker "$SLIPWAY" image import --cmd sh -t "$LISTEN/library/busybox:latest" "$work/rootfs" >/dev/null

# The build, on an agent of the local pool; the last line is the image.
"$SLIPWAY" build --pool default -t hello:1 --build-arg "BASE=$LISTEN/library/busybox:latest" examples/hello

if [ "$keep" = 1 ]; then
  echo "slipway up keeps running (pid $UP, log $DATA/up.log); stop it with: kill -INT $UP" >&2
fi
