package shed

import (
	"strconv"
	"strings"
	"time"

	"github.com/cespare/xxhash/v2"
)

// Header and metadata names that carry a request's shedding labels. They are
// lower case, as gRPC metadata keys must be; HTTP header lookups are case
// insensitive.
const (
	// HeaderPriority carries the priority name ("critical", "high",
	// "default", "low", "sheddable"). Absent means default.
	HeaderPriority = "x-levee-priority"
	// HeaderCohort carries an explicit cohort, 0–127. It wins over HeaderUser.
	HeaderCohort = "x-levee-cohort"
	// HeaderUser carries the user or tenant id hashed into a cohort when no
	// cohort is given.
	HeaderUser = "x-levee-user"
)

// Priority is a request's importance class. Lower values are more important:
// Critical < High < Default < Low < Sheddable.
//
// The zero value, Unspecified, is treated as Default everywhere, so a Go
// caller that forgets to set a priority is neither promoted to critical nor
// shed first.
type Priority uint8

// The priorities, most important first.
const (
	Unspecified Priority = iota // treated as Default
	Critical
	High
	Default
	Low
	Sheddable
)

// NumPriorities is the number of distinct priorities (Unspecified excluded).
const NumPriorities = 5

var priorityNames = [...]string{"unspecified", "critical", "high", "default", "low", "sheddable"}

// Normalize maps Unspecified and out-of-range values to Default.
func (p Priority) Normalize() Priority {
	if p == Unspecified || p > Sheddable {
		return Default
	}
	return p
}

// index maps a normalised priority to 0 (critical) … 4 (sheddable).
func (p Priority) index() int { return int(p.Normalize()) - 1 }

// String returns the priority's wire name.
func (p Priority) String() string {
	if int(p) < len(priorityNames) {
		return priorityNames[p]
	}
	return "priority(" + strconv.Itoa(int(p)) + ")"
}

// FieldError reports a bad value in one named field (a header, a metadata
// key, a configuration field), so that callers can say which field was wrong.
type FieldError struct {
	Field  string // e.g. "x-levee-priority"
	Value  string // the offending input, as given
	Reason string // why it was refused
}

// Error implements error.
func (e *FieldError) Error() string {
	return e.Field + " " + strconv.Quote(e.Value) + ": " + e.Reason
}

// ParsePriority parses a priority name, ignoring ASCII case. The empty string
// is Default (unlabelled traffic is default); anything unknown is a
// *FieldError naming the field "priority".
func ParsePriority(s string) (Priority, error) { return parsePriority("priority", s) }

func parsePriority(field, s string) (Priority, error) {
	if s == "" {
		return Default, nil
	}
	for p := Critical; p <= Sheddable; p++ {
		if strings.EqualFold(s, priorityNames[p]) {
			return p, nil
		}
	}
	return Unspecified, &FieldError{Field: field, Value: s, Reason: "unknown priority (want critical, high, default, low or sheddable)"}
}

// NumCohorts is the number of cohorts within one priority.
const NumCohorts = 128

func parseCohort(field, s string) (uint8, error) {
	n, err := strconv.ParseUint(s, 10, 8)
	if err != nil || n >= NumCohorts {
		return 0, &FieldError{Field: field, Value: s, Reason: "want a cohort from 0 to 127"}
	}
	return uint8(n), nil
}

// Cohort hashes a user or tenant id into a cohort 0–127. The salt changes the
// mapping (see CohortSalter); every node of a fleet must use the same salt
// for the same hour, so that a user lands in the same cohort everywhere.
func Cohort(id string, salt uint64) uint8 {
	return uint8(mix64(xxhash.Sum64String(id)^salt) >> 57)
}

// mix64 is the splitmix64 finaliser: it spreads a salt XORed into a hash over
// all bits, so that the top seven bits we keep depend on every input bit.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// CohortSalter derives the cohort salt for a point in time. The salt changes
// every Period (an hour when zero), so the users that fall in the lowest
// cohorts, and are shed first, change from one incident to the next. Seed
// must be shared by all nodes that shed the same traffic.
type CohortSalter struct {
	Seed   uint64
	Period time.Duration
}

