package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/levee-dev/levee/cmd/levee/internal/configstore"
	leveev1 "github.com/levee-dev/levee/proto/levee/v1"
)

// ctlVersion is a stored version in -o json and -o yaml output.
type ctlVersion struct {
	Version    int64      `json:"version" yaml:"version"`
	Author     string     `json:"author,omitempty" yaml:"author,omitempty"`
	Reason     string     `json:"reason,omitempty" yaml:"reason,omitempty"`
	Time       *time.Time `json:"time,omitempty" yaml:"time,omitempty"`
	RollbackOf int64      `json:"rollback_of,omitempty" yaml:"rollback_of,omitempty"`
}

func toCtlVersion(v *leveev1.ConfigVersion) ctlVersion {
	out := ctlVersion{Version: v.GetVersion(), Author: v.GetAuthor(), Reason: v.GetReason(), RollbackOf: v.GetRollbackOf()}
	if v.GetTime() != nil {
		t := v.GetTime().AsTime()
		out.Time = &t
	}
	return out
}

// describe is a version in one line of prose.
func (v ctlVersion) describe() string {
	if v.Version == 0 {
		return "version 0 (nothing stored yet)"
	}
	s := fmt.Sprintf("version %d by %s", v.Version, v.Author)
	if v.Time != nil {
		s += " at " + v.Time.Local().Format("2006-01-02 15:04:05")
	}
	if v.RollbackOf != 0 {
		s += fmt.Sprintf(" (rollback to version %d)", v.RollbackOf)
	}
	return s + fmt.Sprintf(": %q", v.Reason)
}

// ctlConfig is a stored configuration in -o json and -o yaml output.
type ctlConfig struct {
	ctlVersion `yaml:",inline"`
	Rules      map[string]string `json:"rules" yaml:"rules"`
	Shed       string            `json:"shed,omitempty" yaml:"shed,omitempty"`
	WrittenTo  string            `json:"written_to,omitempty" yaml:"written_to,omitempty"`
}

// ctlChange is the outcome of apply or rollback in -o json and -o yaml
// output.
type ctlChange struct {
	Version  ctlVersion `json:"version" yaml:"version"`
	Previous int64      `json:"previous_version" yaml:"previous_version"`
	Changed  bool       `json:"changed" yaml:"changed"`
	DryRun   bool       `json:"dry_run" yaml:"dry_run"`
	Diff     string     `json:"diff" yaml:"diff"`
	Warnings []string   `json:"warnings,omitempty" yaml:"warnings,omitempty"`
	// ReplacedMalformed is the unreadable current value the change
	// replaced (for a dry run, would replace).
	ReplacedMalformed *ctlMalformed `json:"replaced_malformed,omitempty" yaml:"replaced_malformed,omitempty"`
}

func (c ctlChange) table(w io.Writer) error {
	if m := c.ReplacedMalformed; m != nil {
		if c.DryRun {
			fmt.Fprintf(w, "would replace the unreadable current configuration (%s)\n", m)
		} else {
			fmt.Fprintln(w, replacedLine(m))
		}
	}
	switch {
	case !c.Changed:
		fmt.Fprintf(w, "no change: version %d already has this content\n", c.Version.Version)
	case c.DryRun:
		fmt.Fprintf(w, "dry run: version %d would become version %d; nothing stored\n", c.Previous, c.Previous+1)
	default:
		fmt.Fprintf(w, "applied %s (previous version %d)\n", c.Version.describe(), c.Previous)
	}
	_, err := io.WriteString(w, c.Diff)
	return err
}

