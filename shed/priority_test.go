package shed

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestParsePriority(t *testing.T) {
	cases := map[string]Priority{
		"": Default, "critical": Critical, "HIGH": High, "default": Default, "Low": Low, "sheddable": Sheddable,
	}
	for in, want := range cases {
		got, err := ParsePriority(in)
		if err != nil || got != want {
			t.Errorf("ParsePriority(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"urgent", "critical ", "0", "critical_plus"} {
		_, err := ParsePriority(bad)
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != "priority" || fe.Value != bad {
			t.Errorf("ParsePriority(%q) error = %v; want a FieldError for field priority", bad, err)
		}
	}
}

func TestZeroPriorityIsDefault(t *testing.T) {
	var p Priority
	if p.Normalize() != Default {
		t.Fatalf("zero Priority normalises to %v, want default", p.Normalize())
	}
	if LevelOf(p, 5) != LevelOf(Default, 5) {
		t.Fatalf("LevelOf(zero, 5) = %v, want %v", LevelOf(p, 5), LevelOf(Default, 5))
	}
	if LevelOf(Priority(200), 5) != LevelOf(Default, 5) {
		t.Fatal("out-of-range priority is not treated as default")
	}
}

func TestLevelOrder(t *testing.T) {
	// Every level of a more important priority is above every level of a
	// less important one; within a priority, cohorts order the levels.
	prios := []Priority{Sheddable, Low, Default, High, Critical}
	prev := Level(0)
	first := true
	for _, p := range prios {
		for c := 0; c < NumCohorts; c++ {
			l := LevelOf(p, uint8(c))
			if !first && l != prev+1 {
				t.Fatalf("LevelOf(%v, %d) = %d, want %d", p, c, l, prev+1)
			}
			if l.Priority() != p || int(l.Cohort()) != c {
				t.Fatalf("level %d round-trips to %v/%d, want %v/%d", l, l.Priority(), l.Cohort(), p, c)
			}
			prev, first = l, false
		}
	}
	if prev != MaxLevel {
		t.Fatalf("highest level %d, want MaxLevel %d", prev, MaxLevel)
	}
	if LevelOf(Critical, 0) != CriticalOnly {
		t.Fatalf("CriticalOnly = %d, want %d", CriticalOnly, LevelOf(Critical, 0))
	}
}

func TestParseLevel(t *testing.T) {
	for in, want := range map[string]Level{
		"critical": CriticalOnly, "low/17": LevelOf(Low, 17), "sheddable/0": 0, "all": 0, "none": NumLevels,
		"Critical/127": MaxLevel,
	} {
		got, err := ParseLevel(in)
		if err != nil || got != want {
			t.Errorf("ParseLevel(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "low/128", "low/-1", "urgent/3", "low/", "low/x"} {
		if _, err := ParseLevel(bad); err == nil {
			t.Errorf("ParseLevel(%q) succeeded, want an error", bad)
		}
	}
	if s := LevelOf(Low, 17).String(); s != "low/17" {
		t.Errorf("String = %q, want low/17", s)
	}
}

func TestLabelsLevel(t *testing.T) {
	salt := uint64(42)
	l, err := Labels{}.Level(salt, 9)
	if err != nil || l != LevelOf(Default, 9) {
		t.Fatalf("unlabelled = %v, %v; want default/9", l, err)
	}
	l, err = Labels{Priority: "low", Cohort: "3", User: "alice"}.Level(salt, 9)
	if err != nil || l != LevelOf(Low, 3) {
		t.Fatalf("explicit cohort = %v, %v; want low/3", l, err)
	}
	l, err = Labels{Priority: "high", User: "alice"}.Level(salt, 9)
	if err != nil || l != LevelOf(High, Cohort("alice", salt)) {
		t.Fatalf("user cohort = %v, %v", l, err)
	}
	_, err = Labels{Priority: "bogus"}.Level(salt, 0)
	if err == nil || !strings.Contains(err.Error(), HeaderPriority) {
		t.Fatalf("bad priority error %v does not name %s", err, HeaderPriority)
	}
	_, err = Labels{Cohort: "300"}.Level(salt, 0)
	if err == nil || !strings.Contains(err.Error(), HeaderCohort) {
		t.Fatalf("bad cohort error %v does not name %s", err, HeaderCohort)
	}
}

func TestCohortSpreadAndSalt(t *testing.T) {
	var counts [NumCohorts]int
	const n = 128 * 200
	moved := 0
	for i := range n {
		id := fmt.Sprintf("user-%d", i)
		c := Cohort(id, 1)
		if c >= NumCohorts {
			t.Fatalf("cohort %d out of range", c)
		}
		counts[c]++
		if Cohort(id, 2) != c {
			moved++
		}
	}
	for c, k := range counts {
		if k < 120 || k > 280 { // mean 200; a fair hash stays well inside this
			t.Errorf("cohort %d has %d ids of %d, want about 200", c, k, n)
		}
	}
	if moved < n*9/10 {
		t.Errorf("a new salt moved only %d of %d ids to another cohort", moved, n)
	}
}

func TestCohortSalterRotatesHourly(t *testing.T) {
	s := CohortSalter{Seed: 7}
	h := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	if s.Salt(h) != s.Salt(h.Add(59*time.Minute+59*time.Second)) {
		t.Fatal("salt changed within the hour")
	}
	if s.Salt(h) == s.Salt(h.Add(time.Hour)) {
		t.Fatal("salt did not change at the hour")
	}
	if s.Salt(h) == (CohortSalter{Seed: 8}).Salt(h) {
		t.Fatal("salt does not depend on the seed")
	}
	q := CohortSalter{Seed: 7, Period: 15 * time.Minute}
	if q.Salt(h) == q.Salt(h.Add(15*time.Minute)) {
		t.Fatal("salt did not change at the custom period")
	}
	// Before 1970 periods are floored, not truncated towards zero.
	e := time.Unix(0, 0)
	if s.Salt(e.Add(-time.Nanosecond)) == s.Salt(e) {
		t.Fatal("the hour before the epoch shares a salt with the hour after it")
	}
}

func FuzzParseLevel(f *testing.F) {
	for _, s := range []string{"critical", "low/17", "all", "none", "", "x/1", "high/127", "high/1/2"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		l, err := ParseLevel(s)
		if err != nil {
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("ParseLevel(%q) error %v is not a FieldError", s, err)
			}
			return
		}
		if l > NumLevels {
			t.Fatalf("ParseLevel(%q) = %d, beyond NumLevels", s, l)
		}
		if l <= MaxLevel {
			back, err := ParseLevel(l.String())
			if err != nil || back != l {
				t.Fatalf("ParseLevel(%q) = %v does not round-trip: %v, %v", s, l, back, err)
			}
		}
	})
}

func FuzzLabels(f *testing.F) {
	f.Add("critical", "12", "alice", uint64(1), uint8(3))
	f.Add("", "", "", uint64(0), uint8(200))
	f.Add("bogus", "999", "bob", uint64(9), uint8(0))
	f.Fuzz(func(t *testing.T, prio, cohort, user string, salt uint64, fallback uint8) {
		l, err := Labels{Priority: prio, Cohort: cohort, User: user}.Level(salt, fallback)
		if err != nil {
			var fe *FieldError
			if !errors.As(err, &fe) || (fe.Field != HeaderPriority && fe.Field != HeaderCohort) {
				t.Fatalf("error %v does not name a header", err)
			}
			return
		}
		if l > MaxLevel {
			t.Fatalf("level %d out of range", l)
		}
		if p, _ := ParsePriority(prio); l.Priority() != p {
			t.Fatalf("level %v has priority %v, want %v", l, l.Priority(), p)
		}
	})
}
