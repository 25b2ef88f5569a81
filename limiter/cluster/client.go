package cluster

import (
	"context"
	"math/rand/v2"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"

	"github.com/levee-dev/levee/limiter/backoff"
)

// ClientConfig returns an etcd client configuration suited to membership:
// it does not block on dial (a node must start while etcd is down), sends
// keepalive pings so a dead connection is noticed, caps gRPC's reconnect
// backoff at two seconds (its default grows to two minutes, which would keep
// a node out of the cluster long after etcd is back), and logs nothing.
// Callers may add TLS, credentials or a logger before clientv3.New.
func ClientConfig(endpoints []string) clientv3.Config {
	return clientv3.Config{
		Endpoints:            endpoints,
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 3 * time.Second,
		Logger:               zap.NewNop(),
		DialOptions: []grpc.DialOption{
			grpc.WithConnectParams(grpc.ConnectParams{
				Backoff: grpcbackoff.Config{
					BaseDelay:  100 * time.Millisecond,
					Multiplier: 1.6,
					Jitter:     0.2,
					MaxDelay:   2 * time.Second,
				},
				MinConnectTimeout: 5 * time.Second,
			}),
		},
	}
}

// Await returns nil once a read of key through client succeeds. Each
// attempt may take timeout; after attempts failures (0: no limit) it
// returns the last error, and it returns ctx's error when ctx is done.
// Between failed attempts it waits as membership does (capped exponential
// backoff with jitter, DefaultRetryMin to DefaultRetryMax). It reports
// each failure and the wait before the next attempt to onFail, if not
// nil. A node uses it to tell whether etcd answers at start, and to catch
// up on what it skipped while it did not.
func Await(ctx context.Context, client *clientv3.Client, key string, timeout time.Duration, onFail func(err error, retryIn time.Duration), attempts int) error {
	b := backoff.Backoff{Min: DefaultRetryMin, Max: DefaultRetryMax}
	for n := 1; ; n++ {
		actx, cancel := context.WithTimeout(ctx, timeout)
		_, err := client.Get(actx, key, clientv3.WithCountOnly())
		cancel()
		switch {
		case err == nil:
			return nil
		case ctx.Err() != nil:
			return ctx.Err()
		}
		d := b.Next(rand.Float64())
		if onFail != nil {
			onFail(err, d)
		}
		if attempts > 0 && n >= attempts {
			return err
		}
		if err := sleepCtx(ctx, d); err != nil {
			return err
		}
	}
}
