package configstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Priorities are the valid values of Override.MinPriority, most important
// first.
var Priorities = []string{"critical", "high", "default", "low", "sheddable"}

// maxResourceLen bounds a resource name.
const maxResourceLen = 128

// Override pins a shedding resource's threshold: until it expires, only
// traffic at MinPriority or more important is admitted.
//
// An override is stored under an etcd lease of its duration, so it
// disappears by itself. etcd counts leases in whole seconds and checks them
// about twice a second, so the key can outlive Until by a second or so:
// readers must also honour Until, as ListOverrides does.
type Override struct {
	// Resource is the shedding resource, as named in the shedding policy.
	Resource string `json:"resource"`
	// MinPriority is the least important priority still admitted, one of
	// Priorities: "critical" means critical only.
	MinPriority string `json:"min_priority"`
	// Until is when the override lapses.
	Until time.Time `json:"until"`
	// Author is the identity of whoever set it.
	Author string `json:"author"`
	// Reason is why, in the author's words.
	Reason string `json:"reason"`
	// SetAt is when it was set; SetOverride fills it in.
	SetAt time.Time `json:"set_at"`
}

// Active reports whether the override is in force at now.
func (o Override) Active(now time.Time) bool { return now.Before(o.Until) }

// checkResource reports what is wrong with a resource name, if anything.
func checkResource(r string) string {
	switch {
	case r == "":
		return "resource name is empty"
	case len(r) > maxResourceLen:
		return fmt.Sprintf("resource name is longer than %d bytes", maxResourceLen)
	}
	for _, c := range r {
		if c <= ' ' || c == 0x7f {
			return fmt.Sprintf("resource name %q contains a space or a control character", r)
		}
	}
	return ""
}

// SetOverride sets or replaces the override on o.Resource, for the time
// until o.Until, and returns the override as stored (MinPriority in lower
// case, SetAt filled in) and the one it replaced, if any. It checks
// that the resource is one the current shedding policy defines (when
// Options.ValidateShed reports resources), that MinPriority is a priority,
// that Until is in the future and at most Options.MaxOverride away, and
// that Author and Reason are given; a bad override gives a
// *ValidationError. The change is written to the audit log.
func (s *Store) SetOverride(ctx context.Context, o Override) (Override, *Override, error) {
	now := s.now()
	o.MinPriority = strings.ToLower(strings.TrimSpace(o.MinPriority))
	var problems []error
	if why := checkResource(o.Resource); why != "" {
		problems = append(problems, errors.New("resource: "+why))
	}
	if !slices.Contains(Priorities, o.MinPriority) {
		problems = append(problems, fmt.Errorf("min_priority: invalid priority %q (want %s)", o.MinPriority, strings.Join(Priorities, ", ")))
	}
	d := o.Until.Sub(now)
	switch {
	case d <= 0:
		problems = append(problems, fmt.Errorf("until: %s is not in the future", o.Until.Format(time.RFC3339)))
	case d > s.maxOverride:
		problems = append(problems, fmt.Errorf("until: the override would last %v, more than the maximum of %v", d.Round(time.Second), s.maxOverride))
	}
	if strings.TrimSpace(o.Author) == "" {
		problems = append(problems, errors.New("author is required"))
	}
	if strings.TrimSpace(o.Reason) == "" {
		problems = append(problems, errors.New("reason is required: say why the override is set"))
	}
	if len(problems) > 0 {
		return Override{}, nil, &ValidationError{Problems: problems}
	}
	if s.validateShed != nil {
		cur, err := s.Get(ctx)
		if err != nil {
			return Override{}, nil, err
		}
		resources, err := s.validateShed(cur.Bundle.Shed)
		if err != nil {
			return Override{}, nil, fmt.Errorf("configstore: the current shedding policy (version %d) does not load: %w", cur.Version, err)
		}
		if resources != nil && !slices.Contains(resources, o.Resource) {
			known := slices.Clone(resources)
			sort.Strings(known)
			defines := "defines no resources"
			if len(known) > 0 {
				defines = "defines: " + strings.Join(known, ", ")
			}
			return Override{}, nil, invalid("resource: unknown resource %q; the shedding policy of version %d %s",
				o.Resource, cur.Version, defines)
		}
	}
	o.SetAt = now.UTC()
	o.Until = o.Until.UTC()
	value, err := json.Marshal(o)
	if err != nil {
		return Override{}, nil, fmt.Errorf("configstore: encoding override: %w", err)
	}
	ttl := int64(math.Ceil(d.Seconds()))
	lease, err := s.c.Grant(ctx, ttl)
	if err != nil {
		return Override{}, nil, fmt.Errorf("configstore: granting a %ds lease for the override on %q: %w", ttl, o.Resource, err)
	}
	resp, err := s.c.Put(ctx, s.keys.overrides()+o.Resource, string(value), clientv3.WithLease(lease.ID), clientv3.WithPrevKV())
	if err != nil {
		s.revoke(ctx, clientv3.LeaseID(lease.ID))
		return Override{}, nil, fmt.Errorf("configstore: storing the override on %q: %w", o.Resource, err)
	}
	var prev *Override
	if resp.PrevKv != nil {
		if p, err := decodeOverride(resp.PrevKv); err == nil {
			prev = &p
		}
		s.revoke(ctx, clientv3.LeaseID(resp.PrevKv.Lease))
	}
	s.log.Info("override set", "audit", true, "resource", o.Resource, "min_priority", o.MinPriority,
		"until", o.Until, "author", o.Author, "reason", o.Reason, "replaced", prev != nil)
	return o, prev, nil
}

