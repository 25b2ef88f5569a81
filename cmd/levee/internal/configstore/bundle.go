package configstore

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"unicode/utf8"

	"github.com/levee-dev/levee/limiter/rules"
)

// MaxBundleSize bounds the total size of a bundle: its rule files' names
// and contents and its shedding policy. A version is stored as one etcd
// value, and etcd refuses requests above 1.5 MiB by default.
const MaxBundleSize = 1 << 20

// maxRecordSize bounds a version as stored: the bundle as JSON, whose
// escapes make it larger, and its metadata. It is written in one
// transaction with the current key, which must stay below etcd's 1.5 MiB.
const maxRecordSize = MaxBundleSize + MaxBundleSize/4

// maxNameLen bounds a rule file name.
const maxNameLen = 255

// Bundle is a whole configuration, applied all at once: the rule files and
// the shedding policy.
type Bundle struct {
	// Rules maps a rule file's name to its YAML, one domain per file, as
	// envoyproxy/ratelimit reads it. Names are relative slash-separated
	// paths ("api.yaml", "team/login.yaml"); they appear in error messages
	// and become file names when an operator writes the bundle to disk.
	Rules map[string][]byte
	// Shed is the shedding policy YAML (resources, capacities, reserves),
	// or empty for none. This package does not read it: Options.ValidateShed
	// checks it.
	Shed []byte
}

// Equal reports whether two bundles have the same files with the same
// content.
func (b Bundle) Equal(o Bundle) bool {
	if len(b.Rules) != len(o.Rules) || string(b.Shed) != string(o.Shed) {
		return false
	}
	for n, d := range b.Rules {
		od, ok := o.Rules[n]
		if !ok || string(d) != string(od) {
			return false
		}
	}
	return true
}

// Size returns the total size of the bundle's files, in bytes.
func (b Bundle) Size() int {
	n := len(b.Shed)
	for name, d := range b.Rules {
		n += len(name) + len(d)
	}
	return n
}

// CheckSize returns a *ValidationError if b is larger than MaxBundleSize,
// so that a client can refuse it before sending it.
func (b Bundle) CheckSize() error {
	if err := b.sizeProblem(); err != nil {
		return &ValidationError{Problems: []error{err}}
	}
	return nil
}

func (b Bundle) sizeProblem() error {
	if n := b.Size(); n > MaxBundleSize {
		return fmt.Errorf("bundle is %d bytes, more than the limit of %d (one version is stored as one etcd value)", n, MaxBundleSize)
	}
	return nil
}

