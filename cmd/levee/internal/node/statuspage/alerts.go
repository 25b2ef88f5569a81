package statuspage

import (
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/levee-dev/levee/shed"
)

// Alert levels.
const (
	// AlertBad needs someone now: a node gone or silent, a resource
	// shedding, a configuration refused.
	AlertBad = "bad"
	// AlertWarn is worth knowing: an override in force, nodes on
	// different configuration versions, a late heartbeat, an overloaded
	// resource, a read that failed.
	AlertWarn = "warn"
)

// staleHeartbeat is how old a member's heartbeat may be (it republishes
// every two seconds) before it is flagged.
const staleHeartbeat = 6 * time.Second

// Alert is one line of what needs attention, worst first.
type Alert struct {
	Level string `json:"level"`
	Text  string `json:"text"`
}

// Alerts is what an operator should look at first in st, the worst
// first: the page shows them at the top and `levee ctl top` above its
// tables.
func Alerts(st Status) []Alert {
	var bad, warn []Alert
	add := func(level, format string, args ...any) {
		a := Alert{Level: level, Text: fmt.Sprintf(format, args...)}
		if level == AlertBad {
			bad = append(bad, a)
		} else {
			warn = append(warn, a)
		}
	}
	now := st.GeneratedAt
	for _, m := range st.Members {
		switch {
		case m.State == StateGone && m.GoneSince != nil:
			add(AlertBad, "%s is gone: left the ring %s ago (at %s)", m.ID, Ago(now.Sub(*m.GoneSince)), m.GoneSince.UTC().Format("15:04:05 UTC"))
		case m.State == StateNoStatus:
			add(AlertBad, "%s is in the ring but publishes no status%s", m.ID, suffix(": ", m.Error))
		case !m.Self && m.HeartbeatAgeSeconds != nil && *m.HeartbeatAgeSeconds > staleHeartbeat.Seconds():
			add(AlertWarn, "%s: no heartbeat for %s", m.ID, Ago(time.Duration(*m.HeartbeatAgeSeconds*float64(time.Second))))
		}
		if m.Config.Error != "" {
			add(AlertBad, "%s refused a configuration: %s", m.ID, m.Config.Error)
		}
	}
	for _, r := range st.Resources {
		switch {
		case r.Shedding && !r.Shadow:
			t := fmt.Sprintf("%s is shedding: %s, refusing %s/s", r.Name, Admits(r.Threshold), Rate(lastRefused(r)))
			if r.Pinned && r.PinnedUntil != nil {
				t += fmt.Sprintf(" (override, %s left)", Ago(r.PinnedUntil.Sub(now)))
			}
			add(AlertBad, "%s", t)
		case r.Overloaded:
			add(AlertWarn, "%s is overloaded", r.Name)
		}
	}
	// Nodes are compared by content hash when all publish one (nodes
	// enforcing their own files all run version 0), else by version.
	byHash := true
	for _, m := range st.Members {
		if m.State != StateGone && m.Config.Hash == "" {
			byHash = false
		}
	}
	versions := map[string]bool{}
	var on []string
	for _, m := range st.Members {
		if m.State != StateGone {
			key, label := fmt.Sprintf("v%d", m.Config.Version), fmt.Sprintf("v%d", m.Config.Version)
			if byHash {
				key, label = m.Config.Hash, m.Config.Hash
				if m.Config.Version != 0 {
					label = fmt.Sprintf("v%d (%s)", m.Config.Version, m.Config.Hash)
				}
			}
			versions[key] = true
			on = append(on, m.ID+" "+label)
		}
	}
	if len(versions) > 1 {
		add(AlertWarn, "configuration differs between nodes: %s", strings.Join(on, ", "))
	}
	if p := st.Peer; p != nil && p.FallbacksPerSecond > 0 {
		add(AlertWarn, "%s decides %s checks/s by their failure_mode: their owners do not answer", st.Node, Rate(p.FallbacksPerSecond))
	}
	for _, o := range st.Overrides {
		add(AlertWarn, "override on %s: admits %s and above for %s more (%s: %s)", o.Resource, o.MinPriority, Ago(time.Duration(o.SecondsLeft*float64(time.Second))), o.Author, o.Reason)
	}
	for _, w := range st.Warnings {
		add(AlertWarn, "%s", w)
	}
	return append(append([]Alert{}, bad...), warn...)
}

func suffix(sep, s string) string {
	if s == "" {
		return ""
	}
	return sep + s
}

func lastRefused(r Resource) float64 {
	if len(r.History) == 0 {
		return 0
	}
	return r.History[len(r.History)-1].RefusedPerSecond
}

// Admits says what a threshold admits: "admits all", "refuses all" or
// "admits ≥ high/17".
func Admits(l Level) string {
	switch {
	case l.Level <= 0:
		return "admits all"
	case l.Level > int(shed.MaxLevel):
		return "refuses all"
	}
	return fmt.Sprintf("admits ≥ %s/%d", l.Priority, l.Cohort)
}

// Rate formats a rate per second compactly: 0, 3.2, 45, 1.2k, 15k, 2.0M.
func Rate(x float64) string {
	switch {
	case x <= 0 || math.IsNaN(x):
		return "0"
	case x >= 1e6:
		return fmt.Sprintf("%.1fM", x/1e6)
	case x >= 1e4:
		return fmt.Sprintf("%.0fk", x/1e3)
	case x >= 1e3:
		return fmt.Sprintf("%.1fk", x/1e3)
	case x >= 10:
		return fmt.Sprintf("%.0f", x)
	}
	return fmt.Sprintf("%.1f", x)
}

// Ago formats a duration for people: 2.3 s, 45 s, 4m 05s, 2h 10m.
func Ago(d time.Duration) string {
	s := max(d.Seconds(), 0)
	switch {
	case s < 10:
		return fmt.Sprintf("%.1f s", s)
	case s < 120:
		return fmt.Sprintf("%.0f s", s)
	case s < 7200:
		return fmt.Sprintf("%dm %02ds", int(s)/60, int(s)%60)
	}
	return fmt.Sprintf("%dh %02dm", int(s)/3600, int(s)%3600/60)
}
