package statuspage

import (
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// WriteText writes the status as `levee ctl top` shows it in a terminal:
// the alerts, the members, the resources with a sparkline of the last five
// minutes of refusals, the overrides and the last configuration changes.
func WriteText(w io.Writer, st Status) error {
	var b strings.Builder
	up := 0
	var dps, rps float64
	for _, m := range st.Members {
		if m.State == StateUp {
			up++
		}
		if m.State != StateGone {
			dps += m.DecisionsPerSecond
			for _, v := range m.RefusalsPerSecond {
				rps += v
			}
		}
	}
	fmt.Fprintf(&b, "levee · node %s · %s · %d of %d up · %s decisions/s · %s shed refusals/s · config v%d\n",
		st.Node, st.GeneratedAt.Local().Format(time.TimeOnly), up, len(st.Members), Rate(dps), Rate(rps), st.Config.Version)
	alerts := st.Alerts
	if alerts == nil {
		alerts = Alerts(st)
	}
	if len(alerts) == 0 {
		b.WriteString("OK: nothing needs attention\n")
	}
	for _, a := range alerts {
		mark := "!"
		if a.Level == AlertBad {
			mark = "!!"
		}
		fmt.Fprintf(&b, "%-2s %s\n", mark, a.Text)
	}

	b.WriteString("\nMEMBERS\n")
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tSTATE\tADDRESS\tRING\tCONFIG\tDECISIONS/S\tREFUSALS/S\tHEARTBEAT\tTHRESHOLDS")
	for _, m := range st.Members {
		id := m.ID
		if m.Self {
			id += "*"
		}
		state := m.State
		if m.State == StateGone && m.GoneSince != nil {
			state = "GONE " + Ago(st.GeneratedAt.Sub(*m.GoneSince))
		}
		beat := "-"
		switch {
		case m.Self:
			beat = "live"
		case m.HeartbeatAgeSeconds != nil:
			beat = Ago(time.Duration(*m.HeartbeatAgeSeconds * float64(time.Second)))
		}
		cfg := fmt.Sprintf("v%d", m.Config.Version)
		if m.Config.Error != "" {
			cfg += " (refused one)"
		}
		ring, dec := fmt.Sprintf("%.1f%%", m.RingShare*100), Rate(m.DecisionsPerSecond)
		if m.State == StateGone {
			ring, dec = "-", "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", id, state, m.Addr, ring, cfg, dec, refusals(m.RefusalsPerSecond), beat, thresholds(m.Thresholds))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if p := st.Peer; p != nil {
		fmt.Fprintf(&b, "%s, checks of keys other nodes own: %s/s forwarded, %s/s from leases, %s/s by failure_mode\n",
			st.Node, Rate(p.ForwardedPerSecond), Rate(p.FromLeasesPerSecond), Rate(p.FallbacksPerSecond))
	}

	b.WriteString("\nRESOURCES on " + st.Node + "\n")
	tw = tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RESOURCE\tTHRESHOLD\tIN FLIGHT\tADMITTED/S\tREFUSED/S\tREFUSED, LAST 5 MIN")
	for _, r := range st.Resources {
		th := Admits(r.Threshold)
		if r.Pinned {
			th += " (override)"
		}
		if r.Shadow {
			th += " (shadow)"
		}
		in := fmt.Sprint(r.Inflight)
		if r.ConcurrencyLimit > 0 {
			in += fmt.Sprintf("/%d", r.ConcurrencyLimit)
		}
		var adm, ref float64
		if n := len(r.History); n > 0 {
			adm, ref = r.History[n-1].AdmittedPerSecond, r.History[n-1].RefusedPerSecond
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.Name, th, in, Rate(adm), Rate(ref), Sparkline(r.History, st.GeneratedAt, 30))
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	if len(st.Overrides) > 0 {
		b.WriteString("\nOVERRIDES\n")
		tw = tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "RESOURCE\tADMITS\tTIME LEFT\tWHO\tWHY")
		for _, o := range st.Overrides {
			fmt.Fprintf(tw, "%s\t%s and above\t%s\t%s\t%s\n", o.Resource, o.MinPriority, Ago(time.Duration(o.SecondsLeft*float64(time.Second))), o.Author, o.Reason)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if len(st.Config.Changes) > 0 {
		b.WriteString("\nCONFIGURATION CHANGES\n")
		tw = tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
		for _, c := range st.Config.Changes[:min(len(st.Config.Changes), 3)] {
			fmt.Fprintf(tw, "v%d\t%s ago\t%s\t%s\n", c.Version, Ago(st.GeneratedAt.Sub(c.Time)), c.Author, c.Reason)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func refusals(m map[string]float64) string {
	var out []string
	for _, p := range []string{"critical", "high", "default", "low", "sheddable"} {
		if v := m[p]; v > 0 {
			out = append(out, p+" "+Rate(v))
		}
	}
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, ", ")
}

func thresholds(ts []Threshold) string {
	ts = append([]Threshold(nil), ts...)
	sort.Slice(ts, func(i, j int) bool { return ts[i].Resource < ts[j].Resource })
	var out []string
	for _, t := range ts {
		s := t.Resource + " all"
		if t.Priority != "sheddable" || t.Cohort > 0 {
			s = fmt.Sprintf("%s ≥%s/%d", t.Resource, t.Priority, t.Cohort)
		}
		if t.Pinned {
			s += " (pinned)"
		}
		out = append(out, s)
	}
	return strings.Join(out, ", ")
}

var sparks = []rune("▁▂▃▄▅▆▇█")

// Sparkline draws the refused rate of the last five minutes before now in
// width characters (the largest rate is a full block; no data is a
// space).
func Sparkline(h []HistPoint, now time.Time, width int) string {
	buckets := make([]float64, width)
	seen := make([]bool, width)
	const window = 5 * time.Minute
	for _, p := range h {
		age := now.Sub(p.T)
		if age < 0 || age > window {
			continue
		}
		i := min(width-1, int(float64(width)*(1-float64(age)/float64(window))))
		buckets[i] = max(buckets[i], p.RefusedPerSecond)
		seen[i] = true
	}
	top := 0.0
	for _, v := range buckets {
		top = max(top, v)
	}
	out := make([]rune, width)
	for i, v := range buckets {
		switch {
		case !seen[i]:
			out[i] = ' '
		case top == 0:
			out[i] = sparks[0]
		default:
			out[i] = sparks[int(math.Round(v/top*float64(len(sparks)-1)))]
		}
	}
	return string(out)
}
