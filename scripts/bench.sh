#!/usr/bin/env bash
# Builds the relay and the load generator in release, installs NATS and Redis from
# Debian's packages if they are missing, and runs every standard scenario against the
# relay (TCP and WebSocket), NATS and Redis, each server started fresh on a free loopback
# port and stopped by pid. Prints the comparison tables (Markdown) on stdout; progress on
# stderr. Arguments go to `sova-relay-bench suite` (e.g. --duration 5s, --scenarios jam).
# The `cluster` scenario (last) runs jam and burst on one relay, then on relay nodes that
# share the session through one `nats-server -js` (temporary store), clients spread
# round-robin over the nodes: relay CPU summed over the nodes, nats-server's apart.
#
#   scripts/bench.sh                         # the whole suite, 10 s per scenario (~7 min)
#   scripts/bench.sh --json-out bench.json   # also every report as JSON
#   scripts/bench.sh --scenarios cluster     # only the cluster table (~1 min)
#   scripts/bench.sh --scenarios cluster --cluster-nodes 0,3 --cluster-workloads jam
set -euo pipefail
cd "$(dirname "$0")/.."

need_install=()
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || need_install+=(nats-server)
command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || need_install+=(redis-server)
if [ ${#need_install[@]} -gt 0 ]; then
    echo "installing ${need_install[*]} (Debian packages)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${need_install[@]}" >&2
fi
export PATH="$PATH:/usr/sbin:/sbin"
# The packages' own services are not used; stop them if the package started them, so
# they take no CPU during the run.
for service in redis-server nats-server; do
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$service" 2>/dev/null; then
        systemctl stop "$service" >&2 || true
    fi
done

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
cargo build --release --locked -p sova-relay -p sova-relay-bench >&2
bin="$CARGO_TARGET_DIR/release"

# 10,000 clients and as many server connections: raise the descriptor limit as far as
# this machine allows (the servers inherit it).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r)" >&2
echo "servers: $("$bin/sova-relay" --version), nats-server $(nats-server --version 2>&1 | awk '{print $2}'), redis $(redis-server --version | awk '{print $3}' | cut -d= -f2)" >&2
echo "open files limit: $(ulimit -n); load average before the run: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

# The load generator and the servers run in a session of their own, so the kernel
# schedules them as one group (autogroup); that group and its processes get a higher
# priority when permitted (root), so other work on the machine disturbs the measurements
# less. On a quiet machine this changes nothing.
run='echo -15 > /proc/self/autogroup 2>/dev/null || true
if nice -n -15 true 2>/dev/null; then exec nice -n -15 "$@"; else exec "$@"; fi'
setsid bash -c "$run" bench "$bin/sova-relay-bench" suite --relay-bin "$bin/sova-relay" "$@" &
suite=$!
# Ctrl-C or TERM: stop the suite and the servers it started (same process group).
trap 'kill -TERM -- -"$suite" 2>/dev/null || kill -TERM "$suite" 2>/dev/null; exit 130' INT TERM
wait "$suite"
