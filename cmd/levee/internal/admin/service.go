package admin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/levee-dev/levee/cmd/levee/internal/configstore"
	"github.com/levee-dev/levee/limiter/rules"
	leveev1 "github.com/levee-dev/levee/proto/levee/v1"
)

// Error details attached to refusals, for clients that act on them.
const (
	// ErrorDomain is the domain of levee's ErrorInfo details.
	ErrorDomain = "levee.dev"
	// ReasonConflict is the ErrorInfo reason of a version conflict; its
	// metadata holds "current_version" and "expected_version".
	ReasonConflict = "CONFIG_VERSION_CONFLICT"
	// ReasonMalformed is the ErrorInfo reason of a current key that holds
	// a value naming no usable version; its metadata holds
	// "current_version" (what a write replacing it must expect), "key",
	// "mod_revision", "size", "xxhash64" and "head".
	ReasonMalformed = "CONFIG_CURRENT_MALFORMED"
)

// Bounds on requests.
const (
	defaultHistory = 20
	maxEntries     = 64
)

// service implements leveev1.AdminServiceServer on a configstore.Store.
type service struct {
	leveev1.UnimplementedAdminServiceServer
	store      *configstore.Store
	status     StatusSource
	log        *slog.Logger
	now        func() time.Time
	maxHistory int
	source     string   // SourceEtcd or SourceFile
	files      []string // the files a node in file mode enforces
	enforced   func() *rules.Config
}

// Config sources: where a node takes its rules and shedding policy from.
const (
	// SourceFile: each node enforces its own --config and --shed-policy
	// files, and the stored versions are not used.
	SourceFile = "file"
	// SourceEtcd: every node enforces the current stored version, which
	// operators change with levee ctl.
	SourceEtcd = "etcd"
)

// refuseInFileMode refuses a write of the stored configuration on a node
// that does not enforce it.
func (s *service) refuseInFileMode(what string) error {
	if s.source != SourceFile {
		return nil
	}
	return status.Errorf(codes.FailedPrecondition,
		"refused: this node enforces its own files (config source %q), so a stored version would not be enforced (%s changes only etcd); the files are authoritative: %s; edit the files on every node",
		SourceFile, what, s.fileList())
}

// refuseCurrentInFileMode refuses a read of the current stored version on
// a node in file mode: what is stored there is not what the node
// enforces, and showing it as "the configuration" would mislead. Older
// versions, asked for by number, are still read.
func (s *service) refuseCurrentInFileMode(what string) error {
	if s.source != SourceFile {
		return nil
	}
	// The wording shares refuseInFileMode's ending: ctl apply and rollback
	// read the current version first, so this is the refusal they show.
	return status.Errorf(codes.FailedPrecondition,
		"refused: this node enforces its own files (config source %q), not a stored version, so %s of the current version would show a configuration that is not in force (levee ctl explain shows what the files decide; a version number reads a stored version); the files are authoritative: %s; edit the files on every node",
		SourceFile, what, s.fileList())
}

// fileList names the files a node in file mode enforces.
func (s *service) fileList() string {
	if len(s.files) == 0 {
		return "the built-in example rules and shedding policy"
	}
	return strings.Join(s.files, ", ")
}

func (s *service) GetConfig(ctx context.Context, req *leveev1.GetConfigRequest) (*leveev1.GetConfigResponse, error) {
	if req.GetVersion() == 0 {
		if err := s.refuseCurrentInFileMode("a get"); err != nil {
			return nil, err
		}
	}
	rec, err := s.store.Version(ctx, req.GetVersion())
	if err != nil {
		return nil, toStatus(err)
	}
	return &leveev1.GetConfigResponse{Version: metaToProto(rec.Meta), Bundle: bundleToProto(rec.Bundle)}, nil
}

func (s *service) ApplyConfig(ctx context.Context, req *leveev1.ApplyConfigRequest) (*leveev1.ApplyConfigResponse, error) {
	if err := s.refuseInFileMode("apply"); err != nil {
		return nil, err
	}
	b, err := bundleFromProto(req.GetBundle())
	if err != nil {
		return nil, err
	}
	var res configstore.ApplyResult
	if req.GetDryRun() {
		res, err = s.store.DryRun(ctx, b, req.GetExpectedVersion())
	} else {
		res, err = s.store.Apply(ctx, b, req.GetExpectedVersion(), Identity(ctx), req.GetReason())
	}
	if err != nil {
		return nil, toStatus(err)
	}
	return &leveev1.ApplyConfigResponse{
		Version: metaToProto(res.Meta), Changed: res.Changed, Diff: res.Diff, Warnings: res.Warnings,
		ReplacedMalformed: rawToProto(res.Replaced),
	}, nil
}

