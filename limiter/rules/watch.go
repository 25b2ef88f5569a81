package rules

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"time"

	"github.com/cespare/xxhash/v2"
)

// racyWindow is how long after a file's last change a stat that shows no
// change is not trusted. A file system stores times at some granularity
// (ext4 and tmpfs to a clock tick, FAT to two seconds), so an edit made in
// the same tick as the last read keeps the size, the modification time and
// the change time. Until a file has been read more than racyWindow after
// its last change, every poll reads and hashes it again; after that, an
// edit must leave a later time. (Git does the same with its index.)
const racyWindow = 2 * time.Second

// Watcher polls a rule file or directory and hands each new good Config to
// its owner. It needs no file-system notification and, on an idle node,
// reads nothing: a poll lists the tree and stats each file (through
// symbolic links, so a Kubernetes ConfigMap swap shows as other files), and
// reads only a file whose identity, size, modification or change time
// differs from the last read, or that changed too recently to trust its
// stat (see racyWindow). A file read again with the same content is not
// parsed again, and each file keeps its parsed Domain until it changes, so
// an edit parses one file, not the whole tree. A change that does not load
// is reported and skipped, so the owner keeps serving the last good Config;
// envoyproxy/ratelimit behaves the same way.
//
// One edit goes unseen: one that keeps a file's size, modification time
// and change time, which the kernel sets on every write and no program can
// set back. That needs a file system whose clock is coarser than
// racyWindow, or clocks that disagree (a network file system whose server
// is behind), and an in-place rewrite of the same length. Renaming a new
// file into place, as editors, kubectl and Kubernetes do, always shows.
//
// A Watcher is used from one goroutine: Load, if called, then Run.
type Watcher struct {
	path     string
	interval time.Duration
	logger   *slog.Logger
	now      func() time.Time

	// OnError, if not nil, is called with every failed reload, for example
	// to count reload failures. Set it before Run; Run calls it from its own
	// goroutine.
	OnError func(error)

	cache   map[string]*ruleFile // by path, the files of the last listing
	order   []*ruleFile          // the same, in name order
	gen     uint64               // listing count, to find removed files
	dirty   bool                 // a file changed since the last build
	applied bool                 // Load or Run produced a good Config
	failure string               // the listing failure last reported
	reads   int                  // files read, for tests
}

// ruleFile is what a Watcher keeps of one rule file: its state when last
// read, a hash of what it held and what that parsed to.
type ruleFile struct {
	entry
	readAt time.Time
	read   bool // the file was read, and sum is its content's hash
	sum    uint64
	domain *Domain
	err    error
	gen    uint64
}

