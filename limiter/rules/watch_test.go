package rules

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a log sink safe for the watcher's goroutine and the test's.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// writeAtomic replaces path in one step, so that a poll never reads a
// half-written file (the temporary name starts with a dot, so it is skipped).
func writeAtomic(t *testing.T, path, data string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), ".tmp-"+filepath.Base(path))
	writeFile(t, tmp, data)
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// waitFor is generous: the machine is shared, and only order matters here.
const waitFor = 10 * time.Second

func TestWatcher(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "api.yaml")
	const good1 = "domain: api\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1}\n"
	const good2 = "domain: api\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 2}\n"
	const bad = "domain: api\ndescriptors:\n  - key: k\n    rate_limit: {unit: secnd, requests_per_unit: 2}\n"
	writeAtomic(t, file, good1)

	var logs syncBuffer
	w := NewWatcher(dir, 20*time.Millisecond, slog.New(slog.NewTextHandler(&logs, nil)))
	applied := make(chan *Config, 10)
	failed := make(chan error, 10)
	w.OnError = func(err error) { failed <- err }

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx, func(c *Config) { applied <- c }) }()
	defer func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Run returned %v", err)
		}
	}()

	rpu := func(c *Config) uint32 {
		t.Helper()
		r := c.Match("api", e("k=x")).Rule
		if r == nil {
			t.Fatal("no rule")
		}
		return limit0(r).RequestsPerUnit
	}
	next := func() *Config {
		t.Helper()
		select {
		case c := <-applied:
			return c
		case err := <-failed:
			t.Fatalf("unexpected reload error: %v", err)
		case <-time.After(waitFor):
			t.Fatal("no config applied")
		}
		return nil
	}
	quiet := func() {
		t.Helper()
		// Several polls with nothing to do must neither apply nor report.
		time.Sleep(10 * 20 * time.Millisecond)
		select {
		case c := <-applied:
			t.Fatalf("config applied without a change: %v", domainNames(c))
		case err := <-failed:
			t.Fatalf("error reported again: %v", err)
		default:
		}
	}

	// The first good config is applied at once.
	if got := rpu(next()); got != 1 {
		t.Fatalf("initial requests_per_unit = %d", got)
	}
	quiet()

	// An edit is applied.
	writeAtomic(t, file, good2)
	if got := rpu(next()); got != 2 {
		t.Fatalf("after edit requests_per_unit = %d", got)
	}

	// A broken edit is reported, once, and never applied.
	writeAtomic(t, file, bad)
	select {
	case err := <-failed:
		var pe *ParseError
		if !errors.As(err, &pe) || pe.Line != 4 || pe.Field != "rate_limit.unit" {
			t.Errorf("error = %v", err)
		}
	case c := <-applied:
		t.Fatalf("bad config applied: %v", domainNames(c))
	case <-time.After(waitFor):
		t.Fatal("bad edit not reported")
	}
	quiet()
	out := logs.String()
	if !strings.Contains(out, "level=ERROR") || !strings.Contains(out, "path="+file) || !strings.Contains(out, "line=4") ||
		!strings.Contains(out, "reason=\"invalid rate limit unit 'secnd'\"") {
		t.Errorf("log lacks path, line or reason:\n%s", out)
	}

	// The fix is applied again.
	writeAtomic(t, file, good1)
	if got := rpu(next()); got != 1 {
		t.Fatalf("after fix requests_per_unit = %d", got)
	}

	// An edit that keeps the size and the modification time is still seen,
	// thanks to the content hash.
	fi, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(dir, ".tmp-same-size")
	writeFile(t, tmp, strings.Replace(good1, "requests_per_unit: 1", "requests_per_unit: 7", 1))
	if err := os.Chtimes(tmp, fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, file); err != nil {
		t.Fatal(err)
	}
	if got := rpu(next()); got != 7 {
		t.Fatalf("after same-size edit requests_per_unit = %d", got)
	}

	// Removing the directory is an error too; the last good config stays.
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-failed:
		if !errors.Is(err, os.ErrNotExist) {
			t.Errorf("error = %v", err)
		}
	case c := <-applied:
		t.Fatalf("config applied after removal: %v", domainNames(c))
	case <-time.After(waitFor):
		t.Fatal("removal not reported")
	}
	quiet()
}

// TestWatcherStartsBroken: a watcher whose first load fails reports it and
// applies the first good config later.
func TestWatcherStartsBroken(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "a.yaml")
	writeFile(t, file, "domain: \"\"\n")
	w := NewWatcher(file, 20*time.Millisecond, nil)
	applied := make(chan *Config, 10)
	failed := make(chan error, 10)
	w.OnError = func(err error) { failed <- err }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx, func(c *Config) { applied <- c }) }()

	select {
	case err := <-failed:
		if !strings.Contains(err.Error(), "config file cannot have empty domain") {
			t.Errorf("error = %v", err)
		}
	case <-applied:
		t.Fatal("bad config applied")
	case <-time.After(waitFor):
		t.Fatal("no error")
	}
	writeAtomic(t, file, "domain: ok\n")
	select {
	case c := <-applied:
		if c.Domain("ok") == nil {
			t.Errorf("applied %v", domainNames(c))
		}
	case err := <-failed:
		t.Fatalf("error: %v", err)
	case <-time.After(waitFor):
		t.Fatal("fix not applied")
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Run returned %v", err)
	}
	if err := w.Run(context.Background(), nil); err == nil {
		t.Error("Run accepted a nil apply function")
	}
}