func (s *service) DiffConfig(ctx context.Context, req *leveev1.DiffConfigRequest) (*leveev1.DiffConfigResponse, error) {
	if req.GetFromVersion() == 0 || (req.GetBundle() == nil && req.GetToVersion() == 0) {
		if err := s.refuseCurrentInFileMode("a diff"); err != nil {
			return nil, err
		}
	}
	from, err := s.store.Version(ctx, req.GetFromVersion())
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &leveev1.DiffConfigResponse{FromVersion: from.Version}
	var to configstore.Bundle
	toLabel := "proposed"
	if pb := req.GetBundle(); pb != nil {
		if to, err = bundleFromProto(pb); err != nil {
			return nil, err
		}
		if _, err := s.store.Validate(to); err != nil {
			return nil, toStatus(err)
		}
	} else {
		rec, err := s.store.Version(ctx, req.GetToVersion())
		if err != nil {
			return nil, toStatus(err)
		}
		to, resp.ToVersion, toLabel = rec.Bundle, rec.Version, versionLabel(rec.Version)
	}
	resp.Diff = configstore.DiffBundles(from.Bundle, to, versionLabel(from.Version), toLabel)
	resp.Changed = resp.Diff != ""
	return resp, nil
}

func versionLabel(v int64) string { return "v" + strconv.FormatInt(v, 10) }

func (s *service) History(ctx context.Context, req *leveev1.HistoryRequest) (*leveev1.HistoryResponse, error) {
	limit := int(req.GetLimit())
	switch {
	case limit < 0:
		return nil, status.Errorf(codes.InvalidArgument, "limit: must be 0 or more, not %d", limit)
	case limit == 0:
		limit = defaultHistory
	case limit > s.maxHistory:
		limit = s.maxHistory
	}
	h, err := s.store.History(ctx, limit)
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &leveev1.HistoryResponse{Versions: make([]*leveev1.ConfigVersion, len(h))}
	for i, m := range h {
		resp.Versions[i] = metaToProto(m)
	}
	return resp, nil
}

func (s *service) Rollback(ctx context.Context, req *leveev1.RollbackRequest) (*leveev1.RollbackResponse, error) {
	if err := s.refuseInFileMode("rollback"); err != nil {
		return nil, err
	}
	res, err := s.store.Rollback(ctx, req.GetVersion(), req.GetExpectedVersion(), Identity(ctx), req.GetReason())
	if err != nil {
		return nil, toStatus(err)
	}
	return &leveev1.RollbackResponse{Version: metaToProto(res.Meta), Changed: res.Changed, Diff: res.Diff,
		ReplacedMalformed: rawToProto(res.Replaced)}, nil
}

func rawToProto(r *configstore.RawValue) *leveev1.MalformedValue {
	if r == nil {
		return nil
	}
	return &leveev1.MalformedValue{Key: r.Key, ModRevision: r.ModRevision, Size: int64(r.Size), Xxhash64: r.XXHash, Head: r.Head}
}

func (s *service) SetOverride(ctx context.Context, req *leveev1.SetOverrideRequest) (*leveev1.SetOverrideResponse, error) {
	p, err := priorityName(req.GetMinPriority())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, "min_priority: "+err.Error())
	}
	if req.GetDuration() == nil || req.GetDuration().AsDuration() <= 0 {
		return nil, status.Error(codes.InvalidArgument, "duration: required, and positive (how long the override lasts)")
	}
	set, prev, err := s.store.SetOverride(ctx, configstore.Override{
		Resource:    req.GetResource(),
		MinPriority: p,
		Until:       s.now().Add(req.GetDuration().AsDuration()),
		Author:      Identity(ctx),
		Reason:      req.GetReason(),
	})
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &leveev1.SetOverrideResponse{Override: overrideToProto(set)}
	if prev != nil {
		resp.Replaced = overrideToProto(*prev)
	}
	return resp, nil
}