// Names returns the rule file names, sorted.
func (b Bundle) Names() []string {
	names := make([]string, 0, len(b.Rules))
	for n := range b.Rules {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// ShedName is the name the shedding policy goes by in errors and diffs.
const ShedName = "shed.yaml"

// checkName reports what is wrong with a rule file name, if anything. Names
// must be safe to write under a directory and read back with rules.Load,
// which skips names starting with a dot.
func checkName(n string) string {
	switch {
	case n == "":
		return "empty file name"
	case len(n) > maxNameLen:
		return fmt.Sprintf("file name longer than %d bytes", maxNameLen)
	case !utf8.ValidString(n):
		return "file name is not valid UTF-8"
	case strings.HasPrefix(n, "/"):
		return "file name must be relative (no leading '/')"
	}
	for _, part := range strings.Split(n, "/") {
		switch {
		case part == "":
			return "file name has an empty path element ('//' or a trailing '/')"
		case part == "." || part == "..":
			return "file name must not contain '.' or '..' elements"
		case strings.HasPrefix(part, "."):
			return fmt.Sprintf("file name element %q starts with '.', and rule directories skip such files", part)
		}
	}
	for _, r := range n {
		if r < 0x20 || r == 0x7f || r == '\\' {
			return "file name contains a control character or a backslash"
		}
	}
	return ""
}

// compile checks b as a node would load it and returns the rules and the
// resources the shedding policy defines. The policy goes to validateShed,
// if not nil, which should name it ShedName in its errors. Every problem found is
// reported, not just the first, in file name order.
func compile(b Bundle, validateShed func([]byte) ([]string, error)) (*rules.Config, []string, error) {
	var problems []error
	if err := b.sizeProblem(); err != nil {
		problems = append(problems, err)
	}
	var domains []*rules.Domain
	for _, name := range b.Names() {
		data := b.Rules[name]
		if why := checkName(name); why != "" {
			problems = append(problems, &rules.ParseError{File: name, Line: 1, Reason: why})
			continue
		}
		if !utf8.Valid(data) {
			problems = append(problems, &rules.ParseError{File: name, Line: badUTF8Line(data), Reason: "file is not valid UTF-8"})
			continue
		}
		d, err := rules.Parse(name, data)
		if err != nil {
			problems = append(problems, err)
			continue
		}
		domains = append(domains, d)
	}
	var cfg *rules.Config
	if len(problems) == 0 {
		var err error
		if cfg, err = rules.NewConfig(domains...); err != nil {
			problems = append(problems, err)
		}
	}
	var resources []string
	if !utf8.Valid(b.Shed) {
		problems = append(problems, &rules.ParseError{File: ShedName, Line: badUTF8Line(b.Shed), Reason: "file is not valid UTF-8"})
	} else if validateShed != nil {
		var err error
		if resources, err = validateShed(b.Shed); err != nil {
			if !strings.HasPrefix(err.Error(), ShedName) {
				// Name the file, unless the validator did.
				err = fmt.Errorf("%s: %w", ShedName, err)
			}
			problems = append(problems, err)
		}
	}
	if len(problems) > 0 {
		return nil, nil, &ValidationError{Problems: problems}
	}
	return cfg, resources, nil
}

// badUTF8Line returns the 1-based line of the first invalid UTF-8 sequence.
func badUTF8Line(data []byte) int {
	line := 1
	for len(data) > 0 {
		r, size := utf8.DecodeRune(data)
		if r == utf8.RuneError && size <= 1 {
			return line
		}
		if r == '\n' {
			line++
		}
		data = data[size:]
	}
	return line
}

// warnings lists the rule files' warnings, "file:line: field: reason".
func warnings(cfg *rules.Config) []string {
	var out []string
	for _, d := range cfg.Domains() {
		for _, w := range d.Warnings {
			out = append(out, w.Error())
		}
	}
	return out
}

// ValidationError is a configuration or override that was refused because
// it is invalid. Nothing was stored. Problems holds one error per problem;
// those about a rule file are *rules.ParseError (file, line, field, reason).
type ValidationError struct {
	Problems []error
}

// Error lists the problems, one per line.
func (e *ValidationError) Error() string {
	var b strings.Builder
	b.WriteString("invalid configuration:")
	if len(e.Problems) == 1 {
		b.WriteString(" ")
		b.WriteString(e.Problems[0].Error())
		return b.String()
	}
	for _, p := range e.Problems {
		b.WriteString("\n  ")
		b.WriteString(p.Error())
	}
	return b.String()
}

// Unwrap returns the problems, so that errors.As finds a *rules.ParseError.
func (e *ValidationError) Unwrap() []error { return e.Problems }

// invalid returns a ValidationError with one problem.
func invalid(format string, args ...any) error {
	return &ValidationError{Problems: []error{fmt.Errorf(format, args...)}}
}

// ConflictError is a write refused because the configuration changed since
// the writer read it: it expected one version and another is current.
// Nothing was stored.
type ConflictError struct {
	// Expected is the version the writer based its change on.
	Expected int64
	// Current is the version stored now.
	Current int64
}

// Error names both versions and what to do.
func (e *ConflictError) Error() string {
	return fmt.Sprintf("configuration changed: the change was based on version %d, but the current version is %d; read version %d, redo the change on it, and apply again",
		e.Expected, e.Current, e.Current)
}

// ErrNotFound is wrapped by errors for a version or an override that does
// not exist.
var ErrNotFound = errors.New("not found")
