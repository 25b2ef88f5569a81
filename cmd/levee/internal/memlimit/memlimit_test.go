package memlimit

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"
)

// fixture writes files (path under root: content) into a new root.
func fixture(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for name, content := range files {
		p := filepath.Join(root, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

const v1Unlimited = "9223372036854771712\n" // what cgroup v1 shows for no limit

func TestFind(t *testing.T) {
	for _, c := range []struct {
		name  string
		files map[string]string
		want  int64 // 0: no limit
		file  string
	}{
		{
			name: "v2 container with its own cgroup namespace",
			files: map[string]string{
				"proc/self/cgroup":                 "0::/\n",
				"sys/fs/cgroup/cgroup.controllers": "cpu memory pids\n",
				"sys/fs/cgroup/memory.max":         "268435456\n",
			},
			want: 256 << 20, file: "sys/fs/cgroup/memory.max",
		},
		{
			name: "v2 container without a limit",
			files: map[string]string{
				"proc/self/cgroup":         "0::/\n",
				"sys/fs/cgroup/memory.max": "max\n",
			},
		},
		{
			name: "v2 host: the root cgroup has no memory.max",
			files: map[string]string{
				"proc/self/cgroup":                                    "0::/user.slice/session-1.scope\n",
				"sys/fs/cgroup/cgroup.controllers":                    "cpu memory\n",
				"sys/fs/cgroup/user.slice/memory.max":                 "max\n",
				"sys/fs/cgroup/user.slice/session-1.scope/memory.max": "max\n",
			},
		},
		{
			name: "v2 systemd service: a parent slice's limit binds",
			files: map[string]string{
				"proc/self/cgroup":                                   "0::/levee.slice/levee.service\n",
				"sys/fs/cgroup/levee.slice/memory.max":               "1073741824\n",
				"sys/fs/cgroup/levee.slice/levee.service/memory.max": "max\n",
			},
			want: 1 << 30, file: "sys/fs/cgroup/levee.slice/memory.max",
		},
		{
			name: "v2: the smallest of the cgroup and its parents",
			files: map[string]string{
				"proc/self/cgroup":                                   "0::/levee.slice/levee.service\n",
				"sys/fs/cgroup/levee.slice/memory.max":               "1073741824\n",
				"sys/fs/cgroup/levee.slice/levee.service/memory.max": "536870912\n",
			},
			want: 512 << 20, file: "sys/fs/cgroup/levee.slice/levee.service/memory.max",
		},
		{
			name: "v2 path of the host's view, the container's cgroup mounted as root",
			files: map[string]string{
				"proc/self/cgroup":         "0::/system.slice/docker-0123abcd.scope\n",
				"sys/fs/cgroup/memory.max": "134217728\n",
			},
			want: 128 << 20, file: "sys/fs/cgroup/memory.max",
		},
		{
			name: "v1 Docker container: its memory cgroup mounted as the hierarchy's root",
			files: map[string]string{
				"proc/self/cgroup": "12:pids:/docker/0123abcd\n" +
					"9:memory:/docker/0123abcd\n" +
					"4:cpu,cpuacct:/docker/0123abcd\n" +
					"1:name=systemd:/docker/0123abcd\n",
				"sys/fs/cgroup/memory/memory.limit_in_bytes": "536870912\n",
			},
			want: 512 << 20, file: "sys/fs/cgroup/memory/memory.limit_in_bytes",
		},
		{
			name: "v1 without a limit",
			files: map[string]string{
				"proc/self/cgroup":                           "9:memory:/docker/0123abcd\n",
				"sys/fs/cgroup/memory/memory.limit_in_bytes": v1Unlimited,
			},
		},
		{
			name: "v1 host: the process's cgroup under the hierarchy",
			files: map[string]string{
				"proc/self/cgroup":                                                      "9:memory:/system.slice/levee.service\n",
				"sys/fs/cgroup/memory/memory.limit_in_bytes":                            v1Unlimited,
				"sys/fs/cgroup/memory/system.slice/memory.limit_in_bytes":               v1Unlimited,
				"sys/fs/cgroup/memory/system.slice/levee.service/memory.limit_in_bytes": "2147483648\n",
			},
			want: 2 << 30, file: "sys/fs/cgroup/memory/system.slice/levee.service/memory.limit_in_bytes",
		},
		{
			name: "hybrid: the v1 memory controller holds the limit, not the empty v2 tree",
			files: map[string]string{
				"proc/self/cgroup":                           "9:memory:/\n0::/\n",
				"sys/fs/cgroup/memory/memory.limit_in_bytes": "1073741824\n",
				"sys/fs/cgroup/memory.max":                   "max\n",
			},
			want: 1 << 30, file: "sys/fs/cgroup/memory/memory.limit_in_bytes",
		},
		{
			name:  "not Linux: no /proc",
			files: map[string]string{},
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			root := fixture(t, c.files)
			l, ok, err := Find(root)
			if err != nil {
				t.Fatal(err)
			}
			if c.want == 0 {
				if ok {
					t.Fatalf("found limit %d in %s; want none", l.Bytes, l.File)
				}
				return
			}
			if !ok || l.Bytes != c.want || l.File != filepath.Join(root, c.file) {
				t.Fatalf("Find = %d in %s (found %v); want %d in %s", l.Bytes, l.File, ok, c.want, c.file)
			}
		})
	}
}

func TestFindMalformed(t *testing.T) {
	for name, files := range map[string]map[string]string{
		"memory.max": {
			"proc/self/cgroup":         "0::/\n",
			"sys/fs/cgroup/memory.max": "lots\n",
		},
		"memory.limit_in_bytes": {
			"proc/self/cgroup":                           "9:memory:/\n",
			"sys/fs/cgroup/memory/memory.limit_in_bytes": "-1\n",
		},
		"proc/self/cgroup": {
			"proc/self/cgroup": "no colons here\n",
		},
	} {
		_, _, err := Find(fixture(t, files))
		if err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("malformed %s: err %v; want an error naming the file", name, err)
		}
	}
}

func TestParseSetting(t *testing.T) {
	for in, want := range map[string]Setting{
		"auto":       {Auto: true},
		"off":        {},
		"1073741824": {Bytes: 1 << 30},
		"900MiB":     {Bytes: 900 << 20},
		"2GiB":       {Bytes: 2 << 30},
		"64KiB":      {Bytes: 64 << 10},
		"1TiB":       {Bytes: 1 << 40},
		"4096B":      {Bytes: 4096},
	} {
		got, err := ParseSetting(in)
		if err != nil || got != want {
			t.Errorf("ParseSetting(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "0", "-1", "1GB", "1.5GiB", "lots", "Auto", "99999999999TiB"} {
		if s, err := ParseSetting(bad); err == nil {
			t.Errorf("ParseSetting(%q) = %+v; want an error", bad, s)
		}
	}
}

func TestDecide(t *testing.T) {
	container := Limit{Bytes: 256 << 20, File: "/sys/fs/cgroup/memory.max"}
	found := func() (Limit, bool, error) { return container, true, nil }
	none := func() (Limit, bool, error) { return Limit{}, false, nil }
	broken := func() (Limit, bool, error) { return Limit{}, false, errors.New("unreadable") }
	mustNotFind := func() (Limit, bool, error) {
		t.Error("the container's limit was read when the setting does not need it")
		return Limit{}, false, nil
	}
	for _, c := range []struct {
		name   string
		s      Setting
		env    string
		find   func() (Limit, bool, error)
		bytes  int64
		source string
	}{
		{"auto in a container", Setting{Auto: true}, "", found, 241591910, container.File}, // 0.9 × 256 MiB
		{"auto without a limit", Setting{Auto: true}, "", none, 0, "no container memory limit"},
		{"GOMEMLIMIT wins over auto", Setting{Auto: true}, "200MiB", mustNotFind, 0, "GOMEMLIMIT=200MiB"},
		{"GOMEMLIMIT wins over a size", Setting{Bytes: 1 << 30}, "200MiB", mustNotFind, 0, "wins over --memory-limit"},
		{"a size", Setting{Bytes: 1 << 30}, "", mustNotFind, 1 << 30, "--memory-limit"},
		{"off", Setting{}, "", mustNotFind, 0, "--memory-limit off"},
	} {
		p, err := Decide(c.s, c.env, c.find)
		if err != nil || p.Bytes != c.bytes || !strings.Contains(p.Source, c.source) {
			t.Errorf("%s: Decide = %+v, %v; want %d bytes from %q", c.name, p, err, c.bytes, c.source)
		}
	}
	if _, err := Decide(Setting{Auto: true}, "", broken); err == nil || !strings.Contains(err.Error(), "unreadable") {
		t.Errorf("auto with an unreadable cgroup: %v; want the error", err)
	}
}

func TestApply(t *testing.T) {
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(-1))
	t.Setenv("GOMEMLIMIT", "")
	log := slog.New(slog.DiscardHandler)
	if err := Apply("300MiB", log); err != nil {
		t.Fatal(err)
	}
	if got := debug.SetMemoryLimit(-1); got != 300<<20 {
		t.Errorf("after --memory-limit 300MiB the soft limit is %d, want %d", got, 300<<20)
	}
	// GOMEMLIMIT wins: the runtime applied it at start, levee leaves it.
	t.Setenv("GOMEMLIMIT", "100MiB")
	if err := Apply("1GiB", log); err != nil {
		t.Fatal(err)
	}
	if got := debug.SetMemoryLimit(-1); got != 300<<20 {
		t.Errorf("with GOMEMLIMIT set, --memory-limit changed the soft limit to %d", got)
	}
	if err := Apply("1GB", log); err == nil || !strings.Contains(err.Error(), "--memory-limit") {
		t.Errorf("--memory-limit 1GB: %v; want an error naming the flag", err)
	}
}