func (s *service) ClearOverride(ctx context.Context, req *leveev1.ClearOverrideRequest) (*leveev1.ClearOverrideResponse, error) {
	o, err := s.store.ClearOverride(ctx, req.GetResource(), Identity(ctx), req.GetReason())
	if err != nil {
		return nil, toStatus(err)
	}
	return &leveev1.ClearOverrideResponse{Cleared: overrideToProto(o)}, nil
}

func (s *service) ListOverrides(ctx context.Context, _ *leveev1.ListOverridesRequest) (*leveev1.ListOverridesResponse, error) {
	list, err := s.store.ListOverrides(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &leveev1.ListOverridesResponse{}
	for _, o := range list {
		resp.Overrides = append(resp.Overrides, overrideToProto(o))
	}
	return resp, nil
}

// Status reports what it can: the member figures come from the node and the
// stored version and overrides from etcd, and either may be missing when
// the other is not (etcd down is when operators need status most).
func (s *service) Status(ctx context.Context, _ *leveev1.StatusRequest) (*leveev1.StatusResponse, error) {
	resp := &leveev1.StatusResponse{ConfigSource: s.source}
	var storeErrs []string
	if rec, err := s.store.Get(ctx); err != nil {
		storeErrs = append(storeErrs, err.Error())
	} else {
		resp.ConfigVersion = rec.Version
	}
	if list, err := s.store.ListOverrides(ctx); err != nil {
		storeErrs = append(storeErrs, err.Error())
	} else {
		for _, o := range list {
			resp.Overrides = append(resp.Overrides, overrideToProto(o))
		}
	}
	resp.StoreError = strings.Join(storeErrs, "; ")
	if s.status == nil {
		return resp, nil
	}
	cs, err := s.status.ClusterStatus(ctx)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "cluster status: %v", err)
	}
	resp.Self = cs.Self
	members := append([]MemberStatus(nil), cs.Members...)
	sort.Slice(members, func(i, j int) bool { return members[i].ID < members[j].ID })
	for _, m := range members {
		resp.Members = append(resp.Members, memberToProto(m, cs.Self))
	}
	return resp, nil
}

func (s *service) Explain(ctx context.Context, req *leveev1.ExplainRequest) (*leveev1.ExplainResponse, error) {
	if req.GetDomain() == "" {
		return nil, status.Error(codes.InvalidArgument, "domain: required")
	}
	if len(req.GetEntries()) > maxEntries {
		return nil, status.Errorf(codes.InvalidArgument, "entries: at most %d, got %d", maxEntries, len(req.GetEntries()))
	}
	entries := make([]rules.Entry, len(req.GetEntries()))
	for i, e := range req.GetEntries() {
		if e.GetKey() == "" {
			return nil, status.Errorf(codes.InvalidArgument, "entries[%d].key: required", i)
		}
		entries[i] = rules.Entry{Key: e.GetKey(), Value: e.GetValue()}
	}
	var (
		rec configstore.Record
		cfg *rules.Config
		err error
	)
	if req.GetVersion() == 0 && s.source == SourceFile && s.enforced != nil {
		// The node's own files are in force, not a stored version.
		cfg = s.enforced()
	} else {
		if rec, err = s.store.Version(ctx, req.GetVersion()); err != nil {
			return nil, toStatus(err)
		}
		if cfg, err = s.store.Validate(rec.Bundle); err != nil {
			return nil, status.Errorf(codes.FailedPrecondition, "version %d does not load, so nothing can be explained against it: %v", rec.Version, err)
		}
	}
	ex := Explain(cfg, req.GetDomain(), entries)
	resp := &leveev1.ExplainResponse{
		Version: rec.Version, DomainFound: ex.DomainFound, Matched: ex.Rule != nil, Summary: ex.Summary,
	}
	if ex.Rule != nil {
		resp.Rule = ruleToProto(ex.Rule)
	}
	for _, st := range ex.Steps {
		ps := &leveev1.ExplainStep{
			Entry: &leveev1.Entry{Key: st.Entry.Key, Value: st.Entry.Value},
			Kind:  matchKindToProto(st.Kind),
			Note:  st.Note,
		}
		if st.Rule != nil {
			ps.RuleId, ps.Location = st.Rule.ID, location(st.Rule)
		}
		resp.Steps = append(resp.Steps, ps)
	}
	return resp, nil
}

