package node

import (
	"strings"
	"testing"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	leveev1 "github.com/levee-dev/levee/proto/levee/v1"
)

func TestVTCodecRoundTrip(t *testing.T) {
	c := newVTCodec()
	for _, n := range []int{1, 3, 2000} { // 2000 statuses crosses the buffer pooling threshold
		resp := &rlsv3.RateLimitResponse{OverallCode: rlsv3.RateLimitResponse_OVER_LIMIT}
		for i := range n {
			resp.Statuses = append(resp.Statuses, &rlsv3.RateLimitResponse_DescriptorStatus{
				Code:               rlsv3.RateLimitResponse_Code(1 + i%2),
				CurrentLimit:       &rlsv3.RateLimitResponse_RateLimit{Name: strings.Repeat("n", i%7), RequestsPerUnit: uint32(i), Unit: rlsv3.RateLimitResponse_RateLimit_MINUTE},
				LimitRemaining:     uint32(i * 3),
				DurationUntilReset: durationpb.New(1e9 * 7),
			})
		}
		data, err := c.Marshal(resp)
		if err != nil {
			t.Fatal(err)
		}
		got := new(rlsv3.RateLimitResponse)
		if err := proto.Unmarshal(data.Materialize(), got); err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(got, resp) {
			t.Fatalf("%d statuses: round trip differs", n)
		}
		data.Free()
	}
	// Messages without vtprotobuf marshalers take the standard path.
	req := &leveev1.CheckRequest{Cohort: 9}
	data, err := c.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	got := new(leveev1.CheckRequest)
	if err := c.Unmarshal(data, got); err != nil || got.GetCohort() != 9 {
		t.Fatalf("fallback round trip: %v %v", got, err)
	}
}
