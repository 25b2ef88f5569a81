// Package ring maps keys onto the live nodes of a levee cluster.
//
// # Scheme
//
// The ring uses rendezvous hashing (highest random weight, Thaler and
// Ravishankar 1996). Every member gets a seed, the xxhash of its ID. For a
// key k (already an xxhash of the descriptor), each member i scores
// mix(k XOR seed_i), where mix is a 64-bit bijective finaliser with full
// avalanche; the member with the highest score owns the key.
//
// Why rendezvous rather than a ring of virtual nodes or Maglev:
//
//   - Balance needs no tuning. Each member wins each key with probability
//     1/N, so the only imbalance left is sampling noise. A virtual-node ring
//     has an error of about 1/sqrt(points per node) that depends on the
//     member IDs, and needs hundreds of points per node to stay inside the
//     1.15 x mean bound for unlucky IDs.
//   - Movement is minimal by construction: adding a member only takes the
//     keys it now wins; removing one only hands out the keys it owned, each
//     to that key's runner-up. No other key changes owner, which is what
//     hand-off of bucket state relies on. Maglev's table moves a few extra
//     keys between unchanged members.
//   - The whole structure is the member list and one seed per member: no
//     table to build, and a lookup at 20 members touches 160 bytes of seeds.
//
// The cost is O(N) per lookup: one multiply-xorshift chain per member, with
// no dependency between members, so the CPU overlaps them. That is far
// below the cost of one forwarded RPC even for a few hundred nodes
// (BenchmarkOwner; the README has the figures). A much larger fleet would
// want a lookup table (for instance rendezvous evaluated once per 2^16
// buckets of the hash space, which keeps minimal movement).
//
// TestBalance and TestMovement hold the ring to both properties with a
// million random keys for every N from 3 to 20: the most-loaded member owns
// at most 1.15 × the mean share, and adding or removing one member moves at
// most 1/N + 2% of the keys, every one of them to or from that member.
//
// # Determinism
//
// New sorts members by ID, so every node that sees the same member set
// builds an Equal ring and picks the same owner for every key, whatever the
// order in which etcd or a config listed them. Because mix is a bijection,
// two members tie only if their seeds collide (probability about N^2/2^64);
// the smaller ID then wins.
//
// The seed and mix functions are part of the cluster's protocol: nodes of
// different versions must agree on owners during a rolling upgrade, so
// changing either is a breaking change (TestOwnerGolden pins them).
package ring

import (
	"cmp"
	"slices"

	"github.com/cespare/xxhash/v2"
)

// Member is one node of the cluster: a stable ID, which decides ownership,
// and the address its peers dial, which does not.
type Member struct {
	// ID names the node; it must be unique in the cluster and stable across
	// restarts so that a restarted node gets its keys back.
	ID string
	// Addr is the peer gRPC address other nodes forward requests to.
	Addr string
}

// Ring is an immutable snapshot of the members that own keys. It is safe for
// concurrent use; a membership change builds a new Ring.
//
// The zero Ring and a nil *Ring are empty.
type Ring struct {
	members []Member // sorted by ID, unique IDs
	seeds   []uint64 // seeds[i] = xxhash(members[i].ID)
}

// New builds a ring of members. The input order does not matter and the
// slice is not retained. Members with an empty ID are ignored. When an ID
// appears more than once, the entry with the smallest Addr is kept, so the
// choice does not depend on input order either.
func New(members []Member) *Ring {
	ms := make([]Member, 0, len(members))
	for _, m := range members {
		if m.ID != "" {
			ms = append(ms, m)
		}
	}
	slices.SortFunc(ms, func(a, b Member) int {
		if c := cmp.Compare(a.ID, b.ID); c != 0 {
			return c
		}
		return cmp.Compare(a.Addr, b.Addr)
	})
	ms = slices.CompactFunc(ms, func(a, b Member) bool { return a.ID == b.ID })
	ms = slices.Clip(ms)

	seeds := make([]uint64, len(ms))
	for i, m := range ms {
		seeds[i] = xxhash.Sum64String(m.ID)
	}
	return &Ring{members: ms, seeds: seeds}
}

// mix is the finaliser of SplitMix64 (Steele, Lea and Flood 2014), a
// bijection on uint64 in which every input bit flips every output bit with
// probability close to 1/2. That makes the scores of one key under different
// seeds behave as independent uniform draws, which is what gives each member
// an equal share.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// Owner returns the member that owns key. It reports false only when the
// ring is empty. It does not allocate.
func (r *Ring) Owner(key uint64) (Member, bool) {
	if r == nil || len(r.seeds) == 0 {
		return Member{}, false
	}
	seeds := r.seeds
	best, bestScore := 0, mix(key^seeds[0])
	for i := 1; i < len(seeds); i++ {
		// Strictly greater: on a tie the earlier (smaller) ID keeps the key.
		if s := mix(key ^ seeds[i]); s > bestScore {
			best, bestScore = i, s
		}
	}
	return r.members[best], true
}

// Members returns the members sorted by ID. The slice is a copy.
func (r *Ring) Members() []Member {
	if r == nil {
		return nil
	}
	return slices.Clone(r.members)
}

// Len returns the number of members.
func (r *Ring) Len() int {
	if r == nil {
		return 0
	}
	return len(r.members)
}

// Member returns the member with the given ID, if it is in the ring.
func (r *Ring) Member(id string) (Member, bool) {
	if r == nil {
		return Member{}, false
	}
	i, ok := slices.BinarySearchFunc(r.members, id, func(m Member, id string) int {
		return cmp.Compare(m.ID, id)
	})
	if !ok {
		return Member{}, false
	}
	return r.members[i], true
}

// Contains reports whether a member with the given ID is in the ring.
func (r *Ring) Contains(id string) bool {
	_, ok := r.Member(id)
	return ok
}

// Equal reports whether r and o hold the same members with the same
// addresses, and therefore assign every key to the same member.
func (r *Ring) Equal(o *Ring) bool {
	var a, b []Member
	if r != nil {
		a = r.members
	}
	if o != nil {
		b = o.members
	}
	return slices.Equal(a, b)
}

// Share is the part of the key space one member owns.
type Share struct {
	Member Member
	// Fraction of all keys owned by Member, in [0, 1].
	Fraction float64
}

// Shares returns each member's share of the key space, sorted by member ID,
// for a status page. Under rendezvous hashing every member wins each key with
// the same probability, and over the 2^64 possible keys the deviation from
// that is of the order 2^-32, so the exact share is 1/Len for every member.
// What a status page sees as imbalance comes from the keys themselves (a hot
// key), not from the ring.
func (r *Ring) Shares() []Share {
	n := r.Len()
	if n == 0 {
		return nil
	}
	out := make([]Share, n)
	for i, m := range r.members {
		out[i] = Share{Member: m, Fraction: 1 / float64(n)}
	}
	return out
}
