// Package memlimit sets Go's soft memory limit from the memory limit of the
// container levee runs in.
//
// A node keeps its heap small and lets it grow (GOGC=400) to spend less CPU
// on collection; left alone the heap grows to several times what is live,
// and a container with a memory limit is killed by the kernel long before
// Go would have collected. With a soft limit (debug.SetMemoryLimit) Go
// collects harder as the heap nears it, so the process stays under the
// container's limit while the live heap fits.
//
// The container's limit is read from the cgroup the process is in: cgroup
// v2's memory.max, or cgroup v1's memory.limit_in_bytes, the smallest of
// the process's cgroup and its parents. The soft limit is [Fraction] of it:
// the rest is headroom for what Go's limit does not count or cannot hold
// exactly (memory the runtime has not returned yet, the kernel's page cache
// charged to the container, the collector's lag behind a burst).
//
// GOMEMLIMIT, when set, wins: the runtime has applied it, and levee leaves
// it. Otherwise --memory-limit chooses: auto (the default) derives the limit
// from the cgroup, off sets none, and a byte count (GOMEMLIMIT's syntax,
// e.g. 900MiB) sets that.
package memlimit

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
)

// Fraction is the share of the container's memory limit that becomes Go's
// soft memory limit.
const Fraction = 0.9

// FlagUsage is the usage text of the --memory-limit flag.
const FlagUsage = "Go's soft memory limit: auto sets 90% of the container's (cgroup) memory limit, off sets none, or a size such as 900MiB (GOMEMLIMIT's syntax); GOMEMLIMIT in the environment wins"

// noLimit: cgroup v1 reports "no limit" as the largest page-aligned int64;
// any value this large is no limit.
const noLimit = 1 << 60

// Setting is a parsed --memory-limit.
type Setting struct {
	// Auto derives the limit from the container's.
	Auto bool
	// Bytes is the limit given explicitly; 0 with Auto false is off.
	Bytes int64
}

// ParseSetting parses a --memory-limit value: auto, off, or a size in
// bytes with an optional unit B, KiB, MiB, GiB or TiB (as GOMEMLIMIT).
func ParseSetting(s string) (Setting, error) {
	switch s {
	case "auto":
		return Setting{Auto: true}, nil
	case "off":
		return Setting{}, nil
	}
	n, err := ParseBytes(s)
	if err != nil {
		return Setting{}, err
	}
	if n <= 0 {
		return Setting{}, fmt.Errorf("memory limit %q: want a positive size, auto or off", s)
	}
	return Setting{Bytes: n}, nil
}

// ParseBytes parses a size as GOMEMLIMIT does: a whole number of bytes
// with an optional unit B, KiB, MiB, GiB or TiB.
func ParseBytes(s string) (int64, error) {
	num, mult := s, int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40}, {"B", 1}} {
		if strings.HasSuffix(s, u.suffix) {
			num, mult = strings.TrimSuffix(s, u.suffix), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || n > (1<<63-1)/mult {
		return 0, fmt.Errorf("memory size %q: want a whole number of bytes with an optional unit B, KiB, MiB, GiB or TiB", s)
	}
	return n * mult, nil
}

// Limit is a container memory limit found in a cgroup file.
type Limit struct {
	Bytes int64
	// File is the file it was read from.
	File string
}

// Find returns the memory limit of the cgroup the process is in, looking
// under root ("/" but in tests) at proc/self/cgroup and sys/fs/cgroup. It
// reports false when no limit applies (outside a container, or a container
// without a memory limit). A file that cannot be parsed is an error.
func Find(root string) (Limit, bool, error) {
	self, err := os.ReadFile(filepath.Join(root, "proc/self/cgroup"))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return Limit{}, false, nil // not Linux
		}
		return Limit{}, false, err
	}
	v1, v2, err := ParseProcCgroup(self)
	if err != nil {
		return Limit{}, false, err
	}
	// A memory controller on a v1 hierarchy is where the limits are, even
	// on a hybrid system that also mounts v2.
	if v1 != "" {
		return smallest(filepath.Join(root, "sys/fs/cgroup/memory"), v1, "memory.limit_in_bytes", ParseLimitInBytes)
	}
	if v2 != "" {
		return smallest(filepath.Join(root, "sys/fs/cgroup"), v2, "memory.max", ParseMemoryMax)
	}
	return Limit{}, false, nil
}

