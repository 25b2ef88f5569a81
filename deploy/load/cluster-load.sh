#!/usr/bin/env bash
# cluster-load.sh [SECONDS] [CONCURRENCY]
#
# Load run for levee's cluster path, on one machine, in one sitting:
#
#   1. `levee serve --standalone`, loaded with ghz: the single-node figure.
#   2. Three `levee serve` processes (the first runs the embedded etcd, the
#      others join it), the same ghz load sent to the first node only. The
#      10,000 keys are spread by the ring, so about two thirds are owned by
#      the other two nodes and forwarded there in micro-batches.
#
# Both setups stay up, and the two loads alternate for ROUNDS rounds
# (default 3); each round is reported, then the medians. The machine is
# shared and its noise moves one measured phase by ±30%, so a single round
# says little: compare medians.
#
# The load is envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit,
# domain "bench" (built-in rules: 1,000,000 per second per user, so nothing
# is refused), one descriptor user=<random of 10,000>, 50 concurrent calls.
# CPU is read from /proc/PID/stat (utime + stime) of every levee process
# around the measured run; the warm-up run is not counted.
#
# Prints, for both setups: decisions/s, p50 and p99, CPU per decision; for
# the cluster also the share of decisions forwarded, peer RPCs per forwarded
# decision, and the CPU one forwarded decision costs across the receiving
# node and the owner: (cluster CPU - local decisions x single-node CPU per
# decision) / forwarded decisions.
#
# Needs: go, python3, curl, ghz (installed at the pinned version if missing).
# The machine is shared and noisy: compare the two setups of one run, not
# figures across runs.
set -euo pipefail

secs=${1:-20}
conc=${2:-50}
rounds=${ROUNDS:-3}
if ! [[ $rounds =~ ^[1-9][0-9]*$ ]]; then
	echo "ROUNDS=$rounds: want a whole number of rounds, at least 1" >&2
	exit 2
fi
# RATE=N offers N calls per second (ghz -r) instead of as many as 50
# concurrent callers can push: an open-loop load at the same rate on both
# setups, so the single-node CPU per decision the formula charges local
# decisions at is measured at the same load, on a machine not saturated.
rate=${RATE:-}
if [ -n "$rate" ] && ! [[ $rate =~ ^[1-9][0-9]*$ ]]; then
	echo "RATE=$rate: want calls per second, a whole number" >&2
	exit 2
fi
rate_flags=()
if [ -n "$rate" ]; then rate_flags=(-r "$rate"); fi
# NODE_PROCS=N runs every levee process (not ghz) with GOMAXPROCS=N; by
# default `levee serve --procs auto` sizes it to the load.
procs_env=()
if [ -n "${NODE_PROCS:-}" ]; then procs_env=("GOMAXPROCS=$NODE_PROCS"); fi
# PROFILE=DIR writes CPU profiles of the last round's measured runs to DIR:
# single.pprof (the single node), n1.pprof (the receiving node) and
# n2.pprof (an owner), for `go tool pprof`.
profile=${PROFILE:-}
if [ -n "$profile" ]; then mkdir -p "$profile"; fi
# COUNT=1 also counts, with perf (if the kernel lets it), the context
# switches and the futex, epoll_pwait, read and write system calls of every
# levee process during the measured runs: per decision on the single node,
# and per forwarded decision on the receiving node (beyond its local
# decisions, charged at the single node's count) and on the owners. Counts
# do not move with the machine's load the way CPU times do.
count=${COUNT:-}
events=context-switches,syscalls:sys_enter_futex,syscalls:sys_enter_epoll_pwait,syscalls:sys_enter_read,syscalls:sys_enter_write
# NODES=N runs N cluster nodes (default 3, at least 2); the load still goes
# to node 1, which forwards (N-1)/N of it, split over N-1 owners.
nodes=${NODES:-3}
if ! [[ $nodes =~ ^[0-9]+$ ]] || [ "$nodes" -lt 2 ]; then
	echo "NODES=$nodes: want a whole number of nodes, at least 2" >&2
	exit 2
fi
# RESULTS=FILE appends one JSON line of this run's medians to FILE, the
# input of the cost model (go run ./deploy/load/costmodel).
results=${RESULTS:-}
# Extra flags for the cluster nodes, e.g. CLUSTER_FLAGS="--batch-window 1ms".
# LEVEE_BIN measures a prebuilt binary instead of building this checkout
# (for A/B runs in one sitting).
read -r -a cluster_flags <<<"${CLUSTER_FLAGS:-}"
# CLUSTER_CACERT=FILE: the cluster nodes serve TLS (their CLUSTER_FLAGS give
# --tls-cert, --tls-key and --tls-client-ca for 127.0.0.1); the load on node
# 1 then dials TLS, verifying it with FILE. The single node stays plain.
cluster_tls=(--insecure)
if [ -n "${CLUSTER_CACERT:-}" ]; then cluster_tls=(--cacert "$CLUSTER_CACERT"); fi
. "$(dirname "$0")/lib.sh"

