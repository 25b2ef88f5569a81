package native_test

import (
	"context"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/levee-dev/levee/limiter"
	"github.com/levee-dev/levee/limiter/engine"
	"github.com/levee-dev/levee/limiter/engine/enginetest"
	"github.com/levee-dev/levee/limiter/native"
	leveev1 "github.com/levee-dev/levee/proto/levee/v1"
)

// fuzzServer returns a fresh server (empty buckets, its own metrics) on
// enginetest.Rules, at the clock *now.
func fuzzServer(t *testing.T, now *time.Time) *native.Server {
	return native.NewServer(enginetest.ForFuzz(t), func() time.Time { return *now })
}

// fuzzWords are the strings a fuzz program picks domains, keys and values
// from, besides its own.
var fuzzWords = []string{
	enginetest.Domain, "user", "action", "post", "get", "getx", "ip", "blocked", "free",
	"shadow", "quota", "allow", "me", "many", "", "*", "a",
}

// fuzzPeriods are the inline periods a program picks from: valid, too
// short, negative, malformed, huge and missing.
var fuzzPeriods = []*durationpb.Duration{
	durationpb.New(time.Second),
	durationpb.New(time.Millisecond),
	durationpb.New(time.Millisecond - 1),
	durationpb.New(0),
	durationpb.New(-time.Second),
	{Seconds: 1, Nanos: -1},
	{Seconds: 315_576_000_000},     // the largest valid Duration
	{Seconds: 315_576_000_001},     // beyond it
	{Seconds: 3 * 365 * 24 * 3600}, // years
	durationpb.New(7 * time.Millisecond / 3),
	nil,
}

const maxFuzzEntries = 120_000

// buildRequest turns a fuzz program into a request. Each instruction is
// three bytes: an opcode and two arguments.
func buildRequest(words []string, prog []byte, priority int32, cohort uint32) *leveev1.CheckRequest {
	req := &leveev1.CheckRequest{Priority: leveev1.Priority(priority), Cohort: cohort}
	word := func(b byte) string { return words[int(b)%len(words)] }
	entries := 0
	cur := func() *leveev1.CheckItem {
		if len(req.Items) == 0 {
			req.Items = append(req.Items, ruleItem(enginetest.Domain))
		}
		return req.Items[len(req.Items)-1]
	}
	addEntry := func(k, v string) {
		it := cur()
		d, ok := it.Target.(*leveev1.CheckItem_Descriptor_)
		if !ok || d.Descriptor_ == nil {
			it = ruleItem(enginetest.Domain)
			req.Items = append(req.Items, it)
			d = it.Target.(*leveev1.CheckItem_Descriptor_)
		}
		if entries < maxFuzzEntries {
			d.Descriptor_.Entries = append(d.Descriptor_.Entries, &leveev1.Entry{Key: k, Value: v})
			entries++
		}
	}
	for i := 0; i+2 < len(prog); i += 3 {
		a, b := prog[i+1], prog[i+2]
		switch prog[i] % 13 {
		case 0:
			req.Items = append(req.Items, ruleItem(word(a), word(b), word(a^b)))
			entries++
		case 1:
			addEntry(word(a), word(b))
		case 2:
			h := int64(int8(a))
			if b&1 != 0 {
				h <<= 25 + b%10 // around ±2^32
			}
			cur().Hits = proto.Int64(h)
		case 3:
			req.Items = append(req.Items, &leveev1.CheckItem{Target: &leveev1.CheckItem_Inline{Inline: &leveev1.InlineLimit{
				Key:    word(a),
				Limit:  int64(int8(b)) * int64(a),
				Period: fuzzPeriods[int(a^b)%len(fuzzPeriods)],
				Burst:  int64(int8(a)) + 2,
			}}})
		case 4:
			// Repeat the current item, to reach the item bound.
			it := cur()
			n := 0
			if d, ok := it.Target.(*leveev1.CheckItem_Descriptor_); ok {
				n = len(d.Descriptor_.GetEntries())
			}
			for range int(a) * 5 {
				if entries+n > maxFuzzEntries {
					break
				}
				req.Items = append(req.Items, it)
				entries += n
			}
		case 5:
			for j := range int(a) * 5 {
				addEntry("many", word(b+byte(j)))
			}
		case 6:
			// Strings around the 4 KiB bound.
			long := strings.Repeat(word(a)+"x", 4102)[:4090+int(b%12)]
			switch b % 4 {
			case 0:
				addEntry(long, "v")
			case 1:
				addEntry("user", long)
			case 2:
				req.Items = append(req.Items, ruleItem(long, "user", "a"))
				entries++
			default:
				req.Items = append(req.Items, inlineItem(long, 1, time.Second, 0))
			}
		case 7:
			addEntry("", word(a))
		case 8:
			req.Items = append(req.Items, &leveev1.CheckItem{})
		case 9:
			// Inline limits and bursts around limiter.MaxRate.
			req.Items = append(req.Items, inlineItem(word(a), limiter.MaxRate-1+int64(a%3), time.Duration(b)*time.Millisecond, limiter.MaxRate-1+int64(b%3)))
		case 10:
			req.Items = append(req.Items, &leveev1.CheckItem{Target: &leveev1.CheckItem_Descriptor_{}})
		case 11:
			req.Items = append(req.Items, &leveev1.CheckItem{Target: &leveev1.CheckItem_Inline{}})
		case 12:
			// Unlimited, alone or (wrongly) with a limit, burst or period.
			in := &leveev1.InlineLimit{Key: word(a), Unlimited: true}
			switch b % 4 {
			case 1:
				in.Limit = int64(b)
			case 2:
				in.Burst = int64(b)
			case 3:
				in.Period = fuzzPeriods[int(b)%len(fuzzPeriods)]
			}
			req.Items = append(req.Items, &leveev1.CheckItem{Target: &leveev1.CheckItem_Inline{Inline: in}})
		}
	}
	return req
}

