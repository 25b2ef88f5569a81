package rules

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/levee-dev/levee/shed/shedtest"
)

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

// running is a Watcher's Run on its own goroutine, with what it applies
// and what it reports.
type running struct {
	t        *testing.T
	interval time.Duration
	applied  chan *Config
	failed   chan error
	cancel   context.CancelFunc
	done     chan error
}

// start runs w until stop or the end of the test.
func start(t *testing.T, w *Watcher) *running {
	r := &running{t: t, interval: w.interval, applied: make(chan *Config, 10), failed: make(chan error, 10), done: make(chan error, 1)}
	w.OnError = func(err error) { r.failed <- err }
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() { r.done <- w.Run(ctx, func(c *Config) { r.applied <- c }) }()
	t.Cleanup(r.stop)
	return r
}

// stop ends Run and checks that it returned the context's error.
func (r *running) stop() {
	if r.cancel == nil {
		return
	}
	r.cancel()
	r.cancel = nil
	if err := <-r.done; !errors.Is(err, context.Canceled) {
		r.t.Errorf("Run returned %v", err)
	}
}

// next waits for the next Config applied; a reported error fails the test.
func (r *running) next(what string) *Config {
	r.t.Helper()
	select {
	case c := <-r.applied:
		return c
	case err := <-r.failed:
		r.t.Fatalf("%s: unexpected reload error: %v", what, err)
	case <-time.After(waitFor):
		r.t.Fatalf("%s: no config applied", what)
	}
	return nil
}

// failure waits for the next error reported; a Config applied fails the
// test.
func (r *running) failure(what string) error {
	r.t.Helper()
	select {
	case err := <-r.failed:
		return err
	case c := <-r.applied:
		r.t.Fatalf("%s: config applied: %v", what, domainNames(c))
	case <-time.After(waitFor):
		r.t.Fatalf("%s: no error reported", what)
	}
	return nil
}

// quiet checks that several polls with nothing to do neither apply nor
// report.
func (r *running) quiet() {
	r.t.Helper()
	time.Sleep(10 * r.interval) // lets ten polls pass; nothing is awaited
	select {
	case c := <-r.applied:
		r.t.Fatalf("config applied without a change: %v", domainNames(c))
	case err := <-r.failed:
		r.t.Fatalf("error reported without a change: %v", err)
	default:
	}
}

func TestWatcher(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "api.yaml")
	const good1 = "domain: api\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1}\n"
	const good2 = "domain: api\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 2}\n"
	const bad = "domain: api\ndescriptors:\n  - key: k\n    rate_limit: {unit: secnd, requests_per_unit: 2}\n"
	writeAtomic(t, file, good1)

	var logs shedtest.Log
	r := start(t, NewWatcher(dir, 20*time.Millisecond, slog.New(slog.NewTextHandler(&logs, nil))))

	rpu := func(c *Config) uint32 {
		t.Helper()
		rule := c.Match("api", e("k=x")).Rule
		if rule == nil {
			t.Fatal("no rule")
		}
		return limit0(rule).RequestsPerUnit
	}

	// The first good config is applied at once.
	if got := rpu(r.next("start")); got != 1 {
		t.Fatalf("initial requests_per_unit = %d", got)
	}
	r.quiet()

	// An edit is applied.
	writeAtomic(t, file, good2)
	if got := rpu(r.next("edit")); got != 2 {
		t.Fatalf("after edit requests_per_unit = %d", got)
	}

	// A broken edit is reported, once, and never applied.
	writeAtomic(t, file, bad)
	var pe *ParseError
	if err := r.failure("bad edit"); !errors.As(err, &pe) || pe.Line != 4 || pe.Field != "rate_limit.unit" {
		t.Errorf("error = %v", err)
	}
	r.quiet()
	out := logs.String()
	if !strings.Contains(out, "level=ERROR") || !strings.Contains(out, "path="+file) || !strings.Contains(out, "line=4") ||
		!strings.Contains(out, "reason=\"invalid rate limit unit 'secnd'\"") {
		t.Errorf("log lacks path, line or reason:\n%s", out)
	}

	// The fix is applied again.
	writeAtomic(t, file, good1)
	if got := rpu(r.next("fix")); got != 1 {
		t.Fatalf("after fix requests_per_unit = %d", got)
	}

	// An edit that keeps the size and the modification time is still seen:
	// the file renamed into place is another file.
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
	if got := rpu(r.next("same-size edit")); got != 7 {
		t.Fatalf("after same-size edit requests_per_unit = %d", got)
	}

	// Removing the directory is an error too; the last good config stays.
	// It goes in one step: a poll between RemoveAll's file and directory
	// removals would see an empty directory, which is a valid, empty Config.
	if err := os.Rename(dir, dir+".gone"); err != nil {
		t.Fatal(err)
	}
	if err := r.failure("removal"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("error = %v", err)
	}
	r.quiet()
}

// TestWatcherStartsBroken: a watcher whose first load fails reports it and
// applies the first good config later.
func TestWatcherStartsBroken(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "a.yaml")
	writeFile(t, file, "domain: \"\"\n")
	w := NewWatcher(file, 20*time.Millisecond, nil)
	r := start(t, w)
	if err := r.failure("start"); !strings.Contains(err.Error(), "config file cannot have empty domain") {
		t.Errorf("error = %v", err)
	}
	writeAtomic(t, file, "domain: ok\n")
	if c := r.next("fix"); c.Domain("ok") == nil {
		t.Errorf("applied %v", domainNames(c))
	}
	r.stop()
	if err := w.Run(context.Background(), nil); err == nil {
		t.Error("Run accepted a nil apply function")
	}
}
