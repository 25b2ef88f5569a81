package configstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/levee-dev/levee/limiter/rules"
)

// Defaults for Options fields left zero.
const (
	DefaultHistoryKeep = 100
	DefaultMaxOverride = 24 * time.Hour
)

// maxAuditDiff bounds the diff written to the audit log; the full diff
// stays available from the history.
const maxAuditDiff = 64 << 10

// Options configures a Store.
type Options struct {
	// Client is the etcd client. The Store does not close it.
	Client *clientv3.Client
	// Prefix is the cluster's etcd key prefix (see NewLayout); the
	// configuration lives under Prefix + "config/". Default DefaultPrefix.
	Prefix string
	// ValidateShed checks a shedding policy (Bundle.Shed, possibly empty)
	// and returns the names of the resources it defines. It is called on
	// every write and by Watch before a version is delivered, so it must be
	// the code the nodes use. Resources, if not nil, are the only names
	// SetOverride accepts. Nil accepts any policy and any resource.
	ValidateShed func(policy []byte) (resources []string, err error)
	// HistoryKeep is how many versions the history keeps; older ones are
	// deleted as new ones are written and can no longer be rolled back to.
	// Default DefaultHistoryKeep.
	HistoryKeep int
	// MaxOverride is the longest an override may last. Default
	// DefaultMaxOverride.
	MaxOverride time.Duration
	// Logger receives the audit log (one record per change, with the diff)
	// and Watch's reports. Default: discard.
	Logger *slog.Logger
	// Now is the clock for version and override times. Default time.Now.
	Now func() time.Time
}

// Store reads and writes a cluster's configuration in etcd. It holds no
// state of its own between calls and is safe for concurrent use; the
// compare-and-swap happens in etcd.
type Store struct {
	c            *clientv3.Client
	validateShed func([]byte) ([]string, error)
	keep         int64
	maxOverride  time.Duration
	log          *slog.Logger
	now          func() time.Time

	// beforeCommit, if set, runs between the read of the current version
	// and the transaction; tests use it to change the store in between.
	beforeCommit func()

	keys Layout
}

