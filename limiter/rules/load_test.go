package rules

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/levee-dev/levee/limiter/rules/rulestest"
	"github.com/levee-dev/levee/shed"
)

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func domainNames(c *Config) string {
	var names []string
	for _, d := range c.Domains() {
		names = append(names, d.Name+"@"+filepath.ToSlash(d.File))
	}
	return strings.Join(names, ",")
}

func TestLoadTestdata(t *testing.T) {
	c, err := Load("testdata/config")
	if err != nil {
		t.Fatal(err)
	}
	want := "api@testdata/config/nested/api.yaml,messaging@testdata/config/messaging.yaml,mongo_cps@testdata/config/mongo_cps.yaml"
	if got := domainNames(c); got != want {
		t.Errorf("domains = %s, want %s", got, want)
	}
	for _, d := range c.Domains() {
		if len(d.Warnings) > 0 {
			t.Errorf("%s: warnings %v", d.Name, d.Warnings)
		}
	}
	tests := []struct {
		entries []Entry
		want    string
	}{
		{e("remote_address=1.2.3.4"), "api.remote_address"},
		{e("remote_address=50.0.0.5"), "api.remote_address_50.0.0.5"},
		{e("remote_address=10.0.0.1"), "api.remote_address_10.0.0.1"},
		{e("path=/api/login"), "api.path_/api/login"},
		{e("path=/api/users"), "api.path_/api/*"},
		{e("path=/health"), "api.path"},
		{e("plan=free"), "api.plan_free"},
		{e("plan=free", "user=u1"), "api.plan_free.user"},
		{e("plan=free", "user=vip-7-eu"), "api.plan_free.user_vip-*-eu"},
		{e("plan=free", "user=vip-7-us"), "api.plan_free.user"},
		{e("plan=paid", "user=u1"), ""},
	}
	for _, tt := range tests {
		got := ""
		if r := c.Match("api", tt.entries).Rule; r != nil {
			got = r.ID
		}
		if got != tt.want {
			t.Errorf("Match(api, %v) = %q, want %q", tt.entries, got, tt.want)
		}
	}
	login := c.Match("api", e("path=/api/login")).Rule
	if login.Priority != shed.Critical || login.FailureMode != FailureClosed || login.Name != "login" {
		t.Errorf("login rule: %+v", login)
	}
	ip := c.Match("api", e("remote_address=1.2.3.4")).Rule
	if l := limit0(ip).Limit; l.Burst != 20 || l.Rate != 10 {
		t.Errorf("burst: %+v", l)
	}
	if allow := c.Match("api", e("remote_address=10.0.0.1")).Rule; allow.HasLimit {
		t.Error("allow-list entry has a limit")
	}
	if vip := c.Match("api", e("plan=free", "user=vip-7-eu")).Rule; !vip.Unlimited {
		t.Error("vip rule is not unlimited")
	}

	// A single file loads on its own and keeps the name it was given.
	c1, err := Load("testdata/config/messaging.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if got := domainNames(c1); got != "messaging@testdata/config/messaging.yaml" {
		t.Errorf("single file: %s", got)
	}
}

// TestReadFilesNames checks the two names of a file read: Name below the
// directory (what a configuration bundle stores) and Path (what errors
// show).
func TestReadFilesNames(t *testing.T) {
	files, err := ReadFiles("testdata/config")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, f := range files {
		got = append(got, f.Name+"@"+filepath.ToSlash(f.Path))
		if len(f.Data) == 0 || f.ModTime.IsZero() {
			t.Errorf("%s: no data or no modification time", f.Name)
		}
	}
	want := "messaging.yaml@testdata/config/messaging.yaml,mongo_cps.yaml@testdata/config/mongo_cps.yaml,nested/api.yaml@testdata/config/nested/api.yaml"
	if strings.Join(got, ",") != want {
		t.Errorf("ReadFiles = %s, want %s", strings.Join(got, ","), want)
	}
	one, err := ReadFiles("testdata/config/nested/api.yaml")
	if err != nil || len(one) != 1 || one[0].Name != "api.yaml" {
		t.Errorf("ReadFiles(file) = %+v, %v; want one file named api.yaml", one, err)
	}
}

