#!/usr/bin/env bash
# Builds the fuzz targets and runs each for a bounded time; exits non-zero
# if any of them crashes, panics, times out or runs out of memory.
#
#   fuzz/run.sh            # CI smoke run: 20 s per target
#   fuzz/run.sh 600        # a long run: 10 min per target
#   FUZZ_TARGETS="config smtp_reply" fuzz/run.sh 60
#   FUZZ_TARGET_DIR=/var/cache/email-fuzz fuzz/run.sh   # keep the build
#
# Works from any directory, as root on a clean checkout; safe to re-run
# (cargo-fuzz is installed only when missing, the corpus in fuzz/corpus/
# grows from one run to the next). See fuzz/README.md.
set -euo pipefail
cd "$(dirname "$0")"

seconds=${1:-20}
if ! [[ $seconds =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: fuzz/run.sh [SECONDS_PER_TARGET]" >&2
  exit 2
fi
targets=${FUZZ_TARGETS:-parse_message queue_record config smtp_reply smtp_session}
# Targets run side by side, one per core.
jobs=${FUZZ_JOBS:-$(nproc)}

# cargo-fuzz's sanitizer and -Z options are unstable rustc flags;
# RUSTC_BOOTSTRAP=1 lets the stable toolchain take them (no nightly needed).
export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR=never
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

# No AddressSanitizer: our crates forbid unsafe code, and without it the
# build is quicker and the targets run faster. -O: release mode; debug
# assertions and overflow checks are switched on for our own crates in
# fuzz/Cargo.toml, not for the dependencies (see the note there).
build=(-O --sanitizer none)
# FUZZ_TARGET_DIR: build somewhere that outlives the checkout (a CI cache),
# so that a later run only rebuilds what changed.
if [[ -n ${FUZZ_TARGET_DIR:-} ]]; then
  build+=(--target-dir "$FUZZ_TARGET_DIR")
fi
mkdir -p target

echo "==> building the fuzz targets"
# shellcheck disable=SC2086 # $targets is a list
for t in $targets; do
  [[ -f fuzz_targets/$t.rs ]] || { echo "unknown target $t" >&2; exit 2; }
done
cargo fuzz build "${build[@]}"

# Seeds besides fuzz/seeds/<target>: test data the repository already has.
extra_seeds() {
  case $1 in
    parse_message) echo ../crates/email/tests/fixtures ;;
    config) echo ../crates/email/tests/config ../examples ;;
  esac
}

# Per-target libFuzzer options.
extra_flags() {
  case $1 in
    parse_message) echo -max_len=16384 ;;
  esac
}

run_one() {
  local t=$1 log=target/run-$1.log
  mkdir -p "corpus/$t" "artifacts/$t"
  # shellcheck disable=SC2046 # word splitting of the helpers is wanted
  cargo fuzz run "${build[@]}" "$t" "corpus/$t" "seeds/$t" $(extra_seeds "$t") -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -dict="dicts/$t.dict" -print_final_stats=1 $(extra_flags "$t") >"$log" 2>&1
}

summary() {
  local t=$1 rc=$2 log=target/run-$1.log runs cov
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1 || true)
  cov=$(grep -o 'cov: [0-9]* ft: [0-9]* corp: [0-9]*' "$log" | tail -n1 || true)
  if [[ $rc -eq 0 ]]; then
    printf '%-14s ok     %s runs in %s s, %s\n' "$t" "${runs:-?}" "$seconds" "${cov:-no coverage line}"
  else
    printf '%-14s FAILED (exit %s) after %s runs, %s; log: fuzz/%s\n' \
      "$t" "$rc" "${runs:-?}" "${cov:-no coverage line}" "$log"
  fi
}

echo "==> fuzzing each target for ${seconds} s (${jobs} at a time)"
declare -A pid_of rc_of
running=0
for t in $targets; do
  run_one "$t" &
  pid_of[$t]=$!
  running=$((running + 1))
  if ((running >= jobs)); then
    wait -n || true
    running=$((running - 1))
  fi
done
failed=0
for t in $targets; do
  rc=0
  wait "${pid_of[$t]}" || rc=$?
  rc_of[$t]=$rc
done

echo "==> summary"
for t in $targets; do
  summary "$t" "${rc_of[$t]}"
  if [[ ${rc_of[$t]} -ne 0 ]]; then
    failed=1
    grep -E 'panicked at|ERROR: libFuzzer|SUMMARY|Test unit written|^error' "target/run-$t.log" |
      head -n 8 | sed 's/^/    /' || true
  fi
done
if ((failed)); then
  echo "fuzzing found a failure; reproduce with: cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -O -s none TARGET artifacts/TARGET/FILE" >&2
  exit 1
fi
