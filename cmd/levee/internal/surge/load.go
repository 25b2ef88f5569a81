package surge

import (
	"fmt"
	"math"
	"math/rand/v2"
	"time"

	"github.com/levee-dev/levee/shed"
)

// Phase is a stretch of constant offered load.
type Phase struct {
	Name     string
	Duration time.Duration
	// Rate is the offered load per priority (index 0 critical … 4
	// sheddable) as a multiple of the capacity C.
	Rate [shed.NumPriorities]float64
}

// Total returns the phase's offered load as a multiple of C.
func (p Phase) Total() float64 {
	var t float64
	for _, r := range p.Rate {
		t += r
	}
	return t
}

// ClientMode is how the load generator's clients call the backend.
type ClientMode uint8

// Client modes.
const (
	// ClientPlain makes one attempt with a 100 ms deadline.
	ClientPlain ClientMode = iota
	// ClientRetry retries every failure at once, up to three attempts of
	// 100 ms each, with no budget: the client that starts retry storms.
	ClientRetry
	// ClientLevee is levee's client interceptor (shed/middleware.Client):
	// SRE adaptive throttling per priority, a 10% retry budget, retries
	// only of refusals that ask for one and only within the call's
	// deadline; up to three attempts of 100 ms each.
	ClientLevee
)

// Scenario is a named load shape run against every policy.
type Scenario struct {
	Name   string
	Title  string
	Phases []Phase
	// Clients maps a policy to its client mode (ClientPlain when absent).
	Clients map[Policy]ClientMode
	// Sidecar probes the sidecar's admit/release round trip during the
	// levee run, and Bench measures levee's refusal path in process.
	Sidecar, Bench bool
}

// Duration returns the scenario's length.
func (s *Scenario) Duration() time.Duration {
	var d time.Duration
	for _, p := range s.Phases {
		d += p.Duration
	}
	return d
}

// Client returns the client mode used against policy p.
func (s *Scenario) Client(p Policy) ClientMode {
	return s.Clients[p]
}

// PhaseAt returns the index of the phase containing offset t.
func (s *Scenario) PhaseAt(t time.Duration) int {
	var end time.Duration
	for i, p := range s.Phases {
		end += p.Duration
		if t < end {
			return i
		}
	}
	return len(s.Phases) - 1
}

// PhaseStart returns the offset at which phase i starts.
func (s *Scenario) PhaseStart(i int) time.Duration {
	var d time.Duration
	for _, p := range s.Phases[:i] {
		d += p.Duration
	}
	return d
}

// steady returns the part of phase i after its first seconds of
// transient: the window steady-state figures are read from.
func steady(sc *Scenario, i int) (from, to time.Duration) {
	from = sc.PhaseStart(i)
	d := sc.Phases[i].Duration
	return from + min(2*time.Second, d/5), from + d
}

func phaseRange(sc *Scenario, i int) (from, to time.Duration) {
	from = sc.PhaseStart(i)
	return from, from + sc.Phases[i].Duration
}

// Scenario names, in the order "all" runs them.
var ScenarioNames = []string{"flood", "ramp", "step", "retry", "calm"}

func rates(crit, high, def, low, sheddable float64) [shed.NumPriorities]float64 {
	return [shed.NumPriorities]float64{crit, high, def, low, sheddable}
}

// quarters splits a load equally over critical, high, low and sheddable
// (the four classes of the SRE book, CRITICAL_PLUS to SHEDDABLE).
func quarters(total float64) [shed.NumPriorities]float64 {
	q := total / 4
	return rates(q, q, 0, q, q)
}

// fifths splits a load equally over the five priorities.
func fifths(total float64) [shed.NumPriorities]float64 {
	f := total / 5
	return rates(f, f, f, f, f)
}

func secs(scale, s float64) time.Duration {
	return time.Duration(math.Round(scale*s*1000)) * time.Millisecond
}

