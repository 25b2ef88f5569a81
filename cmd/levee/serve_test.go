package main

import (
	"runtime"
	"strings"
	"testing"
)

func TestSetProcs(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	for _, c := range []struct {
		flag, env string
		tuned     bool
	}{
		{"auto", "", true},
		{"auto", "2", false}, // GOMAXPROCS in the environment wins
		{"auto", "0", true},  // Go ignores it, and so does levee
		{"auto", "many", true},
		{"default", "", false},
	} {
		t.Setenv("GOMAXPROCS", c.env)
		tuned, err := setProcs(c.flag)
		if err != nil || tuned != c.tuned {
			t.Errorf("--procs %s with GOMAXPROCS=%q: tuned %v (err %v), want %v", c.flag, c.env, tuned, err, c.tuned)
		}
	}
	if tuned, err := setProcs("3"); err != nil || tuned || runtime.GOMAXPROCS(0) != 3 {
		t.Errorf("--procs 3: tuned %v, err %v, GOMAXPROCS %d; want 3 set and no tuner", tuned, err, runtime.GOMAXPROCS(0))
	}
	for _, bad := range []string{"0", "-1", "x", "Auto2"} {
		if _, err := setProcs(bad); err == nil || !strings.Contains(err.Error(), "--procs") {
			t.Errorf("--procs %q: err %v, want an error naming --procs", bad, err)
		}
	}
}
