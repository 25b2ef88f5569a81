package admin

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/levee-dev/levee/cmd/levee/internal/configstore"
	"github.com/levee-dev/levee/cmd/levee/internal/tlsfiles/tlstest"
	"github.com/levee-dev/levee/limiter/cluster/clustertest"
	leveev1 "github.com/levee-dev/levee/proto/levee/v1"
)

const (
	aliceToken = "alice-0123456789abcdef"
	bobToken   = "bob-0123456789abcdef00"
)

func newStore(t *testing.T) *configstore.Store {
	t.Helper()
	e := clustertest.StartEtcd(t)
	s, err := configstore.New(configstore.Options{Client: clustertest.Client(t, e.Endpoints()), Prefix: "/admin-test/"})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func tokenFile(t *testing.T) string {
	return writeFile(t, "tokens", "# operators\nalice:"+aliceToken+"\n\nbob: "+bobToken+"\n")
}

// start runs a server for the test and returns its address.
func start(t *testing.T, cfg Config) string {
	t.Helper()
	srv, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return srv.Addr()
}

func dial(t *testing.T, addr string, creds credentials.TransportCredentials) leveev1.AdminServiceClient {
	t.Helper()
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return leveev1.NewAdminServiceClient(cc)
}

func withToken(tok string) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	_ = cancel // the test process ends soon; the timeout bounds a hang
	if tok == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
}

func rulesBundle(rpu string) *leveev1.ConfigBundle {
	return &leveev1.ConfigBundle{RuleFiles: []*leveev1.RuleFile{{
		Name:    "api.yaml",
		Content: "domain: api\ndescriptors:\n  - key: user\n    rate_limit:\n      unit: second\n      requests_per_unit: " + rpu + "\n",
	}}}
}

func TestTokenAuth(t *testing.T) {
	addr := start(t, Config{Addr: "127.0.0.1:0", Store: newStore(t), TokenFile: tokenFile(t)})
	c := dial(t, addr, nil)
	apply := func(tok string, expected int64) (*leveev1.ApplyConfigResponse, error) {
		return c.ApplyConfig(withToken(tok), &leveev1.ApplyConfigRequest{Bundle: rulesBundle("10"), ExpectedVersion: expected, Reason: "test"})
	}

	if _, err := apply("", 0); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("write without token: %v; want Unauthenticated", err)
	}
	if _, err := apply("wrong-token-0123456789", 0); status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "invalid bearer token") {
		t.Fatalf("write with a wrong token: %v; want Unauthenticated", err)
	}
	if _, err := c.GetConfig(withToken("wrong-token-0123456789"), &leveev1.GetConfigRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("read with a wrong token: %v; want Unauthenticated", err)
	}
	ctx := metadata.AppendToOutgoingContext(withToken(""), "authorization", "Basic YWxpY2U6eA==")
	if _, err := c.GetConfig(ctx, &leveev1.GetConfigRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("read with basic auth: %v; want Unauthenticated", err)
	}
	// Reads without credentials are allowed on loopback.
	if _, err := c.GetConfig(withToken(""), &leveev1.GetConfigRequest{}); err != nil {
		t.Fatalf("read without token on loopback: %v", err)
	}
	resp, err := apply(bobToken, 0)
	if err != nil {
		t.Fatalf("write with bob's token: %v", err)
	}
	if resp.GetVersion().GetAuthor() != "bob" || resp.GetVersion().GetVersion() != 1 {
		t.Fatalf("applied %+v; want version 1 by bob", resp.GetVersion())
	}
	// Nothing was stored by the refused writes.
	h, err := c.History(withToken(""), &leveev1.HistoryRequest{})
	if err != nil || len(h.GetVersions()) != 1 {
		t.Fatalf("History = %v, %v; want one version", h, err)
	}
}

