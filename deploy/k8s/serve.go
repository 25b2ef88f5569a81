package manifests

import (
	"errors"
	"regexp"
	"strings"
)

// Serve is what `levee serve` accepts, read from its help.
type Serve struct {
	// Flags are its flag names, without dashes.
	Flags map[string]bool
	// Env are the LEVEE_* variables its help names: one per flag, and the
	// few it reads besides (LEVEE_ETCD_PASSWORD).
	Env map[string]bool
	// Defaults are the flags' default values, where the help shows one.
	Defaults map[string]string
}

var (
	helpFlag    = regexp.MustCompile(`(?m)^\s+(?:-[a-zA-Z], )?--([a-z0-9][a-z0-9-]*)(?: [a-zA-Z]+)?\s+(.*)$`)
	helpDefault = regexp.MustCompile(`\(default "?([^")]*)"?\)`)
	helpEnv     = regexp.MustCompile(`\$(LEVEE_[A-Z0-9_]+)`)
)

// ParseServeHelp reads the output of `levee serve --help`.
func ParseServeHelp(help string) (Serve, error) {
	s := Serve{Flags: map[string]bool{}, Env: map[string]bool{}, Defaults: map[string]string{}}
	for _, m := range helpFlag.FindAllStringSubmatch(help, -1) {
		s.Flags[m[1]] = true
		// The last: a usage may mention a default of its own first.
		if d := helpDefault.FindAllStringSubmatch(m[2], -1); d != nil {
			s.Defaults[m[1]] = d[len(d)-1][1]
		}
	}
	for _, m := range helpEnv.FindAllStringSubmatch(help, -1) {
		s.Env[m[1]] = true
	}
	if !s.Flags["grpc-addr"] || !s.Env["LEVEE_GRPC_ADDR"] {
		return s, errors.New("not the help of levee serve: no --grpc-addr [$LEVEE_GRPC_ADDR]")
	}
	return s, nil
}

// EnvFlag returns the flag a LEVEE_* variable sets, and whether it is one.
func (s Serve) EnvFlag(env string) (string, bool) {
	name, ok := strings.CutPrefix(env, "LEVEE_")
	if !ok {
		return "", false
	}
	flag := strings.ToLower(strings.ReplaceAll(name, "_", "-"))
	return flag, s.Flags[flag]
}
