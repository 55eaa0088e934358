#!/usr/bin/env bash
# Installs what the test suite needs beyond a Rust toolchain, from Debian's packages:
# `chromium` for the status-page browser test (crates/sova-relay/tests/it/browser.rs);
# `iproute2` and `iptables` for the network-fault tests (crates/sova-relay/tests/netfaults.rs:
# network namespaces, veth, NFQUEUE); `nats-server` (JetStream) for the cluster-mode tests
# (crates/sova-relay/tests/cluster.rs). Idempotent: does nothing when every command is already
# there. Runs as root, or through sudo when that is available.
set -euo pipefail

# What the tests run, and the Debian package that provides it.
needed=(
    "chromium chromium"
    "ip iproute2"
    "iptables iptables"
    "nats-server nats-server"
)

have() {
    command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]
}

# nats-server lives in /usr/sbin, which is not on every user's PATH.
nats_server_version() {
    local bin
    bin=$(command -v nats-server 2>/dev/null || echo /usr/sbin/nats-server)
    "$bin" --version 2>/dev/null || echo "nats-server installed"
}

missing=()
for entry in "${needed[@]}"; do
    read -r command package <<<"$entry"
    have "$command" || missing+=("$package")
done
if [ "${#missing[@]}" -eq 0 ]; then
    echo "install-test-deps: chromium, ip, iptables and nats-server already installed" \
        "($(command -v chromium); $(nats_server_version))"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-test-deps: no apt-get here; install ${missing[*]} by hand" >&2
    exit 1
fi

# `env` carries DEBIAN_FRONTEND through sudo, which would otherwise reset the environment.
if [ "$(id -u)" -eq 0 ]; then
    as_root=(env)
elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo env)
else
    echo "install-test-deps: ${missing[*]} missing, and this is neither root nor has sudo;" >&2
    echo "install-test-deps: install Debian's ${missing[*]} by hand" >&2
    exit 1
fi

echo "install-test-deps: installing ${missing[*]} with apt-get"
"${as_root[@]}" DEBIAN_FRONTEND=noninteractive apt-get update -qq
"${as_root[@]}" DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

for entry in "${needed[@]}"; do
    read -r command package <<<"$entry"
    if ! have "$command"; then
        echo "install-test-deps: apt-get finished but $command ($package) is not on PATH" >&2
        exit 1
    fi
done
echo "install-test-deps: $(chromium --version 2>/dev/null || echo chromium installed)"
echo "install-test-deps: $(nats_server_version)"
