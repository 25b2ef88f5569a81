package node

// Runtime configuration across a cluster: versions written to etcd reach
// every node, invalid ones reach none, and operator overrides expire by
// themselves. Three whole nodes and a real embedded etcd, driven through the
// public APIs.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/levee-dev/levee/cmd/levee/internal/configstore"
	"github.com/levee-dev/levee/limiter/cluster/clustertest"
	"github.com/levee-dev/levee/limiter/rules"
	leveev1 "github.com/levee-dev/levee/proto/levee/v1"
	"github.com/levee-dev/levee/shed/shedtest"
)

func propRules(limit int) []byte {
	return fmt.Appendf(nil, "domain: prop\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: %d}\n", limit)
}

// enforcedLimit asks m which limit applies to prop k=x, looking only.
func enforcedLimit(t *testing.T, m *member) int64 {
	t.Helper()
	zero := int64(0)
	resp, err := m.native.Check(context.Background(), &leveev1.CheckRequest{Items: []*leveev1.CheckItem{{
		Target: &leveev1.CheckItem_Descriptor_{Descriptor_: &leveev1.RuleDescriptor{Domain: "prop", Entries: []*leveev1.Entry{{Key: "k", Value: "x"}}}},
		Hits:   &zero,
	}}})
	if err != nil {
		t.Fatalf("%s: Check: %v", m.id, err)
	}
	return resp.Statuses[0].Limit
}

func TestConfigPropagatesToEveryNode(t *testing.T) {
	etcd := clustertest.StartEtcd(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "prop.yaml"), propRules(1000), 0o644); err != nil {
		t.Fatal(err)
	}
	nodes := []*member{
		startMember(t, etcd.Endpoints(), "n1", dir),
		startMember(t, etcd.Endpoints(), "n2", dir),
		startMember(t, etcd.Endpoints(), "n3", dir),
	}
	store, err := configstore.New(configstore.Options{Client: clustertest.Client(t, etcd.Endpoints()), Prefix: configstore.DefaultPrefix, ValidateShed: validateShedPolicy})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var cur configstore.Record
	shedtest.Eventually(t, clusterWait, "the first version stored", func() error {
		if cur, err = store.Get(ctx); err == nil && cur.Version < 1 {
			err = fmt.Errorf("version %d", cur.Version)
		}
		return err
	})

	rounds := 100
	if testing.Short() {
		rounds = 20
	}
	var lags []time.Duration
	for i := 1; i <= rounds; i++ {
		b := cur.Bundle
		b.Rules = map[string][]byte{"prop.yaml": propRules(1000 + i)}
		res, err := store.Apply(ctx, b, cur.Version, "test", fmt.Sprintf("round %d", i))
		if err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		committed := time.Now()
		cur = configstore.Record{Meta: res.Meta, Bundle: b}
		for _, m := range nodes {
			shedtest.Eventually(t, clusterWait, m.id+" enforcing round "+strconv.Itoa(i), func() error {
				if l := enforcedLimit(t, m); l != int64(1000+i) {
					return fmt.Errorf("limit %d", l)
				}
				return nil
			})
		}
		lags = append(lags, time.Since(committed))
	}
	sort.Slice(lags, func(i, j int) bool { return lags[i] < lags[j] })
	t.Logf("commit to enforced on all 3 nodes, %d changes: p50 %v, p99 %v, max %v",
		rounds, lags[len(lags)/2], lags[len(lags)*99/100], lags[len(lags)-1])

	// An invalid version is refused at the write and changes nothing.
	b := cur.Bundle
	b.Rules = map[string][]byte{"prop.yaml": []byte("domain: prop\ndescriptors:\n  - key: k\n    rate_limit: {unit: fortnight, requests_per_unit: 5}\n")}
	_, err = store.Apply(ctx, b, cur.Version, "test", "typo")
	var verr *configstore.ValidationError
	var perr *rules.ParseError
	if !errors.As(err, &verr) || !errors.As(err, &perr) || perr.Line != 4 {
		t.Fatalf("invalid rules: got %v, want a validation error at line 4", err)
	}
	if got, _ := store.Get(ctx); got.Version != cur.Version {
		t.Fatalf("stored version moved to %d", got.Version)
	}
	for _, m := range nodes {
		if l := enforcedLimit(t, m); l != int64(1000+rounds) {
			t.Fatalf("%s enforces %d after a refused write", m.id, l)
		}
	}
}

func TestOverrideExpiresOnEveryNode(t *testing.T) {
	etcd := clustertest.StartEtcd(t)
	nodes := []*member{
		startMember(t, etcd.Endpoints(), "n1", ""),
		startMember(t, etcd.Endpoints(), "n2", ""),
	}
	store, err := configstore.New(configstore.Options{Client: clustertest.Client(t, etcd.Endpoints()), Prefix: configstore.DefaultPrefix, ValidateShed: validateShedPolicy})
	if err != nil {
		t.Fatal(err)
	}
	admit := func(m *member, p leveev1.Priority) *leveev1.AdmitResponse {
		conn, err := grpc.NewClient(m.addrs.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		c := leveev1.NewShedServiceClient(conn)
		resp, err := c.Admit(context.Background(), &leveev1.AdmitRequest{Resource: "timeline", Priority: p, User: "u1"})
		if err != nil {
			t.Fatalf("%s: Admit: %v", m.id, err)
		}
		if resp.Admitted {
			_, _ = c.Release(context.Background(), &leveev1.ReleaseRequest{Resource: "timeline", Permit: resp.Permit})
		}
		return resp
	}
	until := time.Now().Add(2 * time.Second)
	if _, _, err := store.SetOverride(context.Background(), configstore.Override{Resource: "timeline", MinPriority: "critical", Until: until, Author: "test", Reason: "incident"}); err != nil {
		t.Fatal(err)
	}
	for _, m := range nodes {
		shedtest.Eventually(t, clusterWait, m.id+" refusing low by the override", func() error {
			if r := admit(m, leveev1.Priority_PRIORITY_LOW); r.Reason != leveev1.RefusalReason_REFUSAL_REASON_OVERRIDE {
				return fmt.Errorf("admit low: %v", r)
			}
			return nil
		})
		if !admit(m, leveev1.Priority_PRIORITY_CRITICAL).Admitted {
			t.Fatalf("%s refuses critical under a critical-only override", m.id)
		}
	}
	for _, m := range nodes {
		shedtest.Eventually(t, clusterWait, m.id+" admitting low after the override", func() error {
			if r := admit(m, leveev1.Priority_PRIORITY_LOW); !r.Admitted {
				return fmt.Errorf("admit low: %v", r)
			}
			return nil
		})
	}
	if time.Now().Before(until) {
		t.Fatal("the override lapsed before its expiry")
	}
}
