package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/internal/apitest"
	"github.com/keytrail/keytrail/internal/testenv"
)

// spendAPI is the real API (gRPC and the REST gateway, authenticated as an admin) over a
// test database, on ports the OS picked, with a fixed clock for the "now" defaults.
type spendAPI struct {
	*apitest.Server
	client keytrailv1.QueryServiceClient
}

func startSpendAPI(t *testing.T, db *testenv.Database, now time.Time) spendAPI {
	t.Helper()
	srv := apitest.Start(t, db, apitest.Options{Now: func() time.Time { return now }})
	return spendAPI{Server: srv, client: srv.Client}
}

// getJSON GETs a REST path and decodes the body, failing unless the status is wantStatus.
func (s spendAPI) getJSON(t *testing.T, path string, params url.Values, wantStatus int, out any) {
	t.Helper()
	status, body := s.Get(t, path, params, s.AdminToken)
	if status != wantStatus {
		t.Fatalf("GET %s?%s: status %d, want %d: %s", path, params.Encode(), status, wantStatus, body)
	}
	if err := json.Unmarshal(body, out); err != nil {
		t.Fatalf("GET %s: %v: %s", path, err, body)
	}
}

func spendTime(t *testing.T, s string) time.Time {
	t.Helper()
	v, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func spendTS(t *testing.T, s string) *timestamppb.Timestamp { return timestamppb.New(spendTime(t, s)) }

func spendUsage(t *testing.T, id, project, key, service, model, at string, status uint32, in, out uint64, cost int64) *keytrailv1.UsageEvent {
	return &keytrailv1.UsageEvent{
		EventId: id, Time: spendTS(t, at), Project: project, KeyId: key, Service: service, Model: model,
		StatusCode: status, InputTokens: in, OutputTokens: out, CostMicros: cost,
	}
}

func spendWantProto(t *testing.T, what string, got, want proto.Message) {
	t.Helper()
	if !proto.Equal(got, want) {
		t.Errorf("%s:\ngot  %s\nwant %s", what, protojson.Format(got), protojson.Format(want))
	}
}

func spendWantInvalid(t *testing.T, err error, field string) {
	t.Helper()
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), field) {
		t.Errorf("error %v, want InvalidArgument naming %s", err, field)
	}
}

// Dimensions and granularities, short.
const (
	spendByKey     = keytrailv1.SpendDimension_SPEND_DIMENSION_KEY
	spendByService = keytrailv1.SpendDimension_SPEND_DIMENSION_SERVICE
	spendByModel   = keytrailv1.SpendDimension_SPEND_DIMENSION_MODEL
	spendByProject = keytrailv1.SpendDimension_SPEND_DIMENSION_PROJECT
	spendPerHour   = keytrailv1.Granularity_GRANULARITY_HOUR
	spendPerMonth  = keytrailv1.Granularity_GRANULARITY_MONTH
)

// spendRow builds an expected row; cost is both the micros and the decimal text.
func spendRow(t *testing.T, bucket string, dims map[keytrailv1.SpendDimension]string, requests, in, out, cost int64, costText string) *keytrailv1.SpendRow {
	return &keytrailv1.SpendRow{
		BucketStart: spendTS(t, bucket),
		Project:     dims[spendByProject], KeyId: dims[spendByKey], Service: dims[spendByService], Model: dims[spendByModel],
		Requests: requests, InputTokens: in, OutputTokens: out, CostMicros: cost, Cost: costText,
	}
}

