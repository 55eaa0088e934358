#!/usr/bin/env bash
# Installs what the test suite needs beyond a Rust toolchain: Debian's `chromium`, for the
# status-page browser test (crates/sova-relay/tests/it/browser.rs). Idempotent: does nothing
# when `chromium` is already on PATH. Runs as root, or through sudo when that is available.
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
    echo "install-test-deps: chromium already installed ($(command -v chromium))"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-test-deps: no apt-get here; put a 'chromium' binary on PATH by hand" >&2
    exit 1
fi

# `env` carries DEBIAN_FRONTEND through sudo, which would otherwise reset the environment.
if [ "$(id -u)" -eq 0 ]; then
    as_root=(env)
elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo env)
else
    echo "install-test-deps: chromium is missing, and this is neither root nor has sudo;" >&2
    echo "install-test-deps: install Debian's 'chromium' package by hand" >&2
    exit 1
fi

echo "install-test-deps: installing chromium with apt-get"
"${as_root[@]}" DEBIAN_FRONTEND=noninteractive apt-get update -qq
"${as_root[@]}" DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends chromium >/dev/null

if ! command -v chromium >/dev/null 2>&1; then
    echo "install-test-deps: apt-get finished but chromium is not on PATH" >&2
    exit 1
fi
echo "install-test-deps: $(chromium --version 2>/dev/null || echo chromium installed)"
