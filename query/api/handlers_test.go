package api_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/internal/apitest"
	"github.com/keytrail/keytrail/internal/testenv"
	"github.com/keytrail/keytrail/query/anomaly"
	"github.com/keytrail/keytrail/query/api"
	"github.com/keytrail/keytrail/query/auth"
	"github.com/keytrail/keytrail/query/budget"
	"github.com/keytrail/keytrail/query/chreader"
	"github.com/keytrail/keytrail/query/keystate"
)

// These tests run the real server (interceptors, validation, the REST gateway) over a fake
// reader: what the handlers ask the reader, how they turn its answers into protos and its
// errors into statuses. What the answers hold is tested against ClickHouse elsewhere.

// fakeReader remembers the last request of each kind and answers from its fields. A method it
// does not implement panics through the nil embedded Reader (the server answers Internal):
// a test that reaches one has a bug.
type fakeReader struct {
	api.Reader
	mu sync.Mutex
	// err, when set, is every answer.
	err error

	spendReq   chreader.SpendRequest
	spend      chreader.SpendPage
	budgetsReq chreader.BudgetsRequest
	budgets    []chreader.BudgetUtilization
	anomalyReq chreader.AnomalyRequest
	auditReq   chreader.AuditRequest
	audit      chreader.AuditPage
	usageReq   chreader.UsageRequest
	usage      chreader.UsagePage
	keyReq     chreader.KeyRequest
	key        chreader.Key
}

func (f *fakeReader) Spend(_ context.Context, req chreader.SpendRequest) (chreader.SpendPage, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.spendReq = req
	return f.spend, f.err
}

func (f *fakeReader) Budgets(_ context.Context, req chreader.BudgetsRequest) ([]chreader.BudgetUtilization, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.budgetsReq = req
	return f.budgets, f.err
}

func (f *fakeReader) Anomalies(_ context.Context, req chreader.AnomalyRequest) (chreader.AnomalyResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.anomalyReq = req
	return chreader.AnomalyResult{}, f.err
}

func (f *fakeReader) AuditEvents(_ context.Context, req chreader.AuditRequest) (chreader.AuditPage, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.auditReq = req
	return f.audit, f.err
}

func (f *fakeReader) KeyServices(_ context.Context, req chreader.UsageRequest) (chreader.UsagePage, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.usageReq = req
	return f.usage, f.err
}

func (f *fakeReader) Key(_ context.Context, req chreader.KeyRequest) (chreader.Key, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.keyReq = req
	return f.key, f.err
}

const tokFakeAcmeGlobex = "ktk_fake_acme_globex"

func startFake(t *testing.T, f *fakeReader) (*apitest.Server, *testenv.SyncBuffer) {
	t.Helper()
	log := &testenv.SyncBuffer{}
	srv := apitest.Start(t, nil, apitest.Options{
		Reader: f,
		Logger: slog.New(slog.NewTextHandler(log, nil)),
		Tokens: map[string]auth.Entry{
			tokFakeAcmeGlobex: {Name: "acme-globex-bot", Role: auth.RoleProjectReader, Projects: []string{"acme", "globex"}, RatePerSecond: 1e6, Burst: 1e6},
		},
	})
	return srv, log
}

func fakeGet(t *testing.T, srv *apitest.Server, path string, params url.Values, token string, out proto.Message) {
	t.Helper()
	code, body := srv.Get(t, path, params, token)
	if code != http.StatusOK {
		t.Fatalf("GET %s?%s: %d %s", path, params.Encode(), code, body)
	}
	if out != nil {
		if err := protojson.Unmarshal(body, out); err != nil {
			t.Fatalf("GET %s: %v: %s", path, err, body)
		}
	}
}

