package main

import (
	"cmp"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/levee-dev/levee/cmd/levee/internal/configstore"
	"github.com/levee-dev/levee/limiter/rlqs"
	leveev1 "github.com/levee-dev/levee/proto/levee/v1"
)

// ctlOverride is an override in -o json and -o yaml output.
type ctlOverride struct {
	Resource    string    `json:"resource" yaml:"resource"`
	MinPriority string    `json:"min_priority" yaml:"min_priority"`
	Until       time.Time `json:"until" yaml:"until"`
	Author      string    `json:"author" yaml:"author"`
	Reason      string    `json:"reason" yaml:"reason"`
	SetAt       time.Time `json:"set_at" yaml:"set_at"`
}

func toCtlOverride(o *leveev1.Override) ctlOverride {
	return ctlOverride{
		Resource: o.GetResource(), MinPriority: priorityText(o.GetMinPriority()),
		Until: o.GetUntil().AsTime(), Author: o.GetAuthor(), Reason: o.GetReason(), SetAt: o.GetSetAt().AsTime(),
	}
}

// describe is an override in one line of prose.
func (o ctlOverride) describe() string {
	admits := o.MinPriority + " and more important"
	if o.MinPriority == "critical" {
		admits = "critical only"
	}
	return fmt.Sprintf("%s: %s until %s (%v from now), set by %s: %q", o.Resource, admits,
		o.Until.Local().Format("2006-01-02 15:04:05"), time.Until(o.Until).Round(time.Second), o.Author, o.Reason)
}

func priorityText(p leveev1.Priority) string {
	return strings.ToLower(strings.TrimPrefix(p.String(), "PRIORITY_"))
}

func parsePriority(s string) (leveev1.Priority, bool) {
	v, ok := leveev1.Priority_value["PRIORITY_"+strings.ToUpper(strings.TrimSpace(s))]
	if !ok || v == 0 {
		return 0, false
	}
	return leveev1.Priority(v), true
}

func ctlOverrideCommand(o *ctlOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "override",
		Short: "Pin a shedding resource's threshold for a while, or clear it",
		Long: `An override pins a shedding resource's admission threshold: only traffic at
--min-priority or more important is admitted, on every node, until it
expires by itself (--for) or is cleared.

  levee ctl override set timeline --min-priority critical --for 15m --reason "INC-123: DB failover"
  levee ctl override clear timeline --reason "failover done"`,
		Args: ctlArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(ctlOverrideSetCommand(o), ctlOverrideClearCommand(o), ctlOverrideListCommand(o))
	return cmd
}

