package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
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

// runtimeConfig is a clustered node's state in etcd: in etcd mode it keeps
// the node's rules and shedding policy in step with the stored versions (in
// file mode a fileSource does that from the node's own files); in both it
// applies operator overrides, publishes this node's figures for `levee ctl
// status`, and serves the admin API.
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
	conf   *enforced

	// boot is the bootstrap bundle; given is whether its rules and its
	// policy came from files the operator named (--config,
	// --shed-policy), which an etcd-mode node compares with the stored
	// version it enforces.
	boot                  configstore.Bundle
	rulesGiven, shedGiven bool
	rulesPath, policyPath string
	// catchUp, when etcd did not answer at start, seeds it once it does;
	// nil otherwise.
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

// startRuntime opens the config store and the admin listener; in etcd mode
// it seeds an empty store with the bootstrap bundle and applies the stored
// version. Run starts the watches.
func startRuntime(ctx context.Context, cfg Config, cl *clusterNode, eng *engine.Engine, sh *shedSet, tel *telemetry, boot configstore.Bundle, conf *enforced, log *slog.Logger) (*runtimeConfig, error) {
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
	rt := &runtimeConfig{log: log, store: store, client: cl.client, cl: cl, eng: eng, shed: sh, now: cfg.Now, tel: tel, conf: conf,
		boot: boot, rulesGiven: cfg.RulesPath != "", shedGiven: cfg.ShedPolicyPath != "", rulesPath: cfg.RulesPath, policyPath: cfg.ShedPolicyPath,
		kick: make(chan struct{}, 1)}
	// A node whose etcd does not answer serves its bootstrap files at once
	// and names the endpoints it retries (answers logs them); membership,
	// overrides and status retry on their own.
	up := cl.answers(ctx)
	if conf.source == admin.SourceEtcd {
		if up {
			rt.loadStored(ctx, cfg)
		} else {
			rt.catchUp = func(ctx context.Context) { rt.seedWhenEtcdAnswers(ctx, cfg) }
		}
	}
	if cfg.Admin.Addr != "" {
		rt.admin, err = admin.New(admin.Config{
			Addr:           cfg.Admin.Addr,
			Store:          store,
			Status:         admin.StatusFunc(rt.clusterStatus),
			ConfigSource:   conf.source,
			ConfigFiles:    conf.paths,
			EnforcedRules:  eng.Rules,
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

// loadStored seeds an empty store with the bootstrap bundle, then applies
// the stored version from the start, not the bootstrap files: a node
// restarting into a cluster must not enforce stale limits until the watch
// catches up. If etcd cannot be read, the node serves its bootstrap files
// until the watch delivers a version.
func (rt *runtimeConfig) loadStored(ctx context.Context, cfg Config) {
	log, store := rt.log, rt.store
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	res, seeded, err := store.Seed(sctx, rt.boot, rt.cl.self.ID, "seeded from "+seedSource(cfg))
	var malformed *configstore.MalformedError
	switch {
	case errors.As(err, &malformed):
		// Damaged, not empty: served from the history below.
	case err != nil:
		log.Warn("could not seed the configuration in etcd; serving the bootstrap files", "err", err)
		return
	case seeded:
		log.Info("configuration seeded in etcd", "version", res.Meta.Version, "from", seedSource(cfg))
	}
	rec, err := store.Get(sctx)
	if err == nil && rec.Version > 0 {
		if rc, verr := store.Validate(rec.Bundle); verr == nil {
			rt.apply(rec.Meta, rc, rec.Bundle)
		} else {
			rt.refuse(rec.Meta.Version, verr)
		}
		if w := rt.differs(rec.Meta, rec.Bundle); w != "" {
			var attrs []any
			if rt.rulesGiven {
				attrs = append(attrs, "config", rt.rulesPath)
			}
			if rt.shedGiven {
				attrs = append(attrs, "shed_policy", rt.policyPath)
			}
			attrs = append(attrs, "files_hash", rt.boot.Hash(), "stored_version", rec.Version, "stored_hash", rec.Bundle.Hash())
			log.Warn("the files given differ from the stored configuration, which this node enforces (config source etcd): apply them with levee ctl apply, or run with --config-source file", attrs...)
		}
		return
	}
	// The store is not empty (Seed said so), yet the current key is
	// missing or unreadable: serve what the history holds, never this
	// node's own files, and say how to repair it.
	why := "is missing"
	if err != nil {
		why = "is unreadable (" + err.Error() + ")"
	}
	rec, rc, nerr := store.NewestLoadable(sctx)
	if nerr != nil {
		msg := fmt.Sprintf("the current-version key %s and no version in the history loads (%v); serving this node's bootstrap files; repair with levee ctl apply", why, nerr)
		rt.conf.setWarning(msg)
		log.Error("configuration store damaged: "+msg, "err", nerr)
		return
	}
	rt.apply(rec.Meta, rc, rec.Bundle)
	msg := fmt.Sprintf("the current-version key %s; serving version %d, the newest in the history that loads; nothing was seeded; repair with levee ctl rollback %d (or levee ctl apply)", why, rec.Version, rec.Version)
	rt.conf.setWarning(msg)
	log.Error("configuration store damaged: "+msg, "version", rec.Version)
}

// differs says how the files this node was given differ from stored
// version m (empty if they do not, or none were given): only the parts an
// operator named are compared, so a --config alone is not compared with
// the stored shedding policy.
func (rt *runtimeConfig) differs(m configstore.Meta, b configstore.Bundle) string {
	var named []string
	if rt.rulesGiven && !(configstore.Bundle{Rules: rt.boot.Rules}).Equal(configstore.Bundle{Rules: b.Rules}) {
		named = append(named, "--config "+rt.rulesPath)
	}
	if rt.shedGiven && string(rt.boot.Shed) != string(b.Shed) {
		named = append(named, "--shed-policy "+rt.policyPath)
	}
	if len(named) == 0 {
		return ""
	}
	return fmt.Sprintf("%s (hash %s) differs from the stored version %d (hash %s), which is enforced",
		strings.Join(named, " and "), rt.boot.Hash(), m.Version, b.Hash())
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
	if rt.conf.source == admin.SourceEtcd {
		wg.Go(func() { _ = rt.store.Watch(ctx, rt.apply, rt.refuse) })
	}
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
	hash := b.Hash()
	rt.conf.applied(m.Version, hash)
	rt.conf.setWarning(rt.differs(m, b))
	rt.tel.reloads.Add(context.Background(), 1, rt.tel.reloadOK)
	rt.publishSoon()
	rt.log.Info("configuration applied", "source", admin.SourceEtcd, "version", m.Version, "hash", hash, "author", m.Author, "reason", m.Reason, "domains", len(cfg.Domains()))
}

// refuse reports a version this node cannot apply; it keeps the last good
// one.
func (rt *runtimeConfig) refuse(version int64, err error) {
	rt.conf.refused(fmt.Sprintf("version %d: %v", version, err))
	rt.tel.reloads.Add(context.Background(), 1, rt.tel.reloadFailed)
	rt.publishSoon()
	rt.log.Error("configuration refused; keeping the last good one", "version", version, "running", rt.conf.state().Version, "err", err)
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
	conf := rt.conf.state()
	st := admin.MemberStatus{
		ID:              rt.cl.self.ID,
		Addr:            rt.cl.self.Addr,
		Reachable:       true,
		ConfigVersion:   conf.Version,
		ConfigError:     conf.Err,
		ConfigSource:    conf.Source,
		ConfigHash:      conf.Hash,
		ConfigAppliedAt: conf.AppliedAt,
		ConfigPaths:     conf.Paths,
		ConfigWarning:   conf.Warning,
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
	admin.FlagDivergent(out.Members, rt.now())
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
		if st := rt.conf.state(); st.Err != "" {
			o.ObserveInt64(g, st.Version, errAttr)
		} else {
			o.ObserveInt64(g, st.Version, okAttr)
		}
		return nil
	}, g)
	return err
}