// NewScenario returns the named scenario with its phase lengths multiplied
// by scale (1 runs each policy for about a minute, so that three policies
// fit in three minutes).
func NewScenario(name string, scale float64) (*Scenario, error) {
	if !(scale > 0) {
		return nil, fmt.Errorf("surge: duration scale %v must be positive", scale)
	}
	s := &Scenario{Name: name}
	switch name {
	case "flood":
		s.Title = "Low-priority flood: critical 0.5C steady, sheddable 0.25C → 3C"
		s.Phases = []Phase{
			{Name: "before", Duration: secs(scale, 8), Rate: rates(0.5, 0, 0, 0, 0.25)},
			{Name: "flood", Duration: secs(scale, 42), Rate: rates(0.5, 0, 0, 0, 3)},
			{Name: "after", Duration: secs(scale, 6), Rate: rates(0.5, 0, 0, 0, 0.25)},
		}
	case "ramp":
		s.Title = "Ramp: five priorities at 20% each, 0.5C → 6C"
		for _, x := range []float64{0.5, 1, 2, 4, 6} {
			s.Phases = append(s.Phases, Phase{Name: fmt.Sprintf("%gC", x), Duration: secs(scale, 11), Rate: fifths(x)})
		}
	case "step":
		s.Title = "Step: 0.7C → 1.4C, four times"
		for i := range 4 {
			s.Phases = append(s.Phases,
				Phase{Name: fmt.Sprintf("low%d", i+1), Duration: secs(scale, 4), Rate: quarters(0.7)},
				Phase{Name: fmt.Sprintf("high%d", i+1), Duration: secs(scale, 9), Rate: quarters(1.4)})
		}
		s.Phases = append(s.Phases, Phase{Name: "low5", Duration: secs(scale, 4), Rate: quarters(0.7)})
	case "retry":
		s.Title = "Retry storm: 2C offered, clients retry up to 3 attempts"
		s.Phases = []Phase{
			{Name: "warm", Duration: secs(scale, 5), Rate: quarters(0.5)},
			{Name: "storm", Duration: secs(scale, 48), Rate: quarters(2)},
		}
		s.Clients = map[Policy]ClientMode{PolicyNone: ClientRetry, PolicyStatic: ClientRetry, PolicyLevee: ClientLevee}
	case "calm":
		s.Title = "No overload: 0.5C"
		s.Phases = []Phase{{Name: "calm", Duration: secs(scale, 55), Rate: quarters(0.5)}}
		s.Sidecar, s.Bench = true, true
	default:
		return nil, fmt.Errorf("surge: unknown scenario %q (want flood, ramp, step, retry, calm or all)", name)
	}
	return s, nil
}

// arrival is one scheduled call.
type arrival struct {
	at      time.Duration // offset from the start of the run
	service time.Duration // work the backend does for it
	user    uint32        // user id within its priority's population
	prio    uint8         // 0 critical … 4 sheddable
}

// users is the number of distinct user ids per priority; they hash into
// cohorts, so each cohort holds about users/128 of them.
const users = 20000

// schedule draws the open-loop arrivals of s for capacity c (requests/s):
// a Poisson process per phase at the phase's total rate, each arrival's
// priority drawn by the phase's mix, its service time exponential with
// mean meanService (capped at 20 means) and its user uniform. The same
// seed gives the same schedule, so every policy sees the same load.
func schedule(s *Scenario, c float64, meanService time.Duration, seed uint64) []arrival {
	rng := rand.New(rand.NewPCG(seed, 0x5eed5eed))
	var out []arrival
	var start time.Duration
	for _, ph := range s.Phases {
		end := start + ph.Duration
		total := ph.Total() * c
		if total > 0 {
			t := start
			for {
				t += time.Duration(rng.ExpFloat64() / total * float64(time.Second))
				if t >= end {
					break
				}
				u := rng.Float64() * ph.Total()
				p := 0
				for p < len(ph.Rate)-1 && u >= ph.Rate[p] {
					u -= ph.Rate[p]
					p++
				}
				for ph.Rate[p] == 0 { // rounding at the top end
					p--
				}
				svc := time.Duration(rng.ExpFloat64() * float64(meanService))
				svc = min(svc, 20*meanService)
				out = append(out, arrival{at: t, service: svc, user: uint32(rng.IntN(users)), prio: uint8(p)})
			}
		}
		start = end
	}
	return out
}
