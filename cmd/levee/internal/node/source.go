package node

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/levee-dev/levee/cmd/levee/internal/admin"
	"github.com/levee-dev/levee/cmd/levee/internal/configstore"
	"github.com/levee-dev/levee/limiter/engine"
	"github.com/levee-dev/levee/limiter/rules"
	"github.com/levee-dev/levee/shed/policy"
)

// source resolves Config.ConfigSource to admin.SourceFile or
// admin.SourceEtcd, and says why, as the start log reports it: a
// standalone node has only its files; a clustered one enforces its files
// when given --config, and the versions stored in etcd otherwise.
func (c Config) source() (src, why string, err error) {
	switch c.ConfigSource {
	case "", "auto":
		switch {
		case c.Cluster == nil:
			return admin.SourceFile, "--standalone", nil
		case c.RulesPath != "":
			return admin.SourceFile, "--config given", nil
		}
		return admin.SourceEtcd, "no --config", nil
	case admin.SourceFile:
		return admin.SourceFile, "--config-source file", nil
	case admin.SourceEtcd:
		if c.Cluster == nil {
			return "", "", fmt.Errorf("--config-source etcd needs etcd, and --standalone runs without it: drop one of --standalone and --config-source etcd")
		}
		return admin.SourceEtcd, "--config-source etcd", nil
	}
	return "", "", fmt.Errorf("--config-source %q: want file, etcd or auto", c.ConfigSource)
}

// configPaths are the files a node in file mode enforces, absolute so that
// they mean something to an operator reading the status on another host.
func (c Config) configPaths() []string {
	var out []string
	for _, p := range []string{c.RulesPath, c.ShedPolicyPath} {
		if p == "" {
			continue
		}
		if abs, err := filepath.Abs(p); err == nil {
			p = abs
		}
		out = append(out, p)
	}
	return out
}

// enforced is what a node enforces: where its configuration comes from,
// which one it is (version and content hash), since when, and what went
// wrong last. Whoever applies a configuration (the file watchers, or the
// etcd watch) writes it; the status, the metrics and the start log read
// it.
type enforced struct {
	source string
	paths  []string // file mode
	now    func() time.Time

	mu        sync.Mutex
	version   int64
	hash      string
	appliedAt time.Time
	err       string
	warning   string
}

// enforcedState is a copy of an enforced's fields.
type enforcedState struct {
	Source       string
	Paths        []string
	Version      int64
	Hash         string
	AppliedAt    time.Time
	Err, Warning string
}

func newEnforced(source string, paths []string, now func() time.Time) *enforced {
	return &enforced{source: source, paths: paths, now: now}
}

// applied records that the node enforces version (0 for files) with
// content hash, and clears the last refusal. The applied time moves only
// when the content does: the same content applied again (a watch that
// reconnects) is not a change. It reports whether the content changed.
func (e *enforced) applied(version int64, hash string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	changed := hash != e.hash || version != e.version || e.appliedAt.IsZero()
	if changed {
		e.appliedAt = e.now()
	}
	e.version, e.hash, e.err = version, hash, ""
	return changed
}

// refused records a configuration the node could not apply; it keeps the
// last good one.
func (e *enforced) refused(msg string) {
	e.mu.Lock()
	e.err = msg
	e.mu.Unlock()
}

// setWarning sets (or, with "", clears) the warning.
func (e *enforced) setWarning(w string) {
	e.mu.Lock()
	e.warning = w
	e.mu.Unlock()
}

// forgetHash records that the content enforced is no longer known (see
// fileSource.rulesRefused).
func (e *enforced) forgetHash(hash string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.hash != hash {
		return false
	}
	e.hash = ""
	return true
}

func (e *enforced) state() enforcedState {
	e.mu.Lock()
	defer e.mu.Unlock()
	return enforcedState{Source: e.source, Paths: e.paths, Version: e.version, Hash: e.hash, AppliedAt: e.appliedAt, Err: e.err, Warning: e.warning}
}

// configInfoMetrics reports what the node enforces: levee_config_info,
// always 1, with the source, hash and version as labels (an info metric:
// join on it, or count distinct hashes across nodes), and when it began.
func configInfoMetrics(meter metric.Meter, conf *enforced) error {
	info, err := meter.Int64ObservableGauge("levee.config.info",
		metric.WithDescription("The configuration this node enforces: its source (file or etcd), content hash and version (0 for files); always 1."))
	if err != nil {
		return err
	}
	at, err := meter.Float64ObservableGauge("levee.config.applied_timestamp",
		metric.WithDescription("When this node began enforcing its configuration, in seconds since the epoch."),
		metric.WithUnit("s"))
	if err != nil {
		return err
	}
	_, err = meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		st := conf.state()
		o.ObserveInt64(info, 1, metric.WithAttributes(
			attribute.String("source", st.Source), attribute.String("hash", st.Hash), attribute.String("version", strconv.FormatInt(st.Version, 10))))
		if !st.AppliedAt.IsZero() {
			o.ObserveFloat64(at, float64(st.AppliedAt.UnixNano())/1e9)
		}
		return nil
	}, info, at)
	return err
}

