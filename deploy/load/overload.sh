#!/usr/bin/env bash
# overload.sh [SECONDS] [CONCURRENCY] [TIMEOUT]
#
# levee under its own overload, on one machine, in one sitting: a standalone
# `levee serve`, loaded with ghz (ShouldRateLimit, domain "bench", one
# descriptor user=<random of 10,000>) in rounds that alternate
#
#   1. capacity: 50 concurrent calls, no call timeout: the decisions per
#      second the node sustains;
#   2. overload: CONCURRENCY (default 2,000) concurrent calls, each with
#      TIMEOUT (default 20ms, Envoy's default for its rate limit filter):
#      the decisions answered within their deadline per second (ghz's OK
#      calls) and the p99 of those answered calls.
#
# The target: decisions answered in time per second at least 90% of the
# capacity of the same round, with their p99 at most the timeout. The
# server's own count of calls it answered with each code (its latency
# histogram) says how many it did not decide because the caller had gone.
#
# FLOOR=DIR runs the same rounds against ../shared/tools/floor-rls (built
# from DIR), a server that answers OK and does nothing else: the control
# that says how much of the overload the load generator itself causes on
# a machine it shares with the server.
#
# NODE_CPU=0.25 gives the servers that share of one core (one cgroup for
# both; only one is loaded at a time): they run pinned to CPU 0 in a CPU
# cgroup whose CFS quota is NODE_CPU of a CPU_PERIOD_US
# period (default 5000 µs), GOMAXPROCS 1, while ghz runs pinned to the
# other cores. On a machine of two cores a whole node cannot be overloaded
# by a generator that shares its cores (ghz cannot even keep 20 ms against
# a server that does nothing); a node of a quarter core can be, from the
# core left, as a pod with a CPU limit is. The period is short because a
# quota is spent in bursts: with Kubernetes' default of 100 ms a node of a
# quarter core would stand still for 75 ms of every 100, and no call
# could keep 20 ms. Needs root and the cgroup v1 cpu controller or
# cgroup v2.
#
# GEN=loadgen loads with deploy/load/loadgen instead of ghz: the same
# calls (random user of 10,000, closed loop, the timeout on each call) at
# a fraction of ghz's CPU per call, so that one core of generator can
# overload a node on a share of the other.
#
# Needs: go, python3, curl, ghz (installed at the pinned version if
# missing). LEVEE_BIN measures a prebuilt binary.
set -euo pipefail

secs=${1:-10}
conc=${2:-2000}
timeout=${3:-20ms}
rounds=${ROUNDS:-3}
. "$(dirname "$0")/lib.sh"

# limited: the command prefix that runs a server within NODE_CPU, and
# ghzrun the one that keeps ghz off the server's core.
limited=()
ghzrun=()
ghzflags=()
if [ -n "${NODE_CPU:-}" ]; then
	period=${CPU_PERIOD_US:-5000}
	quota=$(python3 -c "print(max(1000, int($NODE_CPU * $period)))")
	cg=levee-overload-$$
	if [ -d /sys/fs/cgroup/cpu ] && [ -w /sys/fs/cgroup/cpu ]; then
		cgdir=/sys/fs/cgroup/cpu/$cg
	elif [ -f /sys/fs/cgroup/cgroup.controllers ] && [ -w /sys/fs/cgroup ]; then
		cgdir=/sys/fs/cgroup/$cg
	else
		echo "NODE_CPU: no writable CPU cgroup (needs root, and the cgroup v1 cpu controller or cgroup v2)" >&2
		exit 1
	fi
	mkdir "$cgdir"
	trap 'cleanup; rmdir "$cgdir" 2>/dev/null || true' EXIT
	if [ -f "$cgdir/cpu.cfs_quota_us" ]; then
		echo "$period" >"$cgdir/cpu.cfs_period_us"
		echo "$quota" >"$cgdir/cpu.cfs_quota_us"
	elif [ -f "$cgdir/cpu.max" ]; then
		echo "$quota $period" >"$cgdir/cpu.max"
	else
		echo "NODE_CPU: $cgdir has no CPU quota (cgroup v2: add +cpu to the parent's cgroup.subtree_control)" >&2
		exit 1
	fi
	limited=(env GOMAXPROCS=1 taskset -c 0 sh -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "$cgdir")
	others=1-$(($(nproc) - 1))
	ghzrun=(taskset -c "$others")
	ghzflags=(--cpus "$(($(nproc) - 1))")
	echo "servers: CPU 0, $quota of every $period µs; ghz: CPUs $others" >&2
fi
ghzcmd() { "${ghzrun[@]}" "$ghz" "${ghzflags[@]}" --connections "${CONNECTIONS:-1}" "$@"; }
if [ "${GEN:-ghz}" = loadgen ]; then
	go build -C "$(dirname "$0")/loadgen" -o "$work/loadgen" .