func ctlGetCommand(o *ctlOptions) *cobra.Command {
	var (
		version int64
		out     string
	)
	cmd := &cobra.Command{
		Use:   "get",
		Short: "Show the stored configuration, or write it to files",
		Long: `Show the current configuration (or --version N): its version, author and
reason, and its files. -o yaml or -o json print the files' contents too.

--out DIR writes the configuration as files, ready to edit and apply again:
DIR/rules/<name> for each rule file (the layout levee serve --config reads) and
DIR/shed.yaml for the shedding policy. DIR must be new or empty.

  levee ctl get --out cfg
  $EDITOR cfg/rules/api.yaml
  levee ctl apply -f cfg/rules --shed cfg/shed.yaml --reason "raise api limit"`,
		Args: ctlArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := o.connect()
			if err != nil {
				return err
			}
			defer c.Close()
			ctx, cancel := c.ctx(cmd.Context())
			defer cancel()
			resp, err := c.GetConfig(ctx, &leveev1.GetConfigRequest{Version: version})
			if err != nil {
				return c.callErr("get", err)
			}
			cfg := ctlConfig{ctlVersion: toCtlVersion(resp.GetVersion()), Rules: map[string]string{}, Shed: resp.GetBundle().GetShedPolicy()}
			for _, f := range resp.GetBundle().GetRuleFiles() {
				cfg.Rules[f.GetName()] = f.GetContent()
			}
			if out != "" {
				if err := writeBundle(out, resp.GetBundle()); err != nil {
					return err
				}
				cfg.WrittenTo = out
			}
			return o.printOut(cmd.OutOrStdout(), cfg, func(w io.Writer) error {
				fmt.Fprintln(w, cfg.describe())
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "FILE\tBYTES")
				for _, f := range resp.GetBundle().GetRuleFiles() {
					fmt.Fprintf(tw, "rules/%s\t%d\n", f.GetName(), len(f.GetContent()))
				}
				if cfg.Shed != "" {
					fmt.Fprintf(tw, "%s\t%d\n", configstore.ShedName, len(cfg.Shed))
				}
				if err := tw.Flush(); err != nil {
					return err
				}
				if out != "" {
					fmt.Fprintf(w, "written to %s\n", out)
				}
				return nil
			})
		},
	}
	cmd.Flags().Int64Var(&version, "version", 0, "version to show (default: the current one)")
	cmd.Flags().StringVar(&out, "out", "", "write the configuration as files under this directory (new or empty)")
	return cmd
}

// writeBundle writes a bundle under dir as rules/<name> and shed.yaml.
func writeBundle(dir string, b *leveev1.ConfigBundle) error {
	if entries, err := os.ReadDir(dir); err == nil && len(entries) > 0 {
		return fmt.Errorf("--out %s is not empty; give a new or empty directory, so that no file is overwritten or left over", dir)
	}
	write := func(name, content string) error {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		return os.WriteFile(p, []byte(content), 0o644)
	}
	if err := os.MkdirAll(filepath.Join(dir, "rules"), 0o755); err != nil {
		return fmt.Errorf("--out: %w", err)
	}
	for _, f := range b.GetRuleFiles() {
		// The server checks names, but a file must never land outside dir.
		if !filepath.IsLocal(filepath.FromSlash(f.GetName())) {
			return fmt.Errorf("--out: refusing to write rule file %q outside %s", f.GetName(), dir)
		}
		if err := write(path.Join("rules", f.GetName()), f.GetContent()); err != nil {
			return fmt.Errorf("--out: %w", err)
		}
	}
	if b.GetShedPolicy() != "" {
		if err := write(configstore.ShedName, b.GetShedPolicy()); err != nil {
			return fmt.Errorf("--out: %w", err)
		}
	}
	return nil
}

// readLimited reads one file of a bundle; content that cannot be valid is
// refused with the validation exit code before anything is sent.
func readLimited(p string) ([]byte, error) {
	data, err := configstore.ReadFile(p)
	if err != nil {
		return nil, invalidErr(err)
	}
	if !utf8.Valid(data) {
		return nil, &ctlError{code: ctlExitInvalid, err: fmt.Errorf("%s is not valid UTF-8", p)}
	}
	return data, nil
}

// invalidErr gives a configuration refused before it is sent (a file or
// the whole too large) the exit code of one the server refuses; other
// errors, such as a file that cannot be read, keep theirs.
func invalidErr(err error) error {
	var ve *configstore.ValidationError
	if errors.As(err, &ve) {
		return &ctlError{code: ctlExitInvalid, err: err}
	}
	return err
}

// bundleFlags are the flags that give a proposed configuration.
type bundleFlags struct {
	files []string
	shed  string
}

func (f *bundleFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringArrayVarP(&f.files, "filename", "f", nil, "rule file or directory of rule files (repeatable); replaces all rule files")
	cmd.Flags().StringVar(&f.shed, "shed", "", "shedding policy file; replaces the policy (an empty file removes it)")
}

func (f *bundleFlags) given(cmd *cobra.Command) bool {
	return len(f.files) > 0 || cmd.Flags().Changed("shed")
}

