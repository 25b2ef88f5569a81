package configstore

import (
	"fmt"
	"sort"
	"strings"
)

// diffContext is the number of unchanged lines shown around each change,
// as in diff -u.
const diffContext = 3

// maxTrace bounds the memory of one line diff, in saved diagonal positions.
// Myers' algorithm keeps O(D²) of them for D edits; past the bound (about
// 4,000 changed lines) the diff shows the changed region as one block of
// removals and additions, which is still a correct diff.
const maxTrace = 1 << 23

// DiffBundles returns a unified diff from a to b, one section per file that
// differs, in name order: the rule files as rules/<name>, then the shedding
// policy as shed.yaml. fromLabel and toLabel prefix the file names in the
// section headers ("v4", "v5", "proposed"). A file absent on one side is
// diffed against /dev/null. Equal bundles give "".
func DiffBundles(a, b Bundle, fromLabel, toLabel string) string {
	names := make(map[string]bool, len(a.Rules)+len(b.Rules))
	for n := range a.Rules {
		names[n] = true
	}
	for n := range b.Rules {
		names[n] = true
	}
	sorted := make([]string, 0, len(names))
	for n := range names {
		sorted = append(sorted, n)
	}
	sort.Strings(sorted)

	var out strings.Builder
	for _, n := range sorted {
		da, inA := a.Rules[n]
		db, inB := b.Rules[n]
		fileDiff(&out, "rules/"+n, fromLabel, toLabel, da, db, inA, inB)
	}
	fileDiff(&out, "shed.yaml", fromLabel, toLabel, a.Shed, b.Shed, len(a.Shed) > 0, len(b.Shed) > 0)
	return out.String()
}

// fileDiff writes the section for one file, if it changed.
func fileDiff(out *strings.Builder, name, fromLabel, toLabel string, a, b []byte, inA, inB bool) {
	if inA == inB && string(a) == string(b) {
		return
	}
	from, to := fromLabel+"/"+name, toLabel+"/"+name
	if !inA {
		from = "/dev/null"
	}
	if !inB {
		to = "/dev/null"
	}
	fmt.Fprintf(out, "--- %s\n+++ %s\n", from, to)
	writeUnified(out, splitLines(string(a)), splitLines(string(b)), diffContext)
}

// splitLines splits s after each newline, keeping the newlines, so that a
// last line without one differs from the same line with one.
func splitLines(s string) []string {
	if s == "" {
		return nil
	}
	lines := strings.SplitAfter(s, "\n")
	if lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	return lines
}

// editKind is one line of an edit script.
type editKind byte

const (
	keep editKind = ' '
	del  editKind = '-'
	ins  editKind = '+'
)

// edit is one line of an edit script: kept or deleted lines are a[ai],
// inserted lines are b[bi].
type edit struct {
	kind   editKind
	ai, bi int
}

// diffLines returns a shortest edit script turning a into b (Myers, "An
// O(ND) Difference Algorithm", 1986): a breadth-first search over the
// number of edits d, keeping for each diagonal k = x - y the furthest x
// reached, then a walk back through the saved rows. The common prefix and
// suffix are taken off first, so a small change to a large file costs
// little.
func diffLines(a, b []string) []edit {
	pre := 0
	for pre < len(a) && pre < len(b) && a[pre] == b[pre] {
		pre++
	}
	suf := 0
	for suf < len(a)-pre && suf < len(b)-pre && a[len(a)-1-suf] == b[len(b)-1-suf] {
		suf++
	}
	out := make([]edit, 0, len(a)+len(b)-pre-suf)
	for i := 0; i < pre; i++ {
		out = append(out, edit{keep, i, i})
	}
	out = appendMiddle(out, a[pre:len(a)-suf], b[pre:len(b)-suf], pre)
	for i := 0; i < suf; i++ {
		out = append(out, edit{keep, len(a) - suf + i, len(b) - suf + i})
	}
	return out
}