func ctlOverrideSetCommand(o *ctlOptions) *cobra.Command {
	var (
		minPriority, reason string
		dur                 time.Duration
	)
	cmd := &cobra.Command{
		Use:   "set RESOURCE --min-priority PRIORITY --for DURATION --reason TEXT",
		Short: "Admit only traffic at a priority or above on a resource, until it expires",
		Long: `Set (or replace) the override on RESOURCE. PRIORITY is critical, high,
default, low or sheddable: the least important priority still admitted.
--for is how long it lasts (at most 24h by default); it then lapses by itself.

` + ctlExitCodesHelp,
		Args: ctlArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, ok := parsePriority(minPriority)
			if !ok {
				return usageErr(cmd, "--min-priority %q: want %s", minPriority, strings.Join(configstore.Priorities, ", "))
			}
			if dur <= 0 {
				return usageErr(cmd, "--for is required and must be positive (e.g. 15m): overrides always expire")
			}
			if strings.TrimSpace(reason) == "" {
				return usageErr(cmd, "--reason is required: say why the override is set")
			}
			c, err := o.connect()
			if err != nil {
				return err
			}
			defer c.Close()
			ctx, cancel := c.ctx(cmd.Context())
			defer cancel()
			resp, err := c.SetOverride(ctx, &leveev1.SetOverrideRequest{
				Resource: args[0], MinPriority: p, Duration: durationpb.New(dur), Reason: reason,
			})
			if err != nil {
				return c.callErr("override set", err)
			}
			type out struct {
				Override ctlOverride  `json:"override" yaml:"override"`
				Replaced *ctlOverride `json:"replaced,omitempty" yaml:"replaced,omitempty"`
			}
			res := out{Override: toCtlOverride(resp.GetOverride())}
			if resp.GetReplaced() != nil {
				r := toCtlOverride(resp.GetReplaced())
				res.Replaced = &r
			}
			return o.printOut(cmd.OutOrStdout(), res, func(w io.Writer) error {
				fmt.Fprintln(w, "override set:", res.Override.describe())
				if res.Replaced != nil {
					fmt.Fprintln(w, "replaced:", res.Replaced.describe())
				}
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&minPriority, "min-priority", "", "least important priority still admitted: critical, high, default, low or sheddable (required)")
	cmd.Flags().DurationVar(&dur, "for", 0, "how long the override lasts, e.g. 15m (required)")
	cmd.Flags().StringVar(&reason, "reason", "", "why (required; kept in the audit log)")
	return cmd
}

func ctlOverrideClearCommand(o *ctlOptions) *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:   "clear RESOURCE --reason TEXT",
		Short: "Remove a resource's override before it expires",
		Args:  ctlArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			if strings.TrimSpace(reason) == "" {
				return usageErr(cmd, "--reason is required: say why the override is cleared")
			}
			c, err := o.connect()
			if err != nil {
				return err
			}
			defer c.Close()
			ctx, cancel := c.ctx(cmd.Context())
			defer cancel()
			resp, err := c.ClearOverride(ctx, &leveev1.ClearOverrideRequest{Resource: args[0], Reason: reason})
			if err != nil {
				return c.callErr("override clear", err)
			}
			cl := toCtlOverride(resp.GetCleared())
			return o.printOut(cmd.OutOrStdout(), map[string]ctlOverride{"cleared": cl}, func(w io.Writer) error {
				_, err := fmt.Fprintln(w, "override cleared:", cl.describe())
				return err
			})
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why (required; kept in the audit log)")
	return cmd
}

func ctlOverrideListCommand(o *ctlOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List the overrides in force",
		Args:  ctlArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := o.connect()
			if err != nil {
				return err
			}
			defer c.Close()
			ctx, cancel := c.ctx(cmd.Context())
			defer cancel()
			resp, err := c.ListOverrides(ctx, &leveev1.ListOverridesRequest{})
			if err != nil {
				return c.callErr("override list", err)
			}
			list := make([]ctlOverride, 0, len(resp.GetOverrides()))
			for _, ov := range resp.GetOverrides() {
				list = append(list, toCtlOverride(ov))
			}
			return o.printOut(cmd.OutOrStdout(), list, func(w io.Writer) error { return overrideTable(w, list) })
		},
	}
}

func overrideTable(w io.Writer, list []ctlOverride) error {
	if len(list) == 0 {
		_, err := fmt.Fprintln(w, "no overrides")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RESOURCE\tMIN-PRIORITY\tUNTIL\tLEFT\tAUTHOR\tREASON")
	for _, ov := range list {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%s\t%s\n", ov.Resource, ov.MinPriority, ov.Until.Local().Format("15:04:05"),
			time.Until(ov.Until).Round(time.Second), ov.Author, oneLine(ov.Reason))
	}
	return tw.Flush()
}

// ctlStatus is the cluster status in -o json and -o yaml output.
type ctlStatus struct {
	Self          string        `json:"self" yaml:"self"`
	ConfigSource  string        `json:"config_source" yaml:"config_source"`
	ConfigVersion int64         `json:"config_version" yaml:"config_version"`
	StoreError    string        `json:"store_error,omitempty" yaml:"store_error,omitempty"`
	Members       []ctlMember   `json:"members" yaml:"members"`
	Overrides     []ctlOverride `json:"overrides" yaml:"overrides"`
}

type ctlMember struct {
	ID                 string             `json:"id" yaml:"id"`
	Addr               string             `json:"addr" yaml:"addr"`
	Self               bool               `json:"self" yaml:"self"`
	Reachable          bool               `json:"reachable" yaml:"reachable"`
	Error              string             `json:"error,omitempty" yaml:"error,omitempty"`
	RingShare          float64            `json:"ring_share" yaml:"ring_share"`
	ConfigSource       string             `json:"config_source" yaml:"config_source"`
	ConfigVersion      int64              `json:"config_version" yaml:"config_version"`
	ConfigHash         string             `json:"config_hash" yaml:"config_hash"`
	ConfigAppliedAt    *time.Time         `json:"config_applied_at,omitempty" yaml:"config_applied_at,omitempty"`
	ConfigPaths        []string           `json:"config_paths,omitempty" yaml:"config_paths,omitempty"`
	ConfigError        string             `json:"config_error,omitempty" yaml:"config_error,omitempty"`
	ConfigWarning      string             `json:"config_warning,omitempty" yaml:"config_warning,omitempty"`
	ConfigDiverged     *time.Time         `json:"config_diverged_since,omitempty" yaml:"config_diverged_since,omitempty"`
	DecisionsPerSecond float64            `json:"decisions_per_second" yaml:"decisions_per_second"`
	RefusalsPerSecond  map[string]float64 `json:"refusals_per_second" yaml:"refusals_per_second"`
	Thresholds         []ctlThreshold     `json:"thresholds" yaml:"thresholds"`
}