// build returns the proposed bundle: the files given, and from base what
// was not given (the rule files without -f, the policy without --shed).
func (f *bundleFlags) build(cmd *cobra.Command, base *leveev1.ConfigBundle) (*leveev1.ConfigBundle, error) {
	b := &leveev1.ConfigBundle{RuleFiles: base.GetRuleFiles(), ShedPolicy: base.GetShedPolicy()}
	if len(f.files) > 0 {
		for _, p := range f.files {
			rulesDir, shedFile := filepath.Join(p, "rules"), filepath.Join(p, configstore.ShedName)
			if isDir(rulesDir) && !isDir(shedFile) && exists(shedFile) {
				return nil, usageErr(cmd, "%s looks like a directory written by 'levee ctl get --out': give -f %s --shed %s", p, rulesDir, shedFile)
			}
		}
		files, err := configstore.ReadRules(f.files...)
		if err != nil {
			return nil, invalidErr(fmt.Errorf("-f: %w", err))
		}
		names := make([]string, 0, len(files))
		for n := range files {
			names = append(names, n)
		}
		sort.Strings(names)
		b.RuleFiles = nil
		for _, n := range names {
			if !utf8.Valid(files[n]) {
				return nil, &ctlError{code: ctlExitInvalid, err: fmt.Errorf("-f: rule file %s is not valid UTF-8", n)}
			}
			b.RuleFiles = append(b.RuleFiles, &leveev1.RuleFile{Name: n, Content: string(files[n])})
		}
	}
	if cmd.Flags().Changed("shed") {
		data, err := readLimited(f.shed)
		if err != nil {
			return nil, fmt.Errorf("--shed: %w", err)
		}
		b.ShedPolicy = string(data)
	}
	// Refuse a bundle too large to store before sending it: past a point
	// the admin API would refuse the message itself, with a transport error.
	cb := configstore.Bundle{Rules: make(map[string][]byte, len(b.RuleFiles)), Shed: []byte(b.ShedPolicy)}
	for _, rf := range b.RuleFiles {
		cb.Rules[rf.GetName()] = []byte(rf.GetContent())
	}
	if err := cb.CheckSize(); err != nil {
		return nil, invalidErr(err)
	}
	return b, nil
}

func ctlApplyCommand(o *ctlOptions) *cobra.Command {
	var (
		bf       bundleFlags
		reason   string
		expected int64
		dryRun   bool
	)
	cmd := &cobra.Command{
		Use:   "apply -f FILE|DIR [--shed FILE] --reason TEXT",
		Short: "Replace the configuration with new rule files and/or shedding policy",
		Long: `Validate the given configuration with the code the nodes run, show the diff
from the current version, and store it as a new version that every node
applies within about a second.

-f replaces all rule files (a file, or every file under a directory; repeat
-f for several); --shed replaces the shedding policy. What is not given is
kept from the current version.

The change is made against the version read just before (or
--expected-version N): if the configuration changed in between, nothing is
stored and apply exits with 3. If the stored current version is unreadable
(a malformed value in etcd), apply replaces it and says what it replaced;
give both -f and --shed then, since nothing can be kept from it. An invalid
configuration is refused with
file:line: reason for each problem, nothing is stored, and apply exits with 4;
so is one larger than 1 MiB in all (rule files and policy: one version is
stored as one etcd value).

  levee ctl apply -f rules/ --reason "raise login limit to 20/s (INC-123)"
  levee ctl apply -f rules/ --dry-run

` + ctlExitCodesHelp,
		Args: ctlArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !bf.given(cmd) {
				return usageErr(cmd, "give -f FILE|DIR and/or --shed FILE")
			}
			if strings.TrimSpace(reason) == "" && !dryRun {
				return usageErr(cmd, "--reason is required: say why the configuration changes")
			}
			c, err := o.connect()
			if err != nil {
				return err
			}
			defer c.Close()
			ctx, cancel := c.ctx(cmd.Context())
			defer cancel()
			cur, err := c.GetConfig(ctx, &leveev1.GetConfigRequest{})
			bad, badVersion, malformed := malformedCurrent(err)
			switch {
			case malformed:
				// Nothing can be kept from an unreadable version: the
				// whole configuration must be given.
				if len(bf.files) == 0 || !cmd.Flags().Changed("shed") {
					return usageErr(cmd, "the current configuration is unreadable (%s), so nothing can be kept from it: give both -f and --shed (an empty file for no policy), or roll back with 'levee ctl rollback VERSION'", bad)
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "warning: the current configuration is unreadable (%s); this apply replaces it\n", bad)
				if !cmd.Flags().Changed("expected-version") {
					expected = badVersion
				}
			case err != nil:
				return c.callErr("apply: reading the current version", err)
			case !cmd.Flags().Changed("expected-version"):
				expected = cur.GetVersion().GetVersion()
			}
			b, err := bf.build(cmd, cur.GetBundle())
			if err != nil {
				return err
			}
			resp, err := c.ApplyConfig(ctx, &leveev1.ApplyConfigRequest{Bundle: b, ExpectedVersion: expected, Reason: reason, DryRun: dryRun})
			if err != nil {
				return c.callErr("apply", err)
			}
			for _, w := range resp.GetWarnings() {
				fmt.Fprintln(cmd.ErrOrStderr(), "warning:", w)
			}
			ch := ctlChange{Version: toCtlVersion(resp.GetVersion()), Previous: expected, Changed: resp.GetChanged(),
				DryRun: dryRun, Diff: resp.GetDiff(), Warnings: resp.GetWarnings(), ReplacedMalformed: toCtlMalformed(resp.GetReplacedMalformed())}
			return o.printOut(cmd.OutOrStdout(), ch, ch.table)
		},
	}
	bf.add(cmd)
	cmd.Flags().StringVar(&reason, "reason", "", "why the configuration changes (required; kept in the history and audit log)")
	cmd.Flags().Int64Var(&expected, "expected-version", 0, "the version the change is based on (default: the current version, read first)")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "validate and show the diff; store nothing")
	return cmd
}

