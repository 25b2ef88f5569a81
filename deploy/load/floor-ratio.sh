#!/usr/bin/env bash
# floor-ratio.sh FLOOR_DIR [SECONDS] [ROUNDS]
#
# A single-node decision against the floor, in one sitting: a standalone
# `levee serve` and floor-rls (built from FLOOR_DIR, e.g.
# ../shared/tools/floor-rls: a server that answers OK and nothing else),
# loaded in turn with ghz, 50 concurrent ShouldRateLimit calls of 1 and of
# 3 descriptors (user=<random of 10,000> each, domain "bench"), for ROUNDS
# interleaved rounds (default 5). Prints, per round and as medians, the CPU
# per decision of each server, levee's ratio to the floor at 1 and at 3
# descriptors, and levee's extra cost per descriptor beyond the floor's:
# ((levee@3 - levee@1) - (floor@3 - floor@1)) / 2.
set -euo pipefail

floor_dir=${1:?usage: floor-ratio.sh FLOOR_DIR [SECONDS] [ROUNDS]}
secs=${2:-10}
rounds=${3:-5}
. "$(dirname "$0")/lib.sh"
go build -C "$floor_dir" -o "$work/floor" .

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
lport=$(free_port)
"$work/levee" serve --standalone --grpc-addr "127.0.0.1:$lport" --metrics-addr= --admin-addr= 2>"$work/levee.log" &
levee_pid=$!
pids+=("$levee_pid")
fport=$(free_port)
"$work/floor" --grpc-addr "127.0.0.1:$fport" 2>"$work/floor.log" &
floor_pid=$!
pids+=("$floor_pid")
sleep 2

call=envoy.service.ratelimit.v3.RateLimitService.ShouldRateLimit
# run NAME PID ADDR DESCRIPTORS ROUND: warm-up, then the measured run.
run() {
	local name=$1 pid=$2 addr=$3 nd=$4 n=$5
	local descs data t0 t1
	descs=$(python3 -c "import sys; n=int(sys.argv[1]); print(','.join('{\"entries\":[{\"key\":\"user\",\"value\":\"%s{{randomInt 0 10000}}\"}]}' % chr(117+i) for i in range(n)))" "$nd")
	data="{\"domain\":\"bench\",\"descriptors\":[$descs]}"
	"$ghz" --insecure --call "$call" -c 50 -z 3s -d "$data" "$addr" >/dev/null 2>&1 || true
	t0=$(awk '{print $14+$15}' "/proc/$pid/stat")
	"$ghz" --insecure --call "$call" -c 50 -z "${secs}s" -d "$data" --format json -o "$work/$name.$nd.$n.json" "$addr" >/dev/null 2>&1 || true
	t1=$(awk '{print $14+$15}' "/proc/$pid/stat")
	echo "$((t1 - t0)) $(cut -d' ' -f1 /proc/loadavg)" >"$work/$name.$nd.$n.cpu"
}

for n in $(seq "$rounds"); do
	echo "round $n of $rounds..." >&2
	for nd in 1 3; do
		run levee "$levee_pid" "127.0.0.1:$lport" "$nd" "$n"
		run floor "$floor_pid" "127.0.0.1:$fport" "$nd" "$n"
	done
done

python3 - "$work" "$rounds" "$(getconf CLK_TCK)" <<'PY'
import json, statistics, sys
work, rounds, hz = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def cpu(name, nd, n):
    o = json.load(open(f"{work}/{name}.{nd}.{n}.json"))
    ok = (o.get("statusCodeDistribution") or {}).get("OK", 0)
    ticks, load = open(f"{work}/{name}.{nd}.{n}.cpu").read().split()
    return int(ticks) / hz / max(ok, 1) * 1e6, o["rps"], load
cols = {"r1": [], "r3": [], "extra": []}
for n in range(1, rounds + 1):
    l1, rl1, a = cpu("levee", 1, n); f1, rf1, b = cpu("floor", 1, n)
    l3, rl3, c = cpu("levee", 3, n); f3, rf3, d = cpu("floor", 3, n)
    extra = ((l3 - l1) - (f3 - f1)) / 2
    cols["r1"].append(l1 / f1); cols["r3"].append(l3 / f3); cols["extra"].append(extra)
    print(f"round {n} (load averages {a} {b} {c} {d}): 1 descriptor levee {l1:.1f}us ({rl1:.0f}/s) floor {f1:.1f}us ({rf1:.0f}/s) = x{l1 / f1:.2f}; "
          f"3 descriptors levee {l3:.1f}us floor {f3:.1f}us = x{l3 / f3:.2f}; levee's extra per descriptor beyond the floor's {extra:.1f}us")
def med(k):
    return statistics.median(cols[k]), min(cols[k]), max(cols[k])
print("medians (min-max): levee/floor at 1 descriptor x%.2f (%.2f-%.2f) [target <= 1.0], at 3 x%.2f (%.2f-%.2f) [target <= 1.0]; "
      "extra per descriptor %.1fus (%.1f-%.1f) [target <= 3us]" % (*med("r1"), *med("r3"), *med("extra")))
PY