func TestHandlersMapRequestsToTheReader(t *testing.T) {
	t.Parallel()
	f := &fakeReader{}
	srv, _ := startFake(t, f)
	start, end := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC), time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC)

	t.Run("spend: dimensions and granularity become the reader's", func(t *testing.T) {
		fakeGet(t, srv, "/v1/spend", url.Values{
			"group_by": {"SPEND_DIMENSION_SERVICE", "SPEND_DIMENSION_MODEL"}, "granularity": {"GRANULARITY_MONTH"},
			"start_time": {start.Format(time.RFC3339)}, "end_time": {end.Format(time.RFC3339)},
			"project": {"acme"}, "key_id": {"key_a"}, "service": {"billing"}, "model": {"gpt-4o"}, "page_size": {"7"},
		}, apitest.AdminToken, nil)
		want := chreader.SpendRequest{
			GroupBy: []chreader.Dimension{chreader.DimensionService, chreader.DimensionModel}, Granularity: budget.Month,
			Start: start, End: end, Filter: chreader.SpendFilter{Project: "acme", KeyID: "key_a", Service: "billing", Model: "gpt-4o"},
			PageSize: 7,
		}
		if !reflect.DeepEqual(f.spendReq, want) {
			t.Errorf("spend request %+v\nwant %+v", f.spendReq, want)
		}
		for granularity, want := range map[string]budget.Period{"": budget.Day, "GRANULARITY_HOUR": budget.Hour, "GRANULARITY_DAY": budget.Day} {
			params := url.Values{"project": {"acme"}}
			if granularity != "" {
				params.Set("granularity", granularity)
			}
			fakeGet(t, srv, "/v1/spend", params, apitest.AdminToken, nil)
			if f.spendReq.Granularity != want || f.spendReq.GroupBy != nil {
				t.Errorf("granularity %q: reader asked for %s grouped by %v, want %s and the default grouping", granularity, f.spendReq.Granularity, f.spendReq.GroupBy, want)
			}
		}
	})

	t.Run("anomalies: scope becomes the domain's, a reader's projects filter the scan", func(t *testing.T) {
		fakeGet(t, srv, "/v1/anomalies", url.Values{
			"scope": {"ANOMALY_SCOPE_KEY_SERVICE"}, "metrics": {"ANOMALY_METRIC_COST"}, "baseline": {"7200s"},
			"sensitivity": {"4.5"}, "min_requests": {"10"}, "key_id": {"key_a"},
		}, tokFakeAcmeGlobex, nil)
		want := chreader.AnomalyRequest{
			Metrics: []keytrailv1.AnomalyMetric{keytrailv1.AnomalyMetric_ANOMALY_METRIC_COST}, Scope: anomaly.ScopeKeyService,
			Sensitivity: 4.5, Baseline: 2 * time.Hour, MinRequests: 10, Projects: []string{"acme", "globex"}, KeyID: "key_a",
		}
		if !reflect.DeepEqual(f.anomalyReq, want) {
			t.Errorf("anomaly request %+v\nwant %+v", f.anomalyReq, want)
		}
		for scope, want := range map[string]anomaly.Scope{"": anomaly.ScopeBoth, "ANOMALY_SCOPE_KEY": anomaly.ScopeKey} {
			params := url.Values{}
			if scope != "" {
				params.Set("scope", scope)
			}
			fakeGet(t, srv, "/v1/anomalies", params, apitest.AdminToken, nil)
			if f.anomalyReq.Scope != want || f.anomalyReq.Projects != nil {
				t.Errorf("scope %q: reader asked for %s over %v, want %s over every project", scope, f.anomalyReq.Scope, f.anomalyReq.Projects, want)
			}
		}
	})
}

