package rules

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/levee-dev/levee/limiter/rules/rulestest"
	"github.com/levee-dev/levee/shed/shedtest"
)

// bigRuleDir writes files rule files of perFile descriptors each, about
// 75 bytes a descriptor.
func bigRuleDir(tb testing.TB, files, perFile int) string {
	tb.Helper()
	dir := tb.TempDir()
	for f := range files {
		var b strings.Builder
		fmt.Fprintf(&b, "domain: d%d\ndescriptors:\n", f)
		for i := range perFile {
			fmt.Fprintf(&b, "- {key: k, value: v%06d, rate_limit: {unit: second, requests_per_unit: 5}}\n", i)
		}
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("d%d.yaml", f)), []byte(b.String()), 0o644); err != nil {
			tb.Fatal(err)
		}
	}
	return dir
}

// settled returns a watcher whose clock runs an hour ahead, so that files
// just written count as settled (see racyWindow) and a poll trusts their
// stat.
func settled(path string) *Watcher {
	w := NewWatcher(path, time.Hour, nil)
	w.now = func() time.Time { return time.Now().Add(time.Hour) }
	return w
}

func mustNotApply(tb testing.TB) func(*Config) {
	return func(c *Config) { tb.Fatalf("applied without a change: %v", domainNames(c)) }
}

// TestWatcherIdlePollAllocs: a poll that finds nothing changed reads no
// file, and what it allocates does not grow with the rules: the same for
// four files of 5,000 descriptors (1.5 MB) as for four of one descriptor.
// (BenchmarkWatcherIdlePoll measures 200,000 descriptors.)
func TestWatcherIdlePollAllocs(t *testing.T) {
	measure := func(perFile int) (allocs float64, bytes uint64) {
		w := settled(bigRuleDir(t, 4, perFile))
		cfg, err := w.Load()
		if err != nil {
			t.Fatal(err)
		}
		if n := len(cfg.Domain("d3").Rules); n != perFile {
			t.Fatalf("d3 has %d rules, want %d", n, perFile)
		}
		reads := w.reads
		apply := mustNotApply(t)
		allocs = testing.AllocsPerRun(50, func() { w.poll(false, apply) })
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		const polls = 50
		for range polls {
			w.poll(false, apply)
		}
		runtime.ReadMemStats(&after)
		if w.reads != reads {
			t.Errorf("idle polls read %d files", w.reads-reads)
		}
		return allocs, (after.TotalAlloc - before.TotalAlloc) / polls
	}
	smallAllocs, smallBytes := measure(1)
	bigAllocs, bigBytes := measure(5_000)
	t.Logf("idle poll, 4 files: %v allocs, %d bytes with 1 descriptor each; %v allocs, %d bytes with 5,000 each",
		smallAllocs, smallBytes, bigAllocs, bigBytes)
	if bigAllocs != smallAllocs || bigAllocs > 64 {
		t.Errorf("an idle poll allocates %v times with big files, %v with small ones; want the same, and few", bigAllocs, smallAllocs)
	}
	if bigBytes > 16<<10 {
		t.Errorf("an idle poll allocates %d bytes", bigBytes)
	}
}

// BenchmarkWatcherIdlePoll: a poll over 200,000 descriptors in 4 files
// that finds nothing changed. Before polls statted first, each read and
// hashed all four files: 38.6 MB and 172 allocations per poll.
func BenchmarkWatcherIdlePoll(b *testing.B) {
	w := settled(bigRuleDir(b, 4, 50_000))
	if _, err := w.Load(); err != nil {
		b.Fatal(err)
	}
	apply := mustNotApply(b)
	b.ReportAllocs()
	for b.Loop() {
		w.poll(false, apply)
	}
}