type ctlThreshold struct {
	Resource    string     `json:"resource" yaml:"resource"`
	Priority    string     `json:"priority" yaml:"priority"`
	Cohort      uint32     `json:"cohort" yaml:"cohort"`
	Pinned      bool       `json:"pinned" yaml:"pinned"`
	PinnedUntil *time.Time `json:"pinned_until,omitempty" yaml:"pinned_until,omitempty"`
}

func ctlStatusCommand(o *ctlOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show the cluster: members, ring shares, rates, thresholds, config versions",
		Long: `Show every member of the cluster as the answering node sees it: its share of
the ring, where its configuration comes from (SOURCE: its own files, or
etcd), what it enforces (CONFIG: the stored version, or the content hash of
its files; -o json gives both, with the time it was applied and the files),
its decisions and refusals per second by priority, its shedding thresholds,
and the overrides in force. CONFIG is flagged when the node refused a
version, runs behind the stored one, or has differed from the majority of
nodes for over two minutes; warnings (a --config that differs from the
stored version, a missing current-version key) are listed below the table.`,
		Args: ctlArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := o.connect()
			if err != nil {
				return err
			}
			defer c.Close()
			ctx, cancel := c.ctx(cmd.Context())
			defer cancel()
			resp, err := c.Status(ctx, &leveev1.StatusRequest{})
			if err != nil {
				return c.callErr("status", err)
			}
			st := ctlStatus{Self: resp.GetSelf(), ConfigSource: resp.GetConfigSource(), ConfigVersion: resp.GetConfigVersion(), StoreError: resp.GetStoreError(),
				Members: []ctlMember{}, Overrides: []ctlOverride{}}
			for _, m := range resp.GetMembers() {
				cm := ctlMember{ID: m.GetId(), Addr: m.GetAddr(), Self: m.GetSelf(), Reachable: m.GetReachable(), Error: m.GetError(),
					RingShare: m.GetRingShare(), ConfigSource: m.GetConfigSource(), ConfigVersion: m.GetConfigVersion(), ConfigHash: m.GetConfigHash(),
					ConfigPaths: m.GetConfigPaths(), ConfigError: m.GetConfigError(), ConfigWarning: m.GetConfigWarning(),
					DecisionsPerSecond: m.GetDecisionsPerSecond(), RefusalsPerSecond: map[string]float64{}, Thresholds: []ctlThreshold{}}
				if t := m.GetConfigAppliedAt(); t != nil {
					at := t.AsTime()
					cm.ConfigAppliedAt = &at
				}
				if t := m.GetConfigDivergedSince(); t != nil {
					at := t.AsTime()
					cm.ConfigDiverged = &at
				}
				for _, r := range m.GetRefusals() {
					cm.RefusalsPerSecond[priorityText(r.GetPriority())] = r.GetPerSecond()
				}
				for _, t := range m.GetThresholds() {
					ct := ctlThreshold{Resource: t.GetResource(), Priority: priorityText(t.GetPriority()), Cohort: t.GetCohort(), Pinned: t.GetPinned()}
					if t.GetPinnedUntil() != nil {
						u := t.GetPinnedUntil().AsTime()
						ct.PinnedUntil = &u
					}
					cm.Thresholds = append(cm.Thresholds, ct)
				}
				st.Members = append(st.Members, cm)
			}
			for _, ov := range resp.GetOverrides() {
				st.Overrides = append(st.Overrides, toCtlOverride(ov))
			}
			return o.printOut(cmd.OutOrStdout(), st, st.table)
		},
	}
}