// Salt returns the salt for the period that contains now.
func (s CohortSalter) Salt(now time.Time) uint64 {
	p := s.Period
	if p <= 0 {
		p = time.Hour
	}
	n := now.UnixNano()
	h := n / int64(p)
	if n < 0 && n%int64(p) != 0 {
		h-- // floor, so periods before 1970 are as long as any other
	}
	return mix64(s.Seed ^ uint64(h)*0x9e3779b97f4a7c15)
}

// Cohort hashes id with the salt for now.
func (s CohortSalter) Cohort(id string, now time.Time) uint8 { return Cohort(id, s.Salt(now)) }

// Level is a (priority, cohort) pair in one total order: higher levels are
// more important. Sheddable cohort 0 is level 0; critical cohort 127 is
// MaxLevel. A threshold is also a Level: it admits every level at or above
// it, so threshold 0 admits everything.
type Level uint16

// Bounds of the level space.
const (
	NumLevels          = NumPriorities * NumCohorts
	MaxLevel     Level = NumLevels - 1
	CriticalOnly Level = Level(Sheddable-Critical) * NumCohorts // lowest critical level
)

// LevelOf combines a priority (Unspecified counts as Default) and a cohort
// (taken modulo 128).
func LevelOf(p Priority, cohort uint8) Level {
	return Level(Sheddable-p.Normalize())*NumCohorts + Level(cohort%NumCohorts)
}

// Priority returns the level's priority. Levels above MaxLevel are critical.
func (l Level) Priority() Priority {
	if l > MaxLevel {
		return Critical
	}
	return Sheddable - Priority(l/NumCohorts)
}

// Cohort returns the level's cohort.
func (l Level) Cohort() uint8 {
	if l > MaxLevel {
		return NumCohorts - 1
	}
	return uint8(l % NumCohorts)
}

// String formats the level as "priority/cohort", e.g. "low/17". NumLevels,
// the threshold that refuses everything, prints as "none".
func (l Level) String() string {
	if l > MaxLevel {
		return "none"
	}
	return l.Priority().String() + "/" + strconv.Itoa(int(l.Cohort()))
}

// ParseLevel parses "priority/cohort" or "priority" (cohort 0, the lowest
// level of that priority; "critical" is then "critical only"). "all" is
// level 0 (admit everything) and "none" is NumLevels (admit nothing), for
// operator pins. Errors are *FieldError naming the field "level".
func ParseLevel(s string) (Level, error) {
	switch strings.ToLower(s) {
	case "all":
		return 0, nil
	case "none":
		return NumLevels, nil
	case "":
		return 0, &FieldError{Field: "level", Value: s, Reason: "empty level (want priority or priority/cohort)"}
	}
	name, co, hasCohort := strings.Cut(s, "/")
	if name == "" {
		return 0, &FieldError{Field: "level", Value: s, Reason: "missing priority"}
	}
	p, err := parsePriority("level", name)
	if err != nil {
		return 0, err
	}
	var c uint8
	if hasCohort {
		if c, err = parseCohort("level", co); err != nil {
			return 0, err
		}
	}
	return LevelOf(p, c), nil
}

// Labels are the raw shedding labels of one request as they arrive in
// headers or metadata. Empty fields are absent.
type Labels struct {
	Priority string // HeaderPriority
	Cohort   string // HeaderCohort
	User     string // HeaderUser
}

// Level resolves the labels into a level. An explicit cohort wins; otherwise
// the user id is hashed with salt; with neither, fallback is used (callers
// pass a random cohort so anonymous traffic spreads over all cohorts and the
// controller can shed it in small steps). Errors are *FieldError naming the
// header.
func (lb Labels) Level(salt uint64, fallback uint8) (Level, error) {
	p, err := parsePriority(HeaderPriority, lb.Priority)
	if err != nil {
		return 0, err
	}
	c := fallback
	switch {
	case lb.Cohort != "":
		if c, err = parseCohort(HeaderCohort, lb.Cohort); err != nil {
			return 0, err
		}
	case lb.User != "":
		c = Cohort(lb.User, salt)
	}
	return LevelOf(p, c), nil
}