// TestWatcherReadsOnlyWhatChanged: an edit reads and parses that file
// only; the other files' Domains carry over unchanged. A file touched or
// replaced with the same content is read but neither parsed nor applied.
func TestWatcherReadsOnlyWhatChanged(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"a", "b", "c"} {
		writeFile(t, filepath.Join(dir, n+".yaml"), "domain: "+n+"\n")
	}
	w := settled(dir)
	first, err := w.Load()
	if err != nil {
		t.Fatal(err)
	}
	var got *Config
	apply := func(c *Config) { got = c }

	reads := w.reads
	writeAtomic(t, filepath.Join(dir, "b.yaml"), "domain: b\ndescriptors:\n  - key: k\n")
	w.poll(false, apply)
	if got == nil || w.reads-reads != 1 {
		t.Fatalf("after an edit: applied %v, read %d files; want applied, 1 read", got != nil, w.reads-reads)
	}
	if got.Domain("a") != first.Domain("a") || got.Domain("c") != first.Domain("c") || len(got.Domain("b").Rules) != 1 {
		t.Error("the unchanged files were parsed again, or the edit was lost")
	}

	got, reads = nil, w.reads
	future := time.Now().Add(time.Minute)
	if err := os.Chtimes(filepath.Join(dir, "c.yaml"), future, future); err != nil {
		t.Fatal(err)
	}
	writeAtomic(t, filepath.Join(dir, "a.yaml"), "domain: a\n")
	w.poll(false, apply)
	if got != nil || w.reads-reads != 2 {
		t.Errorf("touch and same-content replace: applied %v, read %d files; want nothing applied, 2 read", got != nil, w.reads-reads)
	}

	// A removed file is a change; an added one too.
	if err := os.Remove(filepath.Join(dir, "c.yaml")); err != nil {
		t.Fatal(err)
	}
	w.poll(false, apply)
	if got == nil || got.Domain("c") != nil || got.Domain("a") != first.Domain("a") {
		t.Fatalf("after removal: %v", got)
	}
	got = nil
	writeFile(t, filepath.Join(dir, "sub", "d.yaml"), "domain: d\n")
	w.poll(false, apply)
	if got == nil || domainNames(got) != strings.Join([]string{
		"a@" + filepath.Join(dir, "a.yaml"), "b@" + filepath.Join(dir, "b.yaml"), "d@" + filepath.Join(dir, "sub", "d.yaml"),
	}, ",") {
		t.Fatalf("after adding sub/d.yaml: %v", got)
	}
}

// TestWatcherInPlaceEdit: an edit in place that keeps the size and sets
// the modification time back is still seen (the change time moves).
func TestWatcherInPlaceEdit(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the change time is read on Linux only")
	}
	file := filepath.Join(t.TempDir(), "a.yaml")
	writeFile(t, file, "domain: a\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1}\n")
	fi, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	w := settled(file)
	if _, err := w.Load(); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(file, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("7"), int64(fi.Size()-3)); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(file, fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}
	var got *Config
	w.poll(false, func(c *Config) { got = c })
	if got == nil || limit0(got.Match("a", e("k=x")).Rule).RequestsPerUnit != 7 {
		t.Fatalf("in-place edit with the modification time set back: applied %v", got != nil)
	}
}

// TestWatcherRacyStat: a file read within racyWindow of its last change is
// read again at the next poll even though its stat is the same, since an
// edit in the same clock tick would not show in the stat.
func TestWatcherRacyStat(t *testing.T) {
	file := filepath.Join(t.TempDir(), "a.yaml")
	writeFile(t, file, "domain: a\n")
	w := NewWatcher(file, time.Hour, nil)
	clock := time.Now()
	w.now = func() time.Time { return clock }
	if _, err := w.Load(); err != nil {
		t.Fatal(err)
	}
	apply := mustNotApply(t)
	reads := w.reads
	w.poll(false, apply)
	if w.reads != reads+1 {
		t.Fatalf("a file read just after it changed was not read again (%d reads)", w.reads-reads)
	}
	clock = clock.Add(racyWindow + time.Second)
	w.poll(false, apply) // read again, now long enough after the change
	reads = w.reads
	w.poll(false, apply)
	if w.reads != reads {
		t.Errorf("a settled file was read again")
	}
}