// New returns a Store for the cluster under opts.Prefix.
func New(opts Options) (*Store, error) {
	if opts.Client == nil {
		return nil, errors.New("configstore: Options.Client is nil")
	}
	if opts.HistoryKeep < 0 || opts.MaxOverride < 0 {
		return nil, fmt.Errorf("configstore: negative HistoryKeep (%d) or MaxOverride (%v)", opts.HistoryKeep, opts.MaxOverride)
	}
	s := &Store{
		c:            opts.Client,
		validateShed: opts.ValidateShed,
		keep:         int64(opts.HistoryKeep),
		maxOverride:  opts.MaxOverride,
		log:          opts.Logger,
		now:          opts.Now,
		keys:         NewLayout(opts.Prefix),
	}
	if s.keep == 0 {
		s.keep = DefaultHistoryKeep
	}
	if s.maxOverride == 0 {
		s.maxOverride = DefaultMaxOverride
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	return s, nil
}

// Meta describes one stored version.
type Meta struct {
	// Version is 1 for the first version and one more for each change. 0
	// means nothing is stored.
	Version int64 `json:"version"`
	// Author is the identity of whoever made the change.
	Author string `json:"author"`
	// Reason is why, in the author's words.
	Reason string `json:"reason"`
	// Time is when the version was stored.
	Time time.Time `json:"time"`
	// RollbackOf is the version whose content a rollback restored, or 0.
	RollbackOf int64 `json:"rollback_of,omitempty"`
}

// Record is one stored version: its description and its content.
type Record struct {
	Meta
	Bundle Bundle
}

// recordJSON is a Record as stored under the history prefix. File contents
// are strings, not []byte, so that the stored JSON stays readable with
// etcdctl; the bundle is valid UTF-8, which compile checks.
type recordJSON struct {
	Meta
	Rules map[string]string `json:"rules"`
	Shed  string            `json:"shed,omitempty"`
}

func encodeRecord(r Record) ([]byte, error) {
	j := recordJSON{Meta: r.Meta, Rules: make(map[string]string, len(r.Bundle.Rules)), Shed: string(r.Bundle.Shed)}
	for n, d := range r.Bundle.Rules {
		j.Rules[n] = string(d)
	}
	return json.Marshal(j)
}

func decodeRecord(data []byte) (Record, error) {
	var j recordJSON
	if err := json.Unmarshal(data, &j); err != nil {
		return Record{}, err
	}
	r := Record{Meta: j.Meta, Bundle: Bundle{Rules: make(map[string][]byte, len(j.Rules))}}
	for n, d := range j.Rules {
		r.Bundle.Rules[n] = []byte(d)
	}
	if j.Shed != "" {
		r.Bundle.Shed = []byte(j.Shed)
	}
	return r, nil
}

// Validate checks b with the code the nodes use to load it (rules.Parse and
// rules.NewConfig on every rule file, then Options.ValidateShed) and returns
// the rules it defines. A bad bundle gives a *ValidationError listing every
// problem.
func (s *Store) Validate(b Bundle) (*rules.Config, error) {
	cfg, _, err := compile(b, s.validateShed)
	return cfg, err
}

// Get returns the current version. If nothing is stored yet it returns a
// Record with Version 0 and an empty bundle. A current key whose value
// cannot be used gives a *MalformedError.
func (s *Store) Get(ctx context.Context) (Record, error) {
	rec, _, err := s.current(ctx)
	return rec, err
}

// current reads the current version and the mod revision of the current
// key (0 if there is none), on which a write makes its compare-and-swap.
func (s *Store) current(ctx context.Context) (Record, int64, error) {
	resp, err := s.c.Get(ctx, s.keys.configCurrent())
	if err != nil {
		return Record{}, 0, fmt.Errorf("configstore: reading %s: %w", s.keys.configCurrent(), err)
	}
	if len(resp.Kvs) == 0 {
		return Record{}, 0, nil
	}
	rec, err := s.decodeCurrent(ctx, resp.Kvs[0])
	return rec, resp.Kvs[0].ModRevision, err
}

// decodeCurrent reads the version a current key's value names, or returns
// a *MalformedError.
func (s *Store) decodeCurrent(ctx context.Context, kv *mvccpb.KeyValue) (Record, error) {
	var m Meta
	err := json.Unmarshal(kv.Value, &m)
	switch {
	case err != nil:
	case m.Version <= 0:
		err = fmt.Errorf("it names version %d", m.Version)
	default:
		rec, verr := s.Version(ctx, m.Version)
		if verr == nil {
			return rec, nil
		}
		if !errors.Is(verr, ErrNotFound) && !errors.Is(verr, errMalformedRecord) {
			return Record{}, verr // etcd's error, not the value's
		}
		err = fmt.Errorf("it names version %d: %w", m.Version, verr)
	}
	_, newest, herr := s.historyBounds(ctx)
	if herr != nil {
		return Record{}, herr
	}
	return Record{}, &MalformedError{Value: newRawValue(string(kv.Key), kv.ModRevision, kv.Value), Version: newest, Err: err}
}

// errMalformedRecord is wrapped by the error for a history record that
// does not decode.
var errMalformedRecord = errors.New("malformed record")

// Version returns a stored version; 0 means the current one. A version
// that was never stored, or that the history no longer keeps, gives an
// error wrapping ErrNotFound.
func (s *Store) Version(ctx context.Context, v int64) (Record, error) {
	if v == 0 {
		return s.Get(ctx)
	}
	if v < 0 {
		return Record{}, fmt.Errorf("configstore: version %d: %w", v, ErrNotFound)
	}
	resp, err := s.c.Get(ctx, s.keys.historyKey(v))
	if err != nil {
		return Record{}, fmt.Errorf("configstore: reading version %d: %w", v, err)
	}
	if len(resp.Kvs) == 0 {
		oldest, newest, err := s.historyBounds(ctx)
		switch {
		case err != nil:
			return Record{}, err
		case newest == 0:
			return Record{}, fmt.Errorf("configstore: version %d does not exist (nothing is stored yet): %w", v, ErrNotFound)
		case v > newest:
			return Record{}, fmt.Errorf("configstore: version %d does not exist (the newest is %d): %w", v, newest, ErrNotFound)
		}
		return Record{}, fmt.Errorf("configstore: version %d is no longer kept (the oldest kept is %d): %w", v, oldest, ErrNotFound)
	}
	rec, err := decodeRecord(resp.Kvs[0].Value)
	if err != nil {
		return Record{}, fmt.Errorf("configstore: version %d is a %w: %w", v, errMalformedRecord, err)
	}
	return rec, nil
}

// historyBounds returns the oldest and newest versions in the history, or
// zeros if it is empty.
func (s *Store) historyBounds(ctx context.Context) (oldest, newest int64, err error) {
	for _, order := range []clientv3.SortOrder{clientv3.SortAscend, clientv3.SortDescend} {
		resp, err := s.c.Get(ctx, s.keys.configHistory(), clientv3.WithPrefix(), clientv3.WithKeysOnly(),
			clientv3.WithSort(clientv3.SortByKey, order), clientv3.WithLimit(1))
		if err != nil {
			return 0, 0, fmt.Errorf("configstore: reading the history: %w", err)
		}
		if len(resp.Kvs) == 0 {
			return 0, 0, nil
		}
		v, err := strconv.ParseInt(strings.TrimPrefix(string(resp.Kvs[0].Key), s.keys.configHistory()), 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("configstore: malformed history key %q", resp.Kvs[0].Key)
		}
		if order == clientv3.SortAscend {
			oldest = v
		} else {
			newest = v
		}
	}
	return oldest, newest, nil
}

// History returns the metadata of the stored versions, newest first, at
// most limit of them (all kept versions if limit <= 0). It reads the history
// keys, which are written once and never overwritten, so it is complete
// after an etcd compaction.
func (s *Store) History(ctx context.Context, limit int) ([]Meta, error) {
	opts := []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend)}
	if limit > 0 {
		opts = append(opts, clientv3.WithLimit(int64(limit)))
	}
	resp, err := s.c.Get(ctx, s.keys.configHistory(), opts...)
	if err != nil {
		return nil, fmt.Errorf("configstore: reading the history: %w", err)
	}
	out := make([]Meta, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var m Meta
		if err := json.Unmarshal(kv.Value, &m); err != nil {
			return nil, fmt.Errorf("configstore: history key %s is malformed: %w", kv.Key, err)
		}
		out = append(out, m)
	}
	return out, nil
}

