package api_test

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/internal/apitest"
	"github.com/keytrail/keytrail/internal/testenv"
	"github.com/keytrail/keytrail/query/auth"
	"github.com/keytrail/keytrail/query/budget"
)

// A key is (project, key_id). Projects alpha, beta and gamma each have a key "default":
//
//	alpha/default  created 11-10 by alice, budget 0.10/day; used by billing: 2 requests in every
//	               5 minutes from 09:00 to 11:00, then 60 at 11:31-11:32:58 (108 in all)
//	beta/default   created 11-15 by bob, budget 0.05/day, disabled 11-19; billing: 2 every 5
//	               minutes from 09:00, then 80 at 11:41-11:43:38 (128); reports: one failing
//	               request at 11:50 (129 in all)
//	gamma/default  created 11-01 by gil, scopes changed 11-19 20:00 (the newest event); never used
//
// on 2026-11-20 (the reader's clock is 12:00), every request costing 1000 micros. Callers: the
// admin and an auditor (every project), a reader of each of alpha and beta, and a reader of
// alpha and beta. Every answer keeps the projects apart, filters them in SQL, and never names a
// project the caller may not read.

var skNow = time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)

func skAt(hhmmss string) time.Time {
	t, err := time.Parse(time.RFC3339, "2026-11-20T"+hhmmss+"Z")
	if err != nil {
		panic(err)
	}
	return t
}

func skTS(t time.Time) *timestamppb.Timestamp { return timestamppb.New(t) }

const (
	tokSKAuditor   = "ktk_sk_auditor"
	tokSKAlpha     = "ktk_sk_alpha"
	tokSKBeta      = "ktk_sk_beta"
	tokSKAlphaBeta = "ktk_sk_alpha_beta"
)

func skFixture() []any {
	var events []any
	n := 0
	use := func(project, service, ip string, at time.Time, code uint32) {
		n++
		events = append(events, &keytrailv1.UsageEvent{
			EventId: fmt.Sprintf("u%d", n), Time: timestamppb.New(at), Project: project, KeyId: "default",
			Service: service, Model: "gpt-4o", StatusCode: code, InputTokens: 10, OutputTokens: 5, CostMicros: 1000, ClientIp: ip,
		})
	}
	base := skAt("09:00:00")
	for i := range 24 {
		bucket := base.Add(time.Duration(i) * 5 * time.Minute)
		use("alpha", "billing", "10.0.0.1", bucket.Add(60*time.Second), 200)
		use("alpha", "billing", "10.0.0.1", bucket.Add(120*time.Second), 200)
		use("beta", "billing", "10.0.0.2", bucket.Add(90*time.Second), 200)
		use("beta", "billing", "10.0.0.2", bucket.Add(150*time.Second), 200)
	}
	for j := range 60 {
		use("alpha", "billing", "10.0.0.1", skAt("11:31:00").Add(time.Duration(j)*2*time.Second), 200)
	}
	for j := range 80 {
		use("beta", "billing", "10.0.0.2", skAt("11:41:00").Add(time.Duration(j)*2*time.Second), 200)
	}
	use("beta", "reports", "10.0.0.2", skAt("11:50:00"), 500)

	life := func(id, project string, action keytrailv1.Action, at time.Time, actor string, budget int64) *keytrailv1.LifecycleEvent {
		e := &keytrailv1.LifecycleEvent{EventId: id, Time: timestamppb.New(at), Project: project, KeyId: "default", Action: action,
			Actor: actor, ActorType: keytrailv1.ActorType_ACTOR_TYPE_USER}
		if budget > 0 {
			e.Budget = &keytrailv1.Budget{AmountMicros: budget, Period: keytrailv1.BudgetPeriod_BUDGET_PERIOD_DAY}
		}
		return e
	}
	return append(events,
		life("a1", "alpha", keytrailv1.Action_ACTION_CREATED, time.Date(2026, 11, 10, 8, 0, 0, 0, time.UTC), "alice", 100_000),
		life("b1", "beta", keytrailv1.Action_ACTION_CREATED, time.Date(2026, 11, 15, 8, 0, 0, 0, time.UTC), "bob", 50_000),
		life("b2", "beta", keytrailv1.Action_ACTION_DISABLED, time.Date(2026, 11, 19, 8, 0, 0, 0, time.UTC), "bob", 0),
		life("g1", "gamma", keytrailv1.Action_ACTION_CREATED, time.Date(2026, 11, 1, 8, 0, 0, 0, time.UTC), "gil", 0),
		life("g2", "gamma", keytrailv1.Action_ACTION_SCOPES_CHANGED, time.Date(2026, 11, 19, 20, 0, 0, 0, time.UTC), "gil", 0),
	)
}

type skServer struct {
	*apitest.Server
}