// toStatus maps a configstore error to a gRPC status: a conflict to
// ABORTED with the versions in an ErrorInfo, a validation error to
// INVALID_ARGUMENT with one BadRequest violation per problem, a malformed
// current value to FAILED_PRECONDITION with an ErrorInfo describing it, a
// missing version or override to NOT_FOUND, and etcd's own codes through.
func toStatus(err error) error {
	var ce *configstore.ConflictError
	var ve *configstore.ValidationError
	var me *configstore.MalformedError
	switch {
	case errors.As(err, &me):
		st := status.New(codes.FailedPrecondition, me.Error())
		if d, derr := st.WithDetails(&errdetails.ErrorInfo{
			Reason: ReasonMalformed, Domain: ErrorDomain,
			Metadata: map[string]string{
				"current_version": strconv.FormatInt(me.Version, 10),
				"key":             me.Value.Key,
				"mod_revision":    strconv.FormatInt(me.Value.ModRevision, 10),
				"size":            strconv.Itoa(me.Value.Size),
				"xxhash64":        me.Value.XXHash,
				"head":            me.Value.Head,
			},
		}); derr == nil {
			st = d
		}
		return st.Err()
	case errors.As(err, &ce):
		st := status.New(codes.Aborted, ce.Error())
		if d, derr := st.WithDetails(&errdetails.ErrorInfo{
			Reason: ReasonConflict, Domain: ErrorDomain,
			Metadata: map[string]string{
				"current_version":  strconv.FormatInt(ce.Current, 10),
				"expected_version": strconv.FormatInt(ce.Expected, 10),
			},
		}); derr == nil {
			st = d
		}
		return st.Err()
	case errors.As(err, &ve):
		st := status.New(codes.InvalidArgument, ve.Error())
		br := &errdetails.BadRequest{}
		for _, p := range ve.Problems {
			var pe *rules.ParseError
			if errors.As(p, &pe) {
				field := fmt.Sprintf("%s:%d", pe.File, pe.Line)
				if pe.Field != "" {
					field += ": " + pe.Field
				}
				br.FieldViolations = append(br.FieldViolations, &errdetails.BadRequest_FieldViolation{Field: field, Description: pe.Reason})
			} else {
				br.FieldViolations = append(br.FieldViolations, &errdetails.BadRequest_FieldViolation{Description: p.Error()})
			}
		}
		if d, derr := st.WithDetails(br); derr == nil {
			st = d
		}
		return st.Err()
	case errors.Is(err, configstore.ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	}
	if st, ok := status.FromError(err); ok && st.Code() != codes.Unknown && st.Code() != codes.OK {
		return status.Error(st.Code(), "configuration store (etcd): "+err.Error())
	}
	return status.Error(codes.Internal, err.Error())
}

// bundleFromProto converts a bundle, refusing duplicate file names.
func bundleFromProto(pb *leveev1.ConfigBundle) (configstore.Bundle, error) {
	if pb == nil {
		return configstore.Bundle{}, status.Error(codes.InvalidArgument, "bundle: required")
	}
	b := configstore.Bundle{Rules: make(map[string][]byte, len(pb.GetRuleFiles()))}
	for i, f := range pb.GetRuleFiles() {
		if _, dup := b.Rules[f.GetName()]; dup {
			return configstore.Bundle{}, status.Errorf(codes.InvalidArgument, "bundle.rule_files[%d]: file name %q given twice", i, f.GetName())
		}
		b.Rules[f.GetName()] = []byte(f.GetContent())
	}
	if pb.GetShedPolicy() != "" {
		b.Shed = []byte(pb.GetShedPolicy())
	}
	return b, nil
}

func bundleToProto(b configstore.Bundle) *leveev1.ConfigBundle {
	pb := &leveev1.ConfigBundle{ShedPolicy: string(b.Shed)}
	for _, n := range b.Names() {
		pb.RuleFiles = append(pb.RuleFiles, &leveev1.RuleFile{Name: n, Content: string(b.Rules[n])})
	}
	return pb
}

func metaToProto(m configstore.Meta) *leveev1.ConfigVersion {
	v := &leveev1.ConfigVersion{Version: m.Version, Author: m.Author, Reason: m.Reason, RollbackOf: m.RollbackOf}
	if !m.Time.IsZero() {
		v.Time = timestamppb.New(m.Time)
	}
	return v
}

func overrideToProto(o configstore.Override) *leveev1.Override {
	return &leveev1.Override{
		Resource:    o.Resource,
		MinPriority: priorityEnum(o.MinPriority),
		Until:       timestamppb.New(o.Until),
		Author:      o.Author,
		Reason:      o.Reason,
		SetAt:       timestamppb.New(o.SetAt),
	}
}

func memberToProto(m MemberStatus, self string) *leveev1.MemberStatus {
	pm := &leveev1.MemberStatus{
		Id: m.ID, Addr: m.Addr, Self: m.ID == self, Reachable: m.Reachable, Error: m.Error,
		RingShare: m.RingShare, ConfigVersion: m.ConfigVersion, ConfigError: m.ConfigError,
		DecisionsPerSecond: m.DecisionsPerSecond,
		ConfigSource:       m.ConfigSource, ConfigHash: m.ConfigHash, ConfigPaths: m.ConfigPaths, ConfigWarning: m.ConfigWarning,
	}
	if !m.ConfigAppliedAt.IsZero() {
		pm.ConfigAppliedAt = timestamppb.New(m.ConfigAppliedAt)
	}
	if !m.ConfigDivergedSince.IsZero() {
		pm.ConfigDivergedSince = timestamppb.New(m.ConfigDivergedSince)
	}
	for _, p := range configstore.Priorities {
		if r, ok := m.RefusalsPerSecond[p]; ok {
			pm.Refusals = append(pm.Refusals, &leveev1.PriorityRate{Priority: priorityEnum(p), PerSecond: r})
		}
	}
	for _, t := range m.Thresholds {
		pt := &leveev1.ResourceThreshold{Resource: t.Resource, Priority: priorityEnum(t.Priority), Cohort: t.Cohort, Pinned: t.Pinned}
		if t.Pinned {
			pt.PinnedUntil = timestamppb.New(t.PinnedUntil)
		}
		pm.Thresholds = append(pm.Thresholds, pt)
	}
	return pm
}

func ruleToProto(r *rules.Rule) *leveev1.ExplainedRule {
	er := &leveev1.ExplainedRule{
		Id: r.ID, Name: r.Name, Location: location(r),
		HasLimit: r.HasLimit, Unlimited: r.Unlimited,
		ShadowMode: r.ShadowMode, QuotaMode: r.QuotaMode,
		Priority: priorityEnum(r.Priority.String()), FailureMode: r.FailureMode.String(),
		Replaces: r.Replaces,
	}
	for i := range r.Limits {
		l := &r.Limits[i]
		if i == 0 {
			er.Unit, er.RequestsPerUnit, er.Burst = l.Unit.String(), l.RequestsPerUnit, l.Limit.Capacity()
		}
		er.Limits = append(er.Limits, &leveev1.ExplainedLimit{
			Name: l.Name, Unit: l.Unit.String(), UnitMultiplier: l.UnitMultiplier,
			RequestsPerUnit: l.RequestsPerUnit, Burst: l.Limit.Capacity(), Text: limitText(l),
		})
	}
	return er
}

func matchKindToProto(k rules.MatchKind) leveev1.MatchKind {
	switch k {
	case rules.MatchExact:
		return leveev1.MatchKind_MATCH_KIND_EXACT
	case rules.MatchWildcard:
		return leveev1.MatchKind_MATCH_KIND_WILDCARD
	case rules.MatchDefault:
		return leveev1.MatchKind_MATCH_KIND_DEFAULT
	}
	return leveev1.MatchKind_MATCH_KIND_NONE
}

// priorityEnum maps "critical" … "sheddable" to the wire enum; anything
// else is unspecified.
func priorityEnum(p string) leveev1.Priority {
	if v, ok := leveev1.Priority_value["PRIORITY_"+strings.ToUpper(p)]; ok && p != "" && p != "unspecified" {
		return leveev1.Priority(v)
	}
	return leveev1.Priority_PRIORITY_UNSPECIFIED
}

// priorityName maps the wire enum to a priority name, refusing
// unspecified: an override must say what it admits.
func priorityName(p leveev1.Priority) (string, error) {
	if p == leveev1.Priority_PRIORITY_UNSPECIFIED {
		return "", errors.New("required: critical, high, default, low or sheddable")
	}
	name, ok := leveev1.Priority_name[int32(p)]
	if !ok {
		return "", fmt.Errorf("unknown priority %d", p)
	}
	return strings.ToLower(strings.TrimPrefix(name, "PRIORITY_")), nil
}
