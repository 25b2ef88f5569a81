package envoy_test

import (
	"context"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/levee-dev/levee/limiter/engine"
	"github.com/levee-dev/levee/limiter/engine/enginetest"
	"github.com/levee-dev/levee/limiter/envoy"
	"github.com/levee-dev/levee/limiter/rules"
)

// fuzzServer returns a fresh server (empty buckets, its own metrics) on
// enginetest.Rules, at the clock *now.
func fuzzServer(t *testing.T, now *time.Time) *envoy.Server {
	return envoy.NewServer(enginetest.ForFuzz(t), func() time.Time { return *now })
}

// fuzzWords are the strings a fuzz program picks keys and values from,
// besides its own: every key and value the rules know, and edge cases.
var fuzzWords = []string{
	"user", "action", "post", "get", "getx", "ip", "10.0.0.1", "10.1.2.1", "blocked",
	"free", "shadow", "quota", "allow", "me", "many", "", "*", "a", enginetest.Domain,
}

// maxFuzzEntries bounds the entries a program may build; it is above the
// server's per-request bound so that bound is exercised too.
const maxFuzzEntries = 120_000

// buildRequest turns a fuzz program into a request. Each instruction is
// three bytes: an opcode and two arguments.
func buildRequest(domain string, words []string, prog []byte, hits uint32) *rlsv3.RateLimitRequest {
	req := &rlsv3.RateLimitRequest{Domain: domain, HitsAddend: hits}
	word := func(b byte) string { return words[int(b)%len(words)] }
	entries := 0
	cur := func() *ratelimitv3.RateLimitDescriptor {
		if len(req.Descriptors) == 0 {
			req.Descriptors = append(req.Descriptors, &ratelimitv3.RateLimitDescriptor{})
		}
		return req.Descriptors[len(req.Descriptors)-1]
	}
	addEntry := func(k, v string) {
		if entries < maxFuzzEntries {
			d := cur()
			d.Entries = append(d.Entries, &ratelimitv3.RateLimitDescriptor_Entry{Key: k, Value: v})
			entries++
		}
	}
	for i := 0; i+2 < len(prog); i += 3 {
		a, b := prog[i+1], prog[i+2]
		switch prog[i] % 10 {
		case 0:
			req.Descriptors = append(req.Descriptors, &ratelimitv3.RateLimitDescriptor{})
			addEntry(word(a), word(b))
		case 1:
			addEntry(word(a), word(b))
		case 2:
			h := uint64(a)
			if b&1 != 0 {
				h <<= 25 + b%10 // around 2^32
			}
			cur().HitsAddend = wrapperspb.UInt64(h)
		case 3:
			o := &ratelimitv3.RateLimitDescriptor_RateLimitOverride{
				RequestsPerUnit: uint32(a) * uint32(a) * uint32(b),
				Unit:            typev3.RateLimitUnit(b % 9),
			}
			if a&1 != 0 {
				o.UnitMultiplier = wrapperspb.UInt32(uint32(b) << (a % 24))
			}
			cur().Limit = o
		case 4:
			// Repeat the current descriptor, to reach the descriptor bound.
			d := cur()
			for range int(a) * 5 {
				if entries+len(d.Entries) > maxFuzzEntries {
					break
				}
				req.Descriptors = append(req.Descriptors, d)
				entries += len(d.Entries)
			}
		case 5:
			for j := range int(a) * 5 {
				addEntry("many", word(b+byte(j)))
			}
		case 6:
			// Strings around the 4 KiB bound.
			long := strings.Repeat(word(a)+"x", 4102)[:4090+int(b%12)]
			if b&0x80 != 0 {
				addEntry("user", long)
			} else {
				addEntry(long, word(a))
			}
		case 7:
			addEntry("", word(a))
		case 8:
			cur().IsNegativeHits = true
		case 9:
			req.Descriptors = append(req.Descriptors, &ratelimitv3.RateLimitDescriptor{})
		}
	}
	return req
}

// validRequest is the request contract, written independently of the
// server: what must be accepted and what refused.
func validRequest(req *rlsv3.RateLimitRequest) bool {
	if req.Domain == "" || len(req.Domain) > engine.MaxStringBytes {
		return false
	}
	if len(req.Descriptors) == 0 || len(req.Descriptors) > engine.MaxItems {
		return false
	}
	total := 0
	for _, d := range req.Descriptors {
		total += len(d.Entries)
		if len(d.Entries) > engine.MaxEntries { // no entries is allowed: it matches no rule
			return false
		}
		for _, e := range d.Entries {
			if e.Key == "" || len(e.Key) > engine.MaxStringBytes || len(e.Value) > engine.MaxStringBytes {
				return false
			}
		}
		if h := d.HitsAddend; h != nil && h.Value > math.MaxUint32 {
			return false
		}
		if l := d.Limit; l != nil && (l.Unit < 1 || l.Unit > 7) {
			return false
		}
		if l := d.Limit; l != nil && l.UnitMultiplier != nil && l.UnitMultiplier.Value > 1 {
			// The period (unit × multiplier) must fit in a time.Duration.
			if time.Duration(l.UnitMultiplier.Value) > math.MaxInt64/rules.Unit(l.Unit).Duration() {
				return false
			}
		}
	}
	return total <= engine.MaxItems*engine.MaxEntries/10
}