// Diff returns the unified diff between two stored versions (0 is the
// current one); see DiffBundles.
func (s *Store) Diff(ctx context.Context, from, to int64) (string, error) {
	a, err := s.Version(ctx, from)
	if err != nil {
		return "", err
	}
	b, err := s.Version(ctx, to)
	if err != nil {
		return "", err
	}
	return DiffBundles(a.Bundle, b.Bundle, versionLabel(a.Version), versionLabel(b.Version)), nil
}

func versionLabel(v int64) string { return "v" + strconv.FormatInt(v, 10) }

// ApplyResult is the outcome of a write.
type ApplyResult struct {
	// Meta is the new version, or the current one when nothing changed.
	Meta Meta
	// Changed reports whether a new version was (or, for DryRun, would be)
	// stored. A bundle equal to the current one stores nothing.
	Changed bool
	// Diff is the unified diff from the previous current version.
	Diff string
	// Warnings are the rule files' non-fatal remarks,
	// "file:line: field: reason".
	Warnings []string
	// Replaced is the malformed current value the write replaced (for
	// DryRun, would replace), or nil; see MalformedError.
	Replaced *RawValue
}

// Apply stores b as the new current version, if it is valid and the
// current version is still expected (0 when nothing is stored yet). The
// check and the write are one etcd transaction comparing the current key's
// revision, so of two writers that read the same version exactly one
// succeeds; the other gets a *ConflictError naming the version now current.
// An invalid bundle gives a *ValidationError. In both cases nothing is
// stored. author and reason are required; each change is written to the
// audit log with its diff. A malformed current value is replaced as
// MalformedError says.
func (s *Store) Apply(ctx context.Context, b Bundle, expected int64, author, reason string) (ApplyResult, error) {
	return s.commit(ctx, change{bundle: b, expected: expected, author: author, reason: reason, repair: true})
}