func startSameKeyAPI(t *testing.T) skServer {
	t.Helper()
	db := testenv.ClickHouse(t)
	testenv.Insert(t, db, skFixture()...)
	testenv.WaitForEvents(t, db, 237, 5, 15*time.Second)
	reader := func(name string, projects ...string) auth.Entry {
		return auth.Entry{Name: name, Role: auth.RoleProjectReader, Projects: projects, RatePerSecond: 1e6, Burst: 1e6}
	}
	return skServer{apitest.Start(t, db, apitest.Options{
		Now: func() time.Time { return skNow },
		Tokens: map[string]auth.Entry{
			tokSKAuditor:   {Name: "sk-auditor", Role: auth.RoleAuditor, RatePerSecond: 1e6, Burst: 1e6},
			tokSKAlpha:     reader("sk-alpha", "alpha"),
			tokSKBeta:      reader("sk-beta", "beta"),
			tokSKAlphaBeta: reader("sk-alpha-beta", "alpha", "beta"),
		},
	})}
}

// as is a gRPC context for a caller (the admin when token is apitest.AdminToken).
func skAs(token string) context.Context { return apitest.WithToken(context.Background(), token) }

var skCallers = []struct{ name, token string }{
	{"admin", apitest.AdminToken},
	{"auditor", tokSKAuditor},
	{"alpha reader", tokSKAlpha},
	{"beta reader", tokSKBeta},
	{"alpha+beta reader", tokSKAlphaBeta},
}

func skWant[M proto.Message](t *testing.T, what string, got M, err error, want M) {
	t.Helper()
	if err != nil {
		t.Errorf("%s: %v", what, err)
		return
	}
	if !proto.Equal(got, want) {
		t.Errorf("%s:\n got %s\nwant %s", what, protojson.Format(got), protojson.Format(want))
	}
}

