package node

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/levee-dev/levee/cmd/levee/internal/admin"
	"github.com/levee-dev/levee/cmd/levee/internal/configstore"
	"github.com/levee-dev/levee/limiter/engine"
	"github.com/levee-dev/levee/limiter/rules"
)

// AdminConfig configures the admin API listener (see package admin).
type AdminConfig struct {
	// Addr is the listen address; empty turns the admin API off.
	Addr                    string
	TokenFile               string
	TLSCertFile, TLSKeyFile string
	ClientCAFile            string
	AllowedClients          []string
}

// runtimeConfig keeps a clustered node's rules and shedding policy in step
// with the versions stored in etcd, applies operator overrides, publishes
// this node's figures for `levee ctl status`, and serves the admin API.
type runtimeConfig struct {
	log    *slog.Logger
	store  *configstore.Store
	client *clientv3.Client
	cl     *clusterNode
	eng    *engine.Engine
	shed   *shedSet
	now    func() time.Time
	tel    *telemetry
	admin  *admin.Server
	tracer trace.Tracer // nil: config applies are not traced

	version atomic.Int64
	mu      sync.Mutex
	lastErr string
	// catchUp, when etcd did not answer at start, seeds it once it does
	// (the watches load what it holds); nil otherwise.
	catchUp func(context.Context)
	// kick asks publishStatus to publish now, after a change an operator
	// will look for.
	kick chan struct{}
}

func (rt *runtimeConfig) publishSoon() {
	select {
	case rt.kick <- struct{}{}:
	default:
	}
}

// startRuntime seeds etcd from the bootstrap files when it holds no
// configuration yet, and opens the admin listener. Run starts the watches.
func startRuntime(ctx context.Context, cfg Config, cl *clusterNode, eng *engine.Engine, sh *shedSet, tel *telemetry, seed configstore.Bundle, log *slog.Logger) (*runtimeConfig, error) {
	store, err := configstore.New(configstore.Options{
		Client:       cl.client,
		Prefix:       cl.keys.Prefix(),
		ValidateShed: validateShedPolicy,
		Logger:       log,
		Now:          cfg.Now,
	})
	if err != nil {
		return nil, fmt.Errorf("config store: %w", err)
	}
	rt := &runtimeConfig{log: log, store: store, client: cl.client, cl: cl, eng: eng, shed: sh, now: cfg.Now, tel: tel, kick: make(chan struct{}, 1)}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	err = errEtcdLate
	if cl.answers(sctx) {
		err = rt.seed(sctx, cfg, seed)
	} else {
		rt.catchUp = func(ctx context.Context) { rt.seedWhenEtcdAnswers(ctx, cfg, seed) }
	}
	// Serve the stored version from the start, not the bootstrap files: a
	// node restarting into a cluster must not enforce stale limits until
	// the watch catches up.
	if err == nil {
		if rec, gerr := store.Get(sctx); gerr == nil {
			if rc, verr := store.Validate(rec.Bundle); verr == nil {
				rt.apply(rec.Meta, rc, rec.Bundle)
			} else {
				rt.refuse(rec.Meta.Version, verr)
			}
		}
	}
	if cfg.Admin.Addr != "" {
		rt.admin, err = admin.New(admin.Config{
			Addr:           cfg.Admin.Addr,
			Store:          store,
			Status:         admin.StatusFunc(rt.clusterStatus),
			TokenFile:      cfg.Admin.TokenFile,
			TLSCertFile:    cfg.Admin.TLSCertFile,
			TLSKeyFile:     cfg.Admin.TLSKeyFile,
			ClientCAFile:   cfg.Admin.ClientCAFile,
			AllowedClients: cfg.Admin.AllowedClients,
			Logger:         log,
			Now:            cfg.Now,
		})
		if err != nil {
			return nil, fmt.Errorf("admin API: %w", err)
		}
	}
	return rt, nil
}

