package rules

import (
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"time"

	"github.com/cespare/xxhash/v2"
)

// Watcher polls a rule file or directory and hands each new good Config to
// its owner. It needs no file-system notification: a poll reads the files
// and compares their names, sizes, modification times and content hashes
// with the last poll's (the hash catches edits that a coarse modification
// time hides). A change that does not load is reported and skipped, so the
// owner keeps serving the last good Config; envoyproxy/ratelimit behaves the
// same way.
type Watcher struct {
	path     string
	interval time.Duration
	logger   *slog.Logger

	// OnError, if not nil, is called with every failed reload, for example
	// to count reload failures. Set it before Run; Run calls it from its own
	// goroutine.
	OnError func(error)
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
	return &Watcher{path: path, interval: interval, logger: logger}
}

// Run loads the rules at once, then polls until ctx is done, and returns
// ctx's error. apply is called, from Run's goroutine, with the first Config
// and with every later Config whose files changed and loaded cleanly; it is
// never called with a bad one. An owner that loaded the rules itself before
// calling Run gets that Config once more at the start.
func (w *Watcher) Run(ctx context.Context, apply func(*Config)) error {
	if apply == nil {
		return errors.New("rules: Watcher.Run: nil apply function")
	}
	t := time.NewTicker(w.interval)
	defer t.Stop()
	var last uint64
	first := true
	for {
		last = w.poll(last, first, apply)
		first = false
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// poll reloads if the files' fingerprint differs from last and returns the
// new fingerprint. A persistent failure is reported once, not at every poll.
func (w *Watcher) poll(last uint64, first bool, apply func(*Config)) uint64 {
	files, err := ReadFiles(w.path)
	var fp uint64
	if err != nil {
		fp = xxhash.Sum64String("error\x00" + err.Error())
	} else {
		fp = fingerprint(files)
	}
	if fp == last && !first {
		return last
	}
	var cfg *Config
	if err == nil {
		cfg, err = build(files)
	}
	if err != nil {
		w.report(err)
		return fp
	}
	for _, d := range cfg.Domains() {
		for _, warn := range d.Warnings {
			w.logger.Warn("rule file warning", "path", warn.File, "line", warn.Line, "field", warn.Field, "reason", warn.Reason)
		}
	}
	w.logger.Info("rules loaded", "path", w.path, "files", len(files), "domains", len(cfg.names))
	apply(cfg)
	return fp
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

func fingerprint(files []File) uint64 {
	var d xxhash.Digest
	d.Reset()
	for _, f := range files {
		WriteField(&d, f.Path)
		var b [24]byte
		binary.LittleEndian.PutUint64(b[0:], uint64(len(f.Data)))
		binary.LittleEndian.PutUint64(b[8:], uint64(f.ModTime.UnixNano()))
		binary.LittleEndian.PutUint64(b[16:], xxhash.Sum64(f.Data))
		_, _ = d.Write(b[:])
	}
	return d.Sum64()
}
