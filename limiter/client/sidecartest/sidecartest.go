// Package sidecartest runs a real levee sidecar inside a test process, for
// tests of the Go client, the rate-limit middleware and services that use
// them: levee.v1 served over real gRPC on loopback TCP or a Unix socket,
// decided by levee's engine over a local bucket store, on a clock the test
// moves. It counts the calls it answers, and can be stopped and started
// again on the same address, as a sidecar that crashes and comes back.
// A sidecar started by New is stopped by t.Cleanup.
package sidecartest

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/levee-dev/levee/limiter"
	"github.com/levee-dev/levee/limiter/engine"
	"github.com/levee-dev/levee/limiter/native"
	"github.com/levee-dev/levee/limiter/rules"
	leveev1 "github.com/levee-dev/levee/proto/levee/v1"
	"github.com/levee-dev/levee/shed/shedtest"
)

// Epoch is where every sidecar's clock starts: a fixed instant, so that
// tests see the same bucket arithmetic on every run.
var Epoch = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

// Sidecar is a levee sidecar serving levee.v1.
type Sidecar struct {
	// Target is what a client dials: "127.0.0.1:port", or "unix://" and
	// the socket's path.
	Target string
	// Clock is the sidecar's clock, from Epoch; a client given Clock.Now
	// shares it.
	Clock *shedtest.Clock
	// Engine decides the checks; SetRules on it changes the rules.
	Engine *engine.Engine

	network, addr string
	dir           string // the Unix socket's temporary directory
	calls         atomic.Uint64
	stall         atomic.Bool
	mu            sync.Mutex
	srv           *grpc.Server
	done          chan struct{}
}

// Network is where a Sidecar listens.
type Network string

// The networks a Sidecar can listen on.
const (
	TCP  Network = "tcp"  // loopback TCP on a free port
	Unix Network = "unix" // a Unix socket in t.TempDir()
)

// New starts a sidecar deciding under the rule file ruleYAML (empty: no
// rules, inline limits only), listening on network, and stops it when the
// test ends.
func New(t testing.TB, ruleYAML string, network Network) *Sidecar {
	t.Helper()
	s, err := Start(ruleYAML, network)
	if err != nil {
		t.Fatalf("sidecartest: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

// Start starts a sidecar as New does, for code without a testing.TB (an
// example); the caller must Close it.
func Start(ruleYAML string, network Network) (*Sidecar, error) {
	var cfg *rules.Config
	if ruleYAML != "" {
		d, err := rules.Parse("sidecartest.yaml", []byte(ruleYAML))
		if err != nil {
			return nil, err
		}
		if cfg, err = rules.NewConfig(d); err != nil {
			return nil, err
		}
	}
	s := &Sidecar{Clock: shedtest.NewClock(Epoch), network: string(network)}
	s.Engine = engine.New(engine.LocalBuckets{Store: limiter.NewStore(100_000)}, cfg, nil)
	switch network {
	case TCP:
		s.addr = "127.0.0.1:0"
	case Unix:
		dir, err := os.MkdirTemp("", "sidecartest")
		if err != nil {
			return nil, err
		}
		s.dir, s.addr = dir, filepath.Join(dir, "levee.sock")
	default:
		return nil, fmt.Errorf("unknown network %q", network)
	}
	if err := s.Restart(); err != nil {
		s.Close()
		return nil, err
	}
	if network == TCP {
		s.Target = s.addr
	} else {
		s.Target = "unix://" + s.addr
	}
	return s, nil
}

// Close stops the sidecar for good and removes its socket's directory.
func (s *Sidecar) Close() {
	s.Stop()
	if s.dir != "" {
		os.RemoveAll(s.dir)
	}
}

// Calls returns the number of levee.v1 Check calls the sidecar has
// answered or been asked while stalled.
func (s *Sidecar) Calls() uint64 { return s.calls.Load() }

// Stall makes the sidecar hold every call until its caller gives up (on),
// or answer again (off): a sidecar too slow for a client's budget.
func (s *Sidecar) Stall(on bool) { s.stall.Store(on) }

// Stop stops serving and closes every connection, as a sidecar that died.
// The buckets are kept for Restart.
func (s *Sidecar) Stop() {
	s.mu.Lock()
	srv, done := s.srv, s.done
	s.srv = nil
	s.mu.Unlock()
	if srv != nil {
		srv.Stop()
		<-done
	}
}

// Restart serves again on the same address (after Stop).
func (s *Sidecar) Restart() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv != nil {
		return nil
	}
	lis, err := net.Listen(s.network, s.addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	s.addr = lis.Addr().String()
	srv := grpc.NewServer(grpc.UnaryInterceptor(s.intercept))
	leveev1.RegisterRateLimitServiceServer(srv, native.NewServer(s.Engine, s.Clock.Now))
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	s.srv, s.done = srv, done
	return nil
}

func (s *Sidecar) intercept(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	s.calls.Add(1)
	if s.stall.Load() {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return handler(ctx, req)
}
