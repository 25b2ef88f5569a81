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

	// refused checks that a dry run and an apply both refuse b as invalid,
	// with an error containing want.
	refused := func(b Bundle, want string) {
		t.Helper()
		_, dryErr := s.DryRun(ctx, b, 1)
		_, err := s.Apply(ctx, b, 1, "alice", "too big")
		for _, err := range []error{dryErr, err} {
			if !errors.As(err, &ve) || !strings.Contains(err.Error(), want) {
				t.Fatalf("%d bytes: %v; want a ValidationError saying %q", b.Size(), err, want)
			}
		}
	}
	over := Bundle{Rules: map[string][]byte{"a.yaml": append(atLimit.Rules["a.yaml"], '\n')}}
	if err := over.CheckSize(); !errors.As(err, &ve) || !strings.Contains(err.Error(), "more than the limit of 1048576") {
		t.Fatalf("CheckSize of %d bytes: %v", over.Size(), err)
	}
	refused(over, "more than the limit of 1048576")

	// Quotes double in JSON: 700 KiB of them is 1.4 MiB stored.
	quotes := Bundle{Rules: map[string][]byte{"q.yaml": []byte("domain: q\n# " + strings.Repeat(`"`, 700<<10) + "\n")}}
	if quotes.CheckSize() != nil {
		t.Fatal("700 KiB refused by size")
	}
	refused(quotes, "one etcd request may carry")
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
