package enginetest

import (
	"context"
	"errors"
	"testing"

	"github.com/levee-dev/levee/limiter/engine"
	"github.com/levee-dev/levee/limiter/rules"
)

// TestRules: Rules parse, in Domain, and an engine on them decides.
func TestRules(t *testing.T) {
	if RulesConfig(t).Domain(Domain) == nil {
		t.Fatalf("Rules have no domain %q", Domain)
	}
	e := New(t, Rules, nil)
	items := []engine.Item{{Domain: Domain, Entries: []rules.Entry{{Key: "blocked", Value: "x"}}, Hits: 1}}
	sts := make([]engine.Status, 1)
	code, err := e.Check(context.Background(), items, sts, Now().UnixNano())
	if err != nil || code != engine.OverLimit {
		t.Fatalf("a hit on the blocked rule: %v, %v; want OverLimit", code, err)
	}
	boom := errors.New("boom")
	items[0].Entries[0] = rules.Entry{Key: "user", Value: "a"}
	if _, err := New(t, Rules, FailingBuckets{boom}).Check(context.Background(), items, sts, Now().UnixNano()); !errors.Is(err, boom) {
		t.Fatalf("with FailingBuckets: %v, want %v", err, boom)
	}
}
