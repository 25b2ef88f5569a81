package configstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/cespare/xxhash/v2"

	"github.com/levee-dev/levee/shed/shedtest"
)

// TestMalformedCurrentReplaced: with a malformed value in the current key,
// Get says what it holds; Apply, DryRun and Rollback replace it when they
// expect the newest version in the history, by compare-and-swap on its
// revision, and report what they replaced; Seed leaves it alone.
func TestMalformedCurrentReplaced(t *testing.T) {
	for _, tc := range []struct {
		name, value string
		cause       string
	}{
		{"not JSON", "{garbage", "invalid character"},
		{"version 0", `{"version":0}`, "it names version 0"},
		{"missing version", `{"version":99}`, "it names version 99: configstore: version 99 does not exist (the newest is 2)"},
		{"malformed record", `{"version":2}`, "it names version 2: configstore: version 2 is a malformed record"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := testClient(t)
			var logs shedtest.Log
			s := newStore(t, c, Options{Logger: slog.New(slog.NewJSONHandler(&logs, nil))})
			ctx := ctxT(t)
			mustApply(t, s, bundle(1), 0, "first")
			mustApply(t, s, bundle(2), 1, "second")
			if tc.name == "malformed record" {
				if _, err := c.Put(ctx, s.keys.historyKey(2), "[not a record"); err != nil {
					t.Fatal(err)
				}
			}
			put, err := c.Put(ctx, s.keys.configCurrent(), tc.value)
			if err != nil {
				t.Fatal(err)
			}
			rev := put.Header.Revision

			// Get says what the key holds, and what to expect to replace it.
			_, err = s.Get(ctx)
			var me *MalformedError
			if !errors.As(err, &me) {
				t.Fatalf("Get = %v; want a MalformedError", err)
			}
			want := RawValue{Key: s.keys.configCurrent(), ModRevision: rev, Size: len(tc.value),
				XXHash: fmt.Sprintf("%016x", xxhash.Sum64String(tc.value)), Head: fmt.Sprintf("%q", tc.value)}
			if me.Value != want || me.Version != 2 || !strings.Contains(me.Error(), tc.cause) {
				t.Fatalf("MalformedError = %+v (%v)\nwant value %+v, version 2, cause %q", *me, me, want, tc.cause)
			}

			// Seed never replaces it.
			if _, _, err := s.Seed(ctx, bundle(7), "node", "seed"); !errors.As(err, &me) {
				t.Fatalf("Seed = %v; want the MalformedError", err)
			}
			// A write must expect the newest version.
			if _, err := s.Apply(ctx, bundle(3), 1, "alice", "stale"); !isConflict(err, 2) {
				t.Fatalf("Apply expecting 1 = %v; want a conflict naming 2", err)
			}
			dry, err := s.DryRun(ctx, bundle(3), 2)
			if err != nil || !dry.Changed || dry.Replaced == nil || *dry.Replaced != want || !strings.Contains(dry.Diff, "--- /dev/null\n+++ v3/rules/api.yaml\n") {
				t.Fatalf("DryRun = %+v, %v", dry, err)
			}
			if resp, err := c.Get(ctx, s.keys.configCurrent()); err != nil || string(resp.Kvs[0].Value) != tc.value {
				t.Fatal("the dry run or the seed changed the current key")
			}

			var res ApplyResult
			if tc.name == "version 0" {
				res, err = s.Rollback(ctx, 1, 2, "bob", "repair by rollback")
			} else {
				res, err = s.Apply(ctx, bundle(3), 2, "bob", "repair")
			}
			if err != nil || res.Replaced == nil || *res.Replaced != want || res.Meta.Version != 3 {
				t.Fatalf("repair = %+v, %v; want version 3 replacing %+v", res, err, want)
			}
			rec, err := s.Get(ctx)
			if err != nil || rec.Version != 3 || rec.Author != "bob" {
				t.Fatalf("after the repair Get = %+v, %v", rec.Meta, err)
			}
			if l := logs.String(); !strings.Contains(l, `"replaced_malformed":{"key":"`+want.Key+`","mod_revision":`+fmt.Sprint(rev)+`,"bytes":`+fmt.Sprint(want.Size)+`,"xxhash64":"`+want.XXHash+`"`) {
				t.Errorf("the audit log does not say what was replaced:\n%s", l)
			}
			// The next write is an ordinary one.
			if res := mustApply(t, s, bundle(4), 3, "after"); res.Replaced != nil || res.Meta.Version != 4 {
				t.Fatalf("after the repair: %+v", res)
			}
		})
	}
}

// TestMalformedCurrentCompareAndSwap: the repair replaces the value it
// read and nothing else. If another value takes the key between the read
// and the write, the write fails and the other value stays.
func TestMalformedCurrentCompareAndSwap(t *testing.T) {
	c := testClient(t)
	s := newStore(t, c, Options{})
	ctx := ctxT(t)

	// Nothing in the history: the repair expects 0 and stores version 1.
	if _, err := c.Put(ctx, s.keys.configCurrent(), "junk"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx); !isMalformed(err, 0) {
		t.Fatalf("Get = %v", err)
	}
	s.beforeCommit = func() {
		if _, err := c.Put(context.Background(), s.keys.configCurrent(), "other junk"); err != nil {
			t.Error(err)
		}
	}
	if _, err := s.Apply(ctx, bundle(1), 0, "alice", "repair"); err == nil {
		t.Fatal("the repair overwrote a value it had not read")
	}
	if resp, _ := c.Get(ctx, s.keys.configCurrent()); string(resp.Kvs[0].Value) != "other junk" {
		t.Fatalf("current = %q", resp.Kvs[0].Value)
	}
	s.beforeCommit = nil
	res, err := s.Apply(ctx, bundle(1), 0, "alice", "repair")
	if err != nil || res.Meta.Version != 1 || res.Replaced == nil || res.Replaced.Head != `"other junk"` {
		t.Fatalf("repair = %+v, %v", res, err)
	}

	// A good version written between the read and the write wins.
	if _, err := c.Put(ctx, s.keys.configCurrent(), "junk"); err != nil {
		t.Fatal(err)
	}
	other := newStore(t, c, Options{Prefix: "/" + t.Name() + "/"})
	s.beforeCommit = func() {
		if _, err := other.Apply(context.Background(), bundle(5), 1, "carol", "meanwhile"); err != nil {
			t.Error(err)
		}
	}
	if _, err := s.Apply(ctx, bundle(2), 1, "alice", "repair"); !isConflict(err, 2) {
		t.Fatalf("repair racing a good write = %v; want a conflict naming 2", err)
	}
	if rec, err := s.Get(ctx); err != nil || rec.Version != 2 || rec.Author != "carol" {
		t.Fatalf("current = %+v, %v; want carol's version 2", rec.Meta, err)
	}
}

func isMalformed(err error, version int64) bool {
	var me *MalformedError
	return errors.As(err, &me) && me.Version == version
}