func (st ctlStatus) table(w io.Writer) error {
	switch {
	case st.ConfigSource == "file":
		fmt.Fprintln(w, "config source: file (each node enforces its own files; levee ctl apply and rollback are refused)")
	case st.StoreError != "":
		fmt.Fprintf(w, "configuration store unreadable: %s\n", st.StoreError)
	default:
		fmt.Fprintf(w, "stored config version: %d\n", st.ConfigVersion)
	}
	var warnings []string
	if len(st.Members) > 0 {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "MEMBER\tADDR\tRING\tSOURCE\tCONFIG\tDECISIONS/S\tREFUSED/S crit/high/def/low/shed\tTHRESHOLDS")
		for _, m := range st.Members {
			id := m.ID
			if m.Self {
				id += "*"
			}
			if !m.Reachable {
				fmt.Fprintf(tw, "%s\t%s\t%.1f%%\t\tunreachable: %s\t\t\t\n", id, m.Addr, 100*m.RingShare, oneLine(m.Error))
				continue
			}
			// A node that predates config sources follows etcd.
			source := cmp.Or(m.ConfigSource, "etcd")
			cfg := fmt.Sprintf("v%d", m.ConfigVersion)
			if source == "file" {
				cfg = m.ConfigHash
			}
			switch {
			case m.ConfigError != "":
				cfg += " (refused: " + oneLine(m.ConfigError) + ")"
			case source == "etcd" && st.ConfigSource != "file" && m.ConfigVersion != st.ConfigVersion && st.StoreError == "":
				cfg += " (behind)"
			}
			if m.ConfigDiverged != nil {
				cfg += fmt.Sprintf(" (differs from the majority since %s)", m.ConfigDiverged.Local().Format("15:04:05"))
			}
			if m.ConfigWarning != "" {
				cfg += " (warning)"
				warnings = append(warnings, fmt.Sprintf("%s: %s", m.ID, oneLine(m.ConfigWarning)))
			}
			var ref []string
			for _, p := range configstore.Priorities {
				ref = append(ref, fmt.Sprintf("%.0f", m.RefusalsPerSecond[p]))
			}
			var th []string
			for _, t := range m.Thresholds {
				s := fmt.Sprintf("%s>=%s", t.Resource, t.Priority)
				if t.Cohort > 0 {
					s += fmt.Sprintf("/%d", t.Cohort)
				}
				if t.Pinned {
					s += " (pinned)"
				}
				th = append(th, s)
			}
			fmt.Fprintf(tw, "%s\t%s\t%.1f%%\t%s\t%s\t%.0f\t%s\t%s\n", id, m.Addr, 100*m.RingShare, source, cfg,
				m.DecisionsPerSecond, strings.Join(ref, "/"), strings.Join(th, ", "))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if len(warnings) > 0 {
		fmt.Fprintln(w)
		for _, wn := range warnings {
			fmt.Fprintln(w, "warning:", wn)
		}
	}
	fmt.Fprintln(w)
	return overrideTable(w, st.Overrides)
}

// ctlExplain is an explanation in -o json and -o yaml output.
type ctlExplain struct {
	Version     int64          `json:"version" yaml:"version"`
	Domain      string         `json:"domain" yaml:"domain"`
	DomainFound bool           `json:"domain_found" yaml:"domain_found"`
	Matched     bool           `json:"matched" yaml:"matched"`
	Rule        map[string]any `json:"rule,omitempty" yaml:"rule,omitempty"`
	Steps       []ctlStep      `json:"steps" yaml:"steps"`
	Summary     string         `json:"summary" yaml:"summary"`
}

type ctlStep struct {
	Key      string `json:"key" yaml:"key"`
	Value    string `json:"value" yaml:"value"`
	Match    string `json:"match" yaml:"match"`
	RuleID   string `json:"rule_id,omitempty" yaml:"rule_id,omitempty"`
	Location string `json:"location,omitempty" yaml:"location,omitempty"`
	Note     string `json:"note,omitempty" yaml:"note,omitempty"`
}

func ctlExplainCommand(o *ctlOptions) *cobra.Command {
	var (
		domain   string
		version  int64
		bucketID bool
	)
	cmd := &cobra.Command{
		Use:   "explain --domain DOMAIN KEY=VALUE...",
		Short: "Say which rule and limit a descriptor would hit, and why",
		Long: `Walk a descriptor (the entries Envoy or a client sends, outermost first)
down the rules of the current configuration (or --version N) and show, level
by level, which descriptor each entry matched (exact value, wildcard, or the
key's default), then the rule and limit that apply, or why none does.

With --bucket-id the entries are an Envoy quota bucket id (the rate limit
quota service's), an unordered map: they are matched sorted by key, as the
quota service matches them.

  levee ctl explain --domain example user=alice action=post
  levee ctl explain --domain rlqs --bucket-id tenant=acme name=tenant`,
		Args: ctlArgs(cobra.MinimumNArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			if domain == "" {
				return usageErr(cmd, "--domain is required")
			}
			req := &leveev1.ExplainRequest{Domain: domain, Version: version}
			bid := map[string]string{}
			for _, a := range args {
				k, v, _ := strings.Cut(a, "=")
				if k == "" {
					return usageErr(cmd, "entry %q: want KEY=VALUE", a)
				}
				if bucketID {
					if _, dup := bid[k]; dup {
						return usageErr(cmd, "entry %q: a bucket id has each key once", a)
					}
					bid[k] = v
					continue
				}
				req.Entries = append(req.Entries, &leveev1.Entry{Key: k, Value: v})
			}
			for _, e := range rlqs.Descriptor(bid) {
				req.Entries = append(req.Entries, &leveev1.Entry{Key: e.Key, Value: e.Value})
			}
			c, err := o.connect()
			if err != nil {
				return err
			}
			defer c.Close()
			ctx, cancel := c.ctx(cmd.Context())
			defer cancel()
			resp, err := c.Explain(ctx, req)
			if err != nil {
				return c.callErr("explain", err)
			}
			ex := ctlExplain{Version: resp.GetVersion(), Domain: domain, DomainFound: resp.GetDomainFound(),
				Matched: resp.GetMatched(), Summary: resp.GetSummary(), Steps: []ctlStep{}}
			if r := resp.GetRule(); r != nil {
				ex.Rule = map[string]any{
					"id": r.GetId(), "name": r.GetName(), "location": r.GetLocation(), "has_limit": r.GetHasLimit(),
					"unlimited": r.GetUnlimited(), "unit": r.GetUnit(), "requests_per_unit": r.GetRequestsPerUnit(),
					"burst": r.GetBurst(), "shadow_mode": r.GetShadowMode(), "quota_mode": r.GetQuotaMode(),
					"priority": priorityText(r.GetPriority()), "failure_mode": r.GetFailureMode(), "replaces": r.GetReplaces(),
				}
				limits := []map[string]any{}
				for _, l := range r.GetLimits() {
					limits = append(limits, map[string]any{"name": l.GetName(), "unit": l.GetUnit(), "unit_multiplier": l.GetUnitMultiplier(),
						"requests_per_unit": l.GetRequestsPerUnit(), "burst": l.GetBurst(), "text": l.GetText()})
				}
				ex.Rule["limits"] = limits
			}
			for _, s := range resp.GetSteps() {
				ex.Steps = append(ex.Steps, ctlStep{Key: s.GetEntry().GetKey(), Value: s.GetEntry().GetValue(),
					Match:  strings.ToLower(strings.TrimPrefix(s.GetKind().String(), "MATCH_KIND_")),
					RuleID: s.GetRuleId(), Location: s.GetLocation(), Note: s.GetNote()})
			}
			return o.printOut(cmd.OutOrStdout(), ex, func(w io.Writer) error {
				if ex.Version == 0 {
					// Only a node enforcing its own files answers so.
					fmt.Fprintf(w, "domain %s, the rule files the node enforces\n", domain)
				} else {
					fmt.Fprintf(w, "domain %s, config version %d\n", domain, ex.Version)
				}
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				for i, s := range ex.Steps {
					fmt.Fprintf(tw, "  %d. %s=%s\t%s\t%s\t%s\t%s\n", i+1, s.Key, s.Value, s.Match, s.RuleID, s.Location, s.Note)
				}
				if err := tw.Flush(); err != nil {
					return err
				}
				_, err := fmt.Fprintf(w, "=> %s\n", ex.Summary)
				return err
			})
		},
	}
	cmd.Flags().StringVar(&domain, "domain", "", "rule domain (required)")
	cmd.Flags().Int64Var(&version, "version", 0, "config version to explain against (default: the current one)")
	cmd.Flags().BoolVar(&bucketID, "bucket-id", false, "the entries are an Envoy quota bucket id: matched sorted by key, as the rate limit quota service does")
	return cmd
}