// fileSource keeps a node in file mode in step with its own files, as
// envoyproxy/ratelimit follows its ConfigMap: the rule files through a
// rules.Watcher, the shedding policy file by polling it. A change that
// loads is applied; one that does not is refused with its path, line and
// reason, and the last good configuration keeps serving. Nothing is
// written anywhere: nodes reading different files for a while (a
// ConfigMap reaches pods up to a minute apart) each enforce their own.
type fileSource struct {
	cfg     Config
	watcher *rules.Watcher // nil without rule files
	log     *slog.Logger
	eng     *engine.Engine
	shed    *shedSet
	tel     *telemetry
	conf    *enforced
	// changed, if not nil, is told after each change (to publish the
	// node's status soon).
	changed func()

	mu        sync.Mutex
	rules     map[string][]byte // the rule files of the rules enforced
	policy    []byte            // the policy enforced
	rulesErr  string            // why the rule files as they are now are refused
	policyErr string            // why the policy file as it is now is refused
}

// newFileSource starts from the bootstrap bundle, which the node enforces
// from the start; w, nil without rule files, is the watcher that loaded
// the rules.
func newFileSource(cfg Config, w *rules.Watcher, boot configstore.Bundle, eng *engine.Engine, sh *shedSet, tel *telemetry, conf *enforced, log *slog.Logger) *fileSource {
	return &fileSource{cfg: cfg, watcher: w, log: log, eng: eng, shed: sh, tel: tel, conf: conf, rules: boot.Rules, policy: boot.Shed}
}

// run watches the files until ctx is done.
func (fs *fileSource) run(ctx context.Context, wg *sync.WaitGroup) {
	if w := fs.watcher; w != nil {
		w.OnError = fs.rulesRefused
		wg.Go(func() { _ = w.Run(ctx, fs.applyRules) })
	}
	if fs.cfg.ShedPolicyPath != "" {
		wg.Go(func() { fs.watchPolicy(ctx) })
	}
}

// applyRules enforces rules the watcher loaded, and reads their files
// again for the hash: the watcher hands over the rules, not the bytes.
func (fs *fileSource) applyRules(c *rules.Config) {
	if c != fs.eng.Rules() {
		fs.eng.SetRules(c)
		fs.tel.reloads.Add(context.Background(), 1, fs.tel.reloadOK)
	}
	files, err := ruleFiles(fs.cfg.RulesPath)
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.rulesErr = ""
	if err != nil {
		// Gone again since the watcher read them: its next poll says so.
		fs.log.Warn("rule files unreadable right after they loaded; the hash is updated at the next change", "path", fs.cfg.RulesPath, "err", err)
		return
	}
	fs.rules = files
	fs.appliedLocked()
}

// rulesRefused reports rule files that did not load (the watcher has
// logged each problem with its path, line and reason). The hash published
// for the last good rules was computed from the files as read after they
// loaded; if by then the files already held the content refused now, that
// hash is not what is enforced, and it is withdrawn until the next good
// change.
func (fs *fileSource) rulesRefused(err error) {
	fs.tel.reloads.Add(context.Background(), 1, fs.tel.reloadFailed)
	files, rerr := ruleFiles(fs.cfg.RulesPath)
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.rulesErr = fmt.Sprintf("%s: %v", fs.cfg.RulesPath, err)
	fs.refusedLocked()
	if rerr == nil {
		cur := configstore.Bundle{Rules: fs.rules, Shed: fs.policy}.Hash()
		if bad := (configstore.Bundle{Rules: files, Shed: fs.policy}).Hash(); bad == cur && fs.conf.forgetHash(cur) {
			fs.log.Warn("the rule files changed while they were read: the hash of the rules enforced is unknown until the next good change", "path", fs.cfg.RulesPath)
		}
	}
}

// watchPolicy polls the shedding policy file and applies each new content
// that parses. A ConfigMap's symbolic links are followed by the read.
func (fs *fileSource) watchPolicy(ctx context.Context) {
	path := fs.cfg.ShedPolicyPath
	t := time.NewTicker(fs.cfg.RulesPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		fs.pollPolicy(path)
	}
}

func (fs *fileSource) pollPolicy(path string) {
	data, err := configstore.ReadFile(path)
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if err == nil && bytes.Equal(data, fs.policy) {
		if fs.policyErr != "" { // changed back to what is enforced
			fs.policyErr = ""
			fs.refusedLocked()
		}
		return
	}
	if err == nil {
		var pol *policy.Policy
		if pol, err = parseShedPolicy(path, data); err == nil {
			err = fs.shed.Apply(pol)
		}
	}
	if err != nil {
		if err.Error() != fs.policyErr { // reported once
			fs.policyErr = err.Error()
			fs.tel.reloads.Add(context.Background(), 1, fs.tel.reloadFailed)
			fs.log.Error("shedding policy not reloaded; keeping the last good one", "path", path, "err", err)
			fs.refusedLocked()
		}
		return
	}
	fs.policyErr = ""
	fs.tel.reloads.Add(context.Background(), 1, fs.tel.reloadOK)
	fs.log.Info("shedding policy loaded", "path", path, "resources", len(fs.shed.Resources()))
	fs.policy = data
	fs.appliedLocked()
}

// appliedLocked records the files now enforced; fs.mu is held.
func (fs *fileSource) appliedLocked() {
	h := configstore.Bundle{Rules: fs.rules, Shed: fs.policy}.Hash()
	if fs.conf.applied(0, h) {
		fs.log.Info("configuration applied", "source", admin.SourceFile, "hash", h, "paths", fs.conf.paths)
	}
	fs.refusedLocked()
}

// refusedLocked publishes why the files as they are now are refused, if
// they are; fs.mu is held.
func (fs *fileSource) refusedLocked() {
	msg := fs.rulesErr
	if fs.policyErr != "" {
		if msg != "" {
			msg += "; "
		}
		msg += fs.policyErr
	}
	fs.conf.refused(msg)
	if fs.changed != nil {
		fs.changed()
	}
}
