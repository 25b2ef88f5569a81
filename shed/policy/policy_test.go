package policy

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"
)

func TestParseExample(t *testing.T) {
	data, err := os.ReadFile("../../deploy/examples/shed/policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	p, err := Parse("policy.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Resources) != 2 {
		t.Fatalf("%d resources", len(p.Resources))
	}
	tl := p.Resources[0]
	if tl.Name != "timeline" || tl.Concurrency.MaxLimit != 500 || tl.LatencyCeiling != 250*time.Millisecond || tl.RetryAfter != time.Second || tl.Shadow {
		t.Fatalf("timeline: %+v", tl)
	}
	if !p.Resources[1].Shadow {
		t.Fatal("search is not in shadow mode")
	}
	set := NewSet(nil, nil)
	err = set.Apply(p)
	rs := set.Resources() // sorted by name: search, timeline
	if err != nil || len(rs) != 2 || !rs[0].Shadow() || rs[0].Name() != "search" {
		t.Fatalf("Apply: %v %v", rs, err)
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct{ yaml, field string }{
		{"resource: []", "resource"},
		{"resources: {}", "resources"},
		{"resources:\n  - shadow: true", "resources[0].name"},
		{"resources:\n  - name: a b", "resources[0].name"},
		{"resources:\n  - name: a\n  - name: a", "resources[1].name"},
		{"resources:\n  - name: a\n    shadow: maybe", "resources[0].shadow"},
		{"resources:\n  - name: a\n    retry_after: soon", "resources[0].retry_after"},
		{"resources:\n  - name: a\n    concurrency: {min: 10, max: 5}", "resources[0].concurrency"},
		{"resources:\n  - name: a\n    concurrency: {most: 5}", "resources[0].concurrency.most"},
		{"resources:\n  - name: a\n    concurrency: {max: -1}", "resources[0].concurrency.max"},
		{"resources:\n  - name: a\n    colour: red", "resources[0].colour"},
		{"resources:\n  - name: a\n    headroom: 1.5", "resources[0].headroom"},
		{"resources:\n  - name: a\n    headroom: lots", "resources[0].headroom"},
		{"resources: [", ""},
	} {
		_, err := Parse("p.yaml", []byte(tc.yaml))
		var pe *Error
		if !errors.As(err, &pe) || pe.Field != tc.field || pe.File != "p.yaml" || pe.Line < 1 {
			t.Errorf("%q: got %v, want field %q", tc.yaml, err, tc.field)
		}
	}
	if _, err := Parse("p.yaml", []byte(strings.Repeat("#", MaxFileSize+1))); err == nil {
		t.Error("oversized file accepted")
	}
}

func TestHeadroom(t *testing.T) {
	p, err := Parse("p.yaml", []byte("resources:\n  - name: a\n    headroom: 0.2\n  - name: b\n    headroom: off\n  - name: c\n"))
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []float64{0.2, -1, 0} {
		if got := p.Resources[i].Config().Headroom; got != want {
			t.Errorf("resource %s: headroom %v, want %v", p.Resources[i].Name, got, want)
		}
	}
	if err := NewSet(nil, nil).Apply(p); err != nil {
		t.Fatal(err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte("resources:\n  - name: a\n    concurrency: {initial: 3, min: 1, max: 9}\n    shadow: true\n"))
	f.Add([]byte("resources: [{name: x, deadline: false, retry_after: 2s}]"))
	f.Add([]byte("resources: [{name: y, headroom: 0.25}, {name: z, headroom: off}]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse("fuzz.yaml", data)
		if err != nil {
			var pe *Error
			if !errors.As(err, &pe) {
				t.Fatalf("error of type %T: %v", err, err)
			}
			return
		}
		_ = NewSet(nil, nil).Apply(p)
	})
}
