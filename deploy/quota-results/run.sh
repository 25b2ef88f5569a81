#!/usr/bin/env bash
# deploy/quota-results/run.sh: the acceptance runs and cost figures of
# levee's rate limit quota service (issue 15), on one machine, in one
# sitting.
#
# Three `levee serve` nodes (the first with the embedded etcd, the others
# joining it), one rule file for all (domain quota-sim):
#   {name: quota-sim}          LIMIT a second (default 1000), the fleet's bucket
#   {name: cost, tenant: *}    100 a second per tenant, the cost runs' buckets
#   {name: cmp}                1,000,000 a second: the ShouldRateLimit vs
#                              quota service comparison (nothing refused)
#
# Runs, each writing the quota-sim report to $OUT (default this directory):
#   fair.txt  20 Envoys over the 3 nodes, Zipf 1.1 demand, 3× LIMIT, SECS s
#             (default 60), Envoy's 5 s reports
#   step.txt  the same, the demand stepped to 1.5× LIMIT at SECS/2
#   cost.txt  ENVOYS_COST (100) Envoys × BUCKETS_COST (100) tenant buckets,
#             light demand: levee's CPU per 1,000 bucket reports and per
#             assignment pushed (its own counters), heap per tracked
#             (bucket, Envoy) pair (after a forced GC, against the idle
#             cluster's)
#   cmp.txt   ROUNDS (3) interleaved rounds of 1,000 requests a second for
#             20 s, less the idle cluster's CPU: through ShouldRateLimit (ghz -r 1000, 50 connections'
#             worth of concurrency, at node 1) and through the quota service
#             (20 simulated Envoys); levee's CPU (all three nodes) per second
#   kill.txt  fair.txt's fleet, node 3 killed with SIGKILL at SECS/2
# and summary.txt with the figures and the load average at each step.
#
# Needs: go, python3, curl, ghz (installed at the pinned version if missing).
set -euo pipefail
out=${OUT:-$(cd "$(dirname "$0")" && pwd)}
limit=${LIMIT:-1000}
secs=${SECS:-60}
rounds=${ROUNDS:-3}
envoys_cost=${ENVOYS_COST:-100}
buckets_cost=${BUCKETS_COST:-100}
. "$(dirname "$0")/../load/lib.sh"
mkdir -p "$out" "$work/rules"
summary=$out/summary.txt
: >"$summary"
note() { echo "$*" | tee -a "$summary"; }
load() { cut -d' ' -f1-3 /proc/loadavg; }

cat >"$work/rules/quota.yaml" <<YAML
domain: quota-sim
descriptors:
  - key: name
    value: quota-sim
    rate_limit:
      unit: second
      requests_per_unit: $limit
  - key: name
    value: cost
    descriptors:
      - key: tenant
        rate_limit:
          unit: second
          requests_per_unit: 100
  - key: name
    value: cmp
    rate_limit:
      unit: second
      requests_per_unit: 1000000
YAML