fi
# gen OUT ADDR CONCURRENCY SECONDS [TIMEOUT]: a run with ghz or loadgen,
# its report in OUT (/dev/null for a warm-up).
gen() {
	local out=$1 addr=$2 c=$3 s=$4 t=${5:-}
	if [ "${GEN:-ghz}" = loadgen ]; then
		local gp
		gp=$(nproc)
		if [ ${#ghzrun[@]} -gt 0 ]; then gp=$(($(nproc) - 1)); fi
		GOMAXPROCS=$gp "${ghzrun[@]}" "$work/loadgen" -addr "$addr" -c "$c" ${t:+-timeout "$t"} -d "${s}s" \
			-conns "${CONNECTIONS:-1}" >"$out" 2>>"$work/loadgen.err" || true
		return
	fi
	ghzcmd --insecure --call "$call" -c "$c" ${t:+-t "$t"} -z "${s}s" -d "$data" --format json -o "$out" "$addr" >/dev/null 2>&1 || true
}

"${limited[@]}" "$work/levee" serve --standalone --grpc-addr 127.0.0.1:0 --metrics-addr 127.0.0.1:0 --admin-addr= \
	--log-format json 2>"$work/levee.log" &
pids+=($!)
for _ in $(seq 300); do
	if grep -q '"levee serving"' "$work/levee.log" 2>/dev/null; then break; fi
	sleep 0.1
done
read -r grpc metrics < <(python3 -c 'import json,sys
for l in open(sys.argv[1]):
    try: r=json.loads(l)
    except ValueError: continue
    if r.get("msg")=="levee serving": print(r["grpc"], r["metrics"]); break' "$work/levee.log")
targets=("levee $grpc")
if [ -n "${FLOOR:-}" ]; then
	go build -C "$FLOOR" -o "$work/floor" .
	port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
	"${limited[@]}" "$work/floor" --grpc-addr "127.0.0.1:$port" --stream-workers 64 2>"$work/floor.log" &
	pids+=($!)
	sleep 1
	targets+=("floor 127.0.0.1:$port")
fi

data='{"domain":"bench","descriptors":[{"entries":[{"key":"user","value":"u{{randomInt 0 10000}}"}]}]}'
call=envoy.service.ratelimit.v3.RateLimitService.ShouldRateLimit

# codes: the server's answered calls by code, from its latency histogram.
codes() {
	curl -fsS "http://$metrics/metrics" | awk '/^levee_request_duration_seconds_count/ && /ShouldRateLimit/ {
		match($0, /code="[^"]*"/); print substr($0, RSTART + 6, RLENGTH - 7), $2 }'
}

for n in $(seq "$rounds"); do
	for t in "${targets[@]}"; do
		read -r name addr <<<"$t"
		echo "round $n of $rounds, $name: 50 concurrent, then $conc concurrent with a $timeout timeout, ${secs}s each (${GEN:-ghz})..." >&2
		gen /dev/null "$addr" 50 3
		gen "$work/$name.cap.$n.json" "$addr" 50 "$secs"
		cut -d' ' -f1 /proc/loadavg >"$work/$name.cap.$n.load"
		if [ "$name" = levee ]; then codes >"$work/codes.$n.0"; fi
		gen "$work/$name.over.$n.json" "$addr" "$conc" "$secs" "$timeout"
		cut -d' ' -f1 /proc/loadavg >"$work/$name.over.$n.load"
		if [ "$name" = levee ]; then codes >"$work/codes.$n.1"; fi
	done
done

python3 - "$work" "$rounds" "$timeout" "${targets[@]}" <<'PY'
import json, statistics, sys
work, rounds, timeout = sys.argv[1], int(sys.argv[2]), sys.argv[3]
names = [t.split()[0] for t in sys.argv[4:]]

def ok_calls(path):
    o = json.load(open(path))
    if "ok_per_s" in o:  # loadgen's report
        return o["ok_per_s"], o["p99_ms"], o["codes"]
    lats = sorted(d["latency"] / 1e6 for d in o.get("details") or [] if d.get("status") == "OK")
    secs = o["total"] / 1e9
    p99 = lats[min(len(lats) - 1, int(len(lats) * 0.99))] if lats else float("nan")
    return len(lats) / secs, p99, o.get("statusCodeDistribution") or {}

def codes(path):
    out = {}
    for l in open(path):
        k, v = l.split()
        out[k] = float(v)
    return out

for name in names:
    ratios, p99s = [], []
    print(f"{name}:")
    for n in range(1, rounds + 1):
        cap, cap_p99, _ = ok_calls(f"{work}/{name}.cap.{n}.json")
        good, p99, dist = ok_calls(f"{work}/{name}.over.{n}.json")
        l0 = open(f"{work}/{name}.cap.{n}.load").read().strip()
        l1 = open(f"{work}/{name}.over.{n}.load").read().strip()
        ratios.append(good / max(cap, 1))
        p99s.append(p99)
        line = (f"  round {n}: capacity {cap:.0f}/s (p99 {cap_p99:.2f}ms, load average {l0}); overload: "
                f"{good:.0f}/s answered in time = {good / max(cap, 1):.2f} of capacity, p99 {p99:.2f}ms "
                f"(load average {l1}); ghz saw {dist}")
        if name == "levee":
            c0, c1 = codes(f"{work}/codes.{n}.0"), codes(f"{work}/codes.{n}.1")
            server = {k: int(c1.get(k, 0) - c0.get(k, 0)) for k in c1 if c1.get(k, 0) != c0.get(k, 0)}
            line += f"; levee answered {server}"
        print(line)
    print(f"  median: {statistics.median(ratios):.2f} of capacity [target >= 0.90] (rounds: "
          + ", ".join(f"{r:.2f}" for r in ratios) + f"), p99 of answered calls {statistics.median(p99s):.2f}ms [target <= {timeout}]")
PY
