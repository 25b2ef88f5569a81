// Package rulestest has helpers for tests that read rule files.
package rulestest

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// ConfigMap is a directory laid out as Kubernetes mounts a ConfigMap
// volume: the files live in a timestamped directory "..<time>", "..data"
// is a symbolic link to it, and each visible name is a link to
// "..data/<name>".
type ConfigMap struct {
	// Dir is the mount: what levee serve --config is given.
	Dir     string
	t       testing.TB
	current string            // the timestamped directory "..data" points to
	files   map[string]string // its files
	n       int
}

// NewConfigMap mounts files (name to content) in a new temporary directory.
func NewConfigMap(t testing.TB, files map[string]string) *ConfigMap {
	t.Helper()
	m := &ConfigMap{Dir: t.TempDir(), t: t}
	m.Update(files)
	return m
}

// Update replaces the files as the kubelet's atomic writer does: it writes
// a new timestamped directory, points "..data_tmp" at it and renames that
// over "..data" (the one atomic step), adds the visible links of new names,
// removes those of dropped names, and removes the old directory.
func (m *ConfigMap) Update(files map[string]string) {
	t := m.t
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	ts := fmt.Sprintf("..2026_12_04_00_00_%02d.%03d", m.n, 123+m.n)
	m.n++
	for name, data := range files {
		p := filepath.Join(m.Dir, ts, name)
		must(os.MkdirAll(filepath.Dir(p), 0o755))
		must(os.WriteFile(p, []byte(data), 0o644))
	}
	tmp := filepath.Join(m.Dir, "..data_tmp")
	must(os.Symlink(ts, tmp))
	must(os.Rename(tmp, filepath.Join(m.Dir, "..data")))
	for name := range files {
		if _, ok := m.files[name]; !ok {
			must(os.Symlink(filepath.Join("..data", name), filepath.Join(m.Dir, name)))
		}
	}
	for name := range m.files {
		if _, ok := files[name]; !ok {
			must(os.Remove(filepath.Join(m.Dir, name)))
		}
	}
	old := m.current
	m.current, m.files = ts, files
	if old != "" {
		must(os.RemoveAll(filepath.Join(m.Dir, old)))
	}
}
