#!/usr/bin/env bash
# Builds the relay's Docker image and checks it for real: the container becomes healthy by
# its own HEALTHCHECK, runs as non-root, relays an update between two instances
# (sova-relay-cli watch + send, through the published port, over TCP and WebSocket), and
# stops gracefully (exit 0) on `docker stop`.
#
#   scripts/docker-smoke.sh                        # Dockerfile: compiles inside Docker
#   scripts/docker-smoke.sh Dockerfile.prebuilt    # compiles on the host, copies the binary
#
# Where there is no Docker engine (only the client, as on the CI machine today) it says
# so plainly and exits 0: nothing was checked then.
set -euo pipefail
cd "$(dirname "$0")/.."

dockerfile=${1:-Dockerfile}

if ! command -v docker >/dev/null 2>&1; then
    echo "docker-smoke: SKIPPED: no docker command on PATH; the image was not built or checked"
    exit 0
fi
if ! docker info >/dev/null 2>&1; then
    echo "docker-smoke: SKIPPED: no Docker engine available (docker info failed); the image was not built or checked"
    exit 0
fi

image="sova-relay:smoke-$$"
name="sova-relay-smoke-$$"
work=$(mktemp -d)
watcher=""
cleanup() {
    [ -n "$watcher" ] && kill "$watcher" 2>/dev/null || true
    docker rm -f "$name" >/dev/null 2>&1 || true
    docker rmi -f "$image" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

fail() {
    echo "docker-smoke: FAILED: $*" >&2
    docker logs "$name" 2>&1 | tail -20 | sed 's/^/docker-smoke:   relay: /' >&2 || true
    exit 1
}

# Waits up to $1 seconds for the command after it to succeed.
wait_for() {
    local seconds=$1
    shift
    local deadline=$((SECONDS + seconds))
    until "$@"; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.5
    done
}

echo "docker-smoke: building the CLI (and, for Dockerfile.prebuilt, the relay) on the host"
cargo build --locked -p sova-relay-cli
cli=target/debug/sova-relay-cli
if [ "$dockerfile" = Dockerfile.prebuilt ]; then
    CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1} cargo build --release --locked -p sova-relay
fi

echo "docker-smoke: docker build -f $dockerfile"
docker build -f "$dockerfile" -t "$image" . || fail "docker build -f $dockerfile"

# As the compose file runs it, with a quick health interval so the test need not wait 30 s.
docker run -d --name "$name" -p 127.0.0.1::9090 \
    --read-only --cap-drop ALL --security-opt no-new-privileges:true \
    --memory 256m --cpus 0.5 --health-interval 1s --health-start-period 1s \
    -e SOVA_MAX_INSTANCES=4 "$image" >/dev/null || fail "docker run"
port=$(docker port "$name" 9090/tcp | head -n 1 | sed 's/.*://')
[ -n "$port" ] || fail "no published port"
addr="127.0.0.1:$port"

healthy() { [ "$(docker inspect -f '{{.State.Health.Status}}' "$name")" = healthy ]; }
wait_for 60 healthy || fail "the container did not become healthy within 60 s"
echo "docker-smoke: healthy by its own HEALTHCHECK on $addr"

user=$(docker inspect -f '{{.Config.User}}' "$image")
[ "$user" = "65532:65532" ] || fail "the image runs as '$user', expected 65532:65532"

# Two instances through the published port: one watches, the other sends.
"$cli" watch --addr "$addr" --name smoke-watcher --json >"$work/watch.jsonl" 2>"$work/watch.err" &
watcher=$!
joined() { grep -q "registered" "$work/watch.err"; }
wait_for 15 joined || fail "the watcher did not register"
"$cli" send --addr "$addr" --name smoke-tcp --data 'tempo 120' || fail "send over TCP"
"$cli" send --addr "ws://$addr/ws" --name smoke-ws --data 'tempo 121' || fail "send over WebSocket"
broadcast_from() { grep '"type":"broadcast"' "$work/watch.jsonl" | grep -q "\"from\":\"$1\""; }
received() { broadcast_from smoke-tcp && broadcast_from smoke-ws; }
wait_for 15 received || fail "the watcher did not receive both updates: $(cat "$work/watch.jsonl")"
kill "$watcher" 2>/dev/null || true
watcher=""
echo "docker-smoke: an update crossed the container over TCP and over WebSocket"

docker exec "$name" /usr/local/bin/sova-relay healthcheck >/dev/null || fail "healthcheck inside"

docker stop -t 10 "$name" >/dev/null
code=$(docker inspect -f '{{.State.ExitCode}}' "$name")
[ "$code" = 0 ] || fail "docker stop: exit code $code, expected 0 (graceful shutdown)"
docker logs "$name" 2>&1 | grep -q "Relay stopped" || fail "no 'Relay stopped' in the logs"

size=$(docker image inspect -f '{{.Size}}' "$image")
echo "docker-smoke: PASSED ($dockerfile; image $((size / 1024 / 1024)) MiB; healthy, non-root, relays TCP and WebSocket, stops with exit 0)"