// NewWatcher returns a Watcher for path that polls every interval (one
// second if interval is not positive) and logs to logger (nowhere if nil).
func NewWatcher(path string, interval time.Duration, logger *slog.Logger) *Watcher {
	if interval <= 0 {
		interval = time.Second
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Watcher{path: path, interval: interval, logger: logger, now: time.Now, cache: map[string]*ruleFile{}}
}

// Load reads and parses the rules now and returns them, as the package
// function Load does; a later Run carries on from them and calls apply only
// when the files change. It is how an owner loads its rules at start
// without parsing them twice. A failed Load is returned, not reported, and
// leaves Run to start as though Load had not been called.
func (w *Watcher) Load() (*Config, error) {
	if err := w.scan(); err != nil {
		return nil, err
	}
	w.dirty = false
	cfg, err := w.build()
	if err != nil {
		return nil, err
	}
	w.loaded(cfg)
	return cfg, nil
}

// Run polls until ctx is done, and returns ctx's error. apply is called,
// from Run's goroutine, with every Config whose files changed and loaded
// cleanly, and never with a bad one. Unless Load returned a Config, it is
// also called with the first one: Run loads the rules at once.
func (w *Watcher) Run(ctx context.Context, apply func(*Config)) error {
	if apply == nil {
		return errors.New("rules: Watcher.Run: nil apply function")
	}
	t := time.NewTicker(w.interval)
	defer t.Stop()
	force := !w.applied
	for {
		w.poll(force, apply)
		force = false
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// poll applies the rules if a file changed (or force is set and they
// load). A persistent failure is reported once, not at every poll.
func (w *Watcher) poll(force bool, apply func(*Config)) {
	if err := w.scan(); err != nil {
		if force || err.Error() != w.failure {
			w.failure = err.Error()
			w.report(err)
		}
		return
	}
	w.failure = ""
	if !w.dirty && !force {
		return
	}
	w.dirty = false
	cfg, err := w.build()
	if err != nil {
		w.report(err)
		return
	}
	w.loaded(cfg)
	apply(cfg)
}

// scan lists the tree and brings the cache up to date, reading only files
// whose stat changed. It sets dirty if a file was added, removed or read
// with other content. A ConfigMap swapped during the scan starts it again.
func (w *Watcher) scan() error {
	for attempt := 1; ; attempt++ {
		snap, err := list(w.path)
		if err != nil {
			return err
		}
		if err = w.update(snap); err == nil || attempt == maxAttempts || !snap.swapped() {
			return err
		}
	}
}

func (w *Watcher) update(snap *snapshot) error {
	w.gen++
	w.order = w.order[:0]
	for _, e := range snap.files {
		rf := w.cache[e.path]
		if rf == nil || !rf.unchanged(e.fi) {
			readAt := w.now()
			f, fi, err := readFile(e)
			if err != nil && errors.Is(err, os.ErrNotExist) && snap.swapped() {
				return err
			}
			w.reads++
			sum := xxhash.Sum64(f.Data)
			switch {
			case err != nil:
				if rf == nil || rf.read || rf.err == nil || rf.err.Error() != err.Error() {
					rf = &ruleFile{err: err}
					w.dirty = true
				} // else the same failure, already reported
			case rf != nil && rf.read && rf.sum == sum:
				// Touched, copied or swapped in with the same content: keep
				// what it parsed to (a Domain, or an error already reported).
			default:
				rf = &ruleFile{read: true, sum: sum}
				rf.domain, rf.err = Parse(f.Path, f.Data)
				w.dirty = true
			}
			rf.entry, rf.readAt = e, readAt
			if fi != nil {
				rf.fi = fi
			}
			w.cache[e.path] = rf
		}
		rf.gen = w.gen
		w.order = append(w.order, rf)
	}
	if len(w.cache) != len(w.order) {
		for p, rf := range w.cache {
			if rf.gen != w.gen {
				delete(w.cache, p)
			}
		}
		w.dirty = true
	}
	return nil
}

// unchanged reports whether a file that stats as fi is still the one last
// read: the same file, size, mode and times, and read long enough after its
// last change for those to be trusted.
func (rf *ruleFile) unchanged(fi os.FileInfo) bool {
	old := rf.fi
	if !os.SameFile(old, fi) || old.Size() != fi.Size() || old.Mode() != fi.Mode() ||
		!old.ModTime().Equal(fi.ModTime()) || !changeTime(old).Equal(changeTime(fi)) {
		return false
	}
	last := old.ModTime()
	if c := changeTime(old); c.After(last) {
		last = c
	}
	return rf.readAt.Sub(last) > racyWindow
}

// build assembles the Config from the cached files, joining every file's
// error as Load does.
func (w *Watcher) build() (*Config, error) {
	var (
		domains = make([]*Domain, 0, len(w.order))
		errs    []error
	)
	for _, rf := range w.order {
		if rf.err != nil {
			errs = append(errs, rf.err)
			continue
		}
		domains = append(domains, rf.domain)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return NewConfig(domains...)
}

// loaded logs a Config about to be handed over.
func (w *Watcher) loaded(cfg *Config) {
	w.applied = true
	for _, d := range cfg.Domains() {
		for _, warn := range d.Warnings {
			w.logger.Warn("rule file warning", "path", warn.File, "line", warn.Line, "field", warn.Field, "reason", warn.Reason)
		}
	}
	w.logger.Info("rules loaded", "path", w.path, "files", len(w.order), "domains", len(cfg.names))
}

// report logs every file's error with its path, line and reason, then
// tells OnError.
func (w *Watcher) report(err error) {
	errs := []error{err}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	}
	for _, e := range errs {
		var pe *ParseError
		if errors.As(e, &pe) {
			w.logger.Error("rules not reloaded; keeping the last good rules",
				"path", pe.File, "line", pe.Line, "field", pe.Field, "reason", pe.Reason)
		} else {
			w.logger.Error("rules not reloaded; keeping the last good rules", "path", w.path, "error", e)
		}
	}
	if w.OnError != nil {
		w.OnError(err)
	}
}
