#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time (not part of
# scripts/test.sh or CI's default run).
#   scripts/fuzz.sh                  every target, 60 s each
#   FUZZ_SECONDS=600 scripts/fuzz.sh longer runs
#   scripts/fuzz.sh policy config    only these targets
# The committed seeds (fuzz/seeds/<target>/) are copied into the working
# corpus (fuzz/corpus/<target>/, gitignored), which keeps what each run
# finds. Inputs in fuzz/regressions/<target>/ (committed) are replayed
# first. A crash's input lands in fuzz/artifacts/<target>/; replay it with
#   cargo +nightly fuzz run <target> fuzz/artifacts/<target>/<file>
# Prints, per target: seconds run, executions, corpus size, crashes; exits
# non-zero if any target crashed.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.1
seconds=${FUZZ_SECONDS:-60}
toolchain=${FUZZ_TOOLCHAIN:-nightly}

if ! rustup toolchain list | grep -q "^$toolchain"; then
  echo "fuzz.sh: needs the $toolchain toolchain (rustup toolchain install $toolchain)" >&2
  exit 2
fi
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cd fuzz && cargo +"$toolchain" fuzz list)
fi

echo "== build (${targets[*]})"
(cd fuzz && cargo +"$toolchain" fuzz build)

mkdir -p fuzz/logs
summary=()
failed=0
for t in "${targets[@]}"; do
  corpus=fuzz/corpus/$t
  mkdir -p "$corpus" "fuzz/artifacts/$t"
  cp -n fuzz/seeds/"$t"/* "$corpus"/ 2>/dev/null || true
  before=$(find "fuzz/artifacts/$t" -type f | wc -l)
  # Inputs that once crashed (fuzz/regressions/<target>/) run first, once each.
  if [ -d "fuzz/regressions/$t" ]; then
    echo "== $t: replaying fuzz/regressions/$t"
    (cd fuzz && cargo +"$toolchain" fuzz run "$t" "regressions/$t"/* -- -runs=1) >"fuzz/logs/$t.regressions.log" 2>&1 ||
      { echo "   a regression input fails again: fuzz/logs/$t.regressions.log"; failed=1; }
  fi
  log=fuzz/logs/$t.log
  echo "== $t (${seconds}s)"
  start=$(date +%s)
  rc=0
  (cd fuzz && cargo +"$toolchain" fuzz run "$t" "corpus/$t" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1) >"$log" 2>&1 || rc=$?
  ran=$(($(date +%s) - start))
  execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  if [ -z "$execs" ]; then
    execs=$(grep -o '^#[0-9]*' "$log" | tail -1 | tr -d '#')
  fi
  size=$(find "$corpus" -type f | wc -l)
  crashes=$(($(find "fuzz/artifacts/$t" -type f | wc -l) - before))
  if [ "$rc" != 0 ] && [ "$crashes" = 0 ]; then
    crashes=1
  fi
  if [ "$crashes" != 0 ]; then
    failed=1
    grep -m1 -E 'panicked at|ERROR: libFuzzer|SUMMARY' "$log" || true
    echo "   log: $log"
  fi
  summary+=("$(printf '%-16s %6ss %12s execs %6s corpus %3s crashes' "$t" "$ran" "${execs:-?}" "$size" "$crashes")")
done

echo "== summary"
printf '%s\n' "${summary[@]}"
exit "$failed"
