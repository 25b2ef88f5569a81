package node

import (
	"context"
	"encoding/json"
	"net/http"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/levee-dev/levee/cmd/levee/internal/admin"
	"github.com/levee-dev/levee/cmd/levee/internal/configstore"
	"github.com/levee-dev/levee/cmd/levee/internal/node/statuspage"
	"github.com/levee-dev/levee/limiter/engine"
	"github.com/levee-dev/levee/shed"
)

// The status page's cadence.
const (
	// statusStep is how often the node samples its resources and reads
	// the cluster's published figures for the page.
	statusStep = 2 * time.Second
	// statusWindow is how far back the resource charts go.
	statusWindow = 5 * time.Minute
	// goneRetention is how long a node that left the ring stays listed.
	goneRetention = 5 * time.Minute
	// pageRefresh is how often the page polls /status.json.
	pageRefresh = time.Second
	// configChanges is how many stored versions the page lists.
	configChanges = 8
)

// statusView is the node's status page (package statuspage): every
// statusStep it samples its resources into a five-minute history and, in a
// cluster, reads what the members published to etcd, the overrides and the
// last configuration changes; each /status.json request adds the live
// figures of this node (ring, thresholds, in-flight) to that.
type statusView struct {
	n *node

	mu        sync.Mutex
	hist      *statuspage.History
	roster    *statuspage.Roster
	prev, cur rateSample
	published map[string]publishedStatus
	overrides []configstore.Override
	changes   []configstore.Meta
	warnings  []string
}

// publishedStatus is a member's figures as read from etcd, with the
// revision that tells a fresh publication from the last one.
type publishedStatus struct {
	st       admin.MemberStatus
	revision int64
}

func newStatusView(n *node) *statusView {
	return &statusView{
		n:         n,
		hist:      statuspage.NewHistory(statusWindow, statusStep),
		roster:    statuspage.NewRoster(goneRetention),
		published: map[string]publishedStatus{},
	}
}

// register serves the page on mux.
func (v *statusView) register(mux *http.ServeMux) error {
	return statuspage.Register(mux, v.document)
}

