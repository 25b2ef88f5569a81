package rlqs

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	rlqsv3 "github.com/envoyproxy/go-control-plane/envoy/service/rate_limit_quota/v3"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/levee-dev/levee/shed/shedtest"
)

// benchServer is a Server with envoys streams of buckets tenants each
// (bucket ids {name: tenant, tenant: t<i>}), every client subscribed and
// granted, and no gRPC: the benchmarks measure the service's own work.
func benchServer(b *testing.B, envoys, buckets int) (*Server, []*stream, *shedtest.Clock, []*rlqsv3.RateLimitQuotaUsageReports) {
	clock := shedtest.NewClock(time.Unix(1_000_000, 0))
	rc := exampleRules(b)
	s := New(Config{Now: clock.Now})
	s.cfg.Rules = func() *rulesConfig { return rc }
	msgs := make([]*rlqsv3.RateLimitQuotaUsageReports, buckets)
	for i := range msgs {
		msgs[i] = &rlqsv3.RateLimitQuotaUsageReports{Domain: "rlqs", BucketQuotaUsages: []*rlqsv3.RateLimitQuotaUsageReports_BucketQuotaUsage{{
			BucketId:    &rlqsv3.BucketId{Bucket: map[string]string{"name": "tenant", "tenant": fmt.Sprint("t", i)}},
			TimeElapsed: durationpb.New(5 * time.Second), NumRequestsAllowed: 50, NumRequestsDenied: 10,
		}}}
	}
	var ss []*stream
	for range envoys {
		st := &stream{clients: map[string]*client{}, pending: map[string]*rlqsv3.RateLimitQuotaResponse_BucketAction{}, wake: make(chan struct{}, 1), done: make(chan struct{})}
		s.streams[st] = struct{}{}
		ss = append(ss, st)
		for _, m := range msgs {
			if err := s.report(st, m); err != nil {
				b.Fatal(err)
			}
		}
	}
	clock.Add(5 * time.Second)
	s.Sync(b.Context())
	return s, ss, clock, msgs
}

// BenchmarkReport is the cost of one bucket usage report (one message of
// one bucket, as Envoy sends each 5 s), decoded already: match, meter.
func BenchmarkReport(b *testing.B) {
	s, ss, clock, msgs := benchServer(b, 20, 100)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if i%len(msgs) == 0 {
			clock.Add(time.Second)
		}
		if err := s.report(ss[i%len(ss)], msgs[i%len(msgs)]); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSync is the cost of one sync round on a standalone node with 20
// Envoys and 100 buckets (2,000 clients), every demand changed so that
// every client gets a new assignment; it reports the cost per client and
// per assignment pushed (queued for its stream).
func BenchmarkSync(b *testing.B) {
	s, ss, clock, msgs := benchServer(b, 20, 100)
	pushed := 0
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		clock.Add(5 * time.Second)
		for j, st := range ss {
			for _, m := range msgs {
				m.BucketQuotaUsages[0].NumRequestsAllowed = uint64(1 + (i+j)%7*100)
				_ = s.report(st, m)
			}
			clear(st.pending)
		}
		b.StartTimer()
		s.Sync(b.Context())
		for _, st := range ss {
			pushed += len(st.pending)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(ss)*len(msgs)), "ns/client")
	if pushed > 0 {
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(pushed), "ns/push")
	}
}

// BenchmarkClientMemory reports the memory a node holds per (stream,
// bucket) client, its owner's state included (standalone: both here).
func BenchmarkClientMemory(b *testing.B) {
	for b.Loop() {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		s, _, _, _ := benchServer(b, 20, 500)
		runtime.GC()
		runtime.ReadMemStats(&after)
		st := s.Stats()
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(st.Clients), "B/client")
		runtime.KeepAlive(s)
	}
}
