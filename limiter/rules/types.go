package rules

import (
	"fmt"
	"strings"
	"time"
)

// Unit is the window of a rate limit. Its numeric values are those of
// envoy.service.ratelimit.v3.RateLimitResponse.RateLimit.Unit, so a Unit
// converts to the wire enum with a plain conversion.
type Unit int32

// The units envoyproxy/ratelimit accepts. MONTH and YEAR are fixed 30 and
// 365 days, as there, not calendar periods.
const (
	UnitUnknown Unit = 0
	UnitSecond  Unit = 1
	UnitMinute  Unit = 2
	UnitHour    Unit = 3
	UnitDay     Unit = 4
	UnitMonth   Unit = 5
	UnitYear    Unit = 6
	UnitWeek    Unit = 7
)

var unitNames = map[string]Unit{
	"SECOND": UnitSecond,
	"MINUTE": UnitMinute,
	"HOUR":   UnitHour,
	"DAY":    UnitDay,
	"WEEK":   UnitWeek,
	"MONTH":  UnitMonth,
	"YEAR":   UnitYear,
}

// ParseUnit parses a unit name case-insensitively ("minute", "MINUTE").
// "unknown" is not a unit.
func ParseUnit(s string) (Unit, error) {
	if u, ok := unitNames[strings.ToUpper(s)]; ok {
		return u, nil
	}
	return UnitUnknown, fmt.Errorf("invalid rate limit unit '%s'", s)
}

// Duration returns the length of the unit's window, or 0 for UnitUnknown.
func (u Unit) Duration() time.Duration {
	switch u {
	case UnitSecond:
		return time.Second
	case UnitMinute:
		return time.Minute
	case UnitHour:
		return time.Hour
	case UnitDay:
		return 24 * time.Hour
	case UnitWeek:
		return 7 * 24 * time.Hour
	case UnitMonth:
		return 30 * 24 * time.Hour
	case UnitYear:
		return 365 * 24 * time.Hour
	}
	return 0
}

// String returns the envoy enum name: SECOND, MINUTE, ..., or UNKNOWN.
func (u Unit) String() string {
	switch u {
	case UnitSecond:
		return "SECOND"
	case UnitMinute:
		return "MINUTE"
	case UnitHour:
		return "HOUR"
	case UnitDay:
		return "DAY"
	case UnitWeek:
		return "WEEK"
	case UnitMonth:
		return "MONTH"
	case UnitYear:
		return "YEAR"
	}
	return "UNKNOWN"
}

// FailureMode says how levee decides a descriptor when the node that owns
// its counter cannot be reached.
type FailureMode uint8

const (
	// FailureLocal decides on this node with a fair share of the limit. It is
	// the default.
	FailureLocal FailureMode = iota
	// FailureOpen admits the request.
	FailureOpen
	// FailureClosed refuses the request (gRPC Unavailable).
	FailureClosed
)

// ParseFailureMode parses "local", "open" or "closed", case-insensitively.
func ParseFailureMode(s string) (FailureMode, error) {
	switch strings.ToLower(s) {
	case "local":
		return FailureLocal, nil
	case "open":
		return FailureOpen, nil
	case "closed":
		return FailureClosed, nil
	}
	return FailureLocal, fmt.Errorf("invalid failure mode '%s' (want local, open or closed)", s)
}

// String returns "local", "open" or "closed".
func (m FailureMode) String() string {
	switch m {
	case FailureOpen:
		return "open"
	case FailureClosed:
		return "closed"
	}
	return "local"
}

// Entry is one (key, value) pair of a request descriptor.
type Entry struct {
	Key, Value string
}

// ParseError is a rule file that cannot be used: File and Line locate the
// problem, Field names the YAML field (such as "rate_limit.unit"; empty for a
// problem with the file as a whole) and Reason says what is wrong, in
// envoyproxy/ratelimit's words where it has them.
type ParseError struct {
	File   string
	Line   int
	Field  string
	Reason string
}

// Error formats the error as "file:line: field: reason".
func (e *ParseError) Error() string {
	if e.Field == "" {
		return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Reason)
	}
	return fmt.Sprintf("%s:%d: %s: %s", e.File, e.Line, e.Field, e.Reason)
}