// A key is (project, key_id): the per-key handlers hand the caller's projects to the reader,
// which filters them in SQL, instead of checking the rows' projects afterwards.
func TestPerKeyHandlersPassTheCallersProjects(t *testing.T) {
	t.Parallel()
	f := &fakeReader{key: chreader.Key{State: keystate.State{KeyID: "default", Project: "acme"}}}
	srv, _ := startFake(t, f)
	for _, c := range []struct {
		name, token, project string
		wantProject          string
		wantProjects         []string
	}{
		{"admin", apitest.AdminToken, "", "", nil},
		{"admin naming a project", apitest.AdminToken, "globex", "globex", nil},
		{"reader of two", tokFakeAcmeGlobex, "", "", []string{"acme", "globex"}},
		{"reader of two naming one", tokFakeAcmeGlobex, "acme", "acme", nil},
	} {
		params := url.Values{}
		if c.project != "" {
			params.Set("project", c.project)
		}
		fakeGet(t, srv, "/v1/keys/default/services", params, c.token, nil)
		if want := (chreader.UsageRequest{Value: "default", Project: c.wantProject, Projects: c.wantProjects}); !reflect.DeepEqual(f.usageReq, want) {
			t.Errorf("%s: services request %+v, want %+v", c.name, f.usageReq, want)
		}
		fakeGet(t, srv, "/v1/keys/default", params, c.token, nil)
		if want := (chreader.KeyRequest{KeyID: "default", Project: c.wantProject, Projects: c.wantProjects}); !reflect.DeepEqual(f.keyReq, want) {
			t.Errorf("%s: key request %+v, want %+v", c.name, f.keyReq, want)
		}
	}
	// A project the caller may not read is refused before the reader is asked.
	f.keyReq = chreader.KeyRequest{}
	code, body := srv.Get(t, "/v1/keys/default", url.Values{"project": {"initech"}}, tokFakeAcmeGlobex)
	wantREST(t, "key of initech as the acme+globex reader", code, body, http.StatusForbidden, codes.PermissionDenied, `not allowed to read project "initech"`)
	if f.keyReq.KeyID != "" {
		t.Errorf("the reader was asked %+v", f.keyReq)
	}
}

