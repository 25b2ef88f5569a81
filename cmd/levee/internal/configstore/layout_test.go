package configstore

import "testing"

func TestLayout(t *testing.T) {
	if got := NewLayout("/x").Member("id"); got != "/x/members/id" {
		t.Errorf("Member = %q", got)
	}
	if got := NewLayout("").Member("id"); got != DefaultPrefix+"members/id" {
		t.Errorf("Member with default prefix = %q", got)
	}
	// "/x" and "/x/" are one cluster: every key is the same.
	a, b := NewLayout("/x"), NewLayout("/x/")
	for _, k := range [][2]string{
		{a.Prefix(), b.Prefix()},
		{a.Members(), b.Members()},
		{a.StatusOf("n1"), b.StatusOf("n1")},
		{a.configCurrent(), b.configCurrent()},
		{a.historyKey(7), b.historyKey(7)},
		{a.overrides(), b.overrides()},
	} {
		if k[0] != k[1] {
			t.Errorf("%q != %q", k[0], k[1])
		}
	}
	if got := a.StatusOf("n1"); got != "/x/status/n1" {
		t.Errorf("StatusOf = %q", got)
	}
	// History keys sort in version order, and the watched range
	// [current, historyEnd) holds current and every history key but no
	// override.
	if !(a.historyKey(9) < a.historyKey(10)) {
		t.Errorf("history keys do not sort by version: %q, %q", a.historyKey(9), a.historyKey(10))
	}
	for _, k := range []string{a.configCurrent(), a.historyKey(1), a.historyKey(1 << 62)} {
		if k < a.configCurrent() || k >= a.configHistoryEnd() {
			t.Errorf("%q is outside the watched range", k)
		}
	}
	if k := a.overrides() + "r"; k >= a.configCurrent() && k < a.configHistoryEnd() {
		t.Errorf("override key %q is inside the watched range", k)
	}
}