// TestWatcherLoadThenRun: Load parses once and Run carries on from it
// without applying the same rules again; it applies the next edit.
func TestWatcherLoadThenRun(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "a.yaml")
	writeFile(t, file, "domain: a\n")
	w := NewWatcher(dir, 10*time.Millisecond, nil)
	cfg, err := w.Load()
	if err != nil || cfg.Domain("a") == nil {
		t.Fatalf("Load = %v, %v", cfg, err)
	}
	r := start(t, w)
	writeAtomic(t, file, "domain: b\n")
	if c := r.next("edit after Load"); c.Domain("b") == nil {
		t.Errorf("first apply after Load: %v; want the edit, not the loaded rules again", domainNames(c))
	}
	r.stop()

	// A failed Load is returned; Run then starts as without Load: it
	// reports the failure and applies the fix.
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	writeFile(t, bad, "domain: \"\"\n")
	w = NewWatcher(bad, 10*time.Millisecond, nil)
	var pe *ParseError
	if _, err := w.Load(); !errors.As(err, &pe) || pe.Field != "domain" {
		t.Fatalf("Load of a bad file: %v", err)
	}
	r = start(t, w)
	r.failure("the failure Load returned")
	writeAtomic(t, bad, "domain: fixed\n")
	if c := r.next("fix"); c.Domain("fixed") == nil {
		t.Errorf("applied %v", domainNames(c))
	}
}

// TestWatcherConfigMap: the swap of a mounted ConfigMap is applied within
// a poll or two, the hidden directories are never read as rule files, and
// the removal of the old directory breaks nothing.
func TestWatcherConfigMap(t *testing.T) {
	limit := func(domain string, rpu int) string {
		return fmt.Sprintf("domain: %s\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: %d}\n", domain, rpu)
	}
	m := rulestest.NewConfigMap(t, map[string]string{"api.yaml": limit("api", 1), "web.yaml": limit("web", 1)})
	var logs shedtest.Log
	w := NewWatcher(m.Dir, 10*time.Millisecond, slog.New(slog.NewTextHandler(&logs, nil)))
	first, err := w.Load()
	if err != nil {
		t.Fatal(err)
	}
	want := "api@" + filepath.Join(m.Dir, "api.yaml") + ",web@" + filepath.Join(m.Dir, "web.yaml")
	if got := domainNames(first); got != want {
		t.Fatalf("domains = %s, want %s (each once, by its visible path)", got, want)
	}

	r := start(t, w)
	rpu := func(c *Config, domain string) uint32 {
		t.Helper()
		m := c.Match(domain, e("k=x"))
		if m.Rule == nil {
			t.Fatalf("no rule in %s: %s", domain, domainNames(c))
		}
		return limit0(m.Rule).RequestsPerUnit
	}

	// A new limit in one file, and a file added.
	m.Update(map[string]string{"api.yaml": limit("api", 2), "web.yaml": limit("web", 1), "new.yaml": limit("new", 3)})
	c := r.next("swap")
	if rpu(c, "api") != 2 || rpu(c, "new") != 3 || c.Domain("web") != first.Domain("web") {
		t.Fatalf("after the swap: %s", domainNames(c))
	}
	// A file dropped.
	m.Update(map[string]string{"api.yaml": limit("api", 2), "new.yaml": limit("new", 3)})
	if c = r.next("drop"); c.Domain("web") != nil || rpu(c, "api") != 2 {
		t.Fatalf("after dropping web.yaml: %s", domainNames(c))
	}
	// A bad version is refused, naming the visible path; the next good one
	// is applied.
	m.Update(map[string]string{"api.yaml": limit("api", 2) + "    bogus: 1\n", "new.yaml": limit("new", 3)})
	var pe *ParseError
	if err := r.failure("bad version"); !errors.As(err, &pe) || pe.File != filepath.Join(m.Dir, "api.yaml") || pe.Line != 5 {
		t.Errorf("error = %v; want it at %s:5", err, filepath.Join(m.Dir, "api.yaml"))
	}
	m.Update(map[string]string{"api.yaml": limit("api", 5), "new.yaml": limit("new", 3)})
	if c = r.next("fix"); rpu(c, "api") != 5 {
		t.Fatalf("after the fix: %s", domainNames(c))
	}
	// Nothing more happens: several polls after the old directories are gone.
	r.quiet()
	if strings.Contains(logs.String(), "..2026") {
		t.Errorf("a hidden directory is named in the log:\n%s", logs.String())
	}
}
