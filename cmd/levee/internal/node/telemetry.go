package node

import (
	"context"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/levee-dev/levee/limiter"
	"github.com/levee-dev/levee/limiter/peer"
)

// telemetry holds the node-level instruments.
type telemetry struct {
	latency      metric.Float64Histogram
	reloads      metric.Int64Counter
	reloadOK     metric.AddOption
	reloadFailed metric.AddOption
	mu           sync.RWMutex
	methods      map[methodCode]metric.RecordOption
}

type methodCode struct{ method, code string }

func newTelemetry(meter metric.Meter, store *limiter.Store, cl *clusterNode, conns *limitListener) (*telemetry, error) {
	t := &telemetry{methods: make(map[methodCode]metric.RecordOption)}
	var err error
	t.latency, err = meter.Float64Histogram("levee.request.duration",
		metric.WithDescription("Time to answer a gRPC call, by method and status code."),
		metric.WithUnit("s"),
		metric.WithExplicitBucketBoundaries(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1))
	if err != nil {
		return nil, err
	}
	t.reloads, err = meter.Int64Counter("levee.rules.reloads",
		metric.WithDescription("Rule reloads, by result (ok, failed). A failed reload leaves the last good rules serving."),
		metric.WithUnit("{reload}"))
	if err != nil {
		return nil, err
	}
	t.reloadOK = metric.WithAttributeSet(attribute.NewSet(attribute.String("result", "ok")))
	t.reloadFailed = metric.WithAttributeSet(attribute.NewSet(attribute.String("result", "failed")))
	keys, evictions, err := storeInstruments(meter, "levee.store.keys", "levee.store.evictions",
		"Buckets held in memory (buckets that are not full); a clustered node's fallback fair shares are levee.store.fallback_keys.",
		"Buckets dropped for room while not full; raise --max-keys if this grows.")
	if err != nil {
		return nil, err
	}
	open, err := meter.Int64ObservableGauge("levee.grpc.connections",
		metric.WithDescription("gRPC connections open on the node's listener."),
		metric.WithUnit("{connection}"))
	if err != nil {
		return nil, err
	}
	refused, err := meter.Int64ObservableCounter("levee.grpc.connections_refused",
		metric.WithDescription("gRPC connections closed when accepted because --max-connections were open; clients see the refusal and go to another node."),
		metric.WithUnit("{connection}"))
	if err != nil {
		return nil, err
	}
	_, err = meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		o.ObserveInt64(keys, int64(store.Len()))
		o.ObserveInt64(evictions, int64(store.Evictions()))
		o.ObserveInt64(open, conns.Open())
		o.ObserveInt64(refused, int64(conns.Refused()))
		return nil
	}, keys, evictions, open, refused)
	if err != nil || cl == nil {
		return t, err
	}
	return t, clusterInstruments(meter, cl)
}

// clusterInstruments reports the ring and the peer router's counters.
func clusterInstruments(meter metric.Meter, cl *clusterNode) error {
	members, err := meter.Int64ObservableGauge("levee.cluster.members",
		metric.WithDescription("Live members in this node's ring."), metric.WithUnit("{node}"))
	if err != nil {
		return err
	}
	// The fallback buckets are counted apart from levee.store.keys, which
	// counts the buckets this node owns (and hands off): a fair share
	// stays on the node that decided it until it refills.
	fallbackKeys, fallbackEvictions, err := storeInstruments(meter, "levee.store.fallback_keys", "levee.store.fallback_evictions",
		"Fair-share buckets held for keys whose owner was unreachable (failure_mode local); bounded by --max-keys apart from levee.store.keys.",
		"Fair-share buckets dropped for room while not full.")
	if err != nil {
		return err
	}
	type counter struct {
		name, desc string
		value      func(*peer.Stats) uint64
		inst       metric.Int64ObservableCounter
	}
	counters := []*counter{
		{name: "levee.peer.forwarded", desc: "Bucket operations forwarded to their owner.", value: func(s *peer.Stats) uint64 { return s.Forwarded.Load() }},
		{name: "levee.peer.batches", desc: "Peer RPCs carrying forwarded operations.", value: func(s *peer.Stats) uint64 { return s.Batches.Load() }},
		{name: "levee.peer.batch_errors", desc: "Peer RPCs that failed or timed out.", value: func(s *peer.Stats) uint64 { return s.BatchErrors.Load() }},
		{name: "levee.peer.fallbacks", desc: "Operations decided by their rule's failure mode because the owner was unreachable.", value: func(s *peer.Stats) uint64 { return s.Fallbacks.Load() }},
		{name: "levee.peer.local", desc: "Operations on buckets other nodes own decided on this node, from a lease or a cached refusal.", value: func(s *peer.Stats) uint64 { return s.Local.Load() }},
		{name: "levee.peer.leased", desc: "Tokens other nodes' buckets leased to this node (hot-key and warm leases).", value: func(s *peer.Stats) uint64 { return s.Leased.Load() }},
		{name: "levee.peer.handed_off", desc: "Buckets sent to their new owner after a membership change.", value: func(s *peer.Stats) uint64 { return s.HandedOff.Load() }},
	}
	insts := []metric.Observable{members, fallbackKeys, fallbackEvictions}
	for _, c := range counters {
		c.inst, err = meter.Int64ObservableCounter(c.name, metric.WithDescription(c.desc), metric.WithUnit("{operation}"))
		if err != nil {
			return err
		}
		insts = append(insts, c.inst)
	}
	_, err = meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		if r := cl.router.Ring(); r != nil {
			o.ObserveInt64(members, int64(r.Len()))
		}
		for _, c := range counters {
			o.ObserveInt64(c.inst, int64(c.value(cl.router.Stats())))
		}
		fb := cl.router.FallbackStore()
		o.ObserveInt64(fallbackKeys, int64(fb.Len()))
		o.ObserveInt64(fallbackEvictions, int64(fb.Evictions()))
		return nil
	}, insts...)
	return err
}

// unaryInterceptor records each call's latency by method and code.
func (t *telemetry) unaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := handler(ctx, req)
	t.latency.Record(ctx, time.Since(start).Seconds(), t.option(info.FullMethod, status.Code(err).String()))
	return resp, err
}

// option returns the cached attribute option for a method and code; both
// come from a fixed set (registered methods, gRPC codes).
func (t *telemetry) option(method, code string) metric.RecordOption {
	key := methodCode{method, code}
	t.mu.RLock()
	o, ok := t.methods[key]
	t.mu.RUnlock()
	if ok {
		return o
	}
	o = metric.WithAttributeSet(attribute.NewSet(attribute.String("method", method), attribute.String("code", code)))
	t.mu.Lock()
	t.methods[key] = o
	t.mu.Unlock()
	return o
}

// storeInstruments makes the two instruments a bucket store is watched by:
// the buckets it holds, and those it dropped for room while not full.
func storeInstruments(meter metric.Meter, keysName, evictionsName, keysDesc, evictionsDesc string) (metric.Int64ObservableGauge, metric.Int64ObservableCounter, error) {
	keys, err := meter.Int64ObservableGauge(keysName, metric.WithDescription(keysDesc), metric.WithUnit("{key}"))
	if err != nil {
		return nil, nil, err
	}
	evictions, err := meter.Int64ObservableCounter(evictionsName, metric.WithDescription(evictionsDesc), metric.WithUnit("{key}"))
	if err != nil {
		return nil, nil, err
	}
	return keys, evictions, nil
}
