package configstore

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadRules(t *testing.T) {
	dir := t.TempDir()
	// A Kubernetes ConfigMap mount: the files live in a hidden timestamped
	// directory, reached through "..data" and visible symbolic links.
	data := filepath.Join(dir, "..2026_01_01")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(data, "team"), 0o755))
	must(os.WriteFile(filepath.Join(data, "api.yaml"), ruleFile("api", 1), 0o644))
	must(os.WriteFile(filepath.Join(data, "team", "login.yaml"), ruleFile("login", 2), 0o644))
	must(os.Symlink("..2026_01_01", filepath.Join(dir, "..data")))
	must(os.Symlink("..data/api.yaml", filepath.Join(dir, "api.yaml")))
	must(os.Symlink("..data/team", filepath.Join(dir, "team")))

	files, err := ReadRules(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 2 || string(files["api.yaml"]) != string(ruleFile("api", 1)) || string(files["team/login.yaml"]) != string(ruleFile("login", 2)) {
		t.Fatalf("ReadRules = %q", files)
	}
	if _, _, err := compile(Bundle{Rules: files}, nil); err != nil {
		t.Fatalf("the files read do not validate: %v", err)
	}

	// A single file is named by its base name; the same name twice is an error.
	one := filepath.Join(t.TempDir(), "api.yaml")
	must(os.WriteFile(one, ruleFile("other", 1), 0o644))
	if files, err := ReadRules(one); err != nil || len(files) != 1 || files["api.yaml"] == nil {
		t.Fatalf("ReadRules(file) = %q, %v", files, err)
	}
	if _, err := ReadRules(dir, one); err == nil || !strings.Contains(err.Error(), `both named "api.yaml"`) {
		t.Fatalf("duplicate names: %v", err)
	}
	big := filepath.Join(t.TempDir(), "big.yaml")
	must(os.WriteFile(big, make([]byte, MaxBundleSize+1), 0o644))
	if _, err := ReadRules(big); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("oversized file: %v", err)
	}
	if _, err := ReadRules(filepath.Join(dir, "missing")); err == nil {
		t.Fatal("a missing path read without error")
	}
}
