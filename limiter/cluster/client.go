package cluster

import (
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"
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