// checkResponse checks what must hold of every answer.
func checkResponse(t *testing.T, req *rlsv3.RateLimitRequest, resp *rlsv3.RateLimitResponse, err error) {
	t.Helper()
	if !enginetest.CheckRefusal(t, validRequest(req), err, fmt.Sprintf("%d descriptors", len(req.Descriptors))) {
		return
	}
	if len(resp.Statuses) != len(req.Descriptors) {
		t.Fatalf("%d statuses for %d descriptors", len(resp.Statuses), len(req.Descriptors))
	}
	anyOver := false
	for i, st := range resp.Statuses {
		switch st.Code {
		case rlsv3.RateLimitResponse_OK:
		case rlsv3.RateLimitResponse_OVER_LIMIT:
			anyOver = true
			if st.CurrentLimit == nil || st.LimitRemaining != 0 {
				t.Fatalf("status %d: OVER_LIMIT without a limit or with tokens left: %v", i, st)
			}
		default:
			t.Fatalf("status %d: code %v", i, st.Code)
		}
		if st.CurrentLimit == nil {
			if st.DurationUntilReset != nil || (st.LimitRemaining != 0 && st.LimitRemaining != math.MaxUint32) {
				t.Fatalf("status %d: no limit, yet %v", i, st)
			}
			continue
		}
		if req.Domain != enginetest.Domain {
			t.Fatalf("status %d: a limit in unknown domain %q: %v", i, req.Domain, st)
		}
		if st.DurationUntilReset == nil || st.DurationUntilReset.Seconds < 0 || st.DurationUntilReset.Nanos != 0 {
			t.Fatalf("status %d: duration_until_reset %v", i, st.DurationUntilReset)
		}
		if st.LimitRemaining > st.CurrentLimit.RequestsPerUnit {
			t.Fatalf("status %d: %d remaining of %d", i, st.LimitRemaining, st.CurrentLimit.RequestsPerUnit)
		}
	}
	// OK with a descriptor over is possible (quota mode); the reverse is not.
	switch resp.OverallCode {
	case rlsv3.RateLimitResponse_OK:
	case rlsv3.RateLimitResponse_OVER_LIMIT:
		if !anyOver {
			t.Fatalf("overall OVER_LIMIT with no descriptor over: %v", resp.Statuses)
		}
	default:
		t.Fatalf("overall code %v", resp.OverallCode)
	}
}

// FuzzShouldRateLimit builds requests from a small program and checks that
// the server never panics, refuses only with InvalidArgument and exactly
// the requests that break the contract, and answers the rest one status
// per descriptor. Each request is sent twice, the second time after the
// clock moved, so that buckets are reused.
func FuzzShouldRateLimit(f *testing.F) {
	f.Add(enginetest.Domain, "", []byte{0, 0, 2}, uint32(1), int64(0), int64(time.Second))
	f.Add(enginetest.Domain, "x\x00y", []byte{0, 0, 0, 1, 1, 2, 0, 3, 0, 0, 4, 0, 0, 5, 0, 0, 6, 0}, uint32(0), int64(1<<62), int64(time.Hour))
	f.Add(enginetest.Domain, "", []byte{0, 9, 3, 3, 3, 4, 2, 7, 0, 0, 10, 10, 1, 11, 3, 9, 0, 0}, uint32(3), int64(-1), int64(-time.Hour))
	f.Add(enginetest.Domain, "", []byte{0, 1, 0, 4, 201, 0}, uint32(1), int64(1e18), int64(0))
	f.Add(enginetest.Domain, "", []byte{0, 13, 0, 5, 201, 3}, uint32(1), int64(1e18), int64(0))
	f.Add(enginetest.Domain, "", []byte{0, 0, 0, 6, 3, 133, 6, 3, 5, 7, 1, 1, 8, 0, 0, 9, 0, 0}, uint32(1), int64(1e18), int64(0))
	// 240 descriptors on one override of 297 per 264 years, at the Unix
	// epoch: the last ones' reset is the largest duration there is, which
	// rounding up to seconds once overflowed into a negative value.
	f.Add(enginetest.Domain, "", []byte("211!\x03!\"00"), uint32(3), int64(0), int64(0))
	f.Add("", "", []byte{0, 0, 0}, uint32(1), int64(0), int64(0))
	f.Add("other", "", []byte{0, 0, 0, 3, 3, 3}, uint32(1), int64(0), int64(0))
	f.Fuzz(func(t *testing.T, domain, words string, prog []byte, hits uint32, clock, step int64) {
		now := enginetest.FuzzTime(clock)
		s := fuzzServer(t, &now)
		pool := append(strings.Split(words, "\x00"), fuzzWords...)
		req := buildRequest(domain, pool, prog, hits)
		for range 2 {
			resp, err := s.ShouldRateLimit(context.Background(), req)
			checkResponse(t, req, resp, err)
			now = enginetest.FuzzAdvance(now, step)
		}
	})
}