func TestHandlersMapAnswersToProtos(t *testing.T) {
	t.Parallel()
	f := &fakeReader{}
	srv, _ := startFake(t, f)
	ctx := context.Background()
	at := time.Date(2026, 3, 2, 10, 30, 0, 123_000_000, time.UTC)

	t.Run("audit events", func(t *testing.T) {
		f.audit = chreader.AuditPage{NextPageToken: "next", Events: []chreader.AuditEvent{
			{
				EventID: "ev2", Time: at, Project: "acme", KeyID: "key_a", Action: keytrailv1.Action_ACTION_BUDGET_CHANGED,
				Actor: "alice", ActorType: keytrailv1.ActorType_ACTOR_TYPE_USER, Reason: "quarter", ExpiresAt: at.Add(24 * time.Hour),
				Budget: &keystate.Budget{AmountMicros: 5_000_000, Period: keytrailv1.BudgetPeriod_BUDGET_PERIOD_WEEK},
				Scopes: []string{"chat"}, Attributes: map[string]string{"ticket": "T-1"},
				Changes: []chreader.FieldChange{{Field: "budget", Before: "1", After: "5"}},
			},
			{EventID: "ev1", Time: at.Add(-time.Hour), Project: "acme", KeyID: "key_a", Action: keytrailv1.Action_ACTION_ROTATED, NewKeyID: "key_b"},
		}}
		resp, err := srv.Client.ListAuditEvents(ctx, &keytrailv1.ListAuditEventsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		want := &keytrailv1.ListAuditEventsResponse{NextPageToken: "next", Events: []*keytrailv1.LifecycleEvent{
			{
				EventId: "ev2", Time: timestamppb.New(at), Project: "acme", KeyId: "key_a", Action: keytrailv1.Action_ACTION_BUDGET_CHANGED,
				Actor: "alice", ActorType: keytrailv1.ActorType_ACTOR_TYPE_USER, Reason: "quarter", ExpiresAt: timestamppb.New(at.Add(24 * time.Hour)),
				Budget: &keytrailv1.Budget{AmountMicros: 5_000_000, Period: keytrailv1.BudgetPeriod_BUDGET_PERIOD_WEEK},
				Scopes: []string{"chat"}, Attributes: map[string]string{"ticket": "T-1"},
				Changes: []*keytrailv1.FieldChange{{Field: "budget", Before: "1", After: "5"}},
			},
			{EventId: "ev1", Time: timestamppb.New(at.Add(-time.Hour)), Project: "acme", KeyId: "key_a", Action: keytrailv1.Action_ACTION_ROTATED, NewKeyId: "key_b"},
		}}
		if !proto.Equal(resp, want) {
			t.Errorf("got %s\nwant %s", protojson.Format(resp), protojson.Format(want))
		}
	})

	t.Run("budgets: periods and statuses", func(t *testing.T) {
		day := time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC)
		f.budgets = []chreader.BudgetUtilization{{
			KeyBudget: chreader.KeyBudget{Project: "acme", KeyID: "key_a", AmountMicros: 2_000_000, Period: budget.Week},
			Current:   chreader.PeriodSpend{Start: day, End: day.AddDate(0, 0, 7), CostMicros: 1_700_001, PercentUsed: 85.00005},
			Previous:  []chreader.PeriodSpend{{Start: day.AddDate(0, 0, -7), End: day, CostMicros: 5, PercentUsed: 0.00025}},
			Status:    budget.Near,
		}}
		resp, err := srv.Client.ListBudgets(ctx, &keytrailv1.ListBudgetsRequest{Project: "acme"})
		if err != nil {
			t.Fatal(err)
		}
		want := &keytrailv1.ListBudgetsResponse{Budgets: []*keytrailv1.BudgetUtilization{{
			Project: "acme", KeyId: "key_a",
			Budget:   &keytrailv1.Budget{AmountMicros: 2_000_000, Period: keytrailv1.BudgetPeriod_BUDGET_PERIOD_WEEK},
			Current:  &keytrailv1.BudgetPeriodSpend{PeriodStart: timestamppb.New(day), PeriodEnd: timestamppb.New(day.AddDate(0, 0, 7)), CostMicros: 1_700_001, PercentUsed: 85.00005},
			Previous: []*keytrailv1.BudgetPeriodSpend{{PeriodStart: timestamppb.New(day.AddDate(0, 0, -7)), PeriodEnd: timestamppb.New(day), CostMicros: 5, PercentUsed: 0.00025}},
			Status:   keytrailv1.BudgetStatus_BUDGET_STATUS_NEAR,
		}}}
		if !proto.Equal(resp, want) {
			t.Errorf("got %s\nwant %s", protojson.Format(resp), protojson.Format(want))
		}
	})

	t.Run("spend: money as micros and as an exact decimal", func(t *testing.T) {
		f.spend = chreader.SpendPage{
			Rows:          []chreader.SpendRow{{Bucket: at, Project: "acme", KeyID: "key_a", Requests: 3, InputTokens: 30, OutputTokens: 9, CostMicros: 1_000_001}},
			TotalRequests: 3, TotalCostMicros: 1_000_001, NextPageToken: "n",
		}
		resp, err := srv.Client.GetSpend(ctx, &keytrailv1.GetSpendRequest{Project: "acme"})
		if err != nil {
			t.Fatal(err)
		}
		want := &keytrailv1.GetSpendResponse{
			Rows: []*keytrailv1.SpendRow{{BucketStart: timestamppb.New(at), Project: "acme", KeyId: "key_a", Requests: 3, InputTokens: 30, OutputTokens: 9,
				CostMicros: 1_000_001, Cost: "1.000001"}},
			TotalRequests: 3, TotalCostMicros: 1_000_001, TotalCost: "1.000001", NextPageToken: "n",
		}
		if !proto.Equal(resp, want) {
			t.Errorf("got %s\nwant %s", protojson.Format(resp), protojson.Format(want))
		}
	})
}