// appendMiddle appends the edit script for a and b, which are a[off:] and
// b[off:] of the caller's slices.
func appendMiddle(out []edit, a, b []string, off int) []edit {
	n, m := len(a), len(b)
	if n == 0 || m == 0 {
		return appendReplace(out, n, m, off)
	}
	// vec[o+k] is the furthest x reached on diagonal k = x - y. trace[d]
	// saves the row before step d: k in [-(d-1), d-1], at index k+d-1.
	o := n + m + 1
	vec := make([]int, 2*o+1)
	var trace [][]int32
	saved := 0
	for d := 0; d <= n+m; d++ {
		r := make([]int32, max(2*d-1, 0))
		for k := -(d - 1); k <= d-1; k += 2 {
			r[k+d-1] = int32(vec[o+k])
		}
		saved += len(r)
		if saved > maxTrace {
			return appendReplace(out, n, m, off)
		}
		trace = append(trace, r)
		for k := -d; k <= d; k += 2 {
			var x int
			if k == -d || (k != d && vec[o+k-1] < vec[o+k+1]) {
				x = vec[o+k+1] // down: an insertion
			} else {
				x = vec[o+k-1] + 1 // right: a deletion
			}
			y := x - k
			for x < n && y < m && a[x] == b[y] {
				x++
				y++
			}
			vec[o+k] = x
			if x >= n && y >= m {
				return appendBacktrack(out, trace, n, m, d, off)
			}
		}
	}
	return appendReplace(out, n, m, off) // not reached: d = n+m always ends
}

// appendBacktrack walks back from (n, m) through the saved rows and appends
// the script in forward order.
func appendBacktrack(out []edit, trace [][]int32, n, m, dEnd, off int) []edit {
	rev := make([]edit, 0, n+m)
	x, y := n, m
	for d := dEnd; d > 0; d-- {
		r := trace[d]
		at := func(k int) int { return int(r[k+d-1]) }
		k := x - y
		var pk int
		if k == -d || (k != d && at(k-1) < at(k+1)) {
			pk = k + 1
		} else {
			pk = k - 1
		}
		px := at(pk)
		py := px - pk
		for x > px && y > py {
			x--
			y--
			rev = append(rev, edit{keep, x + off, y + off})
		}
		if x == px {
			y--
			rev = append(rev, edit{ins, x + off, y + off})
		} else {
			x--
			rev = append(rev, edit{del, x + off, y + off})
		}
	}
	for x > 0 && y > 0 {
		x--
		y--
		rev = append(rev, edit{keep, x + off, y + off})
	}
	for i := len(rev) - 1; i >= 0; i-- {
		out = append(out, rev[i])
	}
	return out
}

// appendReplace appends the removal of all n lines and the insertion of all
// m lines.
func appendReplace(out []edit, n, m, off int) []edit {
	for i := 0; i < n; i++ {
		out = append(out, edit{del, off + i, off})
	}
	for j := 0; j < m; j++ {
		out = append(out, edit{ins, off + n, off + j})
	}
	return out
}

// writeUnified writes the hunks of the diff from a to b with ctx lines of
// context, in the format of diff -u (line ranges "start,count", the count
// left out when it is 1, the start one before the gap when it is 0).
func writeUnified(out *strings.Builder, a, b []string, ctx int) {
	script := diffLines(a, b)
	i := 0
	for i < len(script) {
		// Find the next change.
		for i < len(script) && script[i].kind == keep {
			i++
		}
		if i == len(script) {
			return
		}
		start := max(i-ctx, 0)
		// Extend the hunk while the gap to the next change is at most
		// 2*ctx kept lines, so that hunks do not overlap.
		end := i
		for {
			for end < len(script) && script[end].kind != keep {
				end++
			}
			gap := end
			for gap < len(script) && script[gap].kind == keep {
				gap++
			}
			if gap == len(script) || gap-end > 2*ctx {
				end = min(end+ctx, len(script))
				break
			}
			end = gap
		}
		writeHunk(out, a, b, script[start:end])
		i = end
	}
}

func writeHunk(out *strings.Builder, a, b []string, h []edit) {
	var na, nb int
	for _, e := range h {
		switch e.kind {
		case keep:
			na++
			nb++
		case del:
			na++
		case ins:
			nb++
		}
	}
	fmt.Fprintf(out, "@@ -%s +%s @@\n", hunkRange(h[0].ai, na), hunkRange(h[0].bi, nb))
	for _, e := range h {
		line := ""
		switch e.kind {
		case keep, del:
			line = a[e.ai]
		case ins:
			line = b[e.bi]
		}
		out.WriteByte(byte(e.kind))
		out.WriteString(line)
		if !strings.HasSuffix(line, "\n") {
			out.WriteString("\n\\ No newline at end of file\n")
		}
	}
}

func hunkRange(start, n int) string {
	switch n {
	case 0:
		return fmt.Sprintf("%d,0", start)
	case 1:
		return fmt.Sprintf("%d", start+1)
	}
	return fmt.Sprintf("%d,%d", start+1, n)
}
