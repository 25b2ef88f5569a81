package quotasim

import (
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"time"
)

// Check is one acceptance bound and whether the run kept it.
type Check struct {
	Name   string
	Value  string
	Bound  string
	Passed bool
}

// Checks holds the run to the acceptance bounds of issue 15: the total
// admitted within ±5% of the limit in every measured window, Envoys under
// the fair-share level getting ≥ 98% of their share, assignments settled
// within two report intervals of a step, every broken stream replaced by
// one to another node, and no bucket left past its TTL by the server.
func (r *Result) Checks() []Check {
	var cs []Check
	for k, p := range r.Phases {
		name := fmt.Sprintf("phase %d [%v, %v)", k, p.From.Round(time.Second), p.To.Round(time.Second))
		cs = append(cs,
			Check{name + ": admitted / limit", fmt.Sprintf("%.3f", p.Ratio),
				fmt.Sprintf("%.2f..%.2f", 1-r.Bounds.Total, 1+r.Bounds.Total),
				math.Abs(p.Ratio-1) <= r.Bounds.Total},
			Check{name + ": least admitted / fair share under the level", fmt.Sprintf("%.3f (%d envoys)", p.MinBelow, p.Below),
				fmt.Sprintf(">= %.2f", r.Bounds.Below), p.MinBelow >= r.Bounds.Below})
		if p.Stepped {
			lim := time.Duration(r.Bounds.Settle * float64(r.ReportInterval))
			cs = append(cs, Check{name + ": assignments settled on the fair shares after the step", settled(p.Settle),
				"<= " + lim.String(), p.Settle >= 0 && p.Settle <= lim})
		}
	}
	if rcs := r.judgedReconnects(); len(rcs) > 0 {
		moved, assigned := 0, 0
		for _, rc := range rcs {
			if rc.Opened >= 0 && rc.To != rc.From {
				moved++
			}
			if rc.Assignment >= 0 {
				assigned++
			}
		}
		cs = append(cs, Check{"broken streams reopened on another node", fmt.Sprintf("%d of %d", moved, len(rcs)),
			"all", moved == len(rcs)})
		cs = append(cs, Check{"reopened streams that got an assignment", fmt.Sprintf("%d of %d", assigned, len(rcs)),
			"all", assigned == len(rcs)})
	}
	stale := r.Stale()
	var longest time.Duration
	for _, x := range stale {
		longest = max(longest, x.To-x.From)
	}
	cs = append(cs, Check{"buckets past their TTL with no new assignment", fmt.Sprintf("%d (longest %v)", len(stale), longest.Round(10*time.Millisecond)),
		"0", len(stale) == 0})
	cs = append(cs, Check{"conformance failures", fmt.Sprint(r.ConformanceFailures()), "0", r.ConformanceFailures() == 0})
	return cs
}

// Passed reports whether every check passed.
func (r *Result) Passed() bool {
	for _, c := range r.Checks() {
		if !c.Passed {
			return false
		}
	}
	return true
}