func TestHandlerErrorsMapToStatuses(t *testing.T) {
	t.Parallel()
	f := &fakeReader{}
	srv, log := startFake(t, f)
	notFoundAt := time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC)
	const internal = "internal error while reading storage; the operator's log has the details"
	for _, c := range []struct {
		name       string
		err        error
		path       string
		call       func(context.Context) error
		wantHTTP   int
		wantCode   codes.Code
		wantMsg    string
		wantLogged string // in the operator's log, never in the answer
	}{
		{
			name: "bad input names the field", err: &chreader.InvalidError{Field: "page_token", Reason: "was issued for different filters"},
			path: "/v1/keys/key_a/services", call: func(ctx context.Context) error {
				_, err := srv.Client.ListKeyServices(ctx, &keytrailv1.ListKeyServicesRequest{KeyId: "key_a"})
				return err
			},
			wantHTTP: http.StatusBadRequest, wantCode: codes.InvalidArgument, wantMsg: "page_token: was issued for different filters",
		},
		{
			name: "an unknown key is not found", err: &chreader.KeyNotFoundError{KeyID: "key_a", At: notFoundAt},
			path: "/v1/keys/key_a", call: func(ctx context.Context) error {
				_, err := srv.Client.GetKey(ctx, &keytrailv1.GetKeyRequest{KeyId: "key_a"})
				return err
			},
			wantHTTP: http.StatusNotFound, wantCode: codes.NotFound, wantMsg: `key "key_a" is not known at 2026-03-02T10:00:00Z`,
		},
		{
			name: "a storage deadline", err: fmt.Errorf("query spend: %w", context.DeadlineExceeded),
			path: "/v1/spend", call: func(ctx context.Context) error {
				_, err := srv.Client.GetSpend(ctx, &keytrailv1.GetSpendRequest{})
				return err
			},
			wantHTTP: http.StatusGatewayTimeout, wantCode: codes.DeadlineExceeded, wantMsg: "the query took too long",
		},
		{
			// What the driver says when every connection of its pool is busy: overload, so the
			// caller is told to retry rather than handed an internal error.
			name: "no free ClickHouse connection is unavailable", err: fmt.Errorf("query spend: %w", clickhouse.ErrAcquireConnTimeout),
			path: "/v1/spend", call: func(ctx context.Context) error {
				_, err := srv.Client.GetSpend(ctx, &keytrailv1.GetSpendRequest{})
				return err
			},
			wantHTTP: http.StatusServiceUnavailable, wantCode: codes.Unavailable, wantMsg: "the server is busy; retry shortly",
		},
		{
			name: "a storage failure is logged, not shown",
			err:  errors.New("query audit events: code: 60, message: Table keytrail.lifecycle_events doesn't exist"),
			path: "/v1/audit/events", call: func(ctx context.Context) error {
				_, err := srv.Client.ListAuditEvents(ctx, &keytrailv1.ListAuditEventsRequest{})
				return err
			},
			wantHTTP: http.StatusInternalServerError, wantCode: codes.Internal, wantMsg: internal,
			wantLogged: "Table keytrail.lifecycle_events doesn't exist",
		},
		{
			// Not a key lookup: a KeyNotFoundError from another answer is a bug, not a 404.
			name: "not found outside key state is internal", err: &chreader.KeyNotFoundError{KeyID: "key_b", At: notFoundAt},
			path: "/v1/keys/key_b/services", call: func(ctx context.Context) error {
				_, err := srv.Client.ListKeyServices(ctx, &keytrailv1.ListKeyServicesRequest{KeyId: "key_b"})
				return err
			},
			wantHTTP: http.StatusInternalServerError, wantCode: codes.Internal, wantMsg: internal,
			wantLogged: `key \"key_b\" is not known`,
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			f.mu.Lock()
			f.err = c.err
			f.mu.Unlock()
			code, body := srv.Get(t, c.path, nil, apitest.AdminToken)
			wantREST(t, "GET "+c.path, code, body, c.wantHTTP, c.wantCode, c.wantMsg)
			wantGRPC(t, "gRPC for "+c.path, c.call(context.Background()), c.wantCode, c.wantMsg)
			if c.wantLogged != "" {
				if strings.Contains(string(body), c.wantLogged) {
					t.Errorf("the answer shows the storage error: %s", body)
				}
				if !strings.Contains(log.String(), c.wantLogged) {
					t.Errorf("the operator's log lacks %q:\n%s", c.wantLogged, log.String())
				}
			}
		})
	}
}
