package configstore

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestBundleLimits: a bundle over MaxBundleSize, and one under it whose
// stored JSON would be over what one etcd request carries, are refused as
// invalid configurations, dry run included, and nothing is stored.
func TestBundleLimits(t *testing.T) {
	s := newStore(t, testClient(t), Options{})
	ctx := ctxT(t)
	var ve *ValidationError

	// Just at the limit: stored.
	atLimit := Bundle{Rules: map[string][]byte{"a.yaml": nil}}
	head := "domain: a\n# "
	atLimit.Rules["a.yaml"] = []byte(head + strings.Repeat("x", MaxBundleSize-len("a.yaml")-len(head)-1) + "\n")
	if atLimit.Size() != MaxBundleSize || atLimit.CheckSize() != nil {
		t.Fatalf("a bundle of %d bytes: %v", atLimit.Size(), atLimit.CheckSize())
	}
	mustApply(t, s, atLimit, 0, "at the limit")

	over := Bundle{Rules: map[string][]byte{"a.yaml": append(atLimit.Rules["a.yaml"], '\n')}}
	if err := over.CheckSize(); !errors.As(err, &ve) || !strings.Contains(err.Error(), "more than the limit of 1048576") {
		t.Fatalf("CheckSize of %d bytes: %v", over.Size(), err)
	}
	for _, dry := range []bool{true, false} {
		var err error
		if dry {
			_, err = s.DryRun(ctx, over, 1)
		} else {
			_, err = s.Apply(ctx, over, 1, "alice", "over")
		}
		if !errors.As(err, &ve) {
			t.Fatalf("over the limit (dry run %v): %v; want a ValidationError", dry, err)
		}
	}

	// Quotes double in JSON: 700 KiB of them is 1.4 MiB stored.
	quotes := Bundle{Rules: map[string][]byte{"q.yaml": []byte("domain: q\n# " + strings.Repeat(`"`, 700<<10) + "\n")}}
	if quotes.CheckSize() != nil {
		t.Fatal("700 KiB refused by size")
	}
	for _, dry := range []bool{true, false} {
		var err error
		if dry {
			_, err = s.DryRun(ctx, quotes, 1)
		} else {
			_, err = s.Apply(ctx, quotes, 1, "alice", "quotes")
		}
		if !errors.As(err, &ve) || !strings.Contains(err.Error(), "one etcd request may carry") {
			t.Fatalf("escaped past etcd's request limit (dry run %v): %v", dry, err)
		}
	}
	if rec, err := s.Get(ctx); err != nil || rec.Version != 1 {
		t.Fatalf("after refusals: version %d, %v", rec.Version, err)
	}

	// A file too large for a bundle is refused as invalid when read.
	big := filepath.Join(t.TempDir(), "big.yaml")
	if err := os.WriteFile(big, make([]byte, MaxBundleSize+1), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadRules(big); !errors.As(err, &ve) {
		t.Errorf("ReadRules of a file over the limit: %v; want a ValidationError", err)
	}
	if _, err := ReadFile(big); !errors.As(err, &ve) {
		t.Errorf("ReadFile of a file over the limit: %v; want a ValidationError", err)
	}
}
