package configstore

import (
	"fmt"
	"strconv"

	"github.com/cespare/xxhash/v2"
)

// maxHead bounds how much of a malformed value RawValue quotes.
const maxHead = 64

// RawValue identifies a stored value that could not be used, so that an
// operator can recognise what a repair replaced: its key and revision, its
// size, a hash of its bytes and its first bytes.
type RawValue struct {
	Key         string
	ModRevision int64
	Size        int
	// XXHash is xxhash64 of the bytes, 16 hex digits.
	XXHash string
	// Head is the first bytes (at most 64), quoted with Go escapes.
	Head string
}

func newRawValue(key string, modRev int64, data []byte) RawValue {
	head := data[:min(len(data), maxHead)]
	return RawValue{
		Key: key, ModRevision: modRev, Size: len(data),
		XXHash: fmt.Sprintf("%016x", xxhash.Sum64(data)),
		Head:   strconv.Quote(string(head)),
	}
}

// String describes the value in one line.
func (r RawValue) String() string {
	more := ""
	if r.Size > maxHead {
		more = "..."
	}
	return fmt.Sprintf("%s at revision %d: %d bytes, xxhash64 %s, starting %s%s", r.Key, r.ModRevision, r.Size, r.XXHash, r.Head, more)
}

// MalformedError is a current key whose value names no usable version: it
// is not a version's metadata, or the version it names is not in the
// history or cannot be read. Get returns it. Apply, DryRun and Rollback
// replace such a value, by compare-and-swap on its revision, when expected
// is Version, and report what they replaced; Seed never does.
type MalformedError struct {
	Value RawValue
	// Version is what a write replacing the value must expect: the newest
	// version in the history, or 0 if it is empty. The write becomes the
	// next one.
	Version int64
	// Err is what is wrong with the value.
	Err error
}

// Error says which key holds what, and why it cannot be used.
func (e *MalformedError) Error() string {
	return fmt.Sprintf("configstore: the current configuration is unreadable: %s: %v", e.Value, e.Err)
}

func (e *MalformedError) Unwrap() error { return e.Err }
