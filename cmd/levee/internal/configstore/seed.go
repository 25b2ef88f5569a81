package configstore

import (
	"context"
	"encoding/json"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/levee-dev/levee/limiter/rules"
)

// Seed stores b as version 1 if the store is empty: no current key and no
// history. It reports whether it stored it. Otherwise it stores nothing and
// returns the current version's metadata, or a zero Meta when the current
// key is missing while the history is not empty, or Get's *MalformedError
// when the current key holds a value that names no usable version: someone
// deleted or damaged it, and a node starting then must not replace the
// cluster's configuration with its own files because a key is missing.
// NewestLoadable finds what to serve in that case. The emptiness check and
// the write are one etcd transaction, so of nodes starting together on an
// empty store exactly one seeds it.
func (s *Store) Seed(ctx context.Context, b Bundle, author, reason string) (ApplyResult, bool, error) {
	if _, _, err := compile(b, s.validateShed); err != nil {
		return ApplyResult{}, false, err
	}
	meta := Meta{Version: 1, Author: author, Reason: reason, Time: s.now().UTC()}
	mv, err := json.Marshal(meta)
	if err != nil {
		return ApplyResult{}, false, fmt.Errorf("configstore: encoding version 1: %w", err)
	}
	rv, err := encodeRecord(Record{Meta: meta, Bundle: b})
	if err != nil {
		return ApplyResult{}, false, fmt.Errorf("configstore: encoding version 1: %w", err)
	}
	// [current, historyEnd) holds the current key and the history and
	// nothing else; a range comparison holds when no key in it exists.
	resp, err := s.c.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(s.keys.configCurrent()), "=", 0).WithRange(s.keys.configHistoryEnd())).
		Then(clientv3.OpPut(s.keys.configCurrent(), string(mv)), clientv3.OpPut(s.keys.historyKey(1), string(rv))).
		Commit()
	if err != nil {
		return ApplyResult{}, false, fmt.Errorf("configstore: seeding version 1: %w", err)
	}
	if resp.Succeeded {
		res := ApplyResult{Meta: meta, Changed: true, Diff: DiffBundles(Bundle{}, b, versionLabel(0), versionLabel(1))}
		s.audit("config seeded", meta, 0, res.Diff, nil)
		return res, true, nil
	}
	rec, err := s.Get(ctx)
	if err != nil {
		return ApplyResult{}, false, err
	}
	return ApplyResult{Meta: rec.Meta}, false, nil
}

// NewestLoadable returns the newest version in the history that loads (as
// Validate checks it), with its rules. It is what a node serves when the
// current key is missing or malformed, until an operator repairs it with a
// rollback or an apply. A version that does not load is skipped; if none
// does, or the history is empty, the error wraps ErrNotFound.
func (s *Store) NewestLoadable(ctx context.Context) (Record, *rules.Config, error) {
	resp, err := s.c.Get(ctx, s.keys.configHistory(), clientv3.WithPrefix(), clientv3.WithKeysOnly(),
		clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend))
	if err != nil {
		return Record{}, nil, fmt.Errorf("configstore: reading the history: %w", err)
	}
	for _, kv := range resp.Kvs {
		g, err := s.c.Get(ctx, string(kv.Key))
		if err != nil {
			return Record{}, nil, fmt.Errorf("configstore: reading %s: %w", kv.Key, err)
		}
		if len(g.Kvs) == 0 {
			continue // dropped from the history meanwhile
		}
		rec, err := decodeRecord(g.Kvs[0].Value)
		if err != nil {
			continue
		}
		if cfg, _, err := compile(rec.Bundle, s.validateShed); err == nil {
			return rec, cfg, nil
		}
	}
	return Record{}, nil, fmt.Errorf("configstore: no version in the history loads: %w", ErrNotFound)
}