// smallest returns the smallest limit set in file in the cgroup at path
// under mount and its parents, up to the mount. A cgroup namespace or a
// container's own mount shows the process's cgroup as the mount itself,
// with a path that does not exist under it: then the mount's own file
// holds the container's limit.
func smallest(mount, path, file string, parse func([]byte) (int64, bool, error)) (Limit, bool, error) {
	dir := filepath.Join(mount, filepath.FromSlash(path))
	if _, err := os.Stat(dir); err != nil || !strings.HasPrefix(dir, mount) {
		dir = mount
	}
	var best Limit
	found := false
	for {
		name := filepath.Join(dir, file)
		data, err := os.ReadFile(name)
		switch {
		case err == nil:
			n, ok, err := parse(data)
			if err != nil {
				return Limit{}, false, fmt.Errorf("%s: %w", name, err)
			}
			if ok && (!found || n < best.Bytes) {
				best, found = Limit{Bytes: n, File: name}, true
			}
		case !errors.Is(err, fs.ErrNotExist):
			return Limit{}, false, err
		}
		if dir == mount {
			return best, found, nil
		}
		dir = filepath.Dir(dir)
	}
}

// ParseProcCgroup reads /proc/self/cgroup: the path of the process's cgroup
// in the v1 hierarchy that has the memory controller, and in the v2
// (unified) hierarchy; either may be empty.
func ParseProcCgroup(data []byte) (v1Memory, v2 string, err error) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			continue
		}
		// hierarchy-ID:controller-list:cgroup-path
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			return "", "", fmt.Errorf("/proc/self/cgroup: malformed line %q", line)
		}
		switch {
		case parts[0] == "0" && parts[1] == "":
			v2 = parts[2]
		default:
			for _, c := range strings.Split(parts[1], ",") {
				if c == "memory" {
					v1Memory = parts[2]
				}
			}
		}
	}
	return v1Memory, v2, sc.Err()
}

// ParseMemoryMax parses cgroup v2's memory.max: a byte count, or "max" for
// no limit (reported as false).
func ParseMemoryMax(data []byte) (int64, bool, error) {
	s := strings.TrimSpace(string(data))
	if s == "max" {
		return 0, false, nil
	}
	return parseCount(s)
}

// ParseLimitInBytes parses cgroup v1's memory.limit_in_bytes: a byte
// count, where a value near the largest int64 means no limit (false).
func ParseLimitInBytes(data []byte) (int64, bool, error) {
	return parseCount(strings.TrimSpace(string(data)))
}

func parseCount(s string) (int64, bool, error) {
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, false, fmt.Errorf("want a byte count, got %q", s)
	}
	if n >= noLimit {
		return 0, false, nil
	}
	return int64(n), true, nil
}

// Plan is the soft limit to set and where it came from.
type Plan struct {
	// Bytes is the soft limit to set; 0 leaves the runtime's as it is
	// (GOMEMLIMIT's, or none).
	Bytes int64
	// Source says where the limit comes from, for the log.
	Source string
	// Container is the container's limit, when one was read.
	Container Limit
}

// Decide works out the soft limit for setting s, given GOMEMLIMIT's value
// and a way to find the container's limit (called only for auto).
func Decide(s Setting, gomemlimit string, find func() (Limit, bool, error)) (Plan, error) {
	switch {
	case gomemlimit != "" && !s.Auto:
		return Plan{Source: "GOMEMLIMIT=" + gomemlimit + " (wins over --memory-limit)"}, nil
	case gomemlimit != "":
		return Plan{Source: "GOMEMLIMIT=" + gomemlimit}, nil
	case !s.Auto && s.Bytes == 0:
		return Plan{Source: "--memory-limit off"}, nil
	case !s.Auto:
		return Plan{Bytes: s.Bytes, Source: "--memory-limit"}, nil
	}
	l, ok, err := find()
	if err != nil {
		return Plan{}, fmt.Errorf("reading the container's memory limit: %w", err)
	}
	if !ok {
		return Plan{Source: "no container memory limit"}, nil
	}
	return Plan{Bytes: int64(float64(l.Bytes) * Fraction), Source: l.File, Container: l}, nil
}

// Apply sets Go's soft memory limit as flag (a --memory-limit value) says
// and logs what it set. A container limit that cannot be read is logged
// and leaves the limit unset: the node still starts.
func Apply(flag string, log *slog.Logger) error {
	s, err := ParseSetting(flag)
	if err != nil {
		return fmt.Errorf("--memory-limit (LEVEE_MEMORY_LIMIT): %w", err)
	}
	p, err := Decide(s, os.Getenv("GOMEMLIMIT"), func() (Limit, bool, error) { return Find("/") })
	if err != nil {
		log.Warn("no soft memory limit set", "err", err)
		return nil
	}
	if p.Bytes > 0 {
		debug.SetMemoryLimit(p.Bytes)
	}
	limit := debug.SetMemoryLimit(-1)
	attrs := []any{"from", p.Source}
	if limit < 1<<63-1 {
		attrs = append(attrs, "soft_limit_bytes", limit)
	} else {
		attrs = append(attrs, "soft_limit_bytes", "none")
	}
	if p.Container.Bytes > 0 {
		attrs = append(attrs, "container_limit_bytes", p.Container.Bytes, "fraction", Fraction)
	}
	log.Info("Go memory limit", attrs...)
	return nil
}
