package node

import (
	"context"
	"testing"

	"google.golang.org/grpc/metadata"
)

func TestSamplerFromEnv(t *testing.T) {
	for _, c := range []struct {
		name, arg string
		want      sampling
		err       bool
	}{
		{"", "", sampling{ratio: 1, parentBased: true}, false},
		{"parentbased_traceidratio", "0.01", sampling{ratio: 0.01, parentBased: true}, false},
		{"parentbased_traceidratio", "2", sampling{ratio: 1, parentBased: true}, false}, // bad argument: 1
		{"traceidratio", "0.5", sampling{ratio: 0.5}, false},
		{"always_off", "", sampling{}, false},
		{"parentbased_always_off", "", sampling{parentBased: true}, false},
		{"jaeger_remote", "", sampling{}, true},
	} {
		t.Setenv("OTEL_TRACES_SAMPLER", c.name)
		t.Setenv("OTEL_TRACES_SAMPLER_ARG", c.arg)
		got, err := samplerFromEnv()
		if (err != nil) != c.err || got != c.want {
			t.Errorf("%q %q: %+v, %v; want %+v, error %v", c.name, c.arg, got, err, c.want, c.err)
		}
	}
}

// TestSampleFollowsTheCaller checks the per-call decision: a caller's
// traceparent flag wins under a parent-based sampler, whatever the ratio;
// without one (or with a malformed one) the ratio decides.
func TestSampleFollowsTheCaller(t *testing.T) {
	const (
		sampled   = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
		unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
	)
	in := func(tp string) context.Context {
		if tp == "" {
			return context.Background()
		}
		return metadata.NewIncomingContext(context.Background(), metadata.Pairs("traceparent", tp))
	}
	for _, c := range []struct {
		s    sampling
		tp   string
		want bool
	}{
		{sampling{ratio: 0, parentBased: true}, sampled, true},
		{sampling{ratio: 1, parentBased: true}, unsampled, false},
		{sampling{ratio: 1, parentBased: true}, "", true},
		{sampling{ratio: 0, parentBased: true}, "", false},
		{sampling{ratio: 0, parentBased: true}, "00-junk", false},
		{sampling{ratio: 1}, unsampled, true}, // not parent-based: the ratio decides
	} {
		if got := c.s.sample(in(c.tp)); got != c.want {
			t.Errorf("%+v with traceparent %q: sampled %v, want %v", c.s, c.tp, got, c.want)
		}
	}
}
