#!/usr/bin/env bash
# Benchmarks of the email crate: criterion (render/parse timings) and the
# peak-memory example, pinned to one core when taskset exists, then a
# summary against the targets. See BENCHMARKS.md.
#
#   scripts/bench-email.sh              # everything
#   scripts/bench-email.sh render_3kb   # extra arguments go to criterion
#
# Logs are kept in target/bench-email/.
set -euo pipefail

cd "$(dirname "$0")/.."
logs=target/bench-email
mkdir -p "$logs"

pin=()
if command -v taskset >/dev/null 2>&1; then
    pin=(taskset -c 0)
fi

echo "== machine"
echo "date:   $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "nproc:  $(nproc)"
cpuinfo() { grep -m1 "^$1[[:space:]]*:" /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//'; }
virt=""
if grep -qw hypervisor /proc/cpuinfo 2>/dev/null; then virt=", virtual machine"; fi
echo "cpu:    $(cpuinfo 'model name') (family $(cpuinfo 'cpu family'), model $(cpuinfo model), $(cpuinfo 'cpu MHz') MHz$virt)"
echo "memory: $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo 2>/dev/null)"
echo "rustc:  $(rustc --version)"
echo "pinned: ${pin[*]:-no (taskset not found)}"

# Build first on every core; only the measurements are pinned.
echo "== building"
cargo bench -p email --bench render_parse --no-run
cargo build --release -p email --example peak_memory

echo "== cargo bench -p email --bench render_parse"
"${pin[@]}" cargo bench -p email --bench render_parse -- "$@" 2>&1 | tee "$logs/criterion.log"

echo "== cargo run --release -p email --example peak_memory"
set +e
"${pin[@]}" cargo run --release -q -p email --example peak_memory 2>&1 | tee "$logs/peak_memory.log"
peak_status=${PIPESTATUS[0]}
set -e

# The middle estimate of a criterion line, in µs:
#   render_3kb   time:   [5.9275 µs 5.9410 µs 5.9549 µs]
estimate_us() {
    awk -v name="$1" '
        $1 == name && $2 == "time:" { line = $0 }
        $1 == name && NF == 1 { want = 1; next }
        want && $1 == "time:" { line = $0; want = 0 }
        END {
            if (line == "") { print "-"; exit }
            sub(/.*\[/, "", line); split(line, f, " ")
            v = f[3]; u = f[4]
            if (u == "ns") v /= 1000; else if (u == "ms") v *= 1000; else if (u == "s") v *= 1e6
            print v
        }' "$logs/criterion.log"
}

verdict() { # value limit
    awk -v v="$1" -v l="$2" 'BEGIN { if (v == "-") print "not run"; else if (v + 0 <= l + 0) print "met"; else print "MISSED" }'
}

echo
echo "== summary"
row() { # name value unit limit
    printf '%-24s %10s %-3s %7s %-3s %s\n' "$1" "$2" "$3" "<= $4" "$3" "$(verdict "$2" "$4")"
}
printf '%-24s %14s %11s %s\n' benchmark measured target verdict
for b in render_3kb parse_3kb build_and_render_3kb; do
    row "$b" "$(estimate_us "$b")" us 20
done
v=$(estimate_us render_10mb_attachment)
row render_10mb_attachment "$(awk -v v="$v" 'BEGIN { if (v == "-") print "-"; else printf "%.2f", v / 1000 }')" ms 100
ratio=$(sed -n 's/^peak memory ratio: *\([0-9.]*\)x.*/\1/p' "$logs/peak_memory.log")
row "peak memory, 10 MB" "${ratio:--}" x 4
echo "(criterion: middle estimate; logs in $logs/)"

exit "$peak_status"