func TestSpend(t *testing.T) {
	t.Parallel()
	db := testenv.ClickHouse(t)
	// Two inserts, so spend_hourly holds two unmerged rows for key_b's 12:00 hour and the
	// query has to sum them.
	testenv.Insert(t, db,
		spendUsage(t, "s1", "acme", "key_a", "billing", "gpt-4o", "2026-03-01T23:59:59.999Z", 200, 100, 10, 1_500_000),
		spendUsage(t, "s2", "acme", "key_a", "billing", "gpt-4o", "2026-03-02T00:00:00Z", 200, 200, 20, 250_000),
		spendUsage(t, "s3", "acme", "key_a", "billing", "claude", "2026-03-02T10:15:00Z", 200, 1, 1, 1),
		spendUsage(t, "s4", "acme", "key_b", "search", "gpt-4o", "2026-03-01T12:00:00Z", 500, 50, 5, 2_000_000),
	)
	testenv.Insert(t, db,
		spendUsage(t, "s5", "beta", "key_c", "billing", "gpt-4o", "2026-02-28T08:00:00Z", 200, 300, 30, 3_000_000),
		spendUsage(t, "s6", "acme", "key_a", "billing", "gpt-4o", "2026-04-01T00:30:00Z", 200, 7, 3, 123_456),
		spendUsage(t, "s7", "acme", "key_b", "search", "gpt-4o", "2026-03-01T12:30:00Z", 200, 10, 0, 0),
		spendUsage(t, "s8", "acme", "key_a", "billing", "gpt-4o", "2026-03-01T02:00:00Z", 200, 1, 1, 10),
	)
	s := startSpendAPI(t, db, spendTime(t, "2026-03-02T12:00:00Z"))
	ctx := context.Background()
	// A key is (project, key_id): rows grouped by key name the key's project too.
	keyProject := map[string]string{"key_a": "acme", "key_b": "acme", "key_c": "beta"}
	key := func(k string) map[keytrailv1.SpendDimension]string {
		return map[keytrailv1.SpendDimension]string{spendByKey: k, spendByProject: keyProject[k]}
	}

	t.Run("by key per day across a day boundary, range widened to whole days", func(t *testing.T) {
		// s8 at 02:00 is before start_time but inside its day; s1 (23:59:59.999) is day 1,
		// s2 (00:00) day 2.
		got, err := s.client.GetSpend(ctx, &keytrailv1.GetSpendRequest{
			StartTime: spendTS(t, "2026-03-01T06:00:00Z"), EndTime: spendTS(t, "2026-03-02T12:00:00Z"),
		})
		if err != nil {
			t.Fatal(err)
		}
		spendWantProto(t, "response", got, &keytrailv1.GetSpendResponse{
			Rows: []*keytrailv1.SpendRow{
				spendRow(t, "2026-03-01T00:00:00Z", key("key_a"), 2, 101, 11, 1_500_010, "1.500010"),
				spendRow(t, "2026-03-01T00:00:00Z", key("key_b"), 2, 60, 5, 2_000_000, "2.000000"),
				spendRow(t, "2026-03-02T00:00:00Z", key("key_a"), 2, 201, 21, 250_001, "0.250001"),
			},
			TotalRequests: 6, TotalCostMicros: 3_750_011, TotalCost: "3.750011",
		})
	})

	t.Run("by key per day over REST", func(t *testing.T) {
		type row struct {
			BucketStart string `json:"bucket_start"`
			Project     string `json:"project"`
			KeyID       string `json:"key_id"`
			Service     string `json:"service"`
			Model       string `json:"model"`
			Requests    string `json:"requests"`
			CostMicros  string `json:"cost_micros"`
			Cost        string `json:"cost"`
		}
		var got struct {
			Rows            []row  `json:"rows"`
			TotalRequests   string `json:"total_requests"`
			TotalCostMicros string `json:"total_cost_micros"`
			TotalCost       string `json:"total_cost"`
			NextPageToken   string `json:"next_page_token"`
		}
		s.getJSON(t, "/v1/spend", url.Values{
			"group_by": {"SPEND_DIMENSION_KEY"}, "granularity": {"GRANULARITY_DAY"},
			"start_time": {"2026-03-01T06:00:00Z"}, "end_time": {"2026-03-02T12:00:00Z"},
		}, http.StatusOK, &got)
		want := []row{
			{"2026-03-01T00:00:00Z", "acme", "key_a", "", "", "2", "1500010", "1.500010"},
			{"2026-03-01T00:00:00Z", "acme", "key_b", "", "", "2", "2000000", "2.000000"},
			{"2026-03-02T00:00:00Z", "acme", "key_a", "", "", "2", "250001", "0.250001"},
		}
		if len(got.Rows) != len(want) {
			t.Fatalf("rows %+v, want %+v", got.Rows, want)
		}
		for i := range want {
			if got.Rows[i] != want[i] {
				t.Errorf("row %d = %+v, want %+v", i, got.Rows[i], want[i])
			}
		}
		if got.TotalRequests != "6" || got.TotalCostMicros != "3750011" || got.TotalCost != "3.750011" || got.NextPageToken != "" {
			t.Errorf("totals %s %s %s token %q", got.TotalRequests, got.TotalCostMicros, got.TotalCost, got.NextPageToken)
		}
	})

	t.Run("defaults: by key per day over the last 30 days", func(t *testing.T) {
		// now is 03-02 12:00: the range is [01-31 00:00, 03-03 00:00); s6 (April) is outside.
		got, err := s.client.GetSpend(ctx, &keytrailv1.GetSpendRequest{})
		if err != nil {
			t.Fatal(err)
		}
		spendWantProto(t, "response", got, &keytrailv1.GetSpendResponse{
			Rows: []*keytrailv1.SpendRow{
				spendRow(t, "2026-02-28T00:00:00Z", key("key_c"), 1, 300, 30, 3_000_000, "3.000000"),
				spendRow(t, "2026-03-01T00:00:00Z", key("key_a"), 2, 101, 11, 1_500_010, "1.500010"),
				spendRow(t, "2026-03-01T00:00:00Z", key("key_b"), 2, 60, 5, 2_000_000, "2.000000"),
				spendRow(t, "2026-03-02T00:00:00Z", key("key_a"), 2, 201, 21, 250_001, "0.250001"),
			},
			TotalRequests: 7, TotalCostMicros: 6_750_011, TotalCost: "6.750011",
		})
	})

	keyModel := func(k, m string) map[keytrailv1.SpendDimension]string {
		return map[keytrailv1.SpendDimension]string{spendByKey: k, spendByProject: keyProject[k], spendByModel: m}
	}
	monthRows := []*keytrailv1.SpendRow{
		spendRow(t, "2026-02-01T00:00:00Z", keyModel("key_c", "gpt-4o"), 1, 300, 30, 3_000_000, "3.000000"),
		spendRow(t, "2026-03-01T00:00:00Z", keyModel("key_a", "claude"), 1, 1, 1, 1, "0.000001"),
		spendRow(t, "2026-03-01T00:00:00Z", keyModel("key_a", "gpt-4o"), 3, 301, 31, 1_750_010, "1.750010"),
		spendRow(t, "2026-03-01T00:00:00Z", keyModel("key_b", "gpt-4o"), 2, 60, 5, 2_000_000, "2.000000"),
		spendRow(t, "2026-04-01T00:00:00Z", keyModel("key_a", "gpt-4o"), 1, 7, 3, 123_456, "0.123456"),
	}
	monthReq := func() *keytrailv1.GetSpendRequest {
		return &keytrailv1.GetSpendRequest{
			GroupBy: []keytrailv1.SpendDimension{spendByKey, spendByModel}, Granularity: spendPerMonth,
			StartTime: spendTS(t, "2026-02-15T00:00:00Z"), EndTime: spendTS(t, "2026-04-15T00:00:00Z"),
		}
	}

	t.Run("key x model per month: buckets are UTC instants of the 1st", func(t *testing.T) {
		got, err := s.client.GetSpend(ctx, monthReq())
		if err != nil {
			t.Fatal(err)
		}
		spendWantProto(t, "response", got, &keytrailv1.GetSpendResponse{
			Rows: monthRows, TotalRequests: 8, TotalCostMicros: 6_873_467, TotalCost: "6.873467",
		})
	})

	t.Run("pagination: keyset pages, totals of the whole report on every page", func(t *testing.T) {
		var all []*keytrailv1.SpendRow
		token := ""
		for page := 1; ; page++ {
			req := monthReq()
			req.PageSize, req.PageToken = 2, token
			got, err := s.client.GetSpend(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			if got.TotalRequests != 8 || got.TotalCostMicros != 6_873_467 || got.TotalCost != "6.873467" {
				t.Errorf("page %d totals %d %d %s", page, got.TotalRequests, got.TotalCostMicros, got.TotalCost)
			}
			wantRows := 2
			if page == 3 {
				wantRows = 1
			}
			if len(got.Rows) != wantRows {
				t.Fatalf("page %d has %d rows, want %d", page, len(got.Rows), wantRows)
			}
			all = append(all, got.Rows...)
			token = got.NextPageToken
			if token == "" {
				if page != 3 {
					t.Fatalf("last page is %d, want 3", page)
				}
				break
			}
		}
		spendWantProto(t, "all pages", &keytrailv1.GetSpendResponse{Rows: all}, &keytrailv1.GetSpendResponse{Rows: monthRows})

		// A token only continues the report it came from.
		req := monthReq()
		req.PageSize = 2
		first, err := s.client.GetSpend(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		other := monthReq()
		other.Project, other.PageToken = "acme", first.NextPageToken
		_, err = s.client.GetSpend(ctx, other)
		spendWantInvalid(t, err, "page_token")
		other = monthReq()
		other.GroupBy, other.PageToken = []keytrailv1.SpendDimension{spendByModel, spendByKey}, first.NextPageToken
		_, err = s.client.GetSpend(ctx, other)
		spendWantInvalid(t, err, "page_token")
	})

	// Pages are read forward from the cursor's bucket in growing windows; with empty buckets
	// between the rows (days, and hundreds of hours), every page size gives the same report.
	t.Run("pagination over sparse buckets: every page size gives the whole report", func(t *testing.T) {
		for _, g := range []keytrailv1.Granularity{keytrailv1.Granularity_GRANULARITY_DAY, spendPerHour} {
			req := func(size int32, token string) *keytrailv1.GetSpendRequest {
				return &keytrailv1.GetSpendRequest{GroupBy: []keytrailv1.SpendDimension{spendByKey, spendByModel}, Granularity: g,
					StartTime: spendTS(t, "2026-02-01T00:00:00Z"), EndTime: spendTS(t, "2026-05-01T00:00:00Z"), PageSize: size, PageToken: token}
			}
			whole, err := s.client.GetSpend(ctx, req(1000, ""))
			if err != nil {
				t.Fatal(err)
			}
			if len(whole.Rows) < 6 || whole.NextPageToken != "" {
				t.Fatalf("%s: whole report has %d rows, token %q", g, len(whole.Rows), whole.NextPageToken)
			}
			for _, size := range []int32{1, 2, 3, 5} {
				var all []*keytrailv1.SpendRow
				token := ""
				for pages := 0; ; pages++ {
					if pages > len(whole.Rows) {
						t.Fatalf("%s, page size %d: more pages than rows", g, size)
					}
					got, err := s.client.GetSpend(ctx, req(size, token))
					if err != nil {
						t.Fatal(err)
					}
					all = append(all, got.Rows...)
					if token = got.NextPageToken; token == "" {
						break
					}
				}
				spendWantProto(t, fmt.Sprintf("%s, page size %d", g, size), &keytrailv1.GetSpendResponse{Rows: all}, &keytrailv1.GetSpendResponse{Rows: whole.Rows})
			}
		}
	})

	t.Run("filters: project and service, by service per month", func(t *testing.T) {
		got, err := s.client.GetSpend(ctx, &keytrailv1.GetSpendRequest{
			GroupBy: []keytrailv1.SpendDimension{spendByService}, Granularity: spendPerMonth,
			StartTime: spendTS(t, "2026-02-01T00:00:00Z"), EndTime: spendTS(t, "2026-05-01T00:00:00Z"),
			Project: "acme", Service: "billing",
		})
		if err != nil {
			t.Fatal(err)
		}
		svc := map[keytrailv1.SpendDimension]string{spendByService: "billing"}
		spendWantProto(t, "response", got, &keytrailv1.GetSpendResponse{
			Rows: []*keytrailv1.SpendRow{
				spendRow(t, "2026-03-01T00:00:00Z", svc, 4, 302, 32, 1_750_011, "1.750011"),
				spendRow(t, "2026-04-01T00:00:00Z", svc, 1, 7, 3, 123_456, "0.123456"),
			},
			TotalRequests: 5, TotalCostMicros: 1_873_467, TotalCost: "1.873467",
		})
	})

	t.Run("filters: model and key, by project", func(t *testing.T) {
		got, err := s.client.GetSpend(ctx, &keytrailv1.GetSpendRequest{
			GroupBy:   []keytrailv1.SpendDimension{spendByProject},
			StartTime: spendTS(t, "2026-03-01T00:00:00Z"), EndTime: spendTS(t, "2026-03-03T00:00:00Z"),
			Model: "claude", KeyId: "key_a",
		})
		if err != nil {
			t.Fatal(err)
		}
		spendWantProto(t, "response", got, &keytrailv1.GetSpendResponse{
			Rows: []*keytrailv1.SpendRow{
				spendRow(t, "2026-03-02T00:00:00Z", map[keytrailv1.SpendDimension]string{spendByProject: "acme"}, 1, 1, 1, 1, "0.000001"),
			},
			TotalRequests: 1, TotalCostMicros: 1, TotalCost: "0.000001",
		})
	})

	t.Run("no spend in range: no rows, zero totals", func(t *testing.T) {
		got, err := s.client.GetSpend(ctx, &keytrailv1.GetSpendRequest{KeyId: "key_unknown"})
		if err != nil {
			t.Fatal(err)
		}
		spendWantProto(t, "response", got, &keytrailv1.GetSpendResponse{TotalCost: "0.000000"})
	})

	t.Run("per hour across midnight", func(t *testing.T) {
		got, err := s.client.GetSpend(ctx, &keytrailv1.GetSpendRequest{
			Granularity: spendPerHour, KeyId: "key_a",
			StartTime: spendTS(t, "2026-03-01T23:30:00Z"), EndTime: spendTS(t, "2026-03-02T00:30:00Z"),
		})
		if err != nil {
			t.Fatal(err)
		}
		spendWantProto(t, "response", got, &keytrailv1.GetSpendResponse{
			Rows: []*keytrailv1.SpendRow{
				spendRow(t, "2026-03-01T23:00:00Z", key("key_a"), 1, 100, 10, 1_500_000, "1.500000"),
				spendRow(t, "2026-03-02T00:00:00Z", key("key_a"), 1, 200, 20, 250_000, "0.250000"),
			},
			TotalRequests: 2, TotalCostMicros: 1_750_000, TotalCost: "1.750000",
		})
	})

	t.Run("bad input is InvalidArgument naming the field", func(t *testing.T) {
		for _, tc := range []struct {
			name  string
			req   *keytrailv1.GetSpendRequest
			field string
		}{
			{"three dimensions", &keytrailv1.GetSpendRequest{GroupBy: []keytrailv1.SpendDimension{spendByKey, spendByModel, spendByService}}, "group_by"},
			{"unspecified dimension", &keytrailv1.GetSpendRequest{GroupBy: []keytrailv1.SpendDimension{keytrailv1.SpendDimension_SPEND_DIMENSION_UNSPECIFIED}}, "group_by"},
			{"repeated dimension", &keytrailv1.GetSpendRequest{GroupBy: []keytrailv1.SpendDimension{spendByKey, spendByKey}}, "group_by"},
			{"reversed range", &keytrailv1.GetSpendRequest{StartTime: spendTS(t, "2026-03-02T00:00:00Z"), EndTime: spendTS(t, "2026-03-01T00:00:00Z")}, "end_time"},
			{"start after now with no end", &keytrailv1.GetSpendRequest{StartTime: spendTS(t, "2026-03-03T00:00:00Z")}, "end_time"},
			{"garbage page token", &keytrailv1.GetSpendRequest{PageToken: "not-a-token"}, "page_token"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				_, err := s.client.GetSpend(ctx, tc.req)
				spendWantInvalid(t, err, tc.field)
			})
		}
		var body struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		}
		s.getJSON(t, "/v1/spend", url.Values{"group_by": {"SPEND_DIMENSION_KEY", "SPEND_DIMENSION_MODEL", "SPEND_DIMENSION_SERVICE"}}, http.StatusBadRequest, &body)
		if body.Code != int(codes.InvalidArgument) || !strings.Contains(body.Message, "group_by") {
			t.Errorf("REST: %+v", body)
		}
	})
}