// validRequest is the request contract, written independently of the
// server: what must be accepted and what refused.
func validRequest(req *leveev1.CheckRequest) bool {
	if req.Priority < 0 || req.Priority > leveev1.Priority_PRIORITY_SHEDDABLE || req.Cohort > native.MaxCohort {
		return false
	}
	if len(req.Items) == 0 || len(req.Items) > engine.MaxItems {
		return false
	}
	total := 0
	for _, it := range req.Items {
		if it.Hits != nil && (*it.Hits < 0 || *it.Hits > math.MaxUint32) {
			return false
		}
		switch t := it.Target.(type) {
		case *leveev1.CheckItem_Descriptor_:
			d := t.Descriptor_
			if d == nil || d.Domain == "" || len(d.Domain) > engine.MaxStringBytes {
				return false
			}
			total += len(d.Entries)
			if len(d.Entries) == 0 || len(d.Entries) > engine.MaxEntries {
				return false
			}
			for _, e := range d.Entries {
				if e.Key == "" || len(e.Key) > engine.MaxStringBytes || len(e.Value) > engine.MaxStringBytes {
					return false
				}
			}
		case *leveev1.CheckItem_Inline:
			in := t.Inline
			if in == nil || in.Key == "" || len(in.Key) > engine.MaxStringBytes {
				return false
			}
			if in.Unlimited {
				if in.Limit != 0 || in.Burst != 0 || in.Period != nil {
					return false
				}
				continue
			}
			if in.Limit < 1 || in.Limit > limiter.MaxRate || in.Burst < 0 || in.Burst > limiter.MaxRate {
				return false
			}
			if in.Period == nil || in.Period.CheckValid() != nil || in.Period.AsDuration() < time.Millisecond {
				return false
			}
			// At most 2^32 tokens per second (floored), so token time
			// cannot saturate; the exact rule is limiter.Limit.Valid's.
			if !(limiter.Limit{Rate: uint64(in.Limit), Period: in.Period.AsDuration(), Burst: uint64(in.Burst)}).Valid() {
				return false
			}
		default:
			return false
		}
	}
	return total <= engine.MaxItems*engine.MaxEntries/10
}

