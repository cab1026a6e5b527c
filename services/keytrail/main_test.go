package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keytrail/keytrail/event"
	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/ingest/broker"
	"github.com/keytrail/keytrail/internal/testenv"
	"github.com/keytrail/keytrail/migrations"
	"github.com/keytrail/keytrail/publisher"
)

// startKeytrail runs the whole binary in-process, every port picked by the OS.
// Extra flags come last, so they override these.
func startKeytrail(t *testing.T, db *testenv.Database, extra ...string) *Main {
	t.Helper()
	cfg, err := parseConfig("test", append([]string{
		"-nats-listen", "127.0.0.1:0", "-nats-store-dir", t.TempDir(),
		"-clickhouse-dsn", db.DSN,
		"-grpc-listen", "127.0.0.1:0", "-http-listen", "127.0.0.1:0",
		"-flush-interval", "50ms", "-log-level", "warn",
	}, extra...))
	if err != nil {
		t.Fatal(err)
	}
	m := &Main{Config: cfg, Stdout: io.Discard}
	if err := m.Start(context.Background()); err != nil {
		m.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return m
}

// fixture is a known set of events and the exact answers they must produce.
type fixture struct {
	t0 time.Time
}

func newFixture() fixture {
	// Ten seconds into a minute, two hours ago: the edge-of-range tests cross minute bounds.
	return fixture{t0: time.Now().UTC().Add(-2 * time.Hour).Truncate(time.Minute).Add(10 * time.Second)}
}

func (f fixture) at(d time.Duration) time.Time { return f.t0.Add(d) }

func (f fixture) usage() []*keytrailv1.UsageEvent {
	u := func(id, key, service string, d time.Duration, status uint32) *keytrailv1.UsageEvent {
		return &keytrailv1.UsageEvent{
			EventId: id, Time: timestamppb.New(f.at(d)), Project: "acme", KeyId: key, Service: service,
			Method: "POST", Endpoint: "/v1/chat/completions", Model: "gpt-4o", Provider: "openai",
			StatusCode: status, LatencyMs: 80, InputTokens: 10, OutputTokens: 5, CostMicros: 1000,
		}
	}
	return []*keytrailv1.UsageEvent{
		u("u1", "key_a", "billing", 250*time.Millisecond, 200),
		u("u2", "key_a", "billing", 61500*time.Millisecond, 500),
		u("u3", "key_a", "billing", 125*time.Second, 200),
		u("u4", "key_a", "search", 30*time.Second, 429),
		u("u5", "key_b", "billing", 10*time.Second, 200),
		u("u6", "key_b", "billing", 20*time.Second, 200),
	}
}

func (f fixture) lifecycle() []*keytrailv1.LifecycleEvent {
	l := func(id, key string, action keytrailv1.Action, actor string, actorType keytrailv1.ActorType, d time.Duration) *keytrailv1.LifecycleEvent {
		return &keytrailv1.LifecycleEvent{EventId: id, Time: timestamppb.New(f.at(d)), Project: "acme", KeyId: key, Action: action, Actor: actor, ActorType: actorType}
	}
	rotated := l("l3", "key_a", keytrailv1.Action_ACTION_ROTATED, "alice", keytrailv1.ActorType_ACTOR_TYPE_USER, -40*time.Minute)
	rotated.NewKeyId = "key_b"
	rotated.Reason = "quarterly rotation"
	budget := l("l5", "key_b", keytrailv1.Action_ACTION_BUDGET_CHANGED, "bob", keytrailv1.ActorType_ACTOR_TYPE_USER, -20*time.Minute)
	budget.Budget = &keytrailv1.Budget{AmountMicros: 10_000_000, Period: keytrailv1.BudgetPeriod_BUDGET_PERIOD_DAY}
	budget.Changes = []*keytrailv1.FieldChange{{Field: "budget", Before: "", After: "10/day"}}
	return []*keytrailv1.LifecycleEvent{
		l("l1", "key_a", keytrailv1.Action_ACTION_CREATED, "alice", keytrailv1.ActorType_ACTOR_TYPE_USER, -60*time.Minute),
		l("l2", "key_b", keytrailv1.Action_ACTION_CREATED, "bob", keytrailv1.ActorType_ACTOR_TYPE_USER, -50*time.Minute),
		rotated,
		l("l4", "key_a", keytrailv1.Action_ACTION_DISABLED, "system", keytrailv1.ActorType_ACTOR_TYPE_SYSTEM, -30*time.Minute),
		budget,
	}
}

func publishFixture(t *testing.T, natsURL string, f fixture) {
	t.Helper()
	_, js := testenv.Connect(t, natsURL)
	pub, err := publisher.New(publisher.Config{JetStream: js, Subjects: event.Subjects{Prefix: "keytrail"}, Encoding: event.EncodingJSON})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, e := range f.lifecycle() {
		if err := pub.PublishLifecycle(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	for _, e := range f.usage() {
		if err := pub.PublishUsage(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	if err := pub.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if s := pub.Stats(); s.Acked != 11 || s.Failed != 0 {
		t.Fatalf("publisher stats %+v", s)
	}
}

// getJSON calls the REST API as the dev-mode admin.
func getJSON(t *testing.T, m *Main, path string, params url.Values, wantStatus int, out any) {
	t.Helper()
	testenv.GetJSON(t, "http://"+m.HTTPAddr, path, params, "Bearer "+m.AdminToken, wantStatus, out)
}

type usageRow struct {
	Project      string `json:"project"`
	KeyID        string `json:"key_id"`
	Service      string `json:"service"`
	FirstSeen    string `json:"first_seen"`
	LastSeen     string `json:"last_seen"`
	RequestCount string `json:"request_count"`
	ErrorCount   string `json:"error_count"`
}

func (f fixture) row(key, service string, first, last time.Duration, requests, errs int) usageRow {
	ts := func(d time.Duration) string { return f.at(d).Format("2006-01-02T15:04:05.000Z") }
	return usageRow{Project: "acme", KeyID: key, Service: service, FirstSeen: ts(first), LastSeen: ts(last),
		RequestCount: fmt.Sprint(requests), ErrorCount: fmt.Sprint(errs)}
}

// normalise makes protojson's shortest timestamp form comparable to the fixture's.
func normalise(rows []usageRow) []usageRow {
	for i := range rows {
		for _, p := range []*string{&rows[i].FirstSeen, &rows[i].LastSeen} {
			ts, _ := time.Parse(time.RFC3339Nano, *p)
			*p = ts.UTC().Format("2006-01-02T15:04:05.000Z")
		}
	}
	return rows
}

func TestEndToEndAnswers(t *testing.T) {
	t.Parallel()
	db := testenv.ClickHouse(t)
	m := startKeytrail(t, db)
	f := newFixture()
	publishFixture(t, m.NATSURL, f)
	testenv.WaitForEvents(t, db, 6, 5, 15*time.Second)

	t.Run("services of a key, REST, paginated", func(t *testing.T) {
		var page1 struct {
			Services      []usageRow `json:"services"`
			NextPageToken string     `json:"next_page_token"`
		}
		getJSON(t, m, "/v1/keys/key_a/services", url.Values{"page_size": {"1"}}, 200, &page1)
		want := f.row("key_a", "billing", 250*time.Millisecond, 125*time.Second, 3, 1)
		if got := normalise(page1.Services); len(got) != 1 || got[0] != want || page1.NextPageToken == "" {
			t.Fatalf("page 1 = %+v token %q, want [%+v] and a token", got, page1.NextPageToken, want)
		}
		var page2 struct {
			Services      []usageRow `json:"services"`
			NextPageToken string     `json:"next_page_token"`
		}
		getJSON(t, m, "/v1/keys/key_a/services", url.Values{"page_size": {"1"}, "page_token": {page1.NextPageToken}}, 200, &page2)
		want = f.row("key_a", "search", 30*time.Second, 30*time.Second, 1, 1)
		if got := normalise(page2.Services); len(got) != 1 || got[0] != want || page2.NextPageToken != "" {
			t.Fatalf("page 2 = %+v token %q, want [%+v] and no token", got, page2.NextPageToken, want)
		}
	})

	t.Run("services of a key in a range cutting minutes", func(t *testing.T) {
		var resp struct {
			Services []usageRow `json:"services"`
		}
		getJSON(t, m, "/v1/keys/key_a/services", url.Values{
			"start_time": {f.at(time.Second).Format(time.RFC3339Nano)},
			"end_time":   {f.at(125 * time.Second).Format(time.RFC3339Nano)},
		}, 200, &resp)
		want := []usageRow{
			f.row("key_a", "billing", 61500*time.Millisecond, 61500*time.Millisecond, 1, 1),
			f.row("key_a", "search", 30*time.Second, 30*time.Second, 1, 1),
		}
		if got := normalise(resp.Services); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("got %+v\nwant %+v", got, want)
		}
	})

	t.Run("keys of a service", func(t *testing.T) {
		var resp struct {
			Keys []usageRow `json:"keys"`
		}
		getJSON(t, m, "/v1/services/billing/keys", nil, 200, &resp)
		want := []usageRow{
			f.row("key_a", "billing", 250*time.Millisecond, 125*time.Second, 3, 1),
			f.row("key_b", "billing", 10*time.Second, 20*time.Second, 2, 0),
		}
		if got := normalise(resp.Keys); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("got %+v\nwant %+v", got, want)
		}
	})

	t.Run("audit trail newest first, paginated and filtered", func(t *testing.T) {
		type auditResp struct {
			Events []struct {
				EventID  string `json:"event_id"`
				KeyID    string `json:"key_id"`
				Action   string `json:"action"`
				Actor    string `json:"actor"`
				NewKeyID string `json:"new_key_id"`
				Budget   *struct {
					AmountMicros string `json:"amount_micros"`
					Period       string `json:"period"`
				} `json:"budget"`
			} `json:"events"`
			NextPageToken string `json:"next_page_token"`
		}
		var ids []string
		token := ""
		pages := 0
		for {
			var resp auditResp
			params := url.Values{"page_size": {"2"}, "project": {"acme"}}
			if token != "" {
				params.Set("page_token", token)
			}
			getJSON(t, m, "/v1/audit/events", params, 200, &resp)
			pages++
			for _, e := range resp.Events {
				ids = append(ids, e.EventID+":"+e.Action)
				if e.EventID == "l5" && (e.Budget == nil || e.Budget.AmountMicros != "10000000" || e.Budget.Period != "BUDGET_PERIOD_DAY") {
					t.Errorf("budget event %+v", e)
				}
				if e.EventID == "l3" && e.NewKeyID != "key_b" {
					t.Errorf("rotation event %+v", e)
				}
			}
			if token = resp.NextPageToken; token == "" {
				break
			}
		}
		want := "l5:ACTION_BUDGET_CHANGED l4:ACTION_DISABLED l3:ACTION_ROTATED l2:ACTION_CREATED l1:ACTION_CREATED"
		if strings.Join(ids, " ") != want || pages != 3 {
			t.Errorf("audit pages %d: %s\nwant 3: %s", pages, strings.Join(ids, " "), want)
		}
		var created auditResp
		getJSON(t, m, "/v1/audit/events", url.Values{"action": {"ACTION_CREATED"}}, 200, &created)
		var alice auditResp
		getJSON(t, m, "/v1/audit/events", url.Values{"actor": {"alice"}}, 200, &alice)
		if len(created.Events) != 2 || created.Events[0].EventID != "l2" || created.Events[1].EventID != "l1" {
			t.Errorf("action filter: %+v", created.Events)
		}
		if len(alice.Events) != 2 || alice.Events[0].EventID != "l3" || alice.Events[1].EventID != "l1" {
			t.Errorf("actor filter: %+v", alice.Events)
		}
	})

	t.Run("bad input is a 400 naming the field", func(t *testing.T) {
		for _, tc := range []struct {
			path   string
			params url.Values
			field  string
		}{
			{"/v1/keys/key_a/services", url.Values{"page_size": {"5000"}}, "page_size"},
			{"/v1/services/billing/keys", url.Values{"page_size": {"-1"}}, "page_size"},
			{"/v1/keys/key_a/services", url.Values{"start_time": {"2026-01-02T00:00:00Z"}, "end_time": {"2026-01-01T00:00:00Z"}}, "end_time"},
			{"/v1/keys/key_a/services", url.Values{"start_time": {"yesterday"}}, "start_time"},
			{"/v1/audit/events", url.Values{"action": {"ACTION_EXPLODED"}}, "action"},
			{"/v1/audit/events", url.Values{"page_token": {"forged"}}, "page_token"},
			{"/v1/keys/" + strings.Repeat("k", 300) + "/services", nil, "key_id"},
		} {
			var body struct {
				Code    int    `json:"code"`
				Message string `json:"message"`
			}
			getJSON(t, m, tc.path, tc.params, http.StatusBadRequest, &body)
			if body.Code != int(codes.InvalidArgument) || !strings.Contains(body.Message, tc.field) {
				t.Errorf("%s %v: code %d message %q, want InvalidArgument naming %s", tc.path, tc.params, body.Code, body.Message, tc.field)
			}
		}
	})

	t.Run("gRPC gives the same answers", func(t *testing.T) {
		conn, err := grpc.NewClient(m.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		client := keytrailv1.NewQueryServiceClient(conn)
		ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+m.AdminToken)
		if _, err := client.ListServiceKeys(context.Background(), &keytrailv1.ListServiceKeysRequest{Service: "billing"}); status.Code(err) != codes.Unauthenticated {
			t.Errorf("call without a token: %v, want Unauthenticated", err)
		}
		resp, err := client.ListServiceKeys(ctx, &keytrailv1.ListServiceKeysRequest{Service: "billing"})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, k := range resp.GetKeys() {
			got = append(got, fmt.Sprintf("%s %s %s %d %d", k.GetKeyId(), k.GetFirstSeen().AsTime().Format(time.RFC3339Nano), k.GetLastSeen().AsTime().Format(time.RFC3339Nano), k.GetRequestCount(), k.GetErrorCount()))
		}
		want := []string{
			fmt.Sprintf("key_a %s %s 3 1", f.at(250*time.Millisecond).Format(time.RFC3339Nano), f.at(125*time.Second).Format(time.RFC3339Nano)),
			fmt.Sprintf("key_b %s %s 2 0", f.at(10*time.Second).Format(time.RFC3339Nano), f.at(20*time.Second).Format(time.RFC3339Nano)),
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("got %v\nwant %v", got, want)
		}
		_, err = client.ListKeyServices(ctx, &keytrailv1.ListKeyServicesRequest{KeyId: ""})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "key_id") {
			t.Errorf("empty key id: %v", err)
		}
		audit, err := client.ListAuditEvents(ctx, &keytrailv1.ListAuditEventsRequest{KeyId: "key_b"})
		if err != nil || len(audit.GetEvents()) != 2 || audit.GetEvents()[0].GetBudget().GetAmountMicros() != 10_000_000 {
			t.Errorf("audit for key_b: %v %v", audit, err)
		}
	})

	t.Run("health, readiness and the OpenAPI document", func(t *testing.T) {
		for _, p := range []string{"/healthz", "/readyz", "/openapi.json", "/metrics"} {
			resp, err := http.Get("http://" + m.HTTPAddr + p)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Errorf("%s: %d %s", p, resp.StatusCode, body)
			}
			if p == "/openapi.json" && !strings.Contains(string(body), `"/v1/keys/{key_id}/services"`) {
				t.Errorf("openapi document lacks the services path")
			}
			if p == "/metrics" && !strings.Contains(string(body), "keytrail_ingest_events_inserted_total{kind=\"usage\"} 6") {
				t.Errorf("metrics lack the inserted count")
			}
		}
	})
}

// An ingest-only process serves no API but must still be scrapeable and probeable.
func TestIngestOnlyProcessServesMetricsAndProbes(t *testing.T) {
	t.Parallel()
	db := testenv.ClickHouse(t)
	m := startKeytrail(t, db, "-role", "ingest")
	f := newFixture()
	publishFixture(t, m.NATSURL, f)
	usage, lifecycle := uint64(len(f.usage())), uint64(len(f.lifecycle()))
	testenv.WaitForEvents(t, db, usage, lifecycle, 30*time.Second)

	get := func(path string) (int, string) {
		t.Helper()
		code, body := testenv.Get(t, "http://"+m.HTTPAddr, path, nil, "")
		return code, string(body)
	}
	if code, body := get("/healthz"); code != http.StatusOK || body != "ok\n" {
		t.Errorf("/healthz: %d %q", code, body)
	}
	if code, body := get("/readyz"); code != http.StatusOK || body != "ready\n" {
		t.Errorf("/readyz: %d %q", code, body)
	}
	if code, _ := get("/v1/keys"); code != http.StatusNotFound {
		t.Errorf("/v1/keys on an ingest-only process: %d, want 404", code)
	}
	// The counter is incremented after the insert returns, so poll for it.
	want := []string{
		fmt.Sprintf("keytrail_ingest_events_inserted_total{kind=\"lifecycle\"} %d\n", lifecycle),
		fmt.Sprintf("keytrail_ingest_events_inserted_total{kind=\"usage\"} %d\n", usage),
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		code, body := get("/metrics")
		for _, line := range want {
			if code != http.StatusOK || !strings.Contains(body, line) {
				return fmt.Errorf("/metrics: status %d, no line %q", code, strings.TrimSpace(line))
			}
		}
		return nil
	})
}

