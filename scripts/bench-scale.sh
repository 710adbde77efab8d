#!/usr/bin/env bash
# Scale-out benchmarks (issue 4), with the machine's Redis and PostgreSQL:
#   1. buffered enqueue into Redis from one process (target >= 50,000/s);
#   2. intake from Redis into PostgreSQL (target >= 10,000/s);
#   3. dispatch by two servers sharing PostgreSQL, against one server, each
#      with the same connection limit, to a sink that takes 20 ms to answer
#      each message (target >= 1.8x).
# Prints a summary against the targets; see BENCHMARKS.md.
#
#   scripts/bench-scale.sh
#
# Needs Redis and PostgreSQL (EMAIL_TEST_REDIS_URL, EMAIL_TEST_POSTGRES_URL;
# defaults redis://127.0.0.1:6379 and postgres://postgres@127.0.0.1:5432/test).
# Every run uses its own Redis keys and PostgreSQL schema and removes them.
# About 3 minutes. Logs in target/bench-scale/.
#
# Knobs: BENCH_RUNS (repetitions, 3), BENCH_ENQUEUE_N (200000),
# BENCH_INTAKE_N (50000), BENCH_SERVERS_N (3000), BENCH_CONNS (4),
# BENCH_DELAY_MS (20).
set -euo pipefail

cd "$(dirname "$0")/.."
logs=target/bench-scale
mkdir -p "$logs"
RUNS=${BENCH_RUNS:-3}
ENQ_N=${BENCH_ENQUEUE_N:-200000}
INTAKE_N=${BENCH_INTAKE_N:-50000}
SERVERS_N=${BENCH_SERVERS_N:-3000}
CONNS=${BENCH_CONNS:-4}
DELAY=${BENCH_DELAY_MS:-20}

echo "== machine"
echo "date:   $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (dirty)')"
echo "cpu:    $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//') x $(nproc)"
echo "load:   $(cut -d' ' -f1-3 /proc/loadavg)"

echo "== build (release)"
cargo build --release -q -p email-server --bin email-server --example bench_scale
bench=target/release/examples/bench_scale
server=target/release/email-server

field() { sed -n "s/^RESULT .*\\b$2=\\([^ ]*\\).*/\\1/p" "$1" | tail -1; }
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

handoff=() durable=() intake=() one=() two=()
for run in $(seq "$RUNS"); do
    echo "== run $run of $RUNS"
    "$bench" redis-buffered --n "$ENQ_N" | tee "$logs/buffered-$run.log"
    handoff+=("$(field "$logs/buffered-$run.log" handoff_rate)")
    durable+=("$(field "$logs/buffered-$run.log" durable_rate)")
    "$bench" intake --n "$INTAKE_N" | tee "$logs/intake-$run.log"
    intake+=("$(field "$logs/intake-$run.log" rate)")
    for k in 1 2; do
        "$bench" servers --server "$server" --n "$SERVERS_N" --servers "$k" \
            --conns "$CONNS" --delay-ms "$DELAY" --dir "$logs" | tee "$logs/servers$k-$run.log"
    done
    one+=("$(field "$logs/servers1-$run.log" rate)")
    two+=("$(field "$logs/servers2-$run.log" rate)")
done

h=$(median "${handoff[@]}")
d=$(median "${durable[@]}")
i=$(median "${intake[@]}")
o=$(median "${one[@]}")
t=$(median "${two[@]}")
# The scaling ratio per run (same run, same machine state), then its median.
ratios=()
for k in $(seq 0 $((RUNS - 1))); do
    ratios+=("$(awk -v a="${two[$k]}" -v b="${one[$k]}" 'BEGIN { printf "%.2f", a / b }')")
done
r=$(median "${ratios[@]}")
verdict() { awk -v v="$1" -v l="$2" 'BEGIN { print (v + 0 >= l + 0) ? "met" : "MISSED" }'; }

echo
echo "== summary (median of $RUNS runs; every run's figures above)"
printf '%-62s %12s %10s %s\n' "measurement" "value" "target" ""
printf '%-62s %12.0f %10s %s\n' "buffered enqueue into Redis, hand-off (emails/s)" "$h" ">= 50000" "$(verdict "$h" 50000)"
printf '%-62s %12.0f %10s %s\n' "buffered enqueue into Redis, until all acknowledged (emails/s)" "$d" ">= 50000" "$(verdict "$d" 50000)"
printf '%-62s %12.0f %10s %s\n' "intake Redis -> PostgreSQL (emails/s)" "$i" ">= 10000" "$(verdict "$i" 10000)"
printf '%-62s %12.1f %10s\n' "one server, $CONNS connections, ${DELAY} ms sink (emails/s)" "$o" ""
printf '%-62s %12.1f %10s\n' "two servers, $CONNS connections each (emails/s)" "$t" ""
printf '%-62s %12.2f %10s %s\n' "two servers / one server (per-run ratios: ${ratios[*]})" "$r" ">= 1.8" "$(verdict "$r" 1.8)"
