// Package rpc is what levee's gRPC front ends (limiter/envoy and
// limiter/native) share once a request is decoded into an engine batch:
// validating and deciding it, and turning the engine's errors into the gRPC
// statuses callers see.
package rpc

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/levee-dev/levee/limiter/engine"
)

// Check validates b's items, naming fields as f says, and decides them on e
// at now (Unix nanoseconds), writing b.Statuses. Invalid input is
// InvalidArgument; a caller's cancelled or expired context is reported as
// such; anything else that left items undecided (a fail-closed rule whose
// owner is unreachable) is Unavailable.
//
// A call whose caller has already gone (its deadline passed, or it
// cancelled, while the call waited for a CPU on a node past its capacity)
// is not decided: nobody would read the answer, and deciding it would take
// tokens nobody uses and spend the CPU the calls still waiting need.
func Check(ctx context.Context, e *engine.Engine, b *engine.Batch, f engine.Fields, now int64) (engine.Code, error) {
	if err := ctx.Err(); err != nil {
		return 0, status.FromContextError(err).Err()
	}
	if err := engine.Validate(b.Items, f); err != nil {
		return 0, status.Error(codes.InvalidArgument, err.Error())
	}
	code, err := e.Check(ctx, b.Items, b.Statuses, now)
	if err != nil {
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return 0, status.FromContextError(err).Err()
		}
		return 0, status.Error(codes.Unavailable, err.Error())
	}
	return code, nil
}