func TestNoAuthLoopbackOnly(t *testing.T) {
	store := newStore(t)
	for _, addr := range []string{"0.0.0.0:0", ":0", "[::]:0"} {
		_, err := New(Config{Addr: addr, Store: store})
		if err == nil || !strings.Contains(err.Error(), "beyond loopback, without authentication") {
			t.Errorf("New(%q) without auth: %v; want a refusal", addr, err)
		}
	}
	// Tokens beyond loopback need TLS.
	_, err := New(Config{Addr: "0.0.0.0:0", Store: store, TokenFile: tokenFile(t)})
	if err == nil || !strings.Contains(err.Error(), "in plain text") {
		t.Errorf("New with tokens, no TLS, beyond loopback: %v; want a refusal", err)
	}
	// On loopback with no auth, everyone may write, as "anonymous".
	c := dial(t, start(t, Config{Addr: "127.0.0.1:0", Store: store}), nil)
	resp, err := c.ApplyConfig(withToken(""), &leveev1.ApplyConfigRequest{Bundle: rulesBundle("1"), Reason: "dev"})
	if err != nil || resp.GetVersion().GetAuthor() != Anonymous {
		t.Fatalf("anonymous apply on loopback = %v, %v", resp, err)
	}
}

func TestConfigErrorsMapToCodes(t *testing.T) {
	c := dial(t, start(t, Config{Addr: "127.0.0.1:0", Store: newStore(t), TokenFile: tokenFile(t)}), nil)
	ctx := withToken(aliceToken)
	if _, err := c.ApplyConfig(ctx, &leveev1.ApplyConfigRequest{Bundle: rulesBundle("1"), Reason: "one"}); err != nil {
		t.Fatal(err)
	}

	// A stale version: ABORTED, naming the current version.
	_, err := c.ApplyConfig(ctx, &leveev1.ApplyConfigRequest{Bundle: rulesBundle("2"), ExpectedVersion: 0, Reason: "stale"})
	st := status.Convert(err)
	if st.Code() != codes.Aborted || !strings.Contains(st.Message(), "current version is 1") {
		t.Fatalf("stale apply: %v; want Aborted naming version 1", err)
	}
	var info *errdetails.ErrorInfo
	for _, d := range st.Details() {
		if i, ok := d.(*errdetails.ErrorInfo); ok {
			info = i
		}
	}
	if info == nil || info.Reason != ReasonConflict || info.Metadata["current_version"] != "1" {
		t.Fatalf("conflict details = %v", st.Details())
	}

	// An invalid rule set: INVALID_ARGUMENT with file:line, and nothing
	// changes.
	bad := rulesBundle("2")
	bad.RuleFiles = append(bad.RuleFiles, &leveev1.RuleFile{Name: "bad.yaml", Content: "domain: bad\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: fortnight\n      requests_per_unit: 1\n"})
	_, err = c.ApplyConfig(ctx, &leveev1.ApplyConfigRequest{Bundle: bad, ExpectedVersion: 1, Reason: "bad"})
	st = status.Convert(err)
	if st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), "bad.yaml:5: rate_limit.unit:") {
		t.Fatalf("invalid apply: %v; want InvalidArgument with bad.yaml:5", err)
	}
	var br *errdetails.BadRequest
	for _, d := range st.Details() {
		if b, ok := d.(*errdetails.BadRequest); ok {
			br = b
		}
	}
	if br == nil || len(br.FieldViolations) != 1 || br.FieldViolations[0].Field != "bad.yaml:5: rate_limit.unit" {
		t.Fatalf("validation details = %v", st.Details())
	}
	got, err := c.GetConfig(ctx, &leveev1.GetConfigRequest{})
	if err != nil || got.GetVersion().GetVersion() != 1 || !strings.Contains(got.GetBundle().GetRuleFiles()[0].GetContent(), "requests_per_unit: 1\n") {
		t.Fatalf("after refusals: %v, %v; want version 1 unchanged", got, err)
	}

	// Dry run: a diff, nothing stored.
	dry, err := c.ApplyConfig(ctx, &leveev1.ApplyConfigRequest{Bundle: rulesBundle("3"), ExpectedVersion: 1, Reason: "try", DryRun: true})
	if err != nil || !dry.GetChanged() || !strings.Contains(dry.GetDiff(), "+      requests_per_unit: 3") || dry.GetVersion().GetVersion() != 1 {
		t.Fatalf("dry run = %v, %v", dry, err)
	}
	// Missing reason; duplicate file names; unknown version.
	if _, err := c.ApplyConfig(ctx, &leveev1.ApplyConfigRequest{Bundle: rulesBundle("3"), ExpectedVersion: 1}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("apply without reason: %v", err)
	}
	dup := rulesBundle("3")
	dup.RuleFiles = append(dup.RuleFiles, dup.RuleFiles[0])
	if _, err := c.ApplyConfig(ctx, &leveev1.ApplyConfigRequest{Bundle: dup, ExpectedVersion: 1, Reason: "x"}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("apply with a duplicate name: %v", err)
	}
	if _, err := c.GetConfig(ctx, &leveev1.GetConfigRequest{Version: 42}); status.Code(err) != codes.NotFound {
		t.Errorf("get of version 42: %v; want NotFound", err)
	}
	if _, err := c.Rollback(ctx, &leveev1.RollbackRequest{Version: 1, ExpectedVersion: 7, Reason: "x"}); status.Code(err) != codes.Aborted {
		t.Errorf("rollback with a stale version: %v; want Aborted", err)
	}
}

