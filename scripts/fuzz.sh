#!/usr/bin/env bash
# Runs every libFuzzer target in fuzz/ for SECONDS each (default 60), one after another,
# and prints executions and coverage per target. Installs cargo-fuzz when it is missing.
#
#   scripts/fuzz.sh 600                      # every target, 10 minutes each
#   scripts/fuzz.sh 60 connection            # only these targets
#   FUZZ_JOBS=2 scripts/fuzz.sh 600          # two targets at a time
#   FUZZ_SANITIZER=address scripts/fuzz.sh 60   # ASan (nightly flags, via RUSTC_BOOTSTRAP)
#
# Seeds are fuzz/corpus/<target>/seed-* (PROTOCOL.md's vectors, fuzz/seeds/make_seeds.py);
# what a run discovers is added beside them and stays local (.gitignore). A crash leaves
# its input in fuzz/artifacts/<target>/ and makes the script exit non-zero; replay it with
# `cargo fuzz run -s none <target> fuzz/artifacts/<target>/crash-…`.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
shift || true
case "$seconds" in
    '' | *[!0-9]*) echo "usage: scripts/fuzz.sh [SECONDS] [TARGET...]" >&2; exit 2 ;;
esac

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz (cargo install cargo-fuzz --locked)"
    cargo install cargo-fuzz --locked
fi

sanitizer="${FUZZ_SANITIZER:-none}"
if [ "$sanitizer" != none ]; then
    # Sanitizers need nightly-only compiler flags; this lets a stable toolchain take them.
    export RUSTC_BOOTSTRAP=1
fi

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

echo "fuzz: building ${targets[*]} (sanitizer: $sanitizer)"
for target in "${targets[@]}"; do
    cargo fuzz build -s "$sanitizer" "$target"
done

logs=fuzz/target/logs
mkdir -p "$logs"

run_target() {
    local target="$1"
    mkdir -p "fuzz/corpus/$target"
    cargo fuzz run -s "$sanitizer" "$target" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$logs/$target.log" 2>&1
}

summary() {
    local target="$1" status="$2" log="$logs/$1.log"
    local runs cov ft corpus
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    cov=$(grep -Eo 'cov: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
    ft=$(grep -Eo 'ft: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
    corpus=$(grep -Eo 'corp: [0-9]+/[0-9a-zA-Z]+' "$log" | tail -1 | cut -d' ' -f2)
    printf 'fuzz: %-12s %-6s %12s execs in %ss  cov %-6s ft %-6s corpus %s\n' \
        "$target" "$status" "${runs:-?}" "$seconds" "${cov:-?}" "${ft:-?}" "${corpus:-?}"
    if [ "$status" != ok ]; then
        grep -E 'panicked at|ERROR: libFuzzer|SUMMARY|Test unit written to' "$log" | head -8 | sed 's/^/    /'
    fi
}

jobs_max="${FUZZ_JOBS:-1}"
declare -A pids=()
failed=0
finish_one() {
    local target="$1"
    if wait "${pids[$target]}"; then
        summary "$target" ok
    elif grep -q 'INITED' "$logs/$target.log"; then
        summary "$target" CRASH
        failed=1
    else
        summary "$target" FAILED # did not build or start: see the log
        tail -5 "$logs/$target.log" | sed 's/^/    /'
        failed=1
    fi
    unset "pids[$target]"
}
for target in "${targets[@]}"; do
    while [ "${#pids[@]}" -ge "$jobs_max" ]; do
        first="${!pids[*]}"
        finish_one "${first%% *}"
    done
    echo "fuzz: running $target for ${seconds}s (log: $logs/$target.log)"
    run_target "$target" &
    pids[$target]=$!
done
for target in "${!pids[@]}"; do
    finish_one "$target"
done
exit "$failed"
