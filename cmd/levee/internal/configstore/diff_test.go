package configstore

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
)

func TestDiffBundles(t *testing.T) {
	a := Bundle{Rules: map[string][]byte{
		"api.yaml":  []byte("domain: api\ndescriptors:\n  - key: user\n    rate_limit:\n      unit: second\n      requests_per_unit: 10\n"),
		"gone.yaml": []byte("domain: gone\n"),
		"same.yaml": []byte("domain: same\n"),
	}}
	b := Bundle{Rules: map[string][]byte{
		"api.yaml":  []byte("domain: api\ndescriptors:\n  - key: user\n    rate_limit:\n      unit: second\n      requests_per_unit: 20\n"),
		"new.yaml":  []byte("domain: new"),
		"same.yaml": []byte("domain: same\n"),
	}, Shed: []byte("resources: [login]\n")}
	got := DiffBundles(a, b, "v1", "v2")
	want := `--- v1/rules/api.yaml
+++ v2/rules/api.yaml
@@ -3,4 +3,4 @@
   - key: user
     rate_limit:
       unit: second
-      requests_per_unit: 10
+      requests_per_unit: 20
--- v1/rules/gone.yaml
+++ /dev/null
@@ -1 +0,0 @@
-domain: gone
--- /dev/null
+++ v2/rules/new.yaml
@@ -0,0 +1 @@
+domain: new
\ No newline at end of file
--- /dev/null
+++ v2/shed.yaml
@@ -0,0 +1 @@
+resources: [login]
`
	if got != want {
		t.Errorf("DiffBundles:\n%s\nwant:\n%s", got, want)
	}
	if d := DiffBundles(a, a, "v1", "v1"); d != "" {
		t.Errorf("diff of equal bundles = %q, want empty", d)
	}
}

func TestUnifiedHunks(t *testing.T) {
	// 20 lines; change line 2 and line 18: far apart, so two hunks.
	var a, b []string
	for i := 1; i <= 20; i++ {
		a = append(a, fmt.Sprintf("line %d\n", i))
		b = append(b, fmt.Sprintf("line %d\n", i))
	}
	b[1] = "changed 2\n"
	b[17] = "changed 18\n"
	var out strings.Builder
	writeUnified(&out, a, b, 3)
	got := out.String()
	if n := strings.Count(got, "@@ -"); n != 2 {
		t.Fatalf("got %d hunks, want 2:\n%s", n, got)
	}
	if !strings.Contains(got, "@@ -1,5 +1,5 @@\n") || !strings.Contains(got, "@@ -15,6 +15,6 @@\n") {
		t.Errorf("hunk headers wrong:\n%s", got)
	}
	// Changes 6 lines apart share one hunk (gap <= 2*context).
	b = append([]string(nil), a...)
	b[4], b[11] = "x\n", "y\n"
	out.Reset()
	writeUnified(&out, a, b, 3)
	if n := strings.Count(out.String(), "@@ -"); n != 1 {
		t.Errorf("got %d hunks, want 1:\n%s", n, out.String())
	}
}

// patch applies a unified diff made by writeUnified to a, as patch(1) does,
// checking every context and removed line.
func patch(a []string, diff string) ([]string, error) {
	lines := splitLines(diff)
	var out []string
	pos := 0 // next line of a to copy
	for i := 0; i < len(lines); {
		h := lines[i]
		if !strings.HasPrefix(h, "@@ -") {
			return nil, fmt.Errorf("line %d: want a hunk header, got %q", i+1, h)
		}
		f := strings.Fields(h)
		aStart, aLen := parseRange(f[1][1:])
		_, bLen := parseRange(f[2][1:])
		from := aStart - 1
		if aLen == 0 {
			from = aStart
		}
		if from < pos || from > len(a) {
			return nil, fmt.Errorf("hunk %q out of order", h)
		}
		out = append(out, a[pos:from]...)
		pos = from
		i++
		var na, nb int
		for i < len(lines) && !strings.HasPrefix(lines[i], "@@ -") {
			l := lines[i]
			text := l[1:]
			if i+1 < len(lines) && lines[i+1] == "\\ No newline at end of file\n" {
				text = strings.TrimSuffix(text, "\n")
				i++
			}
			switch l[0] {
			case ' ', '-':
				if pos >= len(a) || a[pos] != text {
					return nil, fmt.Errorf("hunk %q: line %q does not match %q", h, text, a[min(pos, len(a)-1)])
				}
				pos++
				na++
				if l[0] == ' ' {
					out = append(out, text)
					nb++
				}
			case '+':
				out = append(out, text)
				nb++
			default:
				return nil, fmt.Errorf("bad diff line %q", l)
			}
			i++
		}
		if na != aLen || nb != bLen {
			return nil, fmt.Errorf("hunk %q has %d/%d lines", h, na, nb)
		}
	}
	return append(out, a[pos:]...), nil
}