func spendLifecycle(t *testing.T, id, project, key string, action keytrailv1.Action, at string, b *keytrailv1.Budget) *keytrailv1.LifecycleEvent {
	return &keytrailv1.LifecycleEvent{
		EventId: id, Time: spendTS(t, at), Project: project, KeyId: key, Action: action,
		Actor: "alice", ActorType: keytrailv1.ActorType_ACTOR_TYPE_USER, Budget: b,
	}
}

func TestBudgets(t *testing.T) {
	t.Parallel()
	db := testenv.ClickHouse(t)
	const (
		changed = keytrailv1.Action_ACTION_BUDGET_CHANGED
		day     = keytrailv1.BudgetPeriod_BUDGET_PERIOD_DAY
		week    = keytrailv1.BudgetPeriod_BUDGET_PERIOD_WEEK
		month   = keytrailv1.BudgetPeriod_BUDGET_PERIOD_MONTH
	)
	bud := func(amount int64, p keytrailv1.BudgetPeriod) *keytrailv1.Budget {
		return &keytrailv1.Budget{AmountMicros: amount, Period: p}
	}
	testenv.Insert(t, db,
		spendLifecycle(t, "b1", "acme", "k_day", changed, "2026-02-20T09:00:00Z", bud(1_000_000, day)),
		// A later event without a budget leaves the budget as it was.
		spendLifecycle(t, "b2", "acme", "k_day", keytrailv1.Action_ACTION_SCOPES_CHANGED, "2026-02-25T09:00:00Z", nil),
		// A budget given at creation counts like a budget change.
		spendLifecycle(t, "b3", "acme", "k_week", keytrailv1.Action_ACTION_CREATED, "2026-01-01T00:00:00Z", bud(2_000_000, week)),
		spendLifecycle(t, "b4", "acme", "k_month", changed, "2026-02-01T00:00:00Z", bud(1_000_000, month)),
		// Raised halfway through March: applies to the whole of March.
		spendLifecycle(t, "b5", "acme", "k_month", changed, "2026-03-01T12:00:00Z", bud(10_000_000, month)),
		// After the evaluation instant: ignored.
		spendLifecycle(t, "b6", "acme", "k_month", changed, "2026-03-02T01:00:00Z", bud(1_000, month)),
		spendLifecycle(t, "b7", "beta", "k_idle", changed, "2026-02-01T00:00:00Z", bud(100, day)),
		// Set, then removed (0): not listed.
		spendLifecycle(t, "b8", "acme", "k_cleared", changed, "2026-02-01T00:00:00Z", bud(500, day)),
		spendLifecycle(t, "b9", "acme", "k_cleared", changed, "2026-02-02T00:00:00Z", bud(0, day)),
		spendLifecycle(t, "b10", "acme", "k_none", keytrailv1.Action_ACTION_CREATED, "2026-01-01T00:00:00Z", nil),
	)
	u := func(id, project, key, at string, cost int64) *keytrailv1.UsageEvent {
		return spendUsage(t, id, project, key, "billing", "gpt-4o", at, 200, 1, 1, cost)
	}
	testenv.Insert(t, db,
		// k_day, daily budget 1.00.
		u("d1", "acme", "k_day", "2026-02-28T12:00:00Z", 100_000),
		u("d2", "acme", "k_day", "2026-03-01T23:59:59.999Z", 900_000), // day 1
		u("d3", "acme", "k_day", "2026-03-02T00:00:00Z", 500_000),     // day 2
		u("d4", "acme", "k_day", "2026-03-02T00:30:00Z", 300_000),     // exactly at: counts
		u("d5", "acme", "k_day", "2026-03-02T00:30:00.001Z", 7_000_000),
		// k_week, weekly budget 2.00; 2026-03-01 is a Sunday, 03-02 a Monday.
		u("w1", "acme", "k_week", "2026-02-22T23:59:59.999Z", 50_000),
		u("w2", "acme", "k_week", "2026-02-23T00:00:00Z", 400_000),
		u("w3", "acme", "k_week", "2026-03-01T23:59:59.999Z", 1_000_000),
		u("w4", "acme", "k_week", "2026-03-02T00:10:00Z", 2_500_000),
		// k_month, monthly budget 10.00 (set on 03-01 12:00).
		u("m1", "acme", "k_month", "2026-02-28T23:59:59.999Z", 2_000_000),
		u("m2", "acme", "k_month", "2026-03-01T00:00:00Z", 3_000_000),
		// Keys without a budget; k_day of another project is another key.
		u("n1", "acme", "k_none", "2026-03-02T00:05:00Z", 5_000_000),
		u("n2", "acme", "k_cleared", "2026-03-02T00:05:00Z", 1_000),
		u("n3", "beta", "k_day", "2026-03-02T00:05:00Z", 999_999),
	)
	at := "2026-03-02T00:30:00Z"
	s := startSpendAPI(t, db, spendTime(t, at))
	ctx := context.Background()

	period := func(start, end string, cost int64, pct float64) *keytrailv1.BudgetPeriodSpend {
		return &keytrailv1.BudgetPeriodSpend{PeriodStart: spendTS(t, start), PeriodEnd: spendTS(t, end), CostMicros: cost, PercentUsed: pct}
	}
	kWeek := &keytrailv1.BudgetUtilization{
		Project: "acme", KeyId: "k_week", Budget: bud(2_000_000, week), Status: keytrailv1.BudgetStatus_BUDGET_STATUS_OVER,
		Current: period("2026-03-02T00:00:00Z", "2026-03-09T00:00:00Z", 2_500_000, 125),
		Previous: []*keytrailv1.BudgetPeriodSpend{
			period("2026-02-23T00:00:00Z", "2026-03-02T00:00:00Z", 1_400_000, 70),
			period("2026-02-16T00:00:00Z", "2026-02-23T00:00:00Z", 50_000, 2.5),
			period("2026-02-09T00:00:00Z", "2026-02-16T00:00:00Z", 0, 0),
		},
	}
	kDay := &keytrailv1.BudgetUtilization{
		Project: "acme", KeyId: "k_day", Budget: bud(1_000_000, day), Status: keytrailv1.BudgetStatus_BUDGET_STATUS_NEAR,
		Current: period("2026-03-02T00:00:00Z", "2026-03-03T00:00:00Z", 800_000, 80),
		Previous: []*keytrailv1.BudgetPeriodSpend{
			period("2026-03-01T00:00:00Z", "2026-03-02T00:00:00Z", 900_000, 90),
			period("2026-02-28T00:00:00Z", "2026-03-01T00:00:00Z", 100_000, 10),
			period("2026-02-27T00:00:00Z", "2026-02-28T00:00:00Z", 0, 0),
		},
	}
	kMonth := &keytrailv1.BudgetUtilization{
		Project: "acme", KeyId: "k_month", Budget: bud(10_000_000, month), Status: keytrailv1.BudgetStatus_BUDGET_STATUS_OK,
		Current: period("2026-03-01T00:00:00Z", "2026-04-01T00:00:00Z", 3_000_000, 30),
		Previous: []*keytrailv1.BudgetPeriodSpend{
			period("2026-02-01T00:00:00Z", "2026-03-01T00:00:00Z", 2_000_000, 20),
			period("2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z", 0, 0),
			period("2025-12-01T00:00:00Z", "2026-01-01T00:00:00Z", 0, 0),
		},
	}
	kIdle := &keytrailv1.BudgetUtilization{
		Project: "beta", KeyId: "k_idle", Budget: bud(100, day), Status: keytrailv1.BudgetStatus_BUDGET_STATUS_OK,
		Current: period("2026-03-02T00:00:00Z", "2026-03-03T00:00:00Z", 0, 0),
		Previous: []*keytrailv1.BudgetPeriodSpend{
			period("2026-03-01T00:00:00Z", "2026-03-02T00:00:00Z", 0, 0),
			period("2026-02-28T00:00:00Z", "2026-03-01T00:00:00Z", 0, 0),
			period("2026-02-27T00:00:00Z", "2026-02-28T00:00:00Z", 0, 0),
		},
	}
	// As of now (no at), every stored request of the period counts, d5 stamped a millisecond
	// after the server's clock too (clock skew between gateways and keytrail).
	kDayNow := proto.Clone(kDay).(*keytrailv1.BudgetUtilization)
	kDayNow.Status = keytrailv1.BudgetStatus_BUDGET_STATUS_OVER
	kDayNow.Current = period("2026-03-02T00:00:00Z", "2026-03-03T00:00:00Z", 7_800_000, 780)
	list := func(b ...*keytrailv1.BudgetUtilization) *keytrailv1.ListBudgetsResponse {
		return &keytrailv1.ListBudgetsResponse{Budgets: b}
	}

	for _, tc := range []struct {
		name string
		req  *keytrailv1.ListBudgetsRequest
		want *keytrailv1.ListBudgetsResponse
	}{
		{"every budget, highest use first, at given", &keytrailv1.ListBudgetsRequest{At: spendTS(t, at)}, list(kWeek, kDay, kMonth, kIdle)},
		{"at defaults to now: every stored request counts", &keytrailv1.ListBudgetsRequest{}, list(kDayNow, kWeek, kMonth, kIdle)},
		{"only alerting: over and near", &keytrailv1.ListBudgetsRequest{OnlyAlerting: true, At: spendTS(t, at)}, list(kWeek, kDay)},
		{"a higher threshold: 80% is no longer near", &keytrailv1.ListBudgetsRequest{OnlyAlerting: true, ThresholdPercent: 85, At: spendTS(t, at)}, list(kWeek)},
		{"a threshold of exactly the percentage used is near", &keytrailv1.ListBudgetsRequest{KeyId: "k_month", ThresholdPercent: 30}, list(func() *keytrailv1.BudgetUtilization {
			c := proto.Clone(kMonth).(*keytrailv1.BudgetUtilization)
			c.Status = keytrailv1.BudgetStatus_BUDGET_STATUS_NEAR
			return c
		}())},
		{"project filter", &keytrailv1.ListBudgetsRequest{Project: "beta"}, list(kIdle)},
		{"one previous period", &keytrailv1.ListBudgetsRequest{KeyId: "k_week", PreviousPeriods: 1}, list(&keytrailv1.BudgetUtilization{
			Project: kWeek.Project, KeyId: kWeek.KeyId, Budget: kWeek.Budget, Status: kWeek.Status, Current: kWeek.Current,
			Previous: kWeek.Previous[:1],
		})},
		{
			// At midnight exactly: the 00:00:00.000 spend is day 2's, the 23:59:59.999 spend day 1's.
			"day boundary: at midnight", &keytrailv1.ListBudgetsRequest{KeyId: "k_day", PreviousPeriods: 1, At: spendTS(t, "2026-03-02T00:00:00Z")},
			list(&keytrailv1.BudgetUtilization{
				Project: "acme", KeyId: "k_day", Budget: bud(1_000_000, day), Status: keytrailv1.BudgetStatus_BUDGET_STATUS_OK,
				Current:  period("2026-03-02T00:00:00Z", "2026-03-03T00:00:00Z", 500_000, 50),
				Previous: []*keytrailv1.BudgetPeriodSpend{period("2026-03-01T00:00:00Z", "2026-03-02T00:00:00Z", 900_000, 90)},
			}),
		},
		{
			// A millisecond before midnight: still day 1 (and Sunday, and the week of 02-23).
			"day and week boundary: at 23:59:59.999", &keytrailv1.ListBudgetsRequest{Project: "acme", PreviousPeriods: 1, At: spendTS(t, "2026-03-01T23:59:59.999Z")},
			list(
				&keytrailv1.BudgetUtilization{
					Project: "acme", KeyId: "k_day", Budget: bud(1_000_000, day), Status: keytrailv1.BudgetStatus_BUDGET_STATUS_NEAR,
					Current:  period("2026-03-01T00:00:00Z", "2026-03-02T00:00:00Z", 900_000, 90),
					Previous: []*keytrailv1.BudgetPeriodSpend{period("2026-02-28T00:00:00Z", "2026-03-01T00:00:00Z", 100_000, 10)},
				},
				&keytrailv1.BudgetUtilization{
					Project: "acme", KeyId: "k_week", Budget: bud(2_000_000, week), Status: keytrailv1.BudgetStatus_BUDGET_STATUS_OK,
					Current:  period("2026-02-23T00:00:00Z", "2026-03-02T00:00:00Z", 1_400_000, 70),
					Previous: []*keytrailv1.BudgetPeriodSpend{period("2026-02-16T00:00:00Z", "2026-02-23T00:00:00Z", 50_000, 2.5)},
				},
				&keytrailv1.BudgetUtilization{
					Project: "acme", KeyId: "k_month", Budget: bud(10_000_000, month), Status: keytrailv1.BudgetStatus_BUDGET_STATUS_OK,
					Current:  period("2026-03-01T00:00:00Z", "2026-04-01T00:00:00Z", 3_000_000, 30),
					Previous: []*keytrailv1.BudgetPeriodSpend{period("2026-02-01T00:00:00Z", "2026-03-01T00:00:00Z", 2_000_000, 20)},
				},
			),
		},
		{
			// Before the raise on 03-01 12:00 the monthly budget was 1.00: March's 3.00 is
			// 300%. Feb 28 23:59:59.999 is February's, Mar 1 00:00 March's.
			"month boundary, and the budget in effect at `at`", &keytrailv1.ListBudgetsRequest{KeyId: "k_month", PreviousPeriods: 1, At: spendTS(t, "2026-03-01T11:59:59.999Z")},
			list(&keytrailv1.BudgetUtilization{
				Project: "acme", KeyId: "k_month", Budget: bud(1_000_000, month), Status: keytrailv1.BudgetStatus_BUDGET_STATUS_OVER,
				Current:  period("2026-03-01T00:00:00Z", "2026-04-01T00:00:00Z", 3_000_000, 300),
				Previous: []*keytrailv1.BudgetPeriodSpend{period("2026-02-01T00:00:00Z", "2026-03-01T00:00:00Z", 2_000_000, 200)},
			}),
		},
		{"no budgets before any was set", &keytrailv1.ListBudgetsRequest{At: spendTS(t, "2025-12-31T00:00:00Z")}, list()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.client.ListBudgets(ctx, tc.req)
			if err != nil {
				t.Fatal(err)
			}
			spendWantProto(t, "response", got, tc.want)
		})
	}

	t.Run("REST: near and over", func(t *testing.T) {
		var got struct {
			Budgets []struct {
				Project string `json:"project"`
				KeyID   string `json:"key_id"`
				Budget  struct {
					AmountMicros string `json:"amount_micros"`
					Period       string `json:"period"`
				} `json:"budget"`
				Current struct {
					PeriodStart string  `json:"period_start"`
					PeriodEnd   string  `json:"period_end"`
					CostMicros  string  `json:"cost_micros"`
					PercentUsed float64 `json:"percent_used"`
				} `json:"current"`
				Previous []json.RawMessage `json:"previous"`
				Status   string            `json:"status"`
			} `json:"budgets"`
		}
		s.getJSON(t, "/v1/budgets", url.Values{"only_alerting": {"true"}, "at": {at}, "previous_periods": {"2"}}, http.StatusOK, &got)
		if len(got.Budgets) != 2 {
			t.Fatalf("budgets %+v", got.Budgets)
		}
		over, near := got.Budgets[0], got.Budgets[1]
		if over.KeyID != "k_week" || over.Status != "BUDGET_STATUS_OVER" || over.Budget.AmountMicros != "2000000" || over.Budget.Period != "BUDGET_PERIOD_WEEK" ||
			over.Current.PeriodStart != "2026-03-02T00:00:00Z" || over.Current.PeriodEnd != "2026-03-09T00:00:00Z" ||
			over.Current.CostMicros != "2500000" || over.Current.PercentUsed != 125 || len(over.Previous) != 2 {
			t.Errorf("over = %+v", over)
		}
		if near.KeyID != "k_day" || near.Status != "BUDGET_STATUS_NEAR" || near.Current.CostMicros != "800000" || near.Current.PercentUsed != 80 {
			t.Errorf("near = %+v", near)
		}
	})

	t.Run("bad input is InvalidArgument naming the field", func(t *testing.T) {
		_, err := s.client.ListBudgets(ctx, &keytrailv1.ListBudgetsRequest{PreviousPeriods: 25})
		spendWantInvalid(t, err, "previous_periods")
		_, err = s.client.ListBudgets(ctx, &keytrailv1.ListBudgetsRequest{ThresholdPercent: -1})
		spendWantInvalid(t, err, "threshold_percent")
		var body struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		}
		s.getJSON(t, "/v1/budgets", url.Values{"previous_periods": {"-1"}}, http.StatusBadRequest, &body)
		if body.Code != int(codes.InvalidArgument) || !strings.Contains(body.Message, "previous_periods") {
			t.Errorf("REST: %+v", body)
		}
	})
}
