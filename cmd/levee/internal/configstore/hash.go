package configstore

import (
	"encoding/binary"
	"fmt"

	"github.com/cespare/xxhash/v2"

	"github.com/levee-dev/levee/limiter/rules"
)

// Hash identifies the bundle's content: 16 hexadecimal digits of the
// xxhash64 of its rule files, by name in sorted order, then its shedding
// policy, each written with its length so that no two bundles can run
// together into the same bytes. It depends on nothing but the content, so a
// node enforcing its own files and a node enforcing a stored version report
// the same hash exactly when they enforce the same files.
func (b Bundle) Hash() string {
	var d xxhash.Digest
	d.Reset()
	var n [8]byte
	binary.LittleEndian.PutUint64(n[:], uint64(len(b.Rules)))
	_, _ = d.Write(n[:])
	for _, name := range b.Names() {
		rules.WriteField(&d, name)
		rules.WriteField(&d, string(b.Rules[name]))
	}
	rules.WriteField(&d, string(b.Shed))
	return fmt.Sprintf("%016x", d.Sum64())
}