func TestLoadDuplicateDomain(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "a.yaml"), "domain: d\n")
	writeFile(t, filepath.Join(dir, "b.yaml"), "# second\ndomain: d\n")
	c, err := Load(dir)
	if c != nil || err == nil {
		t.Fatal("duplicate domain loaded")
	}
	var pe *ParseError
	if !errors.As(err, &pe) {
		t.Fatalf("%v is not a ParseError", err)
	}
	a, b := filepath.Join(dir, "a.yaml"), filepath.Join(dir, "b.yaml")
	want := b + ":2: domain: duplicate domain 'd' in config file (also in " + a + ":1)"
	if err.Error() != want {
		t.Errorf("err = %q\nwant  %q", err, want)
	}
}

func TestLoadAllOrNothing(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "a.yaml"), "domain: a\n")
	writeFile(t, filepath.Join(dir, "b.yaml"), "domain: b\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: minutes\n")
	writeFile(t, filepath.Join(dir, "sub", "c.yaml"), "domain: c\ndescriptors:\n  - key: \"\"\n")
	c, err := Load(dir)
	if c != nil || err == nil {
		t.Fatal("a bad file did not fail the load")
	}
	// Every bad file is reported, each with its own location.
	msg := err.Error()
	for _, want := range []string{
		filepath.Join(dir, "b.yaml") + ":5: rate_limit.unit: invalid rate limit unit 'minutes'",
		filepath.Join(dir, "sub", "c.yaml") + ":3: key: descriptor has empty key",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q lacks %q", msg, want)
		}
	}
	var pe *ParseError
	if !errors.As(err, &pe) || pe.Line != 5 {
		t.Errorf("errors.As: %+v", pe)
	}
}

// TestLoadConfigMap builds the layout Kubernetes gives a mounted ConfigMap:
// visible names are links into "..data", itself a link to a timestamped
// directory. Each file must be read once, through its visible name.
func TestLoadConfigMap(t *testing.T) {
	m := rulestest.NewConfigMap(t, map[string]string{"api.yaml": "domain: api\n", "web.yaml": "domain: web\n"})
	dir := m.Dir
	writeFile(t, filepath.Join(dir, ".hidden.yaml"), "not: [valid")
	writeFile(t, filepath.Join(dir, ".git", "x.yaml"), "not: [valid")

	c, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := "api@" + filepath.ToSlash(filepath.Join(dir, "api.yaml")) + ",web@" + filepath.ToSlash(filepath.Join(dir, "web.yaml"))
	if got := domainNames(c); got != want {
		t.Errorf("domains = %s\nwant      %s", got, want)
	}

	// The atomic swap Kubernetes does on update.
	m.Update(map[string]string{"api.yaml": "domain: api2\n", "web.yaml": "domain: web\n"})
	c, err = Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if c.Domain("api2") == nil || c.Domain("api") != nil {
		t.Errorf("after swap: %s", domainNames(c))
	}
}

func TestLoadEdgeCases(t *testing.T) {
	dir := t.TempDir()
	c, err := Load(dir)
	if err != nil || len(c.Domains()) != 0 {
		t.Errorf("empty dir: %v, %v", c, err)
	}
	if _, err := Load(filepath.Join(dir, "missing")); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing path: %v", err)
	}
	// A symbolic link back up the tree is refused rather than followed forever.
	writeFile(t, filepath.Join(dir, "a", "r.yaml"), "domain: r\n")
	if err := os.Symlink("..", filepath.Join(dir, "a", "loop")); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), "symbolic link loop") {
		t.Errorf("loop: %v", err)
	}

	big := t.TempDir()
	writeFile(t, filepath.Join(big, "big.yaml"), "domain: d\n#"+strings.Repeat("x", MaxFileSize))
	_, err = Load(big)
	var pe *ParseError
	if !errors.As(err, &pe) || pe.Reason != "file is larger than 4194304 bytes" {
		t.Errorf("big file: %v", err)
	}
}

func TestNewConfig(t *testing.T) {
	a := mustParse(t, "domain: a\n")
	b := mustParse(t, "domain: b\n")
	c, err := NewConfig(b, a)
	if err != nil {
		t.Fatal(err)
	}
	if got := domainNames(c); got != "a@test.yaml,b@test.yaml" {
		t.Errorf("Domains = %s", got)
	}
	if c.Domain("a") != a || c.Domain("zz") != nil {
		t.Error("Domain lookup")
	}
	if _, err := NewConfig(a, a); err == nil {
		t.Error("duplicate accepted")
	}
	if _, err := NewConfig(nil); err == nil {
		t.Error("nil accepted")
	}
	if m := c.Match("a", e("k=v")); !m.DomainFound || m.Rule != nil {
		t.Errorf("empty domain match: %+v", m)
	}
}
