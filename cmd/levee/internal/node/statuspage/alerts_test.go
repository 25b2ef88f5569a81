package statuspage

import (
	"bytes"
	"strings"
	"testing"
)

// incident is a status during an incident: n3 gone, n2 on an older config,
// timeline shedding under an override.
func incident() Status {
	now := at(600)
	gone, until := at(590), at(900)
	beat := 1.0
	return Status{
		GeneratedAt: now, Node: "n1",
		Members: []Member{
			{ID: "n1", Self: true, State: StateUp, RingShare: 0.5, DecisionsPerSecond: 250, RefusalsPerSecond: map[string]float64{"low": 50}, Config: MemberConfig{Version: 5},
				Thresholds: []Threshold{{Resource: "timeline", Priority: "critical", Pinned: true}}},
			{ID: "n2", State: StateUp, RingShare: 0.5, DecisionsPerSecond: 240, HeartbeatAgeSeconds: &beat, Config: MemberConfig{Version: 4}},
			{ID: "n3", State: StateGone, GoneSince: &gone, Config: MemberConfig{Version: 5}},
		},
		Resources: []Resource{{Name: "timeline", Threshold: LevelOf(512), Shedding: true, Pinned: true, PinnedUntil: &until,
			History: []HistPoint{{T: at(598), RefusedPerSecond: 10}, {T: at(600), RefusedPerSecond: 201}}}},
		Overrides: []Override{{Resource: "timeline", MinPriority: "critical", Author: "oncall", Reason: "INC-1", SecondsLeft: 300}},
		Config:    NodeConfig{Version: 5},
		Peer:      &Peer{ForwardedPerSecond: 12, FromLeasesPerSecond: 3400, FallbacksPerSecond: 40},
	}
}

func TestAlerts(t *testing.T) {
	got := Alerts(incident())
	want := []Alert{
		{AlertBad, "n3 is gone: left the ring 10 s ago (at 03:09:50 UTC)"},
		{AlertBad, "timeline is shedding: admits ≥ critical/0, refusing 201/s (override, 5m 00s left)"},
		{AlertWarn, "configuration differs between nodes: n1 v5, n2 v4"},
		{AlertWarn, "n1 decides 40 checks/s by their failure_mode: their owners do not answer"},
		{AlertWarn, "override on timeline: admits critical and above for 5m 00s more (oncall: INC-1)"},
	}
	if len(got) != len(want) {
		t.Fatalf("%d alerts, want %d: %v", len(got), len(want), got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("alert %d: %+v, want %+v", i, got[i], want[i])
		}
	}
	calm := Status{GeneratedAt: at(0), Members: []Member{{ID: "n1", Self: true, State: StateUp}}}
	if a := Alerts(calm); len(a) != 0 {
		t.Errorf("a calm cluster has alerts: %v", a)
	}
}

func TestWriteText(t *testing.T) {
	var b bytes.Buffer
	if err := WriteText(&b, incident()); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"2 of 3 up", "!! n3 is gone", "GONE 10 s", "n1*", "low 50", "timeline ≥critical/0 (pinned)",
		"admits ≥ critical/0 (override)", "oncall", "INC-1",
		"n1, checks of keys other nodes own: 12/s forwarded, 3.4k/s from leases, 40/s by failure_mode",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestSparkline(t *testing.T) {
	now := at(300)
	h := []HistPoint{{T: at(0), RefusedPerSecond: 0}, {T: at(150), RefusedPerSecond: 50}, {T: at(300), RefusedPerSecond: 100}}
	got := Sparkline(h, now, 10)
	if want := "▁    ▅   █"; got != want {
		t.Errorf("Sparkline = %q, want %q", got, want)
	}
	if got := Sparkline(nil, now, 4); got != "    " {
		t.Errorf("no history: %q", got)
	}
}

// TestAlertsCompareHashes: nodes that publish content hashes are compared
// by them: nodes enforcing their own files all run version 0, and a node
// following etcd and one reading the same files agree.
func TestAlertsCompareHashes(t *testing.T) {
	member := func(id string, version int64, hash string) Member {
		return Member{ID: id, State: StateUp, Config: MemberConfig{Version: version, Hash: hash}}
	}
	same := Status{GeneratedAt: at(0), Members: []Member{member("n1", 0, "aa"), member("n2", 3, "aa")}}
	if a := Alerts(same); len(a) != 0 {
		t.Errorf("nodes enforcing the same content: %v", a)
	}
	differ := Status{GeneratedAt: at(0), Members: []Member{member("n1", 0, "aa"), member("n2", 0, "bb"), member("n3", 3, "aa")}}
	want := Alert{AlertWarn, "configuration differs between nodes: n1 aa, n2 bb, n3 v3 (aa)"}
	if a := Alerts(differ); len(a) != 1 || a[0] != want {
		t.Errorf("nodes on files that differ: %v, want %v", a, want)
	}
}