func parseRange(s string) (start, n int) {
	p, q, ok := strings.Cut(s, ",")
	start, _ = strconv.Atoi(p)
	n = 1
	if ok {
		n, _ = strconv.Atoi(q)
	}
	return start, n
}

// lcs is the textbook dynamic programme, to check that diffLines is
// minimal.
func lcs(a, b []string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for i := 1; i <= len(a); i++ {
		for j := 1; j <= len(b); j++ {
			if a[i-1] == b[j-1] {
				cur[j] = prev[j-1] + 1
			} else {
				cur[j] = max(prev[j], cur[j-1])
			}
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// checkDiff checks that the script turns a into b, is minimal, and that
// the unified diff patches a into b.
func checkDiff(t *testing.T, a, b []string) {
	t.Helper()
	script := diffLines(a, b)
	var ra, rb []string
	changes := 0
	for _, e := range script {
		switch e.kind {
		case keep:
			if a[e.ai] != b[e.bi] {
				t.Fatalf("kept line %q != %q", a[e.ai], b[e.bi])
			}
			ra, rb = append(ra, a[e.ai]), append(rb, b[e.bi])
		case del:
			ra = append(ra, a[e.ai])
			changes++
		case ins:
			rb = append(rb, b[e.bi])
			changes++
		}
	}
	if strings.Join(ra, "") != strings.Join(a, "") || strings.Join(rb, "") != strings.Join(b, "") {
		t.Fatalf("script does not rebuild the inputs:\na=%q\nb=%q", a, b)
	}
	if len(a)*len(b) <= 1<<16 {
		if want := len(a) + len(b) - 2*lcs(a, b); changes != want {
			t.Fatalf("script has %d changes, minimal is %d:\na=%q\nb=%q", changes, want, a, b)
		}
	}
	var out strings.Builder
	writeUnified(&out, a, b, diffContext)
	got, err := patch(a, out.String())
	if err != nil {
		t.Fatalf("patch: %v\ndiff:\n%s", err, out.String())
	}
	if strings.Join(got, "") != strings.Join(b, "") {
		t.Fatalf("patch gave %q, want %q\ndiff:\n%s", got, b, out.String())
	}
}

func TestDiffLines(t *testing.T) {
	cases := [][2]string{
		{"", ""},
		{"", "a\n"},
		{"a\n", ""},
		{"a\nb\nc\n", "a\nb\nc\n"},
		{"a\nb\nc\n", "a\nc\n"},
		{"a\nb\nc\n", "x\nb\ny\n"},
		{"a\nb\nc\na\nb\nb\na\n", "c\nb\na\nb\na\nc\n"}, // Myers' paper example
		{"a\nb", "a\nb\n"},
		{"1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n", "0\n1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n11\n"},
	}
	for _, c := range cases {
		checkDiff(t, splitLines(c[0]), splitLines(c[1]))
	}
}

func TestDiffLinesLargeFallsBack(t *testing.T) {
	// Two unrelated 5,000-line files exceed the trace budget; the diff
	// must still be correct.
	var a, b []string
	for i := range 5000 {
		a = append(a, fmt.Sprintf("a%d\n", i))
		b = append(b, fmt.Sprintf("b%d\n", i))
	}
	checkDiff(t, a, b)
}

func FuzzDiff(f *testing.F) {
	f.Add("a\nb\nc\n", "a\nc\nd\n")
	f.Add("x", "x\n")
	f.Add("1\n2\n3\n4\n5\n6\n7\n8\n9\n", "1\n2\n3\n4\n5\nfive\n7\n8\n9\n")
	f.Fuzz(func(t *testing.T, a, b string) {
		// Few distinct lines make long common subsequences likely.
		toLines := func(s string) []string {
			var out []string
			for _, c := range []byte(s) {
				out = append(out, string('a'+c%4)+"\n")
			}
			if len(s) > 0 && s[0]%5 == 0 {
				out[len(out)-1] = strings.TrimSuffix(out[len(out)-1], "\n")
			}
			return out
		}
		if len(a) > 300 || len(b) > 300 {
			return
		}
		checkDiff(t, toLines(a), toLines(b))
		checkDiff(t, splitLines(a), splitLines(b))
	})
}
