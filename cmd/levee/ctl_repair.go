package main

import (
	"fmt"
	"strconv"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/status"

	"github.com/levee-dev/levee/cmd/levee/internal/admin"
	"github.com/levee-dev/levee/cmd/levee/internal/configstore"
	leveev1 "github.com/levee-dev/levee/proto/levee/v1"
)

// A current configuration key that holds a value naming no usable version
// (written by hand, or damaged) makes GetConfig fail. apply and rollback
// replace such a value: the server does it by compare-and-swap on the
// value's revision when the write expects the version GetConfig's error
// names, and reports what it replaced.

// ctlMalformed is a replaced value in -o json and -o yaml output.
type ctlMalformed struct {
	Key         string `json:"key" yaml:"key"`
	ModRevision int64  `json:"mod_revision" yaml:"mod_revision"`
	Size        int    `json:"size" yaml:"size"`
	XXHash64    string `json:"xxhash64" yaml:"xxhash64"`
	Head        string `json:"head" yaml:"head"`
}

func toCtlMalformed(m *leveev1.MalformedValue) *ctlMalformed {
	if m == nil {
		return nil
	}
	return &ctlMalformed{Key: m.GetKey(), ModRevision: m.GetModRevision(), Size: int(m.GetSize()), XXHash64: m.GetXxhash64(), Head: m.GetHead()}
}

func (m *ctlMalformed) String() string {
	return configstore.RawValue{Key: m.Key, ModRevision: m.ModRevision, Size: m.Size, XXHash: m.XXHash64, Head: m.Head}.String()
}

// malformedCurrent reports whether err is GetConfig's refusal of a
// malformed current value, and if so describes the value and returns the
// version a write replacing it must expect.
func malformedCurrent(err error) (*ctlMalformed, int64, bool) {
	if err == nil {
		return nil, 0, false
	}
	for _, d := range status.Convert(err).Details() {
		info, ok := d.(*errdetails.ErrorInfo)
		if !ok || info.GetReason() != admin.ReasonMalformed {
			continue
		}
		md := info.GetMetadata()
		version, verr := strconv.ParseInt(md["current_version"], 10, 64)
		rev, _ := strconv.ParseInt(md["mod_revision"], 10, 64)
		size, _ := strconv.Atoi(md["size"])
		if verr != nil {
			return nil, 0, false
		}
		return &ctlMalformed{Key: md["key"], ModRevision: rev, Size: size, XXHash64: md["xxhash64"], Head: md["head"]}, version, true
	}
	return nil, 0, false
}

// repairHint says how to replace a malformed current value.
const repairHint = "replace it with 'levee ctl apply -f RULES --shed POLICY' or 'levee ctl rollback VERSION' (see 'levee ctl history')"

func replacedLine(m *ctlMalformed) string {
	return fmt.Sprintf("replaced the unreadable current configuration (%s)", m)
}
