package node

import (
	"errors"
	"fmt"
	"io"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// malformed explains why b does not decode as a message of type md, the
// decoder having said only err: it walks the wire format to the first
// field that is malformed and names it the way the front ends name fields
// ("descriptors[0].entries[1].value: invalid UTF-8"). When the walk finds
// nothing wrong (nesting deeper than it looks), err is the reason.
func malformed(b []byte, md protoreflect.MessageDescriptor, err error) error {
	w := walker{data: b}
	if werr := w.message(b, md, "", 0); werr != nil {
		err = werr
	}
	return fmt.Errorf("malformed %s: %w", md.FullName(), err)
}

// maxWalkDepth is how deep the walk follows nested messages; the decoder
// itself refuses far deeper nesting than any levee request has.
const maxWalkDepth = 64

type walker struct {
	data []byte // the whole message, for offsets
}

// message walks b, a message of type md at path.
func (w walker) message(b []byte, md protoreflect.MessageDescriptor, path string, depth int) error {
	if depth > maxWalkDepth {
		return nil
	}
	var seen map[protoreflect.FieldNumber]int
	for len(b) > 0 {
		at := len(w.data) - len(b)
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return w.fail(path, at, protowire.ParseError(n))
		}
		b = b[n:]
		fd := md.Fields().ByNumber(num)
		name := path
		if fd == nil {
			name = join(path, fmt.Sprintf("field %d", num))
		} else {
			name = join(path, string(fd.Name()))
			if fd.IsList() || fd.IsMap() {
				if seen == nil {
					seen = make(map[protoreflect.FieldNumber]int)
				}
				name = fmt.Sprintf("%s[%d]", name, seen[num])
				seen[num]++
			}
		}
		if typ != protowire.BytesType {
			n := protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return w.fail(name, at, protowire.ParseError(n))
			}
			b = b[n:]
			continue
		}
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return w.fail(name, at, protowire.ParseError(n))
		}
		b = b[n:]
		if fd == nil {
			continue
		}
		switch fd.Kind() {
		case protoreflect.StringKind:
			if !utf8.Valid(v) {
				return fmt.Errorf("%s: invalid UTF-8", name)
			}
		case protoreflect.MessageKind:
			if err := w.message(v, fd.Message(), name, depth+1); err != nil {
				return err
			}
		}
	}
	return nil
}

// fail describes a wire-format error at byte offset at of the message.
func (w walker) fail(path string, at int, err error) error {
	what := "invalid wire format"
	if errors.Is(err, io.ErrUnexpectedEOF) {
		what = "truncated"
	}
	if path == "" {
		return fmt.Errorf("%s at byte %d of %d: %w", what, at, len(w.data), err)
	}
	return fmt.Errorf("%s: %s at byte %d of %d: %w", path, what, at, len(w.data), err)
}

func join(path, field string) string {
	if path == "" {
		return field
	}
	return path + "." + field
}