// ctlDiff is a diff in -o json and -o yaml output.
type ctlDiff struct {
	From    int64  `json:"from_version" yaml:"from_version"`
	To      int64  `json:"to_version" yaml:"to_version"`
	Changed bool   `json:"changed" yaml:"changed"`
	Diff    string `json:"diff" yaml:"diff"`
}

func ctlDiffCommand(o *ctlOptions) *cobra.Command {
	var (
		bf       bundleFlags
		from, to int64
	)
	cmd := &cobra.Command{
		Use:   "diff (-f FILE|DIR [--shed FILE] | --from VERSION [--to VERSION])",
		Short: "Show what a change would do, or what changed between two versions",
		Long: `With -f and/or --shed: validate the proposed configuration and show the
unified diff from the current version (or --from N) to it. Without: show the
diff between two stored versions, --from and --to (default: the current one).

diff exits with 0 whether or not there are differences; -o json reports
"changed". An invalid proposal exits with 4.`,
		Args: ctlArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if bf.given(cmd) && cmd.Flags().Changed("to") {
				return usageErr(cmd, "--to compares stored versions; it cannot be combined with -f or --shed")
			}
			if !bf.given(cmd) && !cmd.Flags().Changed("from") {
				return usageErr(cmd, "give -f FILE|DIR (a proposed change) or --from VERSION (stored versions)")
			}
			c, err := o.connect()
			if err != nil {
				return err
			}
			defer c.Close()
			ctx, cancel := c.ctx(cmd.Context())
			defer cancel()
			req := &leveev1.DiffConfigRequest{FromVersion: from}
			if bf.given(cmd) {
				base, err := c.GetConfig(ctx, &leveev1.GetConfigRequest{Version: from})
				if err != nil {
					return c.callErr("diff: reading version", err)
				}
				b, err := bf.build(cmd, base.GetBundle())
				if err != nil {
					return err
				}
				req.To = &leveev1.DiffConfigRequest_Bundle{Bundle: b}
			} else {
				req.To = &leveev1.DiffConfigRequest_ToVersion{ToVersion: to}
			}
			resp, err := c.DiffConfig(ctx, req)
			if err != nil {
				return c.callErr("diff", err)
			}
			d := ctlDiff{From: resp.GetFromVersion(), To: resp.GetToVersion(), Changed: resp.GetChanged(), Diff: resp.GetDiff()}
			return o.printOut(cmd.OutOrStdout(), d, func(w io.Writer) error {
				if !d.Changed {
					_, err := fmt.Fprintln(w, "no differences")
					return err
				}
				_, err := io.WriteString(w, d.Diff)
				return err
			})
		},
	}
	bf.add(cmd)
	cmd.Flags().Int64Var(&from, "from", 0, "old side: a stored version (default: the current one)")
	cmd.Flags().Int64Var(&to, "to", 0, "new side: a stored version (default: the current one); not with -f")
	return cmd
}