// DryRun checks b and expected as Apply does and returns what Apply would,
// without storing anything.
func (s *Store) DryRun(ctx context.Context, b Bundle, expected int64) (ApplyResult, error) {
	return s.commit(ctx, change{bundle: b, expected: expected, author: "dry-run", reason: "dry-run", dryRun: true, repair: true})
}

// Rollback stores a new version whose content equals version to's, if the
// current version is still expected, as Apply does. The old content is
// validated again, so a rollback to something the nodes can no longer load
// is refused. Like Apply, it replaces a malformed current value.
func (s *Store) Rollback(ctx context.Context, to, expected int64, author, reason string) (ApplyResult, error) {
	if to <= 0 {
		return ApplyResult{}, invalid("rollback: version must be positive, not %d", to)
	}
	rec, err := s.Version(ctx, to)
	if err != nil {
		return ApplyResult{}, err
	}
	return s.commit(ctx, change{bundle: rec.Bundle, expected: expected, author: author, reason: reason, rollbackOf: to, repair: true})
}

// write is Seed's write, which never replaces a malformed current value.
func (s *Store) write(ctx context.Context, b Bundle, expected int64, author, reason string, rollbackOf int64, dryRun bool) (ApplyResult, error) {
	return s.commit(ctx, change{bundle: b, expected: expected, author: author, reason: reason, rollbackOf: rollbackOf, dryRun: dryRun})
}

// change is one write of the configuration.
type change struct {
	bundle         Bundle
	expected       int64
	author, reason string
	rollbackOf     int64
	dryRun         bool
	// repair lets the write replace a malformed current value.
	repair bool
}