func TestSameKeyIDInSeveralProjects(t *testing.T) {
	t.Parallel()
	s := startSameKeyAPI(t)

	usage := func(project, service string, first, last, success time.Time, requests, errors int64) *keytrailv1.KeyServiceUsage {
		u := &keytrailv1.KeyServiceUsage{Project: project, KeyId: "default", Service: service, FirstSeen: skTS(first), LastSeen: skTS(last),
			RequestCount: requests, ErrorCount: errors}
		if !success.IsZero() {
			u.LastSuccess = skTS(success)
		}
		return u
	}
	alphaBilling := usage("alpha", "billing", skAt("09:01:00"), skAt("11:32:58"), skAt("11:32:58"), 108, 0)
	betaBilling := usage("beta", "billing", skAt("09:01:30"), skAt("11:43:38"), skAt("11:43:38"), 128, 0)
	betaReports := usage("beta", "reports", skAt("11:50:00"), skAt("11:50:00"), time.Time{}, 1, 1)

	// GET /v1/keys/default/services: a row per project and service, each naming its project.
	t.Run("services of the key", func(t *testing.T) {
		want := map[string][]*keytrailv1.KeyServiceUsage{
			"admin":             {alphaBilling, betaBilling, betaReports},
			"auditor":           {alphaBilling, betaBilling, betaReports},
			"alpha reader":      {alphaBilling},
			"beta reader":       {betaBilling, betaReports},
			"alpha+beta reader": {alphaBilling, betaBilling, betaReports},
		}
		for _, c := range skCallers {
			resp, err := s.Client.ListKeyServices(skAs(c.token), &keytrailv1.ListKeyServicesRequest{KeyId: "default"})
			skWant(t, "services of default as "+c.name, resp, err, &keytrailv1.ListKeyServicesResponse{Services: want[c.name]})
		}
		// The case over REST: alpha's reader reads its own key.
		var rest keytrailv1.ListKeyServicesResponse
		code, body := s.Get(t, "/v1/keys/default/services", nil, tokSKAlpha)
		if code != http.StatusOK || protojson.Unmarshal(body, &rest) != nil {
			t.Fatalf("GET /v1/keys/default/services as the alpha reader: %d %s", code, body)
		}
		skWant(t, "REST services of default as the alpha reader", &rest, nil, &keytrailv1.ListKeyServicesResponse{Services: []*keytrailv1.KeyServiceUsage{alphaBilling}})

		// project picks one; one the caller may not read is refused, naming only what it asked.
		resp, err := s.Client.ListKeyServices(skAs(apitest.AdminToken), &keytrailv1.ListKeyServicesRequest{KeyId: "default", Project: "beta"})
		skWant(t, "services of beta/default as admin", resp, err, &keytrailv1.ListKeyServicesResponse{Services: []*keytrailv1.KeyServiceUsage{betaBilling, betaReports}})
		_, err = s.Client.ListKeyServices(skAs(tokSKAlpha), &keytrailv1.ListKeyServicesRequest{KeyId: "default", Project: "beta"})
		wantGRPC(t, "services of beta/default as the alpha reader", err, codes.PermissionDenied, `not allowed to read project "beta"`)

		// A range reads the rollup and the raw edges, per project too.
		inHour := &keytrailv1.ListKeyServicesRequest{KeyId: "default", StartTime: skTS(skAt("11:00:00")), EndTime: skTS(skAt("11:59:30.5"))}
		resp, err = s.Client.ListKeyServices(skAs(apitest.AdminToken), inHour)
		skWant(t, "services of default from 11:00 as admin", resp, err, &keytrailv1.ListKeyServicesResponse{Services: []*keytrailv1.KeyServiceUsage{
			usage("alpha", "billing", skAt("11:31:00"), skAt("11:32:58"), skAt("11:32:58"), 60, 0),
			usage("beta", "billing", skAt("11:41:00"), skAt("11:43:38"), skAt("11:43:38"), 80, 0),
			betaReports,
		}})
		resp, err = s.Client.ListKeyServices(skAs(tokSKAlpha), inHour)
		skWant(t, "services of default from 11:00 as the alpha reader", resp, err, &keytrailv1.ListKeyServicesResponse{Services: []*keytrailv1.KeyServiceUsage{
			usage("alpha", "billing", skAt("11:31:00"), skAt("11:32:58"), skAt("11:32:58"), 60, 0),
		}})

		// Pages continue across the projects: one row a page.
		var all []*keytrailv1.KeyServiceUsage
		token := ""
		for page := 1; page <= 4; page++ {
			resp, err := s.Client.ListKeyServices(skAs(apitest.AdminToken), &keytrailv1.ListKeyServicesRequest{KeyId: "default", PageSize: 1, PageToken: token})
			if err != nil {
				t.Fatal(err)
			}
			all = append(all, resp.GetServices()...)
			if token = resp.GetNextPageToken(); token == "" {
				break
			}
		}
		skWant(t, "services of default one row a page", &keytrailv1.ListKeyServicesResponse{Services: all}, nil,
			&keytrailv1.ListKeyServicesResponse{Services: []*keytrailv1.KeyServiceUsage{alphaBilling, betaBilling, betaReports}})
	})

	// GET /v1/services/billing/keys: the same key id in two projects is two rows.
	t.Run("keys of the service", func(t *testing.T) {
		want := map[string][]*keytrailv1.KeyServiceUsage{
			"admin":             {alphaBilling, betaBilling},
			"auditor":           {alphaBilling, betaBilling},
			"alpha reader":      {alphaBilling},
			"beta reader":       {betaBilling},
			"alpha+beta reader": {alphaBilling, betaBilling},
		}
		for _, c := range skCallers {
			resp, err := s.Client.ListServiceKeys(skAs(c.token), &keytrailv1.ListServiceKeysRequest{Service: "billing"})
			skWant(t, "keys of billing as "+c.name, resp, err, &keytrailv1.ListServiceKeysResponse{Keys: want[c.name]})
		}
		resp, err := s.Client.ListServiceKeys(skAs(tokSKAlphaBeta), &keytrailv1.ListServiceKeysRequest{Service: "billing", Project: "beta",
			StartTime: skTS(skAt("11:00:00")), EndTime: skTS(skNow)})
		skWant(t, "keys of billing in beta from 11:00 as the alpha+beta reader", resp, err, &keytrailv1.ListServiceKeysResponse{Keys: []*keytrailv1.KeyServiceUsage{
			usage("beta", "billing", skAt("11:41:00"), skAt("11:43:38"), skAt("11:43:38"), 80, 0),
		}})
	})

	alphaNow := &keytrailv1.KeyState{
		KeyId: "default", Project: "alpha", Status: keytrailv1.KeyStatus_KEY_STATUS_ACTIVE,
		CreatedAt: skTS(time.Date(2026, 11, 10, 8, 0, 0, 0, time.UTC)), CreatedBy: "alice",
		Budget:      &keytrailv1.Budget{AmountMicros: 100_000, Period: keytrailv1.BudgetPeriod_BUDGET_PERIOD_DAY},
		StatusSince: skTS(time.Date(2026, 11, 10, 8, 0, 0, 0, time.UTC)), LastEventAt: skTS(time.Date(2026, 11, 10, 8, 0, 0, 0, time.UTC)),
		LastUsedAt:        skTS(skAt("11:32:58")),
		LastUsedByService: []*keytrailv1.ServiceLastUsed{{Service: "billing", LastUsedAt: skTS(skAt("11:32:58"))}},
		AsOf:              skTS(skNow),
	}
	betaNow := &keytrailv1.KeyState{
		KeyId: "default", Project: "beta", Status: keytrailv1.KeyStatus_KEY_STATUS_DISABLED,
		CreatedAt: skTS(time.Date(2026, 11, 15, 8, 0, 0, 0, time.UTC)), CreatedBy: "bob",
		Budget:      &keytrailv1.Budget{AmountMicros: 50_000, Period: keytrailv1.BudgetPeriod_BUDGET_PERIOD_DAY},
		StatusSince: skTS(time.Date(2026, 11, 19, 8, 0, 0, 0, time.UTC)), LastEventAt: skTS(time.Date(2026, 11, 19, 8, 0, 0, 0, time.UTC)),
		LastUsedAt: skTS(skAt("11:50:00")),
		LastUsedByService: []*keytrailv1.ServiceLastUsed{
			{Service: "billing", LastUsedAt: skTS(skAt("11:43:38"))}, {Service: "reports", LastUsedAt: skTS(skAt("11:50:00"))},
		},
		AsOf: skTS(skNow),
	}
	gammaNow := &keytrailv1.KeyState{
		KeyId: "default", Project: "gamma", Status: keytrailv1.KeyStatus_KEY_STATUS_ACTIVE,
		CreatedAt: skTS(time.Date(2026, 11, 1, 8, 0, 0, 0, time.UTC)), CreatedBy: "gil",
		StatusSince: skTS(time.Date(2026, 11, 1, 8, 0, 0, 0, time.UTC)), LastEventAt: skTS(time.Date(2026, 11, 19, 20, 0, 0, 0, time.UTC)),
		AsOf: skTS(skNow),
	}

	// GET /v1/keys/default: one key's state; a key id in several of the caller's projects is
	// InvalidArgument naming those (and only those) projects.
	t.Run("key state", func(t *testing.T) {
		const ambiguousAll = `project: key "default" exists in projects alpha, beta, gamma; pass one of them`
		for _, c := range []struct {
			name, token string
			want        *keytrailv1.KeyState
			wantErr     string
		}{
			{"admin", apitest.AdminToken, nil, ambiguousAll},
			{"auditor", tokSKAuditor, nil, ambiguousAll},
			{"alpha reader", tokSKAlpha, alphaNow, ""},
			{"beta reader", tokSKBeta, betaNow, ""},
			{"alpha+beta reader", tokSKAlphaBeta, nil, `project: key "default" exists in projects alpha, beta; pass one of them`},
		} {
			resp, err := s.Client.GetKey(skAs(c.token), &keytrailv1.GetKeyRequest{KeyId: "default"})
			if c.wantErr != "" {
				wantGRPC(t, "key default as "+c.name, err, codes.InvalidArgument, c.wantErr)
				code, body := s.Get(t, "/v1/keys/default", nil, c.token)
				wantREST(t, "GET /v1/keys/default as "+c.name, code, body, http.StatusBadRequest, codes.InvalidArgument, c.wantErr)
				continue
			}
			skWant(t, "key default as "+c.name, resp.GetKey(), err, c.want)
		}
		// The case over REST: alpha's reader reads its own key.
		var rest keytrailv1.GetKeyResponse
		code, body := s.Get(t, "/v1/keys/default", nil, tokSKAlpha)
		if code != http.StatusOK || protojson.Unmarshal(body, &rest) != nil {
			t.Fatalf("GET /v1/keys/default as the alpha reader: %d %s", code, body)
		}
		skWant(t, "REST key default as the alpha reader", rest.GetKey(), nil, alphaNow)

		for project, want := range map[string]*keytrailv1.KeyState{"alpha": alphaNow, "beta": betaNow, "gamma": gammaNow} {
			resp, err := s.Client.GetKey(skAs(apitest.AdminToken), &keytrailv1.GetKeyRequest{KeyId: "default", Project: project})
			skWant(t, project+"/default as admin", resp.GetKey(), err, want)
		}
		_, err := s.Client.GetKey(skAs(tokSKAlpha), &keytrailv1.GetKeyRequest{KeyId: "default", Project: "beta"})
		wantGRPC(t, "beta/default as the alpha reader", err, codes.PermissionDenied, `not allowed to read project "beta"`)

		// At a past instant the key is ambiguous only where several projects knew it then:
		// on 11-12 beta's key did not exist yet (gamma's did).
		resp, err := s.Client.GetKey(skAs(tokSKAlphaBeta), &keytrailv1.GetKeyRequest{KeyId: "default", At: skTS(time.Date(2026, 11, 12, 0, 0, 0, 0, time.UTC))})
		skWant(t, "key default on 11-12 as the alpha+beta reader", resp.GetKey(), err, &keytrailv1.KeyState{
			KeyId: "default", Project: "alpha", Status: keytrailv1.KeyStatus_KEY_STATUS_ACTIVE,
			CreatedAt: skTS(time.Date(2026, 11, 10, 8, 0, 0, 0, time.UTC)), CreatedBy: "alice",
			Budget:      &keytrailv1.Budget{AmountMicros: 100_000, Period: keytrailv1.BudgetPeriod_BUDGET_PERIOD_DAY},
			StatusSince: skTS(time.Date(2026, 11, 10, 8, 0, 0, 0, time.UTC)), LastEventAt: skTS(time.Date(2026, 11, 10, 8, 0, 0, 0, time.UTC)),
			AsOf: skTS(time.Date(2026, 11, 12, 0, 0, 0, 0, time.UTC)),
		})
		// Last use at an instant is searched per project: at 10:00 alpha's billing last ran at
		// 09:57:00, beta's at 09:57:30; beta's reports had not run yet.
		at10 := skTS(skAt("10:00:00"))
		resp, err = s.Client.GetKey(skAs(tokSKAlphaBeta), &keytrailv1.GetKeyRequest{KeyId: "default", Project: "alpha", At: at10})
		skWant(t, "alpha/default at 10:00", resp.GetKey(), err, &keytrailv1.KeyState{
			KeyId: "default", Project: "alpha", Status: keytrailv1.KeyStatus_KEY_STATUS_ACTIVE,
			CreatedAt: alphaNow.CreatedAt, CreatedBy: "alice", Budget: alphaNow.Budget, StatusSince: alphaNow.StatusSince, LastEventAt: alphaNow.LastEventAt,
			LastUsedAt:        skTS(skAt("09:57:00")),
			LastUsedByService: []*keytrailv1.ServiceLastUsed{{Service: "billing", LastUsedAt: skTS(skAt("09:57:00"))}},
			AsOf:              at10,
		})
		resp, err = s.Client.GetKey(skAs(tokSKBeta), &keytrailv1.GetKeyRequest{KeyId: "default", At: at10})
		skWant(t, "beta/default at 10:00 as the beta reader", resp.GetKey(), err, &keytrailv1.KeyState{
			KeyId: "default", Project: "beta", Status: keytrailv1.KeyStatus_KEY_STATUS_DISABLED,
			CreatedAt: betaNow.CreatedAt, CreatedBy: "bob", Budget: betaNow.Budget, StatusSince: betaNow.StatusSince, LastEventAt: betaNow.LastEventAt,
			LastUsedAt:        skTS(skAt("09:57:30")),
			LastUsedByService: []*keytrailv1.ServiceLastUsed{{Service: "billing", LastUsedAt: skTS(skAt("09:57:30"))}},
			AsOf:              at10,
		})
	})

	// GET /v1/keys/default/usage: one key's series over time, like its state.
	t.Run("key usage", func(t *testing.T) {
		hour := &keytrailv1.GetKeyUsageRequest{KeyId: "default", StartTime: skTS(skAt("11:00:00")), EndTime: skTS(skNow), Bucket: durationpb.New(time.Hour)}
		series := func(project string, s ...*keytrailv1.UsageSeries) *keytrailv1.GetKeyUsageResponse {
			return &keytrailv1.GetKeyUsageResponse{KeyId: "default", Project: project, Bucket: durationpb.New(time.Hour),
				BucketStarts: []*timestamppb.Timestamp{skTS(skAt("11:00:00"))}, Series: s}
		}
		alpha := series("alpha", &keytrailv1.UsageSeries{Service: "billing", Requests: []int64{60}, Errors: []int64{0}, CostMicros: []int64{60_000}})
		beta := series("beta",
			&keytrailv1.UsageSeries{Service: "billing", Requests: []int64{80}, Errors: []int64{0}, CostMicros: []int64{80_000}},
			&keytrailv1.UsageSeries{Service: "reports", Requests: []int64{1}, Errors: []int64{1}, CostMicros: []int64{1000}})
		for _, c := range []struct {
			name, token string
			want        *keytrailv1.GetKeyUsageResponse
			wantErr     string
		}{
			{"admin", apitest.AdminToken, nil, `project: key "default" exists in projects alpha, beta, gamma; pass one of them`},
			{"auditor", tokSKAuditor, nil, `project: key "default" exists in projects alpha, beta, gamma; pass one of them`},
			{"alpha reader", tokSKAlpha, alpha, ""},
			{"beta reader", tokSKBeta, beta, ""},
			{"alpha+beta reader", tokSKAlphaBeta, nil, `project: key "default" exists in projects alpha, beta; pass one of them`},
		} {
			resp, err := s.Client.GetKeyUsage(skAs(c.token), hour)
			if c.wantErr != "" {
				wantGRPC(t, "usage of default as "+c.name, err, codes.InvalidArgument, c.wantErr)
				continue
			}
			skWant(t, "usage of default as "+c.name, resp, err, c.want)
		}
		inBeta := proto.Clone(hour).(*keytrailv1.GetKeyUsageRequest)
		inBeta.Project = "beta"
		resp, err := s.Client.GetKeyUsage(skAs(tokSKAlphaBeta), inBeta)
		skWant(t, "usage of beta/default as the alpha+beta reader", resp, err, beta)
	})

	// GET /v1/keys: a key per project, ordered by key id then project.
	t.Run("key list", func(t *testing.T) {
		want := map[string][]*keytrailv1.KeyState{
			"admin":             {alphaNow, betaNow, gammaNow},
			"auditor":           {alphaNow, betaNow, gammaNow},
			"alpha reader":      {alphaNow},
			"beta reader":       {betaNow},
			"alpha+beta reader": {alphaNow, betaNow},
		}
		for _, c := range skCallers {
			resp, err := s.Client.ListKeys(skAs(c.token), &keytrailv1.ListKeysRequest{})
			skWant(t, "keys as "+c.name, resp, err, &keytrailv1.ListKeysResponse{Keys: want[c.name]})
		}
		// One key a page: the cursor is (key id, project).
		var all []*keytrailv1.KeyState
		token := ""
		for page := 1; page <= 4; page++ {
			resp, err := s.Client.ListKeys(skAs(apitest.AdminToken), &keytrailv1.ListKeysRequest{PageSize: 1, PageToken: token})
			if err != nil {
				t.Fatal(err)
			}
			all = append(all, resp.GetKeys()...)
			if token = resp.GetNextPageToken(); token == "" {
				break
			}
		}
		skWant(t, "keys one a page", &keytrailv1.ListKeysResponse{Keys: all}, nil, &keytrailv1.ListKeysResponse{Keys: []*keytrailv1.KeyState{alphaNow, betaNow, gammaNow}})
	})

	// GET /v1/new-callers?key_id=default: a row per project, key and caller.
	t.Run("new callers", func(t *testing.T) {
		caller := func(project string, kind keytrailv1.CallerKind, name string, first, last, keyFirst time.Time, requests int64) *keytrailv1.NewCaller {
			return &keytrailv1.NewCaller{Project: project, KeyId: "default", Kind: kind, Caller: name, FirstSeen: skTS(first), LastSeen: skTS(last),
				Requests: requests, KeyFirstSeen: skTS(keyFirst)}
		}
		svc, ip := keytrailv1.CallerKind_CALLER_KIND_SERVICE, keytrailv1.CallerKind_CALLER_KIND_CLIENT_IP
		betaReportsNew := caller("beta", svc, "reports", skAt("11:50:00"), skAt("11:50:00"), skAt("09:01:30"), 1)
		betaBillingNew := caller("beta", svc, "billing", skAt("09:01:30"), skAt("11:43:38"), skAt("09:01:30"), 128)
		betaIP := caller("beta", ip, "10.0.0.2", skAt("09:01:30"), skAt("11:50:00"), skAt("09:01:30"), 129)
		alphaBillingNew := caller("alpha", svc, "billing", skAt("09:01:00"), skAt("11:32:58"), skAt("09:01:00"), 108)
		alphaIP := caller("alpha", ip, "10.0.0.1", skAt("09:01:00"), skAt("11:32:58"), skAt("09:01:00"), 108)
		all := []*keytrailv1.NewCaller{betaReportsNew, betaBillingNew, betaIP, alphaBillingNew, alphaIP}
		want := map[string][]*keytrailv1.NewCaller{
			"admin":             all,
			"auditor":           all,
			"alpha reader":      {alphaBillingNew, alphaIP},
			"beta reader":       {betaReportsNew, betaBillingNew, betaIP},
			"alpha+beta reader": all,
		}
		for _, c := range skCallers {
			resp, err := s.Client.ListNewCallers(skAs(c.token), &keytrailv1.ListNewCallersRequest{KeyId: "default", StartTime: skTS(skAt("00:00:00"))})
			skWant(t, "new callers of default as "+c.name, resp, err, &keytrailv1.ListNewCallersResponse{Callers: want[c.name]})
		}
	})

	// GET /v1/spend: grouped by key, a row per project; a key_id filter without a project is
	// one key or a 400 naming the projects that know the key id.
	t.Run("spend", func(t *testing.T) {
		day := skTS(time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC))
		row := func(project string, requests int64) *keytrailv1.SpendRow {
			return &keytrailv1.SpendRow{BucketStart: day, Project: project, KeyId: "default", Requests: requests,
				InputTokens: 10 * requests, OutputTokens: 5 * requests, CostMicros: 1000 * requests, Cost: budget.FormatMicros(1000 * requests)}
		}
		alpha, beta := row("alpha", 108), row("beta", 129)
		rangeOf := func(req *keytrailv1.GetSpendRequest) *keytrailv1.GetSpendRequest {
			req.StartTime, req.EndTime = day, skTS(skNow)
			return req
		}
		resp, err := s.Client.GetSpend(skAs(apitest.AdminToken), rangeOf(&keytrailv1.GetSpendRequest{}))
		skWant(t, "spend by key as admin", resp, err, &keytrailv1.GetSpendResponse{
			Rows: []*keytrailv1.SpendRow{alpha, beta}, TotalRequests: 237, TotalCostMicros: 237_000, TotalCost: "0.237000",
		})
		for _, c := range []struct {
			name, token string
			want        *keytrailv1.SpendRow
			wantCode    codes.Code
			wantErr     string
		}{
			{"admin", apitest.AdminToken, nil, codes.InvalidArgument, `project: key "default" exists in projects alpha, beta, gamma; pass one of them`},
			{"auditor", tokSKAuditor, nil, codes.InvalidArgument, `project: key "default" exists in projects alpha, beta, gamma; pass one of them`},
			{"alpha reader", tokSKAlpha, alpha, codes.OK, ""},
			{"beta reader", tokSKBeta, beta, codes.OK, ""},
			{"alpha+beta reader", tokSKAlphaBeta, nil, codes.PermissionDenied, "this token reads projects alpha, beta: pass project"},
		} {
			resp, err := s.Client.GetSpend(skAs(c.token), rangeOf(&keytrailv1.GetSpendRequest{KeyId: "default"}))
			if c.wantErr != "" {
				wantGRPC(t, "spend of key_id default as "+c.name, err, c.wantCode, c.wantErr)
				continue
			}
			skWant(t, "spend of key_id default as "+c.name, resp, err, &keytrailv1.GetSpendResponse{
				Rows: []*keytrailv1.SpendRow{c.want}, TotalRequests: c.want.Requests, TotalCostMicros: c.want.CostMicros, TotalCost: c.want.Cost,
			})
		}
		code, body := s.Get(t, "/v1/spend", url.Values{"key_id": {"default"}}, apitest.AdminToken)
		wantREST(t, "GET /v1/spend?key_id=default as admin", code, body, http.StatusBadRequest, codes.InvalidArgument,
			`project: key "default" exists in projects alpha, beta, gamma; pass one of them`)
		// With the project, one key.
		resp, err = s.Client.GetSpend(skAs(tokSKAlphaBeta), rangeOf(&keytrailv1.GetSpendRequest{KeyId: "default", Project: "beta",
			GroupBy: []keytrailv1.SpendDimension{keytrailv1.SpendDimension_SPEND_DIMENSION_SERVICE}}))
		skWant(t, "spend of beta/default by service", resp, err, &keytrailv1.GetSpendResponse{
			Rows: []*keytrailv1.SpendRow{
				{BucketStart: day, Service: "billing", Requests: 128, InputTokens: 1280, OutputTokens: 640, CostMicros: 128_000, Cost: "0.128000"},
				{BucketStart: day, Service: "reports", Requests: 1, InputTokens: 10, OutputTokens: 5, CostMicros: 1000, Cost: "0.001000"},
			},
			TotalRequests: 129, TotalCostMicros: 129_000, TotalCost: "0.129000",
		})
	})

	// GET /v1/budgets?key_id=default: a row per project's key.
	t.Run("budgets", func(t *testing.T) {
		util := func(project string, amount, spent int64, percent float64) *keytrailv1.BudgetUtilization {
			day := time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC)
			u := &keytrailv1.BudgetUtilization{
				Project: project, KeyId: "default",
				Budget:  &keytrailv1.Budget{AmountMicros: amount, Period: keytrailv1.BudgetPeriod_BUDGET_PERIOD_DAY},
				Current: &keytrailv1.BudgetPeriodSpend{PeriodStart: skTS(day), PeriodEnd: skTS(day.AddDate(0, 0, 1)), CostMicros: spent, PercentUsed: percent},
				Status:  keytrailv1.BudgetStatus_BUDGET_STATUS_OVER,
			}
			for i := 1; i <= 3; i++ {
				u.Previous = append(u.Previous, &keytrailv1.BudgetPeriodSpend{PeriodStart: skTS(day.AddDate(0, 0, -i)), PeriodEnd: skTS(day.AddDate(0, 0, 1-i))})
			}
			return u
		}
		alpha, beta := util("alpha", 100_000, 108_000, 108), util("beta", 50_000, 129_000, 258)
		for _, c := range []struct {
			name, token, project string
			want                 []*keytrailv1.BudgetUtilization
		}{
			{"admin", apitest.AdminToken, "", []*keytrailv1.BudgetUtilization{beta, alpha}},
			{"auditor", tokSKAuditor, "", []*keytrailv1.BudgetUtilization{beta, alpha}},
			{"alpha reader", tokSKAlpha, "", []*keytrailv1.BudgetUtilization{alpha}},
			{"beta reader", tokSKBeta, "", []*keytrailv1.BudgetUtilization{beta}},
			{"alpha+beta reader", tokSKAlphaBeta, "alpha", []*keytrailv1.BudgetUtilization{alpha}},
			{"admin, project beta", apitest.AdminToken, "beta", []*keytrailv1.BudgetUtilization{beta}},
		} {
			resp, err := s.Client.ListBudgets(skAs(c.token), &keytrailv1.ListBudgetsRequest{KeyId: "default", Project: c.project})
			skWant(t, "budgets of default as "+c.name, resp, err, &keytrailv1.ListBudgetsResponse{Budgets: c.want})
		}
	})

	// GET /v1/audit/events?key_id=default: each project's events, filtered in SQL.
	t.Run("audit events", func(t *testing.T) {
		want := map[string][]string{
			"admin":             {"gamma/g2", "beta/b2", "beta/b1", "alpha/a1", "gamma/g1"},
			"auditor":           {"gamma/g2", "beta/b2", "beta/b1", "alpha/a1", "gamma/g1"},
			"alpha reader":      {"alpha/a1"},
			"beta reader":       {"beta/b2", "beta/b1"},
			"alpha+beta reader": {"beta/b2", "beta/b1", "alpha/a1"},
		}
		ids := func(events []*keytrailv1.LifecycleEvent) []string {
			var out []string
			for _, e := range events {
				out = append(out, e.GetProject()+"/"+e.GetEventId())
			}
			return out
		}
		for _, c := range skCallers {
			resp, err := s.Client.ListAuditEvents(skAs(c.token), &keytrailv1.ListAuditEventsRequest{KeyId: "default"})
			if err != nil {
				t.Fatalf("audit events of default as %s: %v", c.name, err)
			}
			if got := ids(resp.GetEvents()); !slices.Equal(got, want[c.name]) {
				t.Errorf("audit events of default as %s: %v, want %v", c.name, got, want[c.name])
			}
		}
		// The alpha+beta reader's page of one holds one of its events (the projects are filtered
		// before the page is cut), not an empty page in place of gamma's newest event.
		resp, err := s.Client.ListAuditEvents(skAs(tokSKAlphaBeta), &keytrailv1.ListAuditEventsRequest{KeyId: "default", PageSize: 1, PageToken: ""})
		if err != nil || !slices.Equal(ids(resp.GetEvents()), []string{"beta/b2"}) || resp.GetNextPageToken() == "" {
			t.Errorf("first page of one as the alpha+beta reader: %v %q %v", ids(resp.GetEvents()), resp.GetNextPageToken(), err)
		}
		resp, err = s.Client.ListAuditEvents(skAs(apitest.AdminToken), &keytrailv1.ListAuditEventsRequest{KeyId: "default", Project: "alpha"})
		if err != nil || !slices.Equal(ids(resp.GetEvents()), []string{"alpha/a1"}) {
			t.Errorf("audit events of alpha/default as admin: %v %v", ids(resp.GetEvents()), err)
		}
	})

	// GET /v1/anomalies?key_id=default: each project's key is its own series.
	t.Run("anomalies", func(t *testing.T) {
		anomaly := func(project string, bucket string, observed float64) string {
			return project + " " + bucket + " " + protojson.Format(&keytrailv1.Anomaly{Observed: observed})
		}
		alpha, beta := anomaly("alpha", "11:30", 60), anomaly("beta", "11:40", 80)
		want := map[string][]string{
			"admin":             {beta, alpha},
			"auditor":           {beta, alpha},
			"alpha reader":      {alpha},
			"beta reader":       {beta},
			"alpha+beta reader": {beta, alpha},
		}
		for _, c := range skCallers {
			resp, err := s.Client.ListAnomalies(skAs(c.token), &keytrailv1.ListAnomaliesRequest{
				KeyId: "default", StartTime: skTS(skAt("11:00:00")), EndTime: skTS(skNow), Baseline: durationpb.New(2 * time.Hour),
				Scope: keytrailv1.AnomalyScope_ANOMALY_SCOPE_KEY, Metrics: []keytrailv1.AnomalyMetric{keytrailv1.AnomalyMetric_ANOMALY_METRIC_REQUESTS},
			})
			if err != nil {
				t.Fatalf("anomalies of default as %s: %v", c.name, err)
			}
			var got []string
			for _, a := range resp.GetAnomalies() {
				// Baseline: 2 requests in each of 24 buckets (median 2, MAD 0, scale 1).
				if a.GetKeyId() != "default" || a.GetService() != "" || a.GetExpected() != 2 || a.GetScore() != a.GetObserved()-2 {
					t.Errorf("anomaly as %s: %s", c.name, protojson.Format(a))
				}
				got = append(got, anomaly(a.GetProject(), a.GetBucketStart().AsTime().Format("15:04"), a.GetObserved()))
			}
			if !slices.Equal(got, want[c.name]) {
				t.Errorf("anomalies of default as %s: %v, want %v", c.name, got, want[c.name])
			}
		}
	})
}
