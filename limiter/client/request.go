package client

import (
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	leveev1 "github.com/levee-dev/levee/proto/levee/v1"
	"github.com/levee-dev/levee/shed"
)

// request is a reusable levee.v1 CheckRequest with the backing arrays of
// its items, so that encoding a check allocates nothing once the pool has
// warmed up. gRPC has marshalled the message by the time the call returns,
// so it can be reused then.
type request struct {
	msg     leveev1.CheckRequest
	items   []leveev1.CheckItem
	ptrs    []*leveev1.CheckItem
	descs   []leveev1.RuleDescriptor
	descOne []leveev1.CheckItem_Descriptor_
	inlines []leveev1.InlineLimit
	inlOne  []leveev1.CheckItem_Inline
	periods []durationpb.Duration
	entries []leveev1.Entry
	entPtrs []*leveev1.Entry
	hits    []int64
}

// fill encodes items at priority p into r.msg.
func (r *request) fill(items []Item, p shed.Priority) {
	n, total := len(items), 0
	for i := range items {
		total += len(items[i].Entries)
	}
	r.items = grow(r.items, n)
	r.ptrs = grow(r.ptrs, n)
	r.descs = grow(r.descs, n)
	r.descOne = grow(r.descOne, n)
	r.inlines = grow(r.inlines, n)
	r.inlOne = grow(r.inlOne, n)
	r.periods = grow(r.periods, n)
	r.hits = grow(r.hits, n)
	r.entries = grow(r.entries, total)
	r.entPtrs = grow(r.entPtrs, total)
	e := 0
	for i := range items {
		it := &items[i]
		ci := &r.items[i]
		r.hits[i] = int64(it.hits())
		ci.Hits = &r.hits[i]
		if it.Key != "" {
			in := &r.inlines[i]
			in.Key, in.Limit, in.Burst, in.Unlimited = it.Key, int64(it.Limit.Rate), int64(it.Limit.Burst), false
			d := &r.periods[i]
			d.Seconds, d.Nanos = int64(it.Limit.Period/time.Second), int32(it.Limit.Period%time.Second)
			in.Period = d
			r.inlOne[i].Inline = in
			ci.Target = &r.inlOne[i]
		} else {
			rd := &r.descs[i]
			rd.Domain = it.Domain
			rd.Entries = r.entPtrs[e : e+len(it.Entries) : e+len(it.Entries)]
			for j, en := range it.Entries {
				we := &r.entries[e+j]
				we.Key, we.Value = en.Key, en.Value
				rd.Entries[j] = we
			}
			e += len(it.Entries)
			r.descOne[i].Descriptor_ = rd
			ci.Target = &r.descOne[i]
		}
		r.ptrs[i] = ci
	}
	r.msg.Items = r.ptrs[:n]
	r.msg.Priority = leveev1.Priority(p.Normalize())
	if p == shed.Unspecified {
		r.msg.Priority = leveev1.Priority_PRIORITY_UNSPECIFIED
	}
}

func grow[T any](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, n)
	}
	return s[:n]
}
