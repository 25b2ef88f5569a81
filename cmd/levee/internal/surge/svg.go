package surge

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"io"
	"math"
	"strings"
	"time"

	"github.com/levee-dev/levee/shed"
)

var prioColors = [shed.NumPriorities]string{"#c0392b", "#e67e22", "#27ae60", "#2980b9", "#8e44ad"}

const (
	svgPanelW = 380
	svgPanelH = 140
	svgLeft   = 64
	svgRight  = 16
	svgTop    = 78
	svgGap    = 46
)

// panel maps data to one plot area.
type panel struct {
	x0, y0, w, h float64
	tmax         float64 // seconds
	ymax         float64
}

func (p panel) x(t float64) float64 { return p.x0 + p.w*t/p.tmax }
func (p panel) y(v float64) float64 {
	return p.y0 + p.h - p.h*math.Min(math.Max(v, 0), p.ymax)/p.ymax
}

// WriteSVG draws the scenario: one column per policy, and rows for goodput
// by priority (with offered load and C), p99 latency by priority (with the
// deadline), the backend's goroutines, and levee's threshold.
func (res *ScenarioResult) WriteSVG(w io.Writer) error {
	sc := res.Scenario
	total := sc.Duration()
	bins := make([][]Bin, len(res.Runs))
	var gmax, gorMax float64
	for i, r := range res.Runs {
		bins[i] = r.Bins(time.Second, total)
		for _, b := range bins[i] {
			for p := range b.Prio {
				gmax = math.Max(gmax, b.Prio[p].Goodput())
			}
			gorMax = math.Max(gorMax, float64(b.Goroutines))
		}
	}
	gmax = niceCeil(math.Max(gmax, 1.2*res.C))
	gorMax = niceCeil(math.Max(gorMax, 10))
	rows := []struct {
		title string
		ymax  float64
		unit  string
	}{
		{"goodput by priority (OK/s)", gmax, "/s"},
		{"p99 latency of OK calls by priority (ms)", 150, "ms"},
		{"backend goroutines", gorMax, ""},
		{"levee admission threshold", float64(shed.NumLevels), ""},
	}
	cols := len(res.Runs)
	width := svgLeft + cols*(svgPanelW+svgLeft) + svgRight - svgLeft + 20
	height := svgTop + len(rows)*(svgPanelH+svgGap) + 10
	var b bytes.Buffer
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="11">`+"\n", width, height, width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%d" y="20" font-size="15" font-weight="bold">%s</text>`+"\n", svgLeft, esc("levee surge — "+sc.Name+": "+sc.Title))
	fmt.Fprintf(&b, `<text x="%d" y="38">%s</text>`+"\n", svgLeft, esc(fmt.Sprintf("C = %.0f/s; same offered load for every policy; 1 s bins by scheduled send time", res.C)))
	// Legend.
	lx := svgLeft
	for p := range shed.NumPriorities {
		if !res.hasPriority(p) {
			continue
		}
		fmt.Fprintf(&b, `<rect x="%d" y="48" width="14" height="4" fill="%s"/><text x="%d" y="54">%s</text>`+"\n", lx, prioColors[p], lx+18, prioNames[p])
		lx += 90
	}
	fmt.Fprintf(&b, `<line x1="%d" y1="50" x2="%d" y2="50" stroke="#444" stroke-dasharray="4 3"/><text x="%d" y="54">offered (all)</text>`+"\n", lx, lx+14, lx+18)
	lx += 100
	fmt.Fprintf(&b, `<line x1="%d" y1="50" x2="%d" y2="50" stroke="#999"/><text x="%d" y="54">C / deadline</text>`+"\n", lx, lx+14, lx+18)

	for ci, r := range res.Runs {
		x0 := float64(svgLeft + ci*(svgPanelW+svgLeft))
		fmt.Fprintf(&b, `<text x="%.0f" y="%d" font-size="13" font-weight="bold">%s</text>`+"\n", x0, svgTop-8, esc(fmt.Sprintf("%s (%s)", r.Policy, clientNames[r.Client])))
		for ri, row := range rows {
			p := panel{x0: x0, y0: float64(svgTop + ri*(svgPanelH+svgGap) + 14), w: svgPanelW, h: svgPanelH, tmax: total.Seconds(), ymax: row.ymax}
			res.frame(&b, p, row.title, row.unit, ri == len(rows)-1)
			bs := bins[ci]
			switch ri {
			case 0:
				hline(&b, p, res.C, "#999", "C")
				series(&b, p, bs, func(b Bin) (float64, bool) { return b.All.OfferedRate(), true }, "#444", "4 3")
				for pr := range shed.NumPriorities {
					if !res.hasPriority(pr) {
						continue
					}
					series(&b, p, bs, func(b Bin) (float64, bool) { return b.Prio[pr].Goodput(), true }, prioColors[pr], "")
				}
			case 1:
				hline(&b, p, 100, "#999", "deadline")
				for pr := range shed.NumPriorities {
					if !res.hasPriority(pr) {
						continue
					}
					series(&b, p, bs, func(b Bin) (float64, bool) {
						return msf(b.Prio[pr].P99), b.Prio[pr].OK > 0
					}, prioColors[pr], "")
				}
			case 2:
				series(&b, p, bs, func(b Bin) (float64, bool) { return float64(b.Goroutines), b.Goroutines > 0 }, "#333", "")
			case 3:
				if r.Policy != PolicyLevee {
					fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" fill="#888" text-anchor="middle">no threshold (%s)</text>`+"\n", p.x0+p.w/2, p.y0+p.h/2, r.Policy)
					continue
				}
				for pr := shed.Critical; pr <= shed.Sheddable; pr++ {
					lvl := float64(shed.LevelOf(pr, 0))
					fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-opacity="0.35"/>`+"\n", p.x0, p.y(lvl), p.x0+p.w, p.y(lvl), prioColors[pr-1])
					fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" fill="%s" font-size="9" text-anchor="end">%s</text>`+"\n", p.x0+p.w-2, p.y(lvl)-2, prioColors[pr-1], pr)
				}
				res.thresholdLine(&b, p, r)
			}
		}
	}
	b.WriteString("</svg>\n")
	_, err := w.Write(b.Bytes())
	return err
}

