package ring_test

import (
	"fmt"

	"github.com/cespare/xxhash/v2"

	"github.com/levee-dev/levee/limiter/ring"
)

func ExampleRing_Owner() {
	r := ring.New([]ring.Member{
		{ID: "levee-2", Addr: "10.0.0.12:7001"},
		{ID: "levee-0", Addr: "10.0.0.10:7001"},
		{ID: "levee-1", Addr: "10.0.0.11:7001"},
	})
	owner, ok := r.Owner(xxhash.Sum64String("user_id=42"))
	fmt.Println(ok, r.Contains(owner.ID))
	for _, s := range r.Shares() {
		fmt.Printf("%s %.3f\n", s.Member.ID, s.Fraction)
	}
	// Output:
	// true true
	// levee-0 0.333
	// levee-1 0.333
	// levee-2 0.333
}