// seed writes the bootstrap files to etcd when it holds no configuration
// yet.
func (rt *runtimeConfig) seed(ctx context.Context, cfg Config, seed configstore.Bundle) error {
	res, seeded, err := rt.store.Seed(ctx, seed, rt.cl.self.ID, "seeded from "+seedSource(cfg))
	switch {
	case err != nil:
		// etcd may be down: serve the bootstrap files until it is back.
		rt.log.Warn("could not seed the configuration in etcd; serving the bootstrap files", "err", err)
	case seeded:
		rt.log.Info("configuration seeded in etcd", "version", res.Meta.Version, "from", seedSource(cfg))
	}
	return err
}

func seedSource(cfg Config) string {
	src := "the built-in example rules"
	if cfg.RulesPath != "" {
		src = cfg.RulesPath
	}
	if cfg.ShedPolicyPath != "" {
		src += " and " + cfg.ShedPolicyPath
	}
	return src
}

// run watches the configuration and the overrides, publishes this node's
// status and serves the admin API until ctx is done.
func (rt *runtimeConfig) run(ctx context.Context, wg *sync.WaitGroup) {
	if rt.catchUp != nil {
		wg.Go(func() { rt.catchUp(ctx) })
	}
	wg.Go(func() { _ = rt.store.Watch(ctx, rt.apply, rt.refuse) })
	wg.Go(func() {
		_ = rt.store.WatchOverrides(ctx, func(os []configstore.Override) {
			rt.shed.setOverrides(os)
			rt.publishSoon()
			rt.log.Info("overrides changed", "active", len(os))
		})
	})
	wg.Go(func() { rt.publishStatus(ctx) })
	if rt.admin != nil {
		wg.Go(func() {
			if err := rt.admin.Run(ctx); err != nil {
				rt.log.Error("admin API stopped", "err", err)
			}
		})
	}
}

// apply switches the node to a new configuration version. The rules and the
// shedding policy were both validated by the store; if the policy still
// fails to build here, the whole version is refused.
func (rt *runtimeConfig) apply(m configstore.Meta, cfg *rules.Config, b configstore.Bundle) {
	end := rt.traceApply(m)
	pol, err := parseShedPolicy(configstore.ShedName, b.Shed)
	if err == nil {
		err = rt.shed.Apply(pol)
	}
	end(err)
	if err != nil {
		rt.refuse(m.Version, err)
		return
	}
	rt.eng.SetRules(cfg)
	rt.version.Store(m.Version)
	rt.setErr("")
	rt.tel.reloads.Add(context.Background(), 1, rt.tel.reloadOK)
	rt.publishSoon()
	rt.log.Info("configuration applied", "version", m.Version, "author", m.Author, "reason", m.Reason, "domains", len(cfg.Domains()))
}

// refuse reports a version this node cannot apply; it keeps the last good
// one.
func (rt *runtimeConfig) refuse(version int64, err error) {
	rt.setErr(fmt.Sprintf("version %d: %v", version, err))
	rt.tel.reloads.Add(context.Background(), 1, rt.tel.reloadFailed)
	rt.publishSoon()
	rt.log.Error("configuration refused; keeping the last good one", "version", version, "running", rt.version.Load(), "err", err)
}

func (rt *runtimeConfig) setErr(s string) {
	rt.mu.Lock()
	rt.lastErr = s
	rt.mu.Unlock()
}

func (rt *runtimeConfig) configErr() string {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	return rt.lastErr
}

// statusTTL is how long a published status outlives its node.
const statusTTL = 10

