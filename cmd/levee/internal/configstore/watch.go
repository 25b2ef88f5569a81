package configstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/levee-dev/levee/limiter/backoff"
	"github.com/levee-dev/levee/limiter/rules"
)

// Bounds of the wait between watch sessions, and of one etcd read inside a
// session.
const (
	retryMin  = 100 * time.Millisecond
	retryMax  = 2 * time.Second
	opTimeout = 5 * time.Second
)

// errCurrentDeleted is reported when the current key disappears; the nodes
// keep the configuration they run.
var errCurrentDeleted = errors.New("the current configuration key was deleted; keeping the last good configuration")

// Watch delivers the current version, then every new one, until ctx is
// done; it returns ctx's error. Each version is loaded with the code Apply
// validates with (Validate), and apply is called only with versions that
// load: for one that does not (a node running older code than the writer,
// or a hand-edited key), onError is called with its version and the reason,
// and the caller keeps its last good configuration. Both are called from
// Watch's goroutine, in version order, one at a time.
//
// If nothing is stored yet, nothing is delivered until the first version
// is. If etcd is unreachable or the watch breaks (compaction, lost leader),
// Watch keeps the last version delivered, reconnects with capped backoff,
// reads the current version again and delivers it if it differs: versions
// committed during an outage may be skipped, the latest one never is.
func (s *Store) Watch(ctx context.Context, apply func(Meta, *rules.Config, Bundle), onError func(version int64, err error)) error {
	if apply == nil {
		return errors.New("configstore: Watch: nil apply function")
	}
	if onError == nil {
		onError = func(int64, error) {}
	}
	w := &configWatch{s: s, apply: apply, onError: onError}
	return retry(ctx, s.log, "config", w.session)
}

// configWatch is the state of one Watch call.
type configWatch struct {
	s       *Store
	apply   func(Meta, *rules.Config, Bundle)
	onError func(int64, error)
	last    int64 // the version last delivered or refused
}

// session reads the current version and follows changes from there. It
// returns why it ended.
func (w *configWatch) session(ctx context.Context) error {
	s := w.s
	gctx, cancel := context.WithTimeout(ctx, opTimeout)
	resp, err := s.c.Get(gctx, s.keys.configCurrent())
	cancel()
	if err != nil {
		return fmt.Errorf("reading %s: %w", s.keys.configCurrent(), err)
	}
	if len(resp.Kvs) > 0 {
		if err := w.deliver(ctx, resp.Kvs[0], nil); err != nil {
			return err
		}
	}
	wctx, wcancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer wcancel()
	// One watch covers the current key and the history, so that a new
	// version's content arrives in the same response as its current key.
	wch := s.c.Watch(wctx, s.keys.configCurrent(), clientv3.WithRange(s.keys.configHistoryEnd()), clientv3.WithRev(resp.Header.Revision+1))
	for wr := range wch {
		if err := wr.Err(); err != nil {
			return fmt.Errorf("watching %s: %w", s.keys.configCurrent(), err)
		}
		if wr.Canceled {
			return fmt.Errorf("watching %s: cancelled by the server", s.keys.configCurrent())
		}
		records := make(map[string]*mvccpb.KeyValue)
		for _, ev := range wr.Events {
			if ev.Type == mvccpb.PUT && string(ev.Kv.Key) != s.keys.configCurrent() {
				records[string(ev.Kv.Key)] = ev.Kv
			}
		}
		for _, ev := range wr.Events {
			if string(ev.Kv.Key) != s.keys.configCurrent() {
				continue
			}
			if ev.Type == mvccpb.DELETE {
				s.log.Error("refusing configuration change", "version", w.last, "err", errCurrentDeleted)
				w.onError(w.last, errCurrentDeleted)
				continue
			}
			if err := w.deliver(ctx, ev.Kv, records); err != nil {
				return err
			}
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return fmt.Errorf("watching %s: channel closed", s.keys.configCurrent())
}

// deliver loads the version that the current key kv names and hands it to
// apply or onError. records holds history values that arrived with kv. It
// returns an error only for a failed etcd read, which ends the session so
// the version is tried again.
func (w *configWatch) deliver(ctx context.Context, kv *mvccpb.KeyValue, records map[string]*mvccpb.KeyValue) error {
	s := w.s
	var m Meta
	if err := json.Unmarshal(kv.Value, &m); err != nil {
		w.refuse(0, fmt.Errorf("%s holds a malformed value: %w", s.keys.configCurrent(), err))
		return nil
	}
	if m.Version == w.last {
		return nil
	}
	hk := s.keys.historyKey(m.Version)
	var value []byte
	if r, ok := records[hk]; ok {
		value = r.Value
	} else {
		gctx, cancel := context.WithTimeout(ctx, opTimeout)
		resp, err := s.c.Get(gctx, hk)
		cancel()
		if err != nil {
			return fmt.Errorf("reading version %d: %w", m.Version, err)
		}
		if len(resp.Kvs) == 0 {
			w.refuse(m.Version, fmt.Errorf("the record of version %d is missing from the history", m.Version))
			return nil
		}
		value = resp.Kvs[0].Value
	}
	rec, err := decodeRecord(value)
	if err != nil {
		w.refuse(m.Version, fmt.Errorf("the record of version %d is malformed: %w", m.Version, err))
		return nil
	}
	cfg, _, err := compile(rec.Bundle, s.validateShed)
	if err != nil {
		w.refuse(m.Version, err)
		return nil
	}
	w.last = m.Version
	w.apply(rec.Meta, cfg, rec.Bundle)
	return nil
}

// refuse reports a version that cannot be applied and remembers it, so it
// is reported once.
func (w *configWatch) refuse(v int64, err error) {
	w.last = v
	w.s.log.Error("refusing configuration; keeping the last good one", "version", v, "err", err)
	w.onError(v, err)
}

// retry runs session until ctx is done, waiting between sessions with
// capped exponential backoff and jitter. A session that lasted longer than
// retryMax is taken to have worked, and resets the backoff.
func retry(ctx context.Context, log *slog.Logger, what string, session func(context.Context) error) error {
	b := backoff.Backoff{Min: retryMin, Max: retryMax}
	for {
		start := time.Now()
		err := session(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Since(start) > retryMax {
			b.Reset()
		}
		d := b.Next(rand.Float64())
		log.Warn("etcd watch ended; keeping the last state and retrying", "watch", what, "err", err, "retry_in", d)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}