// checkResponse checks what must hold of every answer.
func checkResponse(t *testing.T, req *leveev1.CheckRequest, resp *leveev1.CheckResponse, err error) {
	t.Helper()
	if !enginetest.CheckRefusal(t, validRequest(req), err, fmt.Sprintf("%d items", len(req.Items))) {
		return
	}
	if len(resp.Statuses) != len(req.Items) {
		t.Fatalf("%d statuses for %d items", len(resp.Statuses), len(req.Items))
	}
	anyOver := false
	for i, st := range resp.Statuses {
		it := req.Items[i]
		switch st.Code {
		case leveev1.Code_CODE_OK:
		case leveev1.Code_CODE_OVER_LIMIT:
			anyOver = true
			if !st.Limited {
				t.Fatalf("status %d: OVER_LIMIT without a limit: %v", i, st)
			}
			if it.Hits != nil && *it.Hits == 0 {
				t.Fatalf("status %d: a look (hits 0) was refused: %v", i, st)
			}
		default:
			t.Fatalf("status %d: code %v", i, st.Code)
		}
		if !st.Limited {
			if st.Limit != 0 || st.Period != nil || st.Remaining != 0 || st.ResetAfter != nil || st.RetryAfter != nil || st.Shadow {
				t.Fatalf("status %d: not limited, yet %v", i, st)
			}
			if in := it.GetInline(); in != nil && !in.Unlimited {
				t.Fatalf("status %d: inline item not limited: %v", i, st)
			}
			continue
		}
		if st.Period == nil || st.Period.AsDuration() <= 0 || st.ResetAfter == nil || st.ResetAfter.AsDuration() < 0 || st.Remaining < 0 {
			t.Fatalf("status %d: %v", i, st)
		}
		capacity := st.Limit
		if in := it.GetInline(); in != nil {
			if st.Limit != in.Limit || st.Period.AsDuration() != in.Period.AsDuration() {
				t.Fatalf("status %d: limit %d per %v, asked for %d per %v", i, st.Limit, st.Period.AsDuration(), in.Limit, in.Period.AsDuration())
			}
			if in.Burst > 0 {
				capacity = in.Burst
			}
		} else if d := it.GetDescriptor_(); d.Domain != enginetest.Domain {
			t.Fatalf("status %d: a limit in unknown domain %q: %v", i, d.Domain, st)
		}
		if st.Remaining > capacity {
			t.Fatalf("status %d: %d remaining of a bucket of %d", i, st.Remaining, capacity)
		}
		over := st.Code == leveev1.Code_CODE_OVER_LIMIT || st.OverLimitInShadow
		if st.RetryAfter != nil && !over {
			t.Fatalf("status %d: retry_after on an admitted item: %v", i, st)
		}
		// A refused request must wait. Limits faster than 2^32 tokens a
		// second are left out: limiter.Limit bounds the rate per period, not
		// per second, and such limits overflow its int64 token time within
		// years of its epoch, after which their buckets stop refilling and
		// report a retry_after of 0 (a known limiter defect).
		if st.RetryAfter != nil && st.RetryAfter.AsDuration() <= 0 && float64(st.Limit)/st.Period.AsDuration().Seconds() <= 1<<32 {
			t.Fatalf("status %d: retry_after %v on %v", i, st.RetryAfter.AsDuration(), st)
		}
	}
	switch resp.OverallCode {
	case leveev1.Code_CODE_OK:
	case leveev1.Code_CODE_OVER_LIMIT:
		if !anyOver {
			t.Fatalf("overall OVER_LIMIT with no item over: %v", resp.Statuses)
		}
	default:
		t.Fatalf("overall code %v", resp.OverallCode)
	}
}

// FuzzCheck builds requests from a small program and checks that the server
// never panics, refuses only with InvalidArgument and exactly the requests
// that break the contract, and answers the rest one status per item. Each
// request is sent twice, the second time after the clock moved.
func FuzzCheck(f *testing.F) {
	f.Add("", []byte{0, 0, 1}, int32(0), uint32(0), int64(0), int64(time.Second))
	f.Add("x\x00y", []byte{0, 0, 1, 1, 1, 2, 2, 3, 0, 3, 4, 5, 3, 200, 7, 9, 1, 2}, int32(3), uint32(127), int64(1<<62), int64(time.Hour))
	f.Add("", []byte{3, 1, 1, 2, 0, 0, 4, 201, 0}, int32(5), uint32(5), int64(1e18), int64(0))
	f.Add("", []byte{0, 0, 13, 5, 201, 3}, int32(1), uint32(0), int64(1e18), int64(0))
	f.Add("", []byte{6, 3, 0, 6, 3, 1, 6, 3, 2, 6, 3, 3, 7, 1, 1, 8, 0, 0, 10, 0, 0, 11, 0, 0}, int32(0), uint32(0), int64(-1), int64(-1))
	f.Add("", []byte{3, 2, 4, 3, 6, 0, 3, 7, 0, 9, 1, 1, 9, 2, 2}, int32(0), uint32(0), int64(1e18), int64(1e15))
	f.Add("", []byte{0, 0, 0}, int32(9), uint32(128), int64(0), int64(0))
	f.Add("", []byte{12, 1, 0, 12, 2, 1, 12, 3, 2, 12, 4, 3, 3, 0, 1}, int32(2), uint32(3), int64(1e18), int64(1))
	f.Fuzz(func(t *testing.T, words string, prog []byte, priority int32, cohort uint32, clock, step int64) {
		now := enginetest.FuzzTime(clock)
		s := fuzzServer(t, &now)
		pool := append(strings.Split(words, "\x00"), fuzzWords...)
		req := buildRequest(pool, prog, priority, cohort)
		for range 2 {
			resp, err := s.Check(context.Background(), req)
			checkResponse(t, req, resp, err)
			now = enginetest.FuzzAdvance(now, step)
		}
	})
}