// ClearOverride removes the override on resource and returns it. If there
// is none in force (including one past its Until whose lease etcd has not
// expired yet, which it deletes) it returns an error wrapping ErrNotFound. author and reason are
// required; the change is written to the audit log.
func (s *Store) ClearOverride(ctx context.Context, resource, author, reason string) (Override, error) {
	var problems []error
	if why := checkResource(resource); why != "" {
		problems = append(problems, errors.New("resource: "+why))
	}
	if strings.TrimSpace(author) == "" {
		problems = append(problems, errors.New("author is required"))
	}
	if strings.TrimSpace(reason) == "" {
		problems = append(problems, errors.New("reason is required: say why the override is cleared"))
	}
	if len(problems) > 0 {
		return Override{}, &ValidationError{Problems: problems}
	}
	resp, err := s.c.Delete(ctx, s.keys.overrides()+resource, clientv3.WithPrevKV())
	if err != nil {
		return Override{}, fmt.Errorf("configstore: clearing the override on %q: %w", resource, err)
	}
	if len(resp.PrevKvs) == 0 {
		return Override{}, fmt.Errorf("configstore: no override on resource %q: %w", resource, ErrNotFound)
	}
	kv := resp.PrevKvs[0]
	s.revoke(ctx, clientv3.LeaseID(kv.Lease))
	o, err := decodeOverride(kv)
	if err != nil {
		o = Override{Resource: resource}
	} else if !o.Active(s.now()) {
		// Lapsed, and etcd had not yet expired its lease: nothing was in
		// force, as ListOverrides would have said.
		return Override{}, fmt.Errorf("configstore: no override on resource %q (the last one lapsed at %s): %w",
			resource, o.Until.Format(time.RFC3339), ErrNotFound)
	}
	s.log.Info("override cleared", "audit", true, "resource", resource, "min_priority", o.MinPriority,
		"was_until", o.Until, "author", author, "reason", reason, "set_by", o.Author)
	return o, nil
}

// revoke releases a lease that no key uses any more, rather than leave it
// until it expires. Failure is harmless: the lease expires anyway.
func (s *Store) revoke(ctx context.Context, id clientv3.LeaseID) {
	if id == 0 {
		return
	}
	if _, err := s.c.Revoke(ctx, id); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		s.log.Debug("revoking an unused override lease", "lease", fmt.Sprintf("%x", int64(id)), "err", err)
	}
}

func decodeOverride(kv *mvccpb.KeyValue) (Override, error) {
	var o Override
	if err := json.Unmarshal(kv.Value, &o); err != nil {
		return Override{}, fmt.Errorf("configstore: override %s is malformed: %w", kv.Key, err)
	}
	return o, nil
}

// ListOverrides returns the overrides in force, sorted by resource.
func (s *Store) ListOverrides(ctx context.Context) ([]Override, error) {
	resp, err := s.c.Get(ctx, s.keys.overrides(), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("configstore: reading overrides: %w", err)
	}
	m := make(map[string]Override, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		s.putOverride(m, kv)
	}
	return s.active(m), nil
}

// putOverride adds the override in kv to m, or logs why it cannot.
func (s *Store) putOverride(m map[string]Override, kv *mvccpb.KeyValue) {
	o, err := decodeOverride(kv)
	if err != nil {
		s.log.Warn("ignoring a malformed override", "key", string(kv.Key), "err", err)
		return
	}
	m[strings.TrimPrefix(string(kv.Key), s.keys.overrides())] = o
}

// active returns the overrides of m in force now, sorted by resource.
func (s *Store) active(m map[string]Override) []Override {
	now := s.now()
	out := make([]Override, 0, len(m))
	for _, o := range m {
		if o.Active(now) {
			out = append(out, o)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Resource < out[j].Resource })
	return out
}

// WatchOverrides calls fn with the overrides in force (as ListOverrides
// returns them) at once and after every change, until ctx is done; it
// returns ctx's error. fn runs on WatchOverrides' goroutine, one call at a
// time. A lapsed override is delivered again without it when etcd expires
// its lease, which can be a second or so after Until: the caller should
// apply each override with its Until (as shed.Controller.Pin does) so that
// it lapses on time. Like Watch, it reconnects with backoff after a failure
// and keeps delivering from the state it reads again.
func (s *Store) WatchOverrides(ctx context.Context, fn func([]Override)) error {
	if fn == nil {
		return errors.New("configstore: WatchOverrides: nil function")
	}
	return retry(ctx, s.log, "overrides", func(ctx context.Context) error {
		gctx, cancel := context.WithTimeout(ctx, opTimeout)
		resp, err := s.c.Get(gctx, s.keys.overrides(), clientv3.WithPrefix())
		cancel()
		if err != nil {
			return fmt.Errorf("reading overrides: %w", err)
		}
		m := make(map[string]Override, len(resp.Kvs))
		for _, kv := range resp.Kvs {
			s.putOverride(m, kv)
		}
		fn(s.active(m))
		wctx, wcancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		defer wcancel()
		wch := s.c.Watch(wctx, s.keys.overrides(), clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1))
		for wr := range wch {
			if err := wr.Err(); err != nil {
				return fmt.Errorf("watching overrides: %w", err)
			}
			if wr.Canceled {
				return errors.New("watching overrides: cancelled by the server")
			}
			for _, ev := range wr.Events {
				if ev.Type == mvccpb.DELETE {
					delete(m, strings.TrimPrefix(string(ev.Kv.Key), s.keys.overrides()))
				} else {
					s.putOverride(m, ev.Kv)
				}
			}
			fn(s.active(m))
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return errors.New("watching overrides: channel closed")
	})
}