func TestOverridesAndStatus(t *testing.T) {
	src := StatusFunc(func(context.Context) (ClusterStatus, error) {
		return ClusterStatus{Self: "b", Members: []MemberStatus{
			{ID: "b", Addr: "10.0.0.2:8082", Reachable: true, RingShare: 0.5, ConfigVersion: 1, DecisionsPerSecond: 1200,
				RefusalsPerSecond: map[string]float64{"sheddable": 30, "low": 2},
				Thresholds:        []Threshold{{Resource: "timeline", Priority: "low", Cohort: 64}}},
			{ID: "a", Addr: "10.0.0.1:8082", Reachable: false, Error: "deadline exceeded", RingShare: 0.5},
		}}, nil
	})
	c := dial(t, start(t, Config{Addr: "127.0.0.1:0", Store: newStore(t), TokenFile: tokenFile(t), Status: src}), nil)
	ctx := withToken(aliceToken)
	if _, err := c.SetOverride(withToken(""), &leveev1.SetOverrideRequest{Resource: "timeline", MinPriority: leveev1.Priority_PRIORITY_CRITICAL,
		Duration: durationpb.New(time.Minute), Reason: "x"}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("SetOverride without token: %v", err)
	}
	if _, err := c.SetOverride(ctx, &leveev1.SetOverrideRequest{Resource: "timeline", Duration: durationpb.New(time.Minute), Reason: "x"}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("SetOverride without priority: %v", err)
	}
	set, err := c.SetOverride(ctx, &leveev1.SetOverrideRequest{Resource: "timeline", MinPriority: leveev1.Priority_PRIORITY_CRITICAL,
		Duration: durationpb.New(15 * time.Minute), Reason: "incident"})
	if err != nil || set.GetOverride().GetAuthor() != "alice" || set.GetOverride().GetMinPriority() != leveev1.Priority_PRIORITY_CRITICAL {
		t.Fatalf("SetOverride = %v, %v", set, err)
	}
	if d := time.Until(set.GetOverride().GetUntil().AsTime()); d < 14*time.Minute || d > 16*time.Minute {
		t.Fatalf("override until %v from now, want 15m", d)
	}

	st, err := c.Status(withToken(""), &leveev1.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.GetSelf() != "b" || len(st.GetMembers()) != 2 || st.GetMembers()[0].GetId() != "a" || !st.GetMembers()[1].GetSelf() ||
		len(st.GetOverrides()) != 1 || st.GetStoreError() != "" {
		t.Fatalf("Status = %v", st)
	}
	b := st.GetMembers()[1]
	if len(b.GetRefusals()) != 2 || b.GetRefusals()[0].GetPriority() != leveev1.Priority_PRIORITY_LOW ||
		b.GetThresholds()[0].GetPriority() != leveev1.Priority_PRIORITY_LOW || b.GetThresholds()[0].GetCohort() != 64 {
		t.Fatalf("member b = %v", b)
	}

	cl, err := c.ClearOverride(ctx, &leveev1.ClearOverrideRequest{Resource: "timeline", Reason: "over"})
	if err != nil || cl.GetCleared().GetReason() != "incident" {
		t.Fatalf("ClearOverride = %v, %v", cl, err)
	}
	if _, err := c.ClearOverride(ctx, &leveev1.ClearOverrideRequest{Resource: "timeline", Reason: "again"}); status.Code(err) != codes.NotFound {
		t.Fatalf("second ClearOverride: %v; want NotFound", err)
	}
}

func TestMTLSBeyondLoopback(t *testing.T) {
	p := tlstest.NewCA(t, "levee test")
	cert, key := p.Issue(t, "levee-admin", tlstest.Server)
	// Listen on every interface: beyond loopback, so reads need
	// credentials too. The test connects through 127.0.0.1.
	addr := start(t, Config{Addr: "0.0.0.0:0", Store: newStore(t), TLSCertFile: cert, TLSKeyFile: key,
		ClientCAFile: p.File, AllowedClients: []string{"alice-cli"}, TokenFile: tokenFile(t)})
	_, port, _ := net.SplitHostPort(addr)
	local := "127.0.0.1:" + port

	alice := dial(t, local, credentials.NewTLS(p.ClientTLS(t, "alice-cli")))
	resp, err := alice.ApplyConfig(withToken(""), &leveev1.ApplyConfigRequest{Bundle: rulesBundle("5"), Reason: "mtls"})
	if err != nil || resp.GetVersion().GetAuthor() != "alice-cli" {
		t.Fatalf("apply with an allowed client certificate = %v, %v", resp, err)
	}
	mallory := dial(t, local, credentials.NewTLS(p.ClientTLS(t, "mallory")))
	if _, err := mallory.GetConfig(withToken(""), &leveev1.GetConfigRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("read with a certificate not on the list: %v; want PermissionDenied", err)
	}
	anon := dial(t, local, credentials.NewTLS(p.ClientTLS(t, "")))
	if _, err := anon.GetConfig(withToken(""), &leveev1.GetConfigRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("read beyond loopback without credentials: %v; want Unauthenticated", err)
	}
	// A bearer token works over server-side TLS too.
	if _, err := anon.GetConfig(withToken(aliceToken), &leveev1.GetConfigRequest{}); err != nil {
		t.Fatalf("read with a token over TLS: %v", err)
	}
}

func TestTLSConfigErrors(t *testing.T) {
	store := newStore(t)
	p := tlstest.NewCA(t, "levee test")
	cert, key := p.Issue(t, "srv", tlstest.Server)
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{TLSCertFile: cert}, "both --admin-tls-cert and --admin-tls-key"},
		{Config{ClientCAFile: p.File, AllowedClients: []string{"a"}}, "needs the server's own certificate"},
		{Config{TLSCertFile: cert, TLSKeyFile: key, ClientCAFile: p.File}, "needs --admin-allowed-clients"},
		{Config{AllowedClients: []string{"a"}}, "needs --admin-client-ca"},
		{Config{TokenFile: writeFile(t, "t", "alice:short\n")}, "shorter than 16"},
		{Config{TokenFile: writeFile(t, "t", "# nothing\n")}, "holds no tokens"},
		{Config{TokenFile: writeFile(t, "t", "a:"+aliceToken+"\na:"+bobToken+"\n")}, `name "a" already used on line 1`},
		{Config{TokenFile: writeFile(t, "t", "a:"+aliceToken+"\nb:"+aliceToken+"\n")}, "the same as line 1's"},
		{Config{TokenFile: writeFile(t, "t", aliceToken+"\n")}, `want "name:token"`},
	} {
		tc.cfg.Store, tc.cfg.Addr = store, "127.0.0.1:0"
		if _, err := New(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v) = %v; want an error with %q", tc.cfg, err, tc.want)
		}
	}
}