// commit is Apply, DryRun, Rollback and Seed.
func (s *Store) commit(ctx context.Context, w change) (ApplyResult, error) {
	b, expected, author, reason := w.bundle, w.expected, w.author, w.reason
	switch {
	case expected < 0:
		return ApplyResult{}, invalid("expected version must be 0 or more, not %d", expected)
	case strings.TrimSpace(author) == "":
		return ApplyResult{}, invalid("author is required")
	case strings.TrimSpace(reason) == "":
		return ApplyResult{}, invalid("reason is required: say why the configuration changes")
	}
	cfg, _, err := compile(b, s.validateShed)
	if err != nil {
		return ApplyResult{}, err
	}
	cur, modRev, err := s.current(ctx)
	var (
		malformed *MalformedError
		replaced  *RawValue
	)
	if w.repair && errors.As(err, &malformed) {
		// Replace the value by compare-and-swap on its revision, as the
		// next version after the history's newest.
		cur, modRev, replaced, err = Record{Meta: Meta{Version: malformed.Version}}, malformed.Value.ModRevision, &malformed.Value, nil
	}
	if err != nil {
		return ApplyResult{}, err
	}
	if cur.Version != expected {
		return ApplyResult{}, &ConflictError{Expected: expected, Current: cur.Version}
	}
	next := cur.Version + 1
	if cur.Version == 0 {
		// The current key is gone but the history may not be (an operator
		// deleted it by hand): carry on numbering after the history.
		_, newest, err := s.historyBounds(ctx)
		if err != nil {
			return ApplyResult{}, err
		}
		next = newest + 1
	}
	res := ApplyResult{
		Meta:     cur.Meta,
		Changed:  cur.Version == 0 || replaced != nil || !b.Equal(cur.Bundle),
		Diff:     DiffBundles(cur.Bundle, b, versionLabel(cur.Version), versionLabel(next)),
		Warnings: warnings(cfg),
		Replaced: replaced,
	}
	// Encode before the dry run returns, so that it too refuses what etcd
	// would.
	meta := Meta{Version: next, Author: author, Reason: reason, Time: s.now().UTC(), RollbackOf: w.rollbackOf}
	mv, err := json.Marshal(meta)
	if err != nil {
		return ApplyResult{}, fmt.Errorf("configstore: encoding version %d: %w", next, err)
	}
	rv, err := encodeRecord(Record{Meta: meta, Bundle: b})
	if err != nil {
		return ApplyResult{}, fmt.Errorf("configstore: encoding version %d: %w", next, err)
	}
	if len(rv) > maxRecordSize {
		return ApplyResult{}, invalid("the configuration takes %d bytes stored (as JSON, with escapes), more than the %d one etcd request may carry; make it smaller", len(rv), maxRecordSize)
	}
	if !res.Changed || w.dryRun {
		return res, nil
	}
	ops := []clientv3.Op{
		clientv3.OpPut(s.keys.configCurrent(), string(mv)),
		clientv3.OpPut(s.keys.historyKey(next), string(rv)),
	}
	if drop := next - s.keep; drop >= 1 {
		// Versions up to drop fall out of the history.
		ops = append(ops, clientv3.OpDelete(s.keys.historyKey(0), clientv3.WithRange(s.keys.historyKey(drop+1))))
	}
	if s.beforeCommit != nil {
		s.beforeCommit()
	}
	resp, err := s.c.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(s.keys.configCurrent()), "=", modRev),
			clientv3.Compare(clientv3.CreateRevision(s.keys.historyKey(next)), "=", 0)).
		Then(ops...).
		Else(clientv3.OpGet(s.keys.configCurrent())).
		Commit()
	if err != nil {
		return ApplyResult{}, fmt.Errorf("configstore: storing version %d: %w", next, err)
	}
	if !resp.Succeeded {
		kvs := resp.Responses[0].GetResponseRange().GetKvs()
		if len(kvs) == 0 && modRev == 0 || len(kvs) > 0 && kvs[0].ModRevision == modRev {
			// Only the history check failed: a record exists for a version
			// that the current key has not reached.
			return ApplyResult{}, fmt.Errorf("configstore: the history already holds version %d, which is newer than the current version %d; the store was edited by hand", next, cur.Version)
		}
		var now Record
		if len(kvs) > 0 {
			if now, err = s.decodeCurrent(ctx, kvs[0]); errors.As(err, &malformed) {
				now.Version = malformed.Version
			} else if err != nil {
				return ApplyResult{}, err
			}
		}
		return ApplyResult{}, &ConflictError{Expected: expected, Current: now.Version}
	}
	res.Meta = meta
	s.audit("config applied", meta, cur.Version, res.Diff, replaced)
	return res, nil
}

// audit writes one change to the audit log.
func (s *Store) audit(msg string, m Meta, previous int64, diff string, replaced *RawValue) {
	if len(diff) > maxAuditDiff {
		diff = diff[:maxAuditDiff] + "\n[diff truncated; see the history]\n"
	}
	attrs := []any{"audit", true, "version", m.Version, "previous", previous,
		"author", m.Author, "reason", m.Reason}
	if m.RollbackOf != 0 {
		attrs = append(attrs, "rollback_of", m.RollbackOf)
	}
	if replaced != nil {
		attrs = append(attrs, slog.Group("replaced_malformed", "key", replaced.Key, "mod_revision", replaced.ModRevision,
			"bytes", replaced.Size, "xxhash64", replaced.XXHash, "head", replaced.Head))
	}
	attrs = append(attrs, "diff", diff)
	s.log.Info(msg, attrs...)
}
