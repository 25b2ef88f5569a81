//go:build !unix

package procs

import (
	"errors"
	"time"
)

// processCPU is not available here: Run leaves GOMAXPROCS alone.
func processCPU() (time.Duration, error) {
	return 0, errors.New("not supported on this system")
}
