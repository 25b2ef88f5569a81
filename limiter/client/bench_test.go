package client_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/levee-dev/levee/limiter"
	"github.com/levee-dev/levee/limiter/client"
	"github.com/levee-dev/levee/limiter/client/sidecartest"
	"github.com/levee-dev/levee/limiter/rules"
	leveev1 "github.com/levee-dev/levee/proto/levee/v1"
)

const benchRules = `
domain: api
descriptors:
  - key: user
    descriptors:
      - key: route
        rate_limit: {unit: second, requests_per_unit: 1000000000}
`

var benchItem = client.Rule("api", rules.Entry{Key: "user", Value: "u-1234"}, rules.Entry{Key: "route", Value: "/v1/posts"})

// rawRequest is benchItem as a caller of the generated stubs builds it.
func rawRequest() *leveev1.CheckRequest {
	return &leveev1.CheckRequest{Items: []*leveev1.CheckItem{{Target: &leveev1.CheckItem_Descriptor_{Descriptor_: &leveev1.RuleDescriptor{
		Domain: "api", Entries: []*leveev1.Entry{{Key: "user", Value: "u-1234"}, {Key: "route", Value: "/v1/posts"}},
	}}}}}
}

// memConn answers every Check in memory with a fixed response, doing what
// a real connection does to the messages (marshal the request, unmarshal
// the reply) and nothing else, so that what differs between the client and
// the bare stub is the client's own work.
type memConn struct{ reply []byte }

func (m memConn) Invoke(_ context.Context, _ string, args, reply any, _ ...grpc.CallOption) error {
	if _, err := proto.Marshal(args.(proto.Message)); err != nil {
		return err
	}
	return proto.Unmarshal(m.reply, reply.(proto.Message))
}

func (memConn) NewStream(context.Context, *grpc.StreamDesc, string, ...grpc.CallOption) (grpc.ClientStream, error) {
	panic("no streams")
}

func newMemConn(b *testing.B) memConn {
	sc := sidecartest.New(b, benchRules, sidecartest.TCP)
	resp, err := leveev1.NewRateLimitServiceClient(dialB(b, sc.Target)).Check(b.Context(), rawRequest())
	if err != nil {
		b.Fatal(err)
	}
	reply, err := proto.Marshal(resp)
	if err != nil {
		b.Fatal(err)
	}
	return memConn{reply: reply}
}

// BenchmarkOverhead isolates the client's work per check (encoding, the
// budget's context, the refusal cache lookup, decoding into a Decision):
// "stub" is the generated stub with a request built once, "stub+build"
// builds it per call as a caller must, "stub+deadline" adds a deadline as
// the budget does, "client" is the client, all on an in-memory connection.
// The client's overhead is the difference.
func BenchmarkOverhead(b *testing.B) {
	conn := newMemConn(b)
	b.Run("stub", func(b *testing.B) {
		stub := leveev1.NewRateLimitServiceClient(conn)
		req := rawRequest()
		b.ReportAllocs()
		defer cpuPerOp(b)()
		for b.Loop() {
			if _, err := stub.Check(context.Background(), req); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("stub+build", func(b *testing.B) {
		stub := leveev1.NewRateLimitServiceClient(conn)
		b.ReportAllocs()
		defer cpuPerOp(b)()
		for b.Loop() {
			if _, err := stub.Check(context.Background(), rawRequest()); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("stub+deadline", func(b *testing.B) {
		stub := leveev1.NewRateLimitServiceClient(conn)
		req := rawRequest()
		b.ReportAllocs()
		defer cpuPerOp(b)()
		for b.Loop() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_, err := stub.Check(ctx, req)
			cancel()
			if err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("client", func(b *testing.B) {
		c, err := client.New(client.Config{Conn: conn})
		if err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		defer cpuPerOp(b)()
		for b.Loop() {
			if d := c.Check(context.Background(), benchItem); !d.Allowed || d.Err != nil {
				b.Fatal(d)
			}
		}
	})
	b.Run("client-cached-refusal", func(b *testing.B) {
		sc := sidecartest.New(b, "", sidecartest.TCP)
		c, err := client.New(client.Config{Target: sc.Target, Budget: time.Second, Now: sc.Clock.Now})
		if err != nil {
			b.Fatal(err)
		}
		it := client.Inline("once", limiter.Limit{Rate: 1, Period: 24 * time.Hour})
		c.Check(context.Background(), it)
		c.Check(context.Background(), it)
		b.ReportAllocs()
		defer cpuPerOp(b)()
		for b.Loop() {
			if d := c.Check(context.Background(), it); !d.Cached {
				b.Fatal(d)
			}
		}
	})
}

// BenchmarkCheck is one check over real gRPC to an in-process sidecar, by
// the stub and by the client, on loopback TCP and on a Unix socket.
func BenchmarkCheck(b *testing.B) {
	for _, network := range []sidecartest.Network{sidecartest.TCP, sidecartest.Unix} {
		sc := sidecartest.New(b, benchRules, network)
		b.Run(string(network)+"/stub", func(b *testing.B) {
			stub := leveev1.NewRateLimitServiceClient(dialB(b, sc.Target))
			req := rawRequest()
			b.ReportAllocs()
			defer cpuPerOp(b)()
			for b.Loop() {
				if _, err := stub.Check(context.Background(), req); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(string(network)+"/stub+deadline", func(b *testing.B) {
			stub := leveev1.NewRateLimitServiceClient(dialB(b, sc.Target))
			req := rawRequest()
			b.ReportAllocs()
			defer cpuPerOp(b)()
			for b.Loop() {
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				_, err := stub.Check(ctx, req)
				cancel()
				if err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(string(network)+"/client", func(b *testing.B) {
			c, err := client.New(client.Config{Target: sc.Target, Budget: time.Second})
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			b.ReportAllocs()
			defer cpuPerOp(b)()
			for b.Loop() {
				if d := c.Check(context.Background(), benchItem); !d.Allowed || d.Err != nil {
					b.Fatal(d)
				}
			}
		})
	}
}

// cpuPerOp reports this process's CPU time per operation (all its
// threads: client, in-process sidecar, garbage collector), read from
// /proc/self/task/*/schedstat. Unlike ns/op it leaves out time spent
// waiting for a CPU, which on a busy machine is most of it. Call the
// returned function after the loop.
func cpuPerOp(b *testing.B) func() {
	start, ok := processCPU()
	return func() {
		if end, ok2 := processCPU(); ok && ok2 {
			b.ReportMetric(float64(end-start)/float64(b.N), "cpu-ns/op")
		}
	}
}

func processCPU() (int64, bool) {
	tasks, err := filepath.Glob("/proc/self/task/*/schedstat")
	if err != nil || len(tasks) == 0 {
		return 0, false
	}
	var total int64
	for _, p := range tasks {
		data, err := os.ReadFile(p)
		if err != nil {
			continue // a thread that exited
		}
		if f := strings.Fields(string(data)); len(f) > 0 {
			n, _ := strconv.ParseInt(f[0], 10, 64)
			total += n
		}
	}
	return total, true
}

func dialB(b *testing.B, target string) *grpc.ClientConn {
	b.Helper()
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	return conn
}