// publishStatus writes this node's figures to etcd every two seconds, under
// a lease so that a dead node's figures disappear.
func (rt *runtimeConfig) publishStatus(ctx context.Context) {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	var prev rateSample
	var lease clientv3.LeaseID
	for {
		cur := rt.sample()
		st := rt.selfStatus(cur, prev)
		if prev.at.IsZero() || cur.at.Sub(prev.at) >= time.Second {
			prev = cur // a kick right after a tick keeps the longer window for rates
		}
		if data, err := json.Marshal(st); err == nil {
			pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			if g, err := rt.client.Grant(pctx, statusTTL); err == nil {
				if _, err := rt.client.Put(pctx, rt.cl.keys.StatusOf(rt.cl.self.ID), string(data), clientv3.WithLease(g.ID)); err == nil {
					if lease != 0 {
						_, _ = rt.client.Revoke(pctx, lease)
					}
					lease = g.ID
				} else {
					_, _ = rt.client.Revoke(pctx, g.ID)
				}
			}
			cancel()
		}
		select {
		case <-ctx.Done():
			if lease != 0 {
				rctx, cancel := context.WithTimeout(context.Background(), time.Second)
				_, _ = rt.client.Revoke(rctx, lease)
				cancel()
			}
			return
		case <-t.C:
		case <-rt.kick:
		}
	}
}

func (rt *runtimeConfig) sample() rateSample { return takeSample(rt.now(), rt.eng, rt.shed) }

// selfStatus is this node's figures: rates between two samples.
func (rt *runtimeConfig) selfStatus(cur, prev rateSample) admin.MemberStatus {
	st := admin.MemberStatus{
		ID:            rt.cl.self.ID,
		Addr:          rt.cl.self.Addr,
		Reachable:     true,
		ConfigVersion: rt.version.Load(),
		ConfigError:   rt.configErr(),
	}
	st.DecisionsPerSecond, st.RefusalsPerSecond = cur.ratesSince(prev)
	for _, r := range rt.shed.Resources() {
		s := r.Status(cur.at)
		st.Thresholds = append(st.Thresholds, admin.Threshold{
			Resource:    s.Name,
			Priority:    s.Threshold.Priority().String(),
			Cohort:      uint32(s.Threshold.Cohort()),
			Pinned:      s.Pinned,
			PinnedUntil: s.PinnedUntil,
		})
	}
	return st
}

// clusterStatus is the admin API's view of the cluster: every ring member
// with the figures it last published.
func (rt *runtimeConfig) clusterStatus(ctx context.Context) (admin.ClusterStatus, error) {
	out := admin.ClusterStatus{Self: rt.cl.self.ID}
	published, err := rt.readPublished(ctx)
	rg := rt.cl.router.Ring()
	if rg == nil {
		return out, nil
	}
	for _, sh := range rg.Shares() {
		p, ok := published[sh.Member.ID]
		m := p.st
		if !ok {
			m = admin.MemberStatus{ID: sh.Member.ID, Addr: sh.Member.Addr, Error: "no status published"}
			if err != nil {
				m.Error = "etcd: " + err.Error()
			}
		}
		if sh.Member.ID == rt.cl.self.ID {
			m = rt.selfStatus(rt.sample(), rateSample{})
			if p, ok := published[sh.Member.ID]; ok {
				m.DecisionsPerSecond, m.RefusalsPerSecond = p.st.DecisionsPerSecond, p.st.RefusalsPerSecond
			}
		}
		m.RingShare = sh.Fraction
		out.Members = append(out.Members, m)
	}
	return out, nil
}

// configMetrics reports the configuration version the node runs.
func configMetrics(meter metric.Meter, rt *runtimeConfig) error {
	g, err := meter.Int64ObservableGauge("levee.config.version",
		metric.WithDescription("Configuration version (from etcd) this node runs; 0 for its bootstrap files."))
	if err != nil {
		return err
	}
	errAttr := metric.WithAttributeSet(attribute.NewSet(attribute.String("state", "refused_last")))
	okAttr := metric.WithAttributeSet(attribute.NewSet(attribute.String("state", "ok")))
	_, err = meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		if rt.configErr() != "" {
			o.ObserveInt64(g, rt.version.Load(), errAttr)
		} else {
			o.ObserveInt64(g, rt.version.Load(), okAttr)
		}
		return nil
	}, g)
	return err
}
