package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/levee-dev/levee/cmd/levee/internal/node/statuspage"
)

// TestCtlTop reads a status document from a status page server and checks
// what the terminal view and -o json print.
func TestCtlTop(t *testing.T) {
	now := time.Now().UTC()
	gone := now.Add(-12 * time.Second)
	st := statuspage.Status{
		SchemaVersion: statuspage.SchemaVersion, GeneratedAt: now, Node: "n1", Clustered: true,
		Members: []statuspage.Member{
			{ID: "n1", Self: true, State: statuspage.StateUp, RingShare: 1, DecisionsPerSecond: 1234, Config: statuspage.MemberConfig{Version: 7}},
			{ID: "n2", State: statuspage.StateGone, GoneSince: &gone, Config: statuspage.MemberConfig{Version: 7}},
		},
		Resources: []statuspage.Resource{{Name: "timeline", Threshold: statuspage.LevelOf(256), Shedding: true}},
		Config:    statuspage.NodeConfig{Version: 7},
	}
	st.Alerts = statuspage.Alerts(st)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/status.json" {
			http.NotFound(w, r)
			return
		}
		_ = json.NewEncoder(w).Encode(st)
	}))
	defer srv.Close()

	out, errOut, code := runCtl("top", "--once", "--status-addr", srv.URL)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{"1 of 2 up", "!! n2 is gone", "!! timeline is shedding: admits ≥ default/0", "1.2k", "GONE 12 s"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}

	out, errOut, code = runCtl("top", "-o", "json", "--status-addr", srv.URL)
	if code != 0 {
		t.Fatalf("-o json: exit %d: %s", code, errOut)
	}
	var back statuspage.Status
	if err := json.Unmarshal([]byte(out), &back); err != nil || back.Node != "n1" || len(back.Members) != 2 {
		t.Errorf("-o json gave %+v, %v", back, err)
	}

	if _, _, code := runCtl("top", "--once", "--status-addr", "127.0.0.1:1", "--timeout", "1s"); code != ctlExitError {
		t.Errorf("unreachable status page: exit %d, want %d", code, ctlExitError)
	}
}