// Write prints the report.
func (r *Result) Write(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "quota-sim: limit %.0f/s, reports every %v, %v run\n", r.Limit, r.ReportInterval, r.Elapsed.Round(time.Millisecond))
	fmt.Fprintf(&b, "requests offered %d, admitted %d (every bucket); bucket reports sent %d, lost %d; assignments received %d\n",
		r.Offered, r.Admitted, r.ReportsSent, r.ReportsLost, r.Assignments)
	for k, p := range r.Phases {
		fmt.Fprintf(&b, "\nphase %d: demand %.2fx from %v, measured [%v, %v): offered %.1f/s, admitted %.1f/s = %.3f of the limit; max-min level %s\n",
			k, p.Demand, p.Start, p.From, p.To, p.OfferedRate, p.AdmittedRate, p.Ratio, rate(p.Level))
		if p.Stepped {
			fmt.Fprintf(&b, "  assignments settled on the fair shares: %s after the step (distance %.3f of the limit at the end, closest %.3f)\n",
				settled(p.Settle), p.Distance, p.Closest)
		}
		fmt.Fprintf(&b, "  %-6s %10s %10s %10s %8s\n", "envoy", "offered/s", "fair/s", "admitted/s", "adm/fair")
		for _, s := range p.Envoys {
			mark := ""
			if s.Under {
				mark = " under level"
			}
			ratio := math.NaN()
			if s.Fair > 0 {
				ratio = s.Admitted / s.Fair
			}
			fmt.Fprintf(&b, "  e%-5d %10.1f %10.1f %10.1f %8.3f%s\n", s.Envoy, s.Offered, s.Fair, s.Admitted, ratio, mark)
		}
	}
	if rcs := r.judgedReconnects(); len(rcs) > 0 {
		fmt.Fprintf(&b, "\nstreams broken and reopened:\n")
		for _, rc := range rcs {
			fmt.Fprintf(&b, "  e%d: %s broke at %v, reopened on %s at %s, first assignment there at %s\n",
				rc.Envoy, rc.From, rc.Broken.Round(time.Millisecond), orNone(rc.To), at(rc.Opened), at(rc.Assignment))
		}
	}
	if n := len(r.Reconnects) - len(r.judgedReconnects()); n > 0 {
		fmt.Fprintf(&b, "\n%d streams ended in the run's last report interval, with no report left to reopen them (not judged)\n", n)
	}
	if len(r.Expiries) > 0 {
		fmt.Fprintf(&b, "\nassignments expired with no new one:\n")
		for _, x := range r.Expiries {
			why := "TTL ran out"
			if x.ServerZero {
				why = "server sent TTL 0"
			}
			fmt.Fprintf(&b, "  e%d bucket %d: %v to %v (%s)\n", x.Envoy, x.Bucket, x.From.Round(time.Millisecond), x.To.Round(time.Millisecond), why)
		}
	}
	if len(r.Failures) > 0 {
		fmt.Fprintf(&b, "\nconformance failures (what real Envoys would do wrong with the server's answers):\n")
		var ks []string
		for k := range r.Failures {
			ks = append(ks, string(k))
		}
		sort.Strings(ks)
		for _, k := range ks {
			fmt.Fprintf(&b, "  %6d  %s\n", r.Failures[Failure(k)], k)
		}
	}
	fmt.Fprintf(&b, "\nchecks:\n")
	for _, c := range r.Checks() {
		v := "PASS"
		if !c.Passed {
			v = "FAIL"
		}
		fmt.Fprintf(&b, "  %s  %s: %s (bound %s)\n", v, c.Name, c.Value, c.Bound)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func rate(v float64) string {
	if math.IsInf(v, 1) {
		return "none (the limit covers all demand)"
	}
	return fmt.Sprintf("%.1f/s", v)
}

func at(d time.Duration) string {
	if d < 0 {
		return "never"
	}
	return d.Round(time.Millisecond).String()
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// WriteTimeline prints every assignment received, one line each.
func (r *Result) WriteTimeline(w io.Writer) error {
	var b strings.Builder
	for _, a := range r.Timeline {
		live := ""
		if !a.Live {
			live = " (not live)"
		}
		fmt.Fprintf(&b, "%10v e%-3d bucket %d from %s: %s TTL %v%s\n", a.At.Round(time.Millisecond), a.Envoy, a.Bucket, a.Node, rate(a.Rate), a.TTL, live)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// judgedReconnects leaves out streams that broke in the run's last report
// interval: they had no report to reopen with.
func (r *Result) judgedReconnects() []Reconnect {
	var out []Reconnect
	for _, rc := range r.Reconnects {
		if rc.Opened >= 0 || rc.Broken < r.Elapsed-r.ReportInterval {
			out = append(out, rc)
		}
	}
	return out
}

func settled(d time.Duration) string {
	if d < 0 {
		return "not settled"
	}
	return d.Round(10 * time.Millisecond).String()
}