// run samples every statusStep until ctx is done.
func (v *statusView) run(ctx context.Context) {
	t := time.NewTicker(statusStep)
	defer t.Stop()
	for {
		v.sample(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// sample takes one step: the resources' readings, and in a cluster what
// etcd holds. The etcd reads happen outside the lock.
func (v *statusView) sample(ctx context.Context) {
	n := v.n
	now := n.cfg.Now()
	cur := takeSample(now, n.eng, n.shedding)
	if n.cl != nil {
		ps := n.cl.router.Stats()
		cur.forwarded, cur.local, cur.fallbacks = ps.Forwarded.Load(), ps.Local.Load(), ps.Fallbacks.Load()
	}
	var readings []statuspage.Reading
	for _, r := range n.shedding.Resources() {
		rd := statuspage.Reading{Resource: r.Name(), Threshold: r.Status(now).Threshold}
		for p := shed.Critical; p <= shed.Sheddable; p++ {
			c := r.Counts(p)
			rd.Admitted += c.Admitted
			for _, x := range c.Refused {
				rd.Refused += x
			}
		}
		readings = append(readings, rd)
	}
	var (
		published map[string]publishedStatus
		overrides []configstore.Override
		changes   []configstore.Meta
		warnings  []string
	)
	if rt := n.rt; rt != nil {
		rctx, cancel := context.WithTimeout(ctx, statusStep)
		var err error
		if published, err = rt.readPublished(rctx); err != nil {
			warnings = append(warnings, "reading the members' status from etcd: "+err.Error())
		}
		if overrides, err = rt.store.ListOverrides(rctx); err != nil {
			warnings = append(warnings, "reading the overrides from etcd: "+err.Error())
		}
		if changes, err = rt.store.History(rctx, configChanges); err != nil {
			warnings = append(warnings, "reading the configuration history from etcd: "+err.Error())
		}
		cancel()
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	v.hist.Record(now, readings)
	if v.cur.at.IsZero() || cur.at.Sub(v.cur.at) >= time.Second {
		v.prev, v.cur = v.cur, cur
	}
	if published != nil {
		v.published = published
	}
	// Keep the last good overrides and history when etcd does not answer:
	// the warning says they may be stale.
	if overrides != nil {
		v.overrides = overrides
	}
	if changes != nil {
		v.changes = changes
	}
	v.warnings = warnings
}

// readPublished reads every member's published figures.
func (rt *runtimeConfig) readPublished(ctx context.Context) (map[string]publishedStatus, error) {
	resp, err := rt.client.Get(ctx, rt.cl.keys.Status(), clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	out := make(map[string]publishedStatus, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var m admin.MemberStatus
		if json.Unmarshal(kv.Value, &m) == nil && m.ID != "" {
			out[m.ID] = publishedStatus{st: m, revision: kv.ModRevision}
		}
	}
	return out, nil
}

// document is /status.json: the sampled state and this node's live figures.
func (v *statusView) document(_ context.Context) statuspage.Status {
	n := v.n
	now := n.cfg.Now()
	doc := statuspage.Status{
		SchemaVersion:  statuspage.SchemaVersion,
		GeneratedAt:    now,
		Clustered:      n.cl != nil,
		RefreshSeconds: pageRefresh.Seconds(),
		Resources:      []statuspage.Resource{},
		Overrides:      []statuspage.Override{},
		Config:         statuspage.NodeConfig{Changes: []statuspage.Change{}},
	}
	v.mu.Lock()
	defer v.mu.Unlock()

	self := statuspage.Member{Self: true, RefusalsPerSecond: map[string]float64{}}
	self.DecisionsPerSecond, self.RefusalsPerSecond = v.cur.ratesSince(v.prev)
	if n.cl != nil {
		doc.Peer = v.cur.peerSince(v.prev)
	}
	for _, r := range n.shedding.Resources() {
		s := r.Status(now)
		self.Thresholds = append(self.Thresholds, memberThreshold(admin.Threshold{
			Resource: s.Name, Priority: s.Threshold.Priority().String(), Cohort: uint32(s.Threshold.Cohort()),
			Pinned: s.Pinned, PinnedUntil: s.PinnedUntil,
		}))
		res := statuspage.Resource{
			Name:              s.Name,
			Threshold:         statuspage.LevelOf(s.Threshold),
			AutoThreshold:     statuspage.LevelOf(s.AutoThreshold),
			Shedding:          s.Threshold > 0,
			Pinned:            s.Pinned,
			Shadow:            s.Shadow,
			Overloaded:        s.Overloaded,
			ConcurrencyLimit:  s.Limit,
			Inflight:          s.Inflight,
			QueueDelaySeconds: s.QueueDelay.Seconds(),
			CapacityPerSecond: s.Capacity,
			History:           statuspage.Hist(v.hist.Points(s.Name, now)),
		}
		if s.Pinned {
			res.PinnedUntil = &s.PinnedUntil
		}
		doc.Resources = append(doc.Resources, res)
	}

	var sightings []statuspage.Sighting
	conf := n.conf.state()
	self.Config = pageConfig(admin.MemberStatus{ConfigVersion: conf.Version, ConfigError: conf.Err,
		ConfigSource: conf.Source, ConfigHash: conf.Hash, ConfigAppliedAt: conf.AppliedAt})
	if cl := n.cl; cl != nil {
		self.ID, self.Addr = cl.self.ID, cl.self.Addr
		doc.Config.Version, doc.Config.Error = self.Config.Version, self.Config.Error
		if rg := cl.router.Ring(); rg != nil {
			for _, sh := range rg.Shares() {
				if sh.Member.ID == self.ID {
					self.RingShare = sh.Fraction
					continue
				}
				s := statuspage.Sighting{ID: sh.Member.ID, InRing: true}
				if p, ok := v.published[sh.Member.ID]; ok {
					s.Revision, s.Member = p.revision, memberOf(p.st)
				} else {
					s.Member.Error = "no status published"
				}
				s.Member.Addr, s.Member.RingShare = sh.Member.Addr, sh.Fraction
				sightings = append(sightings, s)
			}
		}
		for _, o := range v.overrides {
			doc.Overrides = append(doc.Overrides, statuspage.Override{
				Resource: o.Resource, MinPriority: o.MinPriority, Author: o.Author, Reason: o.Reason,
				SetAt: o.SetAt, Until: o.Until, SecondsLeft: max(0, o.Until.Sub(now).Seconds()),
			})
		}
		for _, c := range v.changes {
			doc.Config.Changes = append(doc.Config.Changes, statuspage.Change{Version: c.Version, Author: c.Author, Reason: c.Reason, Time: c.Time, RollbackOf: c.RollbackOf})
		}
	} else {
		self.ID, self.Addr, self.RingShare = defaultNodeID(n.lis.Addr().String()), n.lis.Addr().String(), 1
	}
	doc.Node = self.ID
	sightings = append(sightings, statuspage.Sighting{ID: self.ID, InRing: true, Self: true, Member: self})
	v.roster.Observe(now, sightings)
	doc.Members = v.roster.Members(now)
	doc.Warnings = append([]string{}, v.warnings...)
	doc.Alerts = statuspage.Alerts(doc)
	return doc
}

// pageConfig is a member's configuration as the page shows it: the one
// place that maps admin.MemberStatus's configuration to the page's.
func pageConfig(st admin.MemberStatus) statuspage.MemberConfig {
	c := statuspage.MemberConfig{Version: st.ConfigVersion, Error: st.ConfigError, Source: st.ConfigSource, Hash: st.ConfigHash}
	if !st.ConfigAppliedAt.IsZero() {
		at := st.ConfigAppliedAt
		c.AppliedAt = &at
	}
	return c
}

// memberOf is a member's published figures as the page shows them.
func memberOf(st admin.MemberStatus) statuspage.Member {
	m := statuspage.Member{
		ID:                 st.ID,
		Addr:               st.Addr,
		DecisionsPerSecond: st.DecisionsPerSecond,
		RefusalsPerSecond:  st.RefusalsPerSecond,
		Config:             pageConfig(st),
		Error:              st.Error,
	}
	if m.RefusalsPerSecond == nil {
		m.RefusalsPerSecond = map[string]float64{}
	}
	for _, t := range st.Thresholds {
		m.Thresholds = append(m.Thresholds, memberThreshold(t))
	}
	return m
}

func memberThreshold(t admin.Threshold) statuspage.Threshold {
	out := statuspage.Threshold{Resource: t.Resource, Priority: t.Priority, Cohort: t.Cohort, Pinned: t.Pinned}
	if t.Pinned {
		u := t.PinnedUntil
		out.PinnedUntil = &u
	}
	return out
}

// rateSample is a reading of the node's counters, for rates.
type rateSample struct {
	at       time.Time
	decided  uint64
	refusals [shed.Sheddable + 1]uint64
	// A clustered node's checks of keys other nodes own (peer.Stats).
	forwarded, local, fallbacks uint64
}

// takeSample reads the engine's decisions and the resources' refusals by
// priority at now.
func takeSample(now time.Time, eng *engine.Engine, sh *shedSet) rateSample {
	s := rateSample{at: now, decided: eng.Decided()}
	for _, r := range sh.Resources() {
		for p := shed.Critical; p <= shed.Sheddable; p++ {
			for _, n := range r.Counts(p).Refused {
				s.refusals[p] += n
			}
		}
	}
	return s
}

// peerSince is the peer figures' rates between prev and s; zero rates
// when prev is not an earlier reading.
func (s rateSample) peerSince(prev rateSample) *statuspage.Peer {
	secs, ok := s.secsSince(prev)
	if !ok {
		return &statuspage.Peer{}
	}
	rate := func(a, b uint64) float64 { return float64(a-min(a, b)) / secs }
	return &statuspage.Peer{
		ForwardedPerSecond:  rate(s.forwarded, prev.forwarded),
		FromLeasesPerSecond: rate(s.local, prev.local),
		FallbacksPerSecond:  rate(s.fallbacks, prev.fallbacks),
	}
}

// secsSince is the seconds from prev to s, if prev is an earlier reading.
func (s rateSample) secsSince(prev rateSample) (float64, bool) {
	secs := s.at.Sub(prev.at).Seconds()
	return secs, !prev.at.IsZero() && secs > 0
}

// ratesSince is the decision rate and the refusal rates by priority name
// between prev and s; zero rates when prev is not an earlier reading.
func (s rateSample) ratesSince(prev rateSample) (decisions float64, refusals map[string]float64) {
	refusals = map[string]float64{}
	secs, ok := s.secsSince(prev)
	if !ok {
		return 0, refusals
	}
	for p := shed.Critical; p <= shed.Sheddable; p++ {
		refusals[p.String()] = float64(s.refusals[p]-prev.refusals[p]) / secs
	}
	return float64(s.decided-prev.decided) / secs, refusals
}