# start NAME ARGS...: runs a node in the background until it serves; sets
# $pid, $grpc, $metrics, $etcd.
start() {
	local name=$1
	shift
	"$work/levee" serve --grpc-addr 127.0.0.1:0 --metrics-addr 127.0.0.1:0 --admin-addr= --pprof \
		--log-format json --node-id "$name" --config "$work/rules" "$@" 2>"$work/$name.log" &
	pid=$!
	pids+=("$pid")
	for _ in $(seq 300); do
		if grep -q '"levee serving"' "$work/$name.log" 2>/dev/null; then break; fi
		sleep 0.1
	done
	read -r grpc metrics etcd < <(python3 -c 'import json,sys
g=m=e=""
for l in open(sys.argv[1]):
    try: r=json.loads(l)
    except ValueError: continue
    if "endpoints" in r and not e: e=r["endpoints"][0]
    if r.get("msg")=="levee serving": g,m=r["grpc"],r["metrics"]; break
print(g or "-", m or "-", e or "-")' "$work/$name.log")
	if [ "$grpc" = - ]; then
		echo "$name did not start:" >&2
		cat "$work/$name.log" >&2
		exit 1
	fi
}

# cpu PID...: total utime + stime, in clock ticks.
cpu() {
	local t=0
	for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
	echo "$t"
}
hz=$(getconf CLK_TCK)

# sum NAME [FILTER]: a series summed over the three nodes' /metrics.
sum() {
	local t=0 v
	for m in "${mets[@]}"; do
		v=$(curl -fsS "http://$m/metrics" | awk -v n="$1" -v f="${2:-}" 'index($1, n) == 1 && (f == "" || index($1, f) > 0) { s += $2 } END { printf "%.0f", s }')
		t=$((t + v))
	done
	echo "$t"
}

# heap: the three nodes' live heap after a forced GC, in bytes.
heap() {
	for m in "${mets[@]}"; do curl -fsS -o /dev/null "http://$m/debug/pprof/heap?gc=1"; done
	sum go_memstats_heap_alloc_bytes
}

start n1 --embedded-etcd-client-url http://127.0.0.1:0 --embedded-etcd-peer-url http://127.0.0.1:0
p1=$pid g1=$grpc m1=$metrics etcd1=$etcd
start n2 --etcd-endpoints "$etcd1"
p2=$pid g2=$grpc m2=$metrics
start n3 --etcd-endpoints "$etcd1"
p3=$pid g3=$grpc m3=$metrics
mets=("$m1" "$m2" "$m3")
nodes=$g1,$g2,$g3
sleep 3
sim=("$work/levee" quota-sim --nodes "$nodes" --domain quota-sim)
note "levee $("$work/levee" version) on $(nproc) cores, $(date -u +%FT%TZ); limit $limit/s, runs of ${secs}s"

note "fair: load $(load)"
"${sim[@]}" --bucket name=quota-sim --envoys 20 --limit "$limit" --demand 3x --zipf 1.1 --duration "${secs}s" >"$out/fair.txt"
note "step: load $(load)"
"${sim[@]}" --bucket name=quota-sim --envoys 20 --limit "$limit" --demand 3x --zipf 1.1 --duration "${secs}s" \
	--step "$((secs / 2))s=1.5x" >"$out/step.txt"

# Cost: reports and assignments, memory per pair.
note "cost: load $(load)"
sleep 15 # the fleets' pairs are forgotten after 30 s without reports
ci0=$(cpu "$p1" "$p2" "$p3")
sleep 20
ci1=$(cpu "$p1" "$p2" "$p3")
note "idle cluster: $(python3 -c "print(f'{($ci1 - $ci0) / $hz / 20 * 1000:.1f}')") ms CPU/s (3 nodes, 20 s)"
h0=$(heap)
"${sim[@]}" --envoys "$envoys_cost" --bucket 'name=cost,tenant=t%d' --bucket-count "$buckets_cost" --limit 100 \
	--demand 0.2x --zipf 0 --tick 200ms --duration 45s >"$out/cost.txt" &
simpid=$!
sleep 12
c0=$(cpu "$p1" "$p2" "$p3") r0=$(sum levee_rlqs_reports_total) a0=$(sum levee_rlqs_assignments_total)
sleep 25
h1=$(heap)
pairs=$(sum levee_rlqs_buckets 'role="subscribed"')
sleep 5
c1=$(cpu "$p1" "$p2" "$p3") r1=$(sum levee_rlqs_reports_total) a1=$(sum levee_rlqs_assignments_total)
wait "$simpid"
python3 - "$c0" "$c1" "$r0" "$r1" "$a0" "$a1" "$h0" "$h1" "$pairs" "$hz" "$ci0" "$ci1" <<'PY' | tee -a "$summary"
import sys
c0, c1, r0, r1, a0, a1, h0, h1, pairs, hz, ci0, ci1 = map(float, sys.argv[1:])
idle = (ci1 - ci0) / hz / 20 * 30
cpu = (c1 - c0) / hz - idle
rep, asg = r1 - r0, a1 - a0
print(f"cost: 30 s measured: {rep:.0f} bucket reports, {asg:.0f} assignments pushed, levee CPU {cpu:.2f} s (3 nodes, less {idle:.2f} s idle)")
print(f"cost: CPU per 1,000 bucket reports (with the assignments they drew) {1000 * cpu / rep * 1000:.1f} ms; per assignment pushed (all the CPU) {cpu / asg * 1e6:.0f} µs")
print(f"cost: {pairs:.0f} (stream, bucket) pairs subscribed; heap {h0 / 2**20:.1f} MiB idle, {h1 / 2**20:.1f} MiB with them: {(h1 - h0) / pairs:.0f} bytes per pair")
PY

# ShouldRateLimit against the quota service, 1,000 requests a second.
data='{"domain":"quota-sim","descriptors":[{"entries":[{"key":"name","value":"cmp"}]}]}'
call=envoy.service.ratelimit.v3.RateLimitService.ShouldRateLimit
: >"$out/cmp.txt"
for n in $(seq "$rounds"); do
	"$ghz" --insecure --call "$call" -c 50 -r 1000 -z 3s -d "$data" "$g1" >/dev/null 2>&1 || true
	c0=$(cpu "$p1" "$p2" "$p3")
	"$ghz" --insecure --call "$call" -c 50 -r 1000 -z 20s -d "$data" --format json -o "$work/ghz.$n.json" "$g1" >/dev/null 2>&1 || true
	c1=$(cpu "$p1" "$p2" "$p3")
	l1=$(load)
	"${sim[@]}" --envoys 20 --bucket name=cmp --limit 1000000 --demand 0.001x --zipf 0 --duration 25s >"$work/cmp.$n.txt" &
	simpid=$!
	sleep 5
	c2=$(cpu "$p1" "$p2" "$p3")
	sleep 20
	c3=$(cpu "$p1" "$p2" "$p3")
	wait "$simpid"
	l2=$(load)
	python3 - "$n" "$c0" "$c1" "$c2" "$c3" "$hz" "$work/ghz.$n.json" "$l1" "$l2" "$ci0" "$ci1" <<'PY' | tee -a "$out/cmp.txt"
import json, sys
n, c0, c1, c2, c3, hz = sys.argv[1], *map(float, sys.argv[2:7])
g = json.load(open(sys.argv[7]))
idle = (float(sys.argv[11]) - float(sys.argv[10])) / hz / 20 * 1000
srl = (c1 - c0) / hz / 20 * 1000 - idle
rlqs = (c3 - c2) / hz / 20 * 1000 - idle
print(f"round {n}: ShouldRateLimit {g['rps']:.0f} rps: {srl:.1f} ms CPU/s (load {sys.argv[8]}); quota service 1000 rps: {rlqs:.1f} ms CPU/s (load {sys.argv[9]}); both less the idle cluster's {idle:.1f} ms CPU/s")
PY
done
python3 - "$out/cmp.txt" <<'PY' | tee -a "$summary"
import re, statistics, sys
srl, q = [], []
for l in open(sys.argv[1]):
    m = re.search(r"ShouldRateLimit .*?: (-?[\d.]+) ms CPU/s.*quota service 1000 rps: (-?[\d.]+) ms", l)
    if m:
        srl.append(float(m[1])); q.append(float(m[2]))
print(f"cmp: 1,000 requests/s, levee CPU (3 nodes) per second: ShouldRateLimit median {statistics.median(srl):.1f} ms (range {min(srl):.1f}-{max(srl):.1f}), quota service median {statistics.median(q):.1f} ms (range {min(q):.1f}-{max(q):.1f}), {len(srl)} rounds")
PY

note "kill: load $(load)"
(sleep "$((secs / 2))" && kill -9 "$p3") &
"${sim[@]}" --bucket name=quota-sim --envoys 20 --limit "$limit" --demand 3x --zipf 1.1 --duration "${secs}s" >"$out/kill.txt"
note "node 3 ($g3) killed at $((secs / 2)) s; done: load $(load)"
for f in fair step kill; do
	note "== $f"
	sed -n '/^checks:/,$p' "$out/$f.txt" | tee -a "$summary" >/dev/null
done
cat "$summary"