func (res *ScenarioResult) hasPriority(p int) bool {
	for _, ph := range res.Scenario.Phases {
		if ph.Rate[p] > 0 {
			return true
		}
	}
	return false
}

// frame draws a panel's box, axes, phase boundaries and labels.
func (res *ScenarioResult) frame(b *bytes.Buffer, p panel, title, unit string, timeAxis bool) {
	fmt.Fprintf(b, `<text x="%.0f" y="%.0f" fill="#333">%s</text>`+"\n", p.x0, p.y0-4, esc(title))
	fmt.Fprintf(b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="none" stroke="#bbb"/>`+"\n", p.x0, p.y0, p.w, p.h)
	for _, f := range []float64{0, 0.5, 1} {
		v := f * p.ymax
		fmt.Fprintf(b, `<text x="%.1f" y="%.1f" text-anchor="end" fill="#666" font-size="9">%s</text>`+"\n", p.x0-3, p.y(v)+3, esc(short(v)+unit))
	}
	var t time.Duration
	for i, ph := range res.Scenario.Phases {
		if i > 0 {
			fmt.Fprintf(b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", p.x(t.Seconds()), p.y0, p.x(t.Seconds()), p.y0+p.h)
		}
		if timeAxis || i%2 == 0 || len(res.Scenario.Phases) < 6 {
			fmt.Fprintf(b, `<text x="%.1f" y="%.1f" fill="#aaa" font-size="8">%s</text>`+"\n", p.x(t.Seconds())+2, p.y0+9, esc(ph.Name))
		}
		t += ph.Duration
	}
	step := tickStep(p.tmax)
	for s := 0.0; s <= p.tmax+1e-9; s += step {
		fmt.Fprintf(b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#bbb"/>`+"\n", p.x(s), p.y0+p.h, p.x(s), p.y0+p.h+3)
		fmt.Fprintf(b, `<text x="%.1f" y="%.1f" text-anchor="middle" fill="#666" font-size="9">%s</text>`+"\n", p.x(s), p.y0+p.h+12, short(s)+"s")
	}
}

func hline(b *bytes.Buffer, p panel, v float64, color, label string) {
	fmt.Fprintf(b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s"/>`+"\n", p.x0, p.y(v), p.x0+p.w, p.y(v), color)
	fmt.Fprintf(b, `<text x="%.1f" y="%.1f" fill="%s" font-size="9">%s</text>`+"\n", p.x0+2, p.y(v)-2, color, esc(label))
}

// series draws one line over the bins (at their midpoints), broken where
// ok is false. Values above the panel are clipped to its top.
func series(b *bytes.Buffer, p panel, bins []Bin, f func(Bin) (float64, bool), color, dash string) {
	var pts []string
	flush := func() {
		if len(pts) > 0 {
			extra := ""
			if dash != "" {
				extra = ` stroke-dasharray="` + dash + `"`
			}
			fmt.Fprintf(b, `<polyline fill="none" stroke="%s" stroke-width="1.4"%s points="%s"/>`+"\n", color, extra, strings.Join(pts, " "))
		}
		pts = pts[:0]
	}
	for _, bin := range bins {
		v, ok := f(bin)
		if !ok {
			flush()
			continue
		}
		t := bin.Start.Seconds() + 0.5
		if t > p.tmax {
			t = p.tmax
		}
		pts = append(pts, fmt.Sprintf("%.1f,%.1f", p.x(t), p.y(v)))
	}
	flush()
}

// thresholdLine draws every threshold sample (100 ms apart) as a step line.
func (res *ScenarioResult) thresholdLine(b *bytes.Buffer, p panel, r *PolicyRun) {
	var pts []string
	prev := -1.0
	for _, s := range r.stats {
		t := math.Min(s.at.Seconds(), p.tmax)
		v := float64(max(s.Threshold, 0))
		if prev >= 0 {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", p.x(t), p.y(prev)))
		}
		pts = append(pts, fmt.Sprintf("%.1f,%.1f", p.x(t), p.y(v)))
		prev = v
	}
	if len(pts) > 0 {
		fmt.Fprintf(b, `<polyline fill="none" stroke="#000" stroke-width="1.2" points="%s"/>`+"\n", strings.Join(pts, " "))
	}
}

func esc(s string) string {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}

func short(v float64) string {
	switch {
	case v >= 10000:
		return fmt.Sprintf("%.0fk", v/1000)
	case v >= 1000:
		return fmt.Sprintf("%.1fk", v/1000)
	case v == math.Trunc(v):
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.1f", v)
}

// niceCeil rounds v up to 1, 1.5, 2, 2.5 or 5 times a power of ten.
func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	e := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 1.5, 2, 2.5, 5, 10} {
		if m*e >= v {
			return m * e
		}
	}
	return 10 * e
}

func tickStep(tmax float64) float64 {
	for _, s := range []float64{1, 2, 5, 10, 20, 30, 60} {
		if tmax/s <= 8 {
			return s
		}
	}
	return 120
}