// Processes that start at the same moment against a new database all reach the migrations
// step. The migrations lease (a NATS KV key) lets one apply them while the others wait, then
// find nothing left: the ledger records each version exactly once. Without the lease, two
// runners both see an empty ledger, both apply everything and record every version twice
// (and a backfill would count twice).
func TestProcessesStartingAtOnceMigrateOnce(t *testing.T) {
	db := testenv.EmptyClickHouse(t)
	js := testenv.NewJetStream(t, broker.DefaultStreamConfig())
	all, err := migrations.All()
	if err != nil {
		t.Fatal(err)
	}
	const processes = 3
	var wg sync.WaitGroup
	mains := make([]*Main, processes)
	errs := make([]error, processes)
	start := make(chan struct{})
	for i := range processes {
		cfg, err := parseConfig("test", []string{"-role", "ingest", "-nats-url", js.URL, "-clickhouse-dsn", db.DSN,
			"-http-listen", "", "-log-level", "warn", "-lease-ttl", "2s"})
		if err != nil {
			t.Fatal(err)
		}
		mains[i] = &Main{Config: cfg, Stdout: io.Discard}
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			errs[i] = mains[i].Start(context.Background())
		}()
	}
	close(start)
	wg.Wait()
	for i, m := range mains {
		if errs[i] != nil {
			t.Errorf("process %d: %v", i, errs[i])
		}
		t.Cleanup(func() { _ = m.Close() })
	}
	rows := testenv.QueryUint64(t, db.Conn, "SELECT count() FROM schema_migrations")
	versions := testenv.QueryUint64(t, db.Conn, "SELECT uniqExact(version) FROM schema_migrations")
	if rows != uint64(len(all)) || versions != uint64(len(all)) {
		t.Errorf("the ledger holds %d rows for %d versions; want each of the %d migrations recorded once", rows, versions, len(all))
	}
}