# start NAME ARGS...: runs `levee serve` in the background, waits until it
# serves, and sets $pid, $grpc, $metrics (and $etcd for an embedded etcd).
start() {
	local name=$1
	shift
	local pp=()
	if [ -n "$profile" ]; then pp=(--pprof); fi
	env "${procs_env[@]}" "$work/levee" serve --grpc-addr 127.0.0.1:0 --metrics-addr 127.0.0.1:0 --admin-addr= \
		--log-format json "${pp[@]}" "$@" 2>"$work/$name.log" &
	pid=$!
	pids+=("$pid")
	for _ in $(seq 300); do
		if grep -q '"levee serving"' "$work/$name.log" 2>/dev/null; then break; fi
		sleep 0.1
	done
	grpc=$(python3 -c 'import json,sys
for l in open(sys.argv[1]):
    try: r=json.loads(l)
    except ValueError: continue
    if r.get("msg")=="levee serving": print(r["grpc"]); break' "$work/$name.log")
	metrics=$(python3 -c 'import json,sys
for l in open(sys.argv[1]):
    try: r=json.loads(l)
    except ValueError: continue
    if r.get("msg")=="levee serving": print(r["metrics"]); break' "$work/$name.log")
	etcd=$(python3 -c 'import json,sys
for l in open(sys.argv[1]):
    try: r=json.loads(l)
    except ValueError: continue
    if "endpoints" in r: print(r["endpoints"][0]); break' "$work/$name.log")
	if [ -z "$grpc" ]; then
		echo "$name did not start:" >&2
		cat "$work/$name.log" >&2
		exit 1
	fi
}

# gauge ADDR NAME: one unlabelled series from /metrics.
gauge() {
	curl -fsS "http://$1/metrics" | awk -v n="$2" '$1 == n { print $2; f=1 } END { if (!f) print 0 }'
}

# cpu PID...: total utime + stime, in clock ticks.
cpu() {
	local t=0
	for p in "$@"; do
		t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
	done
	echo "$t"
}

data='{"domain":"bench","descriptors":[{"entries":[{"key":"user","value":"u{{randomInt 0 10000}}"}]}]}'
call=envoy.service.ratelimit.v3.RateLimitService.ShouldRateLimit

# profiling N METRICS... : in the last round with PROFILE set, starts CPU
# profiles of the nodes whose metrics addresses are given, named N.pprof
# after them, for the measured run (which they must not outlast); sets
# $profiles to the curl processes to wait for.
profiling() {
	local n=$1
	shift
	profiles=()
	if [ -z "$profile" ] || [ "$n" != "$rounds" ]; then return; fi
	local secs_p=$((secs > 3 ? secs - 2 : 1))
	while [ $# -gt 0 ]; do
		curl -fsS -o "$profile/$1.pprof" "http://$2/debug/pprof/profile?seconds=$secs_p" &
		profiles+=($!)
		shift 2
	done
}

# counting OUT PID...: with COUNT set, counts $events of each PID for the
# measured run into OUT.PID.perf; sets $counters to the perf processes.
counting() {
	local out=$1
	shift
	counters=()
	if [ -z "$count" ]; then return; fi
	for p in "$@"; do
		perf stat -x, -e "$events" -p "$p" -o "$out.$p.perf" -- sleep "$secs" 2>/dev/null &
		counters+=($!)
	done
}

# load N ADDR OUT PIDS...: warm-up, then the measured run of round N;
# writes ghz's JSON to OUT and the CPU ticks the PIDs spent to OUT.cpu.
load() {
	local n=$1 addr=$2 out=$3
	shift 3
	"$ghz" --insecure --call "$call" -c "$conc" "${rate_flags[@]}" -z 3s -d "$data" "$addr" >/dev/null 2>&1 || true
	local t0 t1
	profiling "$n" single "$single_metrics"
	counting "$out" "$@"
	t0=$(cpu "$@")
	"$ghz" --insecure --call "$call" -c "$conc" "${rate_flags[@]}" -z "${secs}s" -d "$data" --format json -o "$out" "$addr" >/dev/null 2>&1 || true
	t1=$(cpu "$@")
	echo $((t1 - t0)) >"$out.cpu"
	cut -d' ' -f1 /proc/loadavg >"$out.load"
	for p in "${profiles[@]}" "${counters[@]}"; do wait "$p" || true; done
	if [ -n "$count" ]; then echo "$*" >"$out.pids"; fi
}

start single --standalone
single_pid=$pid single_grpc=$grpc single_metrics=$metrics
# The cluster: node 1 runs the embedded etcd, the others join it.
start n1 --node-id n1 --data-dir "$work/etcd" "${cluster_flags[@]}" \
	--embedded-etcd-client-url http://127.0.0.1:0 --embedded-etcd-peer-url http://127.0.0.1:0
n1_grpc=$grpc endpoint=$etcd
node_pids=("$pid") node_metrics=("$metrics")
for i in $(seq 2 "$nodes"); do
	start "n$i" --node-id "n$i" --etcd-endpoints "$endpoint" "${cluster_flags[@]}"
	node_pids+=("$pid") node_metrics+=("$metrics")
done
n1_pid=${node_pids[0]} n1_metrics=${node_metrics[0]} n2_metrics=${node_metrics[1]}
formed() {
	for m in "${node_metrics[@]}"; do
		[ "$(gauge "$m" levee_cluster_members)" = "$nodes" ] || return 1
	done
}
for _ in $(seq 300); do
	if formed; then break; fi
	sleep 0.1
done
formed || { echo "the cluster did not form" >&2; exit 1; }

# cluster_round N: warm-up, then the measured run with the forwarding
# counters of node 1 and the CPU of every node read around it; writes
# $work/cluster.N.json and $work/cluster.N.vars.
cluster_round() {
	local n=$1
	"$ghz" "${cluster_tls[@]}" --call "$call" -c "$conc" "${rate_flags[@]}" -z 3s -d "$data" "$n1_grpc" >/dev/null 2>&1 || true
	local fwd0 bat0 fb0 be0 lo0 t0 r0 fwd1 bat1 fb1 be1 lo1 t1 r1
	fwd0=$(gauge "$n1_metrics" levee_peer_forwarded_total)
	bat0=$(gauge "$n1_metrics" levee_peer_batches_total)
	fb0=$(gauge "$n1_metrics" levee_peer_fallbacks_total)
	be0=$(gauge "$n1_metrics" levee_peer_batch_errors_total)
	lo0=$(gauge "$n1_metrics" levee_peer_local_total)
	profiling "$n" n1 "$n1_metrics" n2 "$n2_metrics"
	counting "$work/cluster.$n" "${node_pids[@]}"
	t0=$(cpu "${node_pids[@]}")
	r0=$(cpu "$n1_pid")
	"$ghz" "${cluster_tls[@]}" --call "$call" -c "$conc" "${rate_flags[@]}" -z "${secs}s" -d "$data" --format json -o "$work/cluster.$n.json" "$n1_grpc" >/dev/null 2>&1 || true
	t1=$(cpu "${node_pids[@]}")
	r1=$(cpu "$n1_pid")
	fwd1=$(gauge "$n1_metrics" levee_peer_forwarded_total)
	bat1=$(gauge "$n1_metrics" levee_peer_batches_total)
	fb1=$(gauge "$n1_metrics" levee_peer_fallbacks_total)
	be1=$(gauge "$n1_metrics" levee_peer_batch_errors_total)
	lo1=$(gauge "$n1_metrics" levee_peer_local_total)
	echo "$((t1 - t0)) $((r1 - r0)) $(python3 -c "print($fwd1 - $fwd0, $bat1 - $bat0, $fb1 - $fb0, $be1 - $be0)") $(cut -d' ' -f1 /proc/loadavg) $(python3 -c "print($lo1 - $lo0)")" >"$work/cluster.$n.vars"
	for p in "${profiles[@]}" "${counters[@]}"; do wait "$p" || true; done
	if [ -n "$count" ]; then echo "${node_pids[*]}" >"$work/cluster.$n.pids"; fi
}

for n in $(seq "$rounds"); do
	echo "round $n of $rounds: single node, then the $nodes-node cluster (load on node 1), ${secs}s each, $conc concurrent${rate:+, $rate calls/s}..." >&2
	load "$n" "$single_grpc" "$work/single.$n.json" "$single_pid"
	cluster_round "$n"
done

python3 - "$work" "$(getconf CLK_TCK)" "$rounds" "$nodes" "$results" "$secs" <<'PY'
import datetime, json, statistics, sys
work, hz, rounds, nodes, results, secs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], float(sys.argv[6])

def summary(path):
    o = json.load(open(path))
    ok = (o.get("statusCodeDistribution") or {}).get("OK", 0)
    codes = o.get("statusCodeDistribution") or {}
    # ghz cancels the calls in flight when the duration ends: they end as
    # Canceled, on its own closed connection, or (over TLS) as an EOF read
    # from the server. Those within the last half second of the run are
    # not levee's errors; the same error earlier is.
    def artefact(msg):
        return ("use of closed network connection" in msg or "Canceled" in msg
                or "error reading from server: EOF" in msg)
    details = o.get("details") or []
    if details:
        def ts(x):
            return datetime.datetime.fromisoformat(x["timestamp"][:26].rstrip("Z"))
        end = max(ts(x) for x in details)
        artefacts = sum(1 for x in details if x.get("error") and artefact(x["error"])
                        and (end - ts(x)).total_seconds() <= 0.5)
    else:
        artefacts = sum(v for k, v in (o.get("errorDistribution") or {}).items() if artefact(k))
    errs = sum(v for k, v in codes.items() if k != "OK") - artefacts
    if errs:
        print(f"{path}: status codes {codes}, errors {o.get('errorDistribution')}", file=sys.stderr)
    lat = {d["percentage"]: d["latency"] / 1e6 for d in o.get("latencyDistribution") or []}
    return o["rps"], ok, errs, lat.get(50, 0), lat.get(99, 0)

def counts(prefix):
    """Summed perf counts of the PIDs of a run, by event; {} without COUNT."""
    import os
    if not os.path.exists(prefix + ".pids"):
        return {}
    pids = open(prefix + ".pids").read().split()
    total = [{} for _ in pids]
    for i, p in enumerate(pids):
        try:
            lines = open(f"{prefix}.{p}.perf").read().splitlines()
        except OSError:
            continue
        for l in lines:
            f = l.split(",")
            if len(f) > 2 and f[0].replace(".", "").isdigit():
                total[i][f[2].replace("syscalls:sys_enter_", "")] = float(f[0])
    return total

cols = {}
def keep(**kw):
    for k, v in kw.items():
        cols.setdefault(k, []).append(v)

for n in range(1, rounds + 1):
    rps1, ok1, err1, p50_1, p99_1 = summary(f"{work}/single.{n}.json")
    single_ticks = int(open(f"{work}/single.{n}.json.cpu").read())
    c1 = single_ticks / hz / max(ok1, 1) * 1e6
    rps3, ok3, err3, p50_3, p99_3 = summary(f"{work}/cluster.{n}.json")
    v = open(f"{work}/cluster.{n}.vars").read().split()
    cl_ticks, recv_ticks = int(v[0]), int(v[1])
    fwd, batches, fallbacks, batch_errors = (float(x) for x in v[2:6])
    load1, load3 = open(f"{work}/single.{n}.json.load").read().strip(), v[6]
    c3 = cl_ticks / hz / max(ok3, 1) * 1e6
    # Checks of keys another node owns that node 1 decided itself, from a
    # lease or a cached refusal (--warm-lease, hot keys): remote-owned
    # like the forwarded ones, and their cost is the cluster's too.
    leased = float(v[7]) if len(v) > 7 else 0.0
    remote = fwd + leased
    local = ok3 - fwd
    cfwd = (cl_ticks / hz * 1e6 - local * c1) / max(fwd, 1)
    cremote = (cl_ticks / hz * 1e6 - (ok3 - remote) * c1) / max(remote, 1)
    recv_fwd = (recv_ticks / hz * 1e6 - local * c1) / max(fwd, 1)
    owner_fwd = (cl_ticks - recv_ticks) / hz * 1e6 / max(fwd, 1)
    print(f"round {n} (1-minute load average after the single run {load1}, after the cluster run {load3}):")
    print(f"  single node : rps={rps1:.0f} ok={ok1} errors={err1} p50={p50_1:.2f}ms p99={p99_1:.2f}ms cpu/decision={c1:.1f}us")
    print(f"  {nodes}-node      : rps={rps3:.0f} ok={ok3} errors={err3} p50={p50_3:.2f}ms p99={p99_3:.2f}ms "
          f"cpu/decision={c3:.1f}us (all {nodes} nodes), of which receiving node {recv_ticks / hz / max(ok3, 1) * 1e6:.1f}us")
    print(f"  forwarding  : forwarded={fwd:.0f} ({100 * fwd / max(ok3, 1):.1f}% of decisions) batches={batches:.0f} "
          f"rpcs/forwarded={batches / max(fwd, 1):.4f} batch_errors={batch_errors:.0f} fallbacks={fallbacks:.0f}")
    print(f"  cpu per forwarded decision = {cfwd:.1f}us = x{cfwd / max(c1, 1e-9):.2f} the single-node decision: "
          f"receiving node {recv_fwd:.1f}us + owner {owner_fwd:.1f}us")
    print(f"  remote-owned: {remote:.0f} ({100 * remote / max(ok3, 1):.1f}% of decisions), {leased:.0f} of them decided on node 1 "
          f"from leases; cpu per remote-owned decision = {cremote:.1f}us = x{cremote / max(c1, 1e-9):.2f} the single-node decision")
    cs, cc = counts(f"{work}/single.{n}.json"), counts(f"{work}/cluster.{n}")
    if cs and cc:
        for ev in cs[0]:
            one = cs[0][ev] / max(ok1, 1)
            recv = (cc[0].get(ev, 0) - local * one) / max(fwd, 1)
            own = sum(c.get(ev, 0) for c in cc[1:]) / max(fwd, 1)
            print(f"  {ev:16s}: {one:.2f} per single-node decision; per forwarded decision {recv:.2f} receiving + {own:.2f} owners")
            keep(**{f"count_{ev}": (one, recv, own)})
    keep(single_rps=rps1, single_cpu=c1, single_p99=p99_1, cluster_rps=rps3, cluster_p99=p99_3,
         cfwd=cfwd, fwd_ratio=cfwd / max(c1, 1e-9), recv=recv_fwd, owner=owner_fwd, rpcs=batches / max(fwd, 1),
         rps_ratio=rps3 / max(rps1, 1), p99_ratio=p99_3 / max(p99_1, 1e-9), errors=err1 + err3 + batch_errors + fallbacks,
         fwd_rate=fwd / secs, batch=fwd / max(batches, 1), load=float(load3),
         cremote=cremote, remote_ratio=cremote / max(c1, 1e-9), leased_share=leased / max(remote, 1))

m = {k: statistics.median(v) for k, v in cols.items() if not k.startswith("count_")}
print(f"medians of {rounds} rounds:")
print(f"  single node : rps={m['single_rps']:.0f} p99={m['single_p99']:.2f}ms cpu/decision={m['single_cpu']:.1f}us")
print(f"  {nodes}-node      : rps={m['cluster_rps']:.0f} p99={m['cluster_p99']:.2f}ms rpcs/forwarded={m['rpcs']:.4f} "
      f"(errors, batch errors and fallbacks over all rounds: {sum(cols['errors']):.0f})")
print(f"  cpu per forwarded decision = {m['cfwd']:.1f}us (rounds: "
      + ", ".join(f"{x:.1f}" for x in cols['cfwd']) + f"): receiving node {m['recv']:.1f}us + owner {m['owner']:.1f}us")
for k in sorted(cols):
    if k.startswith("count_"):
        v = [statistics.median(x[i] for x in cols[k]) for i in range(3)]
        print(f"  {k[6:]:16s}: {v[0]:.2f} per single-node decision; per forwarded decision {v[1]:.2f} receiving + {v[2]:.2f} owners")
print(f"  forwarded vs single-node decision: x{m['fwd_ratio']:.2f} [target <= 1.4] (rounds: "
      + ", ".join(f"{x:.2f}" for x in cols['fwd_ratio']) + ")")
print(f"  remote-owned vs single-node decision: x{m['remote_ratio']:.2f} [target <= 1.4], {100 * m['leased_share']:.1f}% of them "
      f"decided on node 1 from leases (rounds: " + ", ".join(f"{x:.2f}" for x in cols['remote_ratio']) + ")")
print(f"  {nodes}-node vs single: rps x{m['rps_ratio']:.2f}, p99 x{m['p99_ratio']:.2f} [target <= 1.3] (rounds: "
      + ", ".join(f"{x:.2f}" for x in cols['p99_ratio']) + ")")
if results:
    with open(results, "a") as f:
        f.write(json.dumps({"nodes": nodes, "rounds": rounds, "single_cpu_us": m["single_cpu"], "fwd_cpu_us": m["cfwd"],
                            "recv_us": m["recv"], "owner_us": m["owner"], "batch": m["batch"], "fwd_per_s": m["fwd_rate"],
                            "single_p99_ms": m["single_p99"], "cluster_p99_ms": m["cluster_p99"], "load": m["load"],
                            "fwd_ratio_rounds": cols["fwd_ratio"], "remote_cpu_us": m["cremote"],
                            "leased_share": m["leased_share"]}) + "\n")
PY