func ctlHistoryCommand(o *ctlOptions) *cobra.Command {
	var limit int32
	cmd := &cobra.Command{
		Use:   "history",
		Short: "List stored versions, newest first",
		Args:  ctlArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if limit < 0 {
				return usageErr(cmd, "--limit must be 0 or more")
			}
			c, err := o.connect()
			if err != nil {
				return err
			}
			defer c.Close()
			ctx, cancel := c.ctx(cmd.Context())
			defer cancel()
			resp, err := c.History(ctx, &leveev1.HistoryRequest{Limit: limit})
			if err != nil {
				return c.callErr("history", err)
			}
			versions := make([]ctlVersion, 0, len(resp.GetVersions()))
			for _, v := range resp.GetVersions() {
				versions = append(versions, toCtlVersion(v))
			}
			return o.printOut(cmd.OutOrStdout(), versions, func(w io.Writer) error {
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "VERSION\tTIME\tAUTHOR\tREASON")
				for _, v := range versions {
					ts := ""
					if v.Time != nil {
						ts = v.Time.Local().Format("2006-01-02 15:04:05")
					}
					reason := v.Reason
					if v.RollbackOf != 0 {
						reason = fmt.Sprintf("[rollback to %d] %s", v.RollbackOf, reason)
					}
					fmt.Fprintf(tw, "%d\t%s\t%s\t%s\n", v.Version, ts, v.Author, oneLine(reason))
				}
				return tw.Flush()
			})
		},
	}
	cmd.Flags().Int32Var(&limit, "limit", 20, "most versions to list")
	return cmd
}

// oneLine keeps a table row on one line.
func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

func ctlRollbackCommand(o *ctlOptions) *cobra.Command {
	var (
		reason   string
		expected int64
	)
	cmd := &cobra.Command{
		Use:   "rollback VERSION --reason TEXT",
		Short: "Make an older version's content current again, as a new version",
		Long: `Store a new version whose content equals VERSION's. The old content is
validated again first. Like apply, it is made against the version read just
before (or --expected-version N), and exits with 3 on a conflict; and like
apply, it replaces an unreadable current version and says what it replaced.

  levee ctl rollback 41 --reason "v42 broke logins"

` + ctlExitCodesHelp,
		Args: ctlArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			var version int64
			if _, err := fmt.Sscan(args[0], &version); err != nil || version <= 0 {
				return usageErr(cmd, "VERSION must be a positive number, not %q", args[0])
			}
			if strings.TrimSpace(reason) == "" {
				return usageErr(cmd, "--reason is required: say why you roll back")
			}
			c, err := o.connect()
			if err != nil {
				return err
			}
			defer c.Close()
			ctx, cancel := c.ctx(cmd.Context())
			defer cancel()
			if !cmd.Flags().Changed("expected-version") {
				cur, err := c.GetConfig(ctx, &leveev1.GetConfigRequest{})
				if bad, badVersion, malformed := malformedCurrent(err); malformed {
					fmt.Fprintf(cmd.ErrOrStderr(), "warning: the current configuration is unreadable (%s); this rollback replaces it\n", bad)
					expected = badVersion
				} else if err != nil {
					return c.callErr("rollback: reading the current version", err)
				} else {
					expected = cur.GetVersion().GetVersion()
				}
			}
			resp, err := c.Rollback(ctx, &leveev1.RollbackRequest{Version: version, ExpectedVersion: expected, Reason: reason})
			if err != nil {
				return c.callErr("rollback", err)
			}
			ch := ctlChange{Version: toCtlVersion(resp.GetVersion()), Previous: expected, Changed: resp.GetChanged(), Diff: resp.GetDiff(),
				ReplacedMalformed: toCtlMalformed(resp.GetReplacedMalformed())}
			return o.printOut(cmd.OutOrStdout(), ch, ch.table)
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why (required; kept in the history and audit log)")
	cmd.Flags().Int64Var(&expected, "expected-version", 0, "the current version you expect (default: read it first)")
	return cmd
}

func isDir(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
