package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/api/annotations"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/timestamppb"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/internal/apitest"
	"github.com/keytrail/keytrail/internal/testenv"
	"github.com/keytrail/keytrail/query/api"
	"github.com/keytrail/keytrail/query/auditlog"
	"github.com/keytrail/keytrail/query/auth"
)

// Tokens of the security tests, besides apitest's admin.
const (
	tokAuditor    = "ktk_test_auditor"
	tokAcme       = "ktk_test_acme"        // project_reader of acme
	tokAcmeGlobex = "ktk_test_acme_globex" // project_reader of acme and globex
	tokExpired    = "ktk_test_expired"
	tokSlow       = "ktk_test_slow" // 1 call/s, burst 2
)

func securityTokens() map[string]auth.Entry {
	expired := time.Now().Add(-time.Hour)
	return map[string]auth.Entry{
		// High limits: the hostile-input test makes thousands of calls as these two.
		tokAuditor:    {Name: "security-team", Role: auth.RoleAuditor, RatePerSecond: 1e6, Burst: 1e6},
		tokAcme:       {Name: "acme-bot", Role: auth.RoleProjectReader, Projects: []string{"acme"}, RatePerSecond: 1e6, Burst: 1e6},
		tokAcmeGlobex: {Name: "acme-globex-bot", Role: auth.RoleProjectReader, Projects: []string{"acme", "globex"}},
		tokExpired:    {Name: "expired-bot", Role: auth.RoleAuditor, ExpiresAt: &expired},
		tokSlow:       {Name: "slow-bot", Role: auth.RoleAuditor, RatePerSecond: 1, Burst: 2},
	}
}

// secFixture: service "billing" exists in acme, globex and initech; each project has keys and
// an audit trail. Two hours ago, so every default range covers it.
type secFixture struct{ t0 time.Time }

func newSecFixture() secFixture {
	return secFixture{t0: time.Now().UTC().Add(-2 * time.Hour).Truncate(time.Minute)}
}

func (f secFixture) insert(t *testing.T, db *testenv.Database) {
	t.Helper()
	u := func(id, project, key, service string, d time.Duration, code uint32) *keytrailv1.UsageEvent {
		return &keytrailv1.UsageEvent{
			EventId: id, Time: timestamppb.New(f.t0.Add(d)), Project: project, KeyId: key, Service: service,
			Model: "gpt-4o", StatusCode: code, InputTokens: 10, OutputTokens: 5, CostMicros: 1000,
		}
	}
	l := func(id, project, key string, action keytrailv1.Action, actor string, d time.Duration) *keytrailv1.LifecycleEvent {
		return &keytrailv1.LifecycleEvent{
			EventId: id, Time: timestamppb.New(f.t0.Add(d)), Project: project, KeyId: key, Action: action,
			Actor: actor, ActorType: keytrailv1.ActorType_ACTOR_TYPE_USER,
		}
	}
	rotated := func(e *keytrailv1.LifecycleEvent, newKey string) *keytrailv1.LifecycleEvent {
		e.NewKeyId = newKey
		return e
	}
	budget := l("l6", "globex", "key_globex_1", keytrailv1.Action_ACTION_BUDGET_CHANGED, "bob", -20*time.Minute)
	budget.Budget = &keytrailv1.Budget{AmountMicros: 1_000_000, Period: keytrailv1.BudgetPeriod_BUDGET_PERIOD_DAY}
	testenv.Insert(t, db,
		u("u1", "acme", "key_acme_1", "billing", 0, 200),
		u("u2", "acme", "key_acme_2", "search", time.Minute, 200),
		u("u3", "globex", "key_globex_1", "billing", 2*time.Minute, 500),
		u("u4", "initech", "key_initech_1", "billing", 3*time.Minute, 200),
		l("l1", "acme", "key_acme_1", keytrailv1.Action_ACTION_CREATED, "alice", -60*time.Minute),
		l("l3", "globex", "key_globex_1", keytrailv1.Action_ACTION_CREATED, "bob", -59*time.Minute),
		l("l5", "initech", "key_initech_1", keytrailv1.Action_ACTION_CREATED, "carol", -58*time.Minute),
		rotated(l("l2", "acme", "key_acme_1", keytrailv1.Action_ACTION_ROTATED, "alice", -30*time.Minute), "key_acme_2"),
		rotated(l("l4", "globex", "key_globex_1", keytrailv1.Action_ACTION_ROTATED, "bob", -29*time.Minute), "key_globex_2"),
		budget,
	)
	testenv.WaitForEvents(t, db, 4, 6, 15*time.Second)
}

// secServer is an API over the fixture with the security tokens.
type secServer struct {
	*apitest.Server
	db   *testenv.Database
	conn *grpc.ClientConn // sends only the metadata each call carries
}

func startSecServer(t *testing.T) *secServer {
	t.Helper()
	db := testenv.ClickHouse(t)
	newSecFixture().insert(t, db)
	srv := apitest.Start(t, db, apitest.Options{Tokens: securityTokens()})
	conn, err := grpc.NewClient(srv.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &secServer{Server: srv, db: db, conn: conn}
}

// withAuthorization is a gRPC context whose authorization metadata is exactly value ("" for
// none).
func withAuthorization(value string) context.Context {
	ctx := context.Background()
	if value == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, "authorization", value)
}

func bearer(token string) string { return "Bearer " + token }

func (s *secServer) get(t *testing.T, path string, params url.Values, authorization string) (int, []byte) {
	t.Helper()
	return testenv.Get(t, "http://"+s.HTTPAddr, path, params, authorization)
}

// restError is grpc-gateway's error body.
type restError struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

func wantREST(t *testing.T, what string, gotStatus int, body []byte, wantStatus int, wantCode codes.Code, wantMessage string) {
	t.Helper()
	if gotStatus != wantStatus {
		t.Errorf("%s: HTTP %d, want %d: %s", what, gotStatus, wantStatus, body)
		return
	}
	var e restError
	if err := json.Unmarshal(body, &e); err != nil {
		t.Errorf("%s: %v: %s", what, err, body)
		return
	}
	if codes.Code(e.Code) != wantCode || (wantMessage != "" && !strings.Contains(e.Message, wantMessage)) {
		t.Errorf("%s: body code %d %q, want %d (%s) containing %q", what, e.Code, e.Message, wantCode, wantCode, wantMessage)
	}
}

func wantGRPC(t *testing.T, what string, err error, wantCode codes.Code, wantMessage string) {
	t.Helper()
	st := status.Convert(err)
	if st.Code() != wantCode || (wantMessage != "" && !strings.Contains(st.Message(), wantMessage)) {
		t.Errorf("%s: %s %q, want %s containing %q", what, st.Code(), st.Message(), wantCode, wantMessage)
	}
}

// rpc is one QueryService method, found in the service descriptor so that a method added
// later is covered without touching this test.
type rpc struct {
	fullMethod string
	in, out    protoreflect.MessageType
	restPath   string // GET path with every {field} filled with "x"
}

var pathParam = regexp.MustCompile(`\{[^}]*\}`)

func queryServiceRPCs(t *testing.T) []rpc {
	t.Helper()
	sd := keytrailv1.File_keytrail_v1_query_proto.Services().ByName("QueryService")
	if sd == nil {
		t.Fatal("QueryService not found")
	}
	var out []rpc
	for i := range sd.Methods().Len() {
		md := sd.Methods().Get(i)
		in, err := protoregistry.GlobalTypes.FindMessageByName(md.Input().FullName())
		if err != nil {
			t.Fatal(err)
		}
		o, err := protoregistry.GlobalTypes.FindMessageByName(md.Output().FullName())
		if err != nil {
			t.Fatal(err)
		}
		rule, _ := proto.GetExtension(md.Options(), annotations.E_Http).(*annotations.HttpRule)
		if rule.GetGet() == "" {
			t.Fatalf("%s has no GET route", md.FullName())
		}
		out = append(out, rpc{
			fullMethod: fmt.Sprintf("/%s/%s", sd.FullName(), md.Name()),
			in:         in, out: o,
			restPath: pathParam.ReplaceAllString(rule.GetGet(), "x"),
		})
	}
	if len(out) < 9 {
		t.Fatalf("only %d methods found", len(out))
	}
	return out
}

func TestUnauthenticatedCallsAreRefusedOnEveryRPC(t *testing.T) {
	t.Parallel()
	s := startSecServer(t)
	credentials := []struct {
		name, authorization, message string
	}{
		{"no credentials", "", "missing credentials: send Authorization: Bearer <token>"},
		{"basic auth", "Basic dXNlcjpwYXNz", "authorization must be: Bearer <token>"},
		{"bearer without token", "Bearer", "authorization must be: Bearer <token>"},
		{"token without scheme", tokAuditor, "authorization must be: Bearer <token>"},
		{"unknown token", bearer("ktk_nobody"), "invalid or expired token"},
		{"hash of a token", bearer(auth.HashToken(tokAuditor)), "invalid or expired token"},
		{"sql in token", bearer("' OR 1=1 --"), "invalid or expired token"},
		{"expired token", bearer(tokExpired), "invalid or expired token"},
	}
	for _, m := range queryServiceRPCs(t) {
		for _, c := range credentials {
			what := fmt.Sprintf("%s with %s", m.fullMethod, c.name)
			err := s.conn.Invoke(withAuthorization(c.authorization), m.fullMethod, m.in.New().Interface(), m.out.New().Interface())
			wantGRPC(t, "gRPC "+what, err, codes.Unauthenticated, c.message)
			code, body := s.get(t, m.restPath, nil, c.authorization)
			wantREST(t, "GET "+m.restPath+" with "+c.name, code, body, http.StatusUnauthorized, codes.Unauthenticated, c.message)
		}
	}

	t.Run("health, readiness and the OpenAPI document need no token", func(t *testing.T) {
		resp, err := healthpb.NewHealthClient(s.conn).Check(withAuthorization(""), &healthpb.HealthCheckRequest{})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("grpc health: %v, %v", resp, err)
		}
		for path, want := range map[string]string{"/healthz": "ok\n", "/readyz": "ready\n", api.OpenAPIPath: `"swagger"`} {
			code, body := s.get(t, path, nil, "")
			if code != http.StatusOK || !strings.Contains(string(body), want) {
				t.Errorf("GET %s: %d %.100s, want 200 with %q", path, code, body, want)
			}
		}
	})

	t.Run("a valid token works", func(t *testing.T) {
		if _, err := keytrailv1.NewQueryServiceClient(s.conn).ListAuditEvents(withAuthorization(bearer(tokAuditor)), &keytrailv1.ListAuditEventsRequest{}); err != nil {
			t.Error(err)
		}
		// The scheme is case-insensitive (RFC 7235).
		if code, body := s.get(t, "/v1/audit/events", nil, "bearer "+tokAuditor); code != http.StatusOK {
			t.Errorf("lower-case scheme: %d %s", code, body)
		}
	})
}

func TestProjectReaderCannotReadOtherProjects(t *testing.T) {
	t.Parallel()
	s := startSecServer(t)
	client := keytrailv1.NewQueryServiceClient(s.conn)
	acme := withAuthorization(bearer(tokAcme))
	const denied = `not allowed to read project "globex"`

	t.Run("another project's key or project filter is PermissionDenied", func(t *testing.T) {
		for _, c := range []struct {
			path   string
			params url.Values
			call   func() error
		}{
			{"/v1/keys/key_globex_1/services", url.Values{"project": {"globex"}}, func() error {
				_, err := client.ListKeyServices(acme, &keytrailv1.ListKeyServicesRequest{KeyId: "key_globex_1", Project: "globex"})
				return err
			}},
			{"/v1/rotations/key_globex_1", url.Values{"project": {"globex"}}, func() error {
				_, err := client.GetRotation(acme, &keytrailv1.GetRotationRequest{OldKeyId: "key_globex_1", Project: "globex"})
				return err
			}},
			{"/v1/keys/key_globex_1", url.Values{"project": {"globex"}}, func() error {
				_, err := client.GetKey(acme, &keytrailv1.GetKeyRequest{KeyId: "key_globex_1", Project: "globex"})
				return err
			}},
			{"/v1/services/billing/keys", url.Values{"project": {"globex"}}, func() error {
				_, err := client.ListServiceKeys(acme, &keytrailv1.ListServiceKeysRequest{Service: "billing", Project: "globex"})
				return err
			}},
			{"/v1/audit/events", url.Values{"project": {"globex"}}, func() error {
				_, err := client.ListAuditEvents(acme, &keytrailv1.ListAuditEventsRequest{Project: "globex"})
				return err
			}},
			{"/v1/spend", url.Values{"project": {"globex"}}, func() error {
				_, err := client.GetSpend(acme, &keytrailv1.GetSpendRequest{Project: "globex"})
				return err
			}},
			{"/v1/budgets", url.Values{"project": {"globex"}}, func() error {
				_, err := client.ListBudgets(acme, &keytrailv1.ListBudgetsRequest{Project: "globex"})
				return err
			}},
			{"/v1/audit/verify", url.Values{"project": {"globex"}}, func() error {
				_, err := client.VerifyAuditTrail(acme, &keytrailv1.VerifyAuditTrailRequest{Project: "globex"})
				return err
			}},
			{"/v1/keys", url.Values{"project": {"globex"}}, func() error {
				_, err := client.ListKeys(acme, &keytrailv1.ListKeysRequest{Project: "globex"})
				return err
			}},
		} {
			code, body := s.get(t, c.path, c.params, bearer(tokAcme))
			wantREST(t, "GET "+c.path+"?"+c.params.Encode(), code, body, http.StatusForbidden, codes.PermissionDenied, denied)
			wantGRPC(t, "gRPC for "+c.path+"?"+c.params.Encode(), c.call(), codes.PermissionDenied, denied)
		}
	})

	// A key is (project, key_id). Without a project, a key id of a project the reader may not
	// read is no key of the reader's: the answers are those for a key id that does not exist,
	// and never name the project that has it.
	t.Run("another project's key id without a project is unknown, not forbidden", func(t *testing.T) {
		var services struct {
			Services []json.RawMessage `json:"services"`
		}
		getJSON(t, s, "/v1/keys/key_globex_1/services", nil, tokAcme, &services)
		if len(services.Services) != 0 {
			t.Errorf("GET /v1/keys/key_globex_1/services as acme: %s, want no services", services.Services)
		}
		resp, err := client.ListKeyServices(acme, &keytrailv1.ListKeyServicesRequest{KeyId: "key_globex_1"})
		if err != nil || len(resp.GetServices()) != 0 {
			t.Errorf("gRPC services of key_globex_1 as acme: %v, %v; want none", resp.GetServices(), err)
		}
		code, body := s.get(t, "/v1/keys/key_globex_1", nil, bearer(tokAcme))
		wantREST(t, "GET /v1/keys/key_globex_1 as acme", code, body, http.StatusNotFound, codes.NotFound, `key "key_globex_1" is not known at`)
		if strings.Contains(string(body), `\"globex\"`) {
			t.Errorf("the answer names globex: %s", body)
		}
		_, err = client.GetKey(acme, &keytrailv1.GetKeyRequest{KeyId: "key_globex_1"})
		wantGRPC(t, "gRPC GetKey key_globex_1 as acme", err, codes.NotFound, `key "key_globex_1" is not known at`)
	})

	t.Run("a rotation looks for keys in the reader's projects only, and names no other", func(t *testing.T) {
		// key_globex_1 exists only in globex: for acme's reader it is not known.
		for _, c := range []struct {
			path   string
			params url.Values
		}{
			{"/v1/rotations/key_globex_1", nil},
			{"/v1/rotations/no_such_key", url.Values{"new_key_id": {"key_globex_1"}}},
		} {
			code, body := s.get(t, c.path, c.params, bearer(tokAcme))
			wantREST(t, "GET "+c.path+"?"+c.params.Encode(), code, body, http.StatusNotFound, codes.NotFound, " is not known at ")
			if strings.Contains(string(body), `project \"globex\"`) || strings.Contains(string(body), "globex\"") {
				t.Errorf("GET %s names the other project: %s", c.path, body)
			}
		}
		_, err := client.GetRotation(acme, &keytrailv1.GetRotationRequest{OldKeyId: "key_globex_1"})
		wantGRPC(t, "gRPC rotation of key_globex_1", err, codes.NotFound, `key "key_globex_1" is not known at `)
		// The new key is read within the old key's project: globex's key_globex_1 (one
		// request) adds nothing to acme's report.
		var got struct {
			Project        string `json:"project"`
			NewKeyRequests string `json:"new_key_requests"`
			OldKeyRequests string `json:"old_key_requests"`
		}
		getJSON(t, s, "/v1/rotations/key_acme_1", url.Values{"new_key_id": {"key_globex_1"}}, tokAcme, &got)
		if got.Project != "acme" || got.NewKeyRequests != "0" || got.OldKeyRequests != "1" {
			t.Errorf("acme's key_acme_1 against key_globex_1: %+v", got)
		}
	})

	t.Run("own project is readable", func(t *testing.T) {
		var got struct {
			Services []struct{ Project, KeyID, Service string } `json:"services"`
		}
		getJSON(t, s, "/v1/keys/key_acme_1/services", nil, tokAcme, &got)
		if len(got.Services) != 1 || got.Services[0].Project != "acme" {
			t.Errorf("services of key_acme_1: %+v", got.Services)
		}
		if _, err := client.GetRotation(acme, &keytrailv1.GetRotationRequest{OldKeyId: "key_acme_1"}); err != nil {
			t.Errorf("rotation of key_acme_1: %v", err)
		}
	})

	t.Run("service keys are filtered to the reader's projects", func(t *testing.T) {
		for token, want := range map[string][]string{
			tokAcme:       {"acme/key_acme_1"},
			tokAcmeGlobex: {"acme/key_acme_1", "globex/key_globex_1"},
			tokAuditor:    {"acme/key_acme_1", "globex/key_globex_1", "initech/key_initech_1"},
		} {
			var got struct {
				Keys []struct {
					Project string `json:"project"`
					KeyID   string `json:"key_id"`
				} `json:"keys"`
			}
			getJSON(t, s, "/v1/services/billing/keys", nil, token, &got)
			var keys []string
			for _, k := range got.Keys {
				keys = append(keys, k.Project+"/"+k.KeyID)
			}
			if !slices.Equal(keys, want) {
				t.Errorf("REST keys of billing for %s: %v, want %v", token, keys, want)
			}
			resp, err := client.ListServiceKeys(withAuthorization(bearer(token)), &keytrailv1.ListServiceKeysRequest{Service: "billing"})
			if err != nil {
				t.Fatal(err)
			}
			keys = keys[:0]
			for _, k := range resp.GetKeys() {
				keys = append(keys, k.GetProject()+"/"+k.GetKeyId())
			}
			if !slices.Equal(keys, want) {
				t.Errorf("gRPC keys of billing for %s: %v, want %v", token, keys, want)
			}
		}
	})

	t.Run("audit events are filtered to the reader's projects", func(t *testing.T) {
		for token, want := range map[string][]string{
			tokAcme:       {"l2", "l1"},
			tokAcmeGlobex: {"l6", "l4", "l2", "l3", "l1"},
			tokAuditor:    {"l6", "l4", "l2", "l5", "l3", "l1"},
		} {
			var got struct {
				Events []struct {
					EventID string `json:"event_id"`
				} `json:"events"`
			}
			getJSON(t, s, "/v1/audit/events", nil, token, &got)
			var ids []string
			for _, e := range got.Events {
				ids = append(ids, e.EventID)
			}
			if !slices.Equal(ids, want) {
				t.Errorf("REST audit events for %s: %v, want %v", token, ids, want)
			}
			resp, err := client.ListAuditEvents(withAuthorization(bearer(token)), &keytrailv1.ListAuditEventsRequest{})
			if err != nil {
				t.Fatal(err)
			}
			ids = ids[:0]
			for _, e := range resp.GetEvents() {
				ids = append(ids, e.GetEventId())
			}
			if !slices.Equal(ids, want) {
				t.Errorf("gRPC audit events for %s: %v, want %v", token, ids, want)
			}
		}
		// Filtering another project's key through key_id yields nothing for a reader.
		resp, err := client.ListAuditEvents(acme, &keytrailv1.ListAuditEventsRequest{KeyId: "key_globex_1"})
		if err != nil || len(resp.GetEvents()) != 0 {
			t.Errorf("acme reader, key_id=key_globex_1: %v, %v; want no events", resp.GetEvents(), err)
		}
	})

	t.Run("aggregates need a project when the token reads several", func(t *testing.T) {
		const want = "this token reads projects acme, globex: pass project"
		for _, path := range []string{"/v1/spend", "/v1/budgets", "/v1/audit/verify"} {
			code, body := s.get(t, path, nil, bearer(tokAcmeGlobex))
			wantREST(t, "GET "+path, code, body, http.StatusForbidden, codes.PermissionDenied, want)
		}
		_, err := client.GetSpend(withAuthorization(bearer(tokAcmeGlobex)), &keytrailv1.GetSpendRequest{})
		wantGRPC(t, "gRPC GetSpend", err, codes.PermissionDenied, want)
		// Named, each of its projects is readable on its own.
		for _, p := range []string{"acme", "globex"} {
			resp, err := client.GetSpend(withAuthorization(bearer(tokAcmeGlobex)), &keytrailv1.GetSpendRequest{Project: p})
			if err != nil {
				t.Fatalf("spend of %s: %v", p, err)
			}
			if resp.GetTotalRequests() == 0 {
				t.Errorf("spend of %s: no requests", p)
			}
			for _, r := range resp.GetRows() {
				if r.GetProject() != p && r.GetProject() != "" {
					t.Errorf("spend of %s holds a row of %s", p, r.GetProject())
				}
			}
		}
		// A single-project reader's spend defaults to its project.
		resp, err := client.GetSpend(acme, &keytrailv1.GetSpendRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetTotalRequests() != 2 || resp.GetTotalCostMicros() != 2000 {
			t.Errorf("acme spend: %d requests, %d micros; want 2 and 2000 (acme only)", resp.GetTotalRequests(), resp.GetTotalCostMicros())
		}
	})
}

func getJSON(t *testing.T, s *secServer, path string, params url.Values, token string, out any) {
	t.Helper()
	testenv.GetJSON(t, "http://"+s.HTTPAddr, path, params, bearer(token), http.StatusOK, out)
}

// Not parallel: the third call must come within a second of the first two, before the
// bucket refills, which other tests' load on ClickHouse could delay.
func TestRateLimitPerPrincipal(t *testing.T) {
	s := startSecServer(t)
	client := keytrailv1.NewQueryServiceClient(s.conn)
	slow := withAuthorization(bearer(tokSlow))
	const want = `rate limit exceeded for "slow-bot": 1 requests/s with bursts of 2; retry shortly`

	for i := 1; i <= 2; i++ {
		if _, err := client.ListAuditEvents(slow, &keytrailv1.ListAuditEventsRequest{}); err != nil {
			t.Fatalf("call %d within the burst: %v", i, err)
		}
	}
	_, err := client.ListAuditEvents(slow, &keytrailv1.ListAuditEventsRequest{})
	wantGRPC(t, "third immediate gRPC call", err, codes.ResourceExhausted, want)
	// One bucket per principal, whichever transport it calls through.
	code, body := s.get(t, "/v1/audit/events", nil, bearer(tokSlow))
	wantREST(t, "fourth immediate call, REST", code, body, http.StatusTooManyRequests, codes.ResourceExhausted, want)
	// Other principals are not affected.
	if code, body := s.get(t, "/v1/audit/events", nil, bearer(tokAuditor)); code != http.StatusOK {
		t.Errorf("auditor while slow-bot is limited: %d %s", code, body)
	}
	// The bucket refills at 1 call/s.
	testenv.Eventually(t, 5*time.Second, func() error {
		if code, body := s.get(t, "/v1/audit/events", nil, bearer(tokSlow)); code != http.StatusOK {
			return fmt.Errorf("%d %s", code, body)
		}
		return nil
	})
}

// compactJSON removes protojson's (deliberately unstable) white space.
func compactJSON(t *testing.T, s string) string {
	t.Helper()
	var b bytes.Buffer
	if err := json.Compact(&b, []byte(s)); err != nil {
		t.Fatalf("%v: %s", err, s)
	}
	return b.String()
}

func TestEveryCallIsRecorded(t *testing.T) {
	t.Parallel()
	s := startSecServer(t)
	client := keytrailv1.NewQueryServiceClient(s.conn)
	before := len(s.Records.All()) // none: the fixture is inserted directly

	// 1. OK over REST.
	if code, body := s.get(t, "/v1/audit/events", url.Values{"project": {"acme"}}, bearer(tokAuditor)); code != http.StatusOK {
		t.Fatalf("audit events: %d %s", code, body)
	}
	// 2. PermissionDenied over gRPC.
	_, err := client.GetSpend(withAuthorization(bearer(tokAcme)), &keytrailv1.GetSpendRequest{Project: "globex"})
	wantGRPC(t, "spend of globex", err, codes.PermissionDenied, "")
	// 3. Refused by validation over REST.
	code, body := s.get(t, "/v1/keys/key_acme_1/services", url.Values{"page_size": {"5000"}}, bearer(tokAcmeGlobex))
	wantREST(t, "page_size 5000", code, body, http.StatusBadRequest, codes.InvalidArgument, "page_size")
	// 4. Refused by validation over gRPC.
	_, err = client.GetKey(withAuthorization(bearer(tokAuditor)), &keytrailv1.GetKeyRequest{})
	wantGRPC(t, "empty key id", err, codes.InvalidArgument, "key_id")
	// 5, 6. Failed authentication: recorded without a principal.
	code, body = s.get(t, "/v1/spend", nil, bearer(tokExpired))
	wantREST(t, "expired token", code, body, http.StatusUnauthorized, codes.Unauthenticated, "")
	_, err = client.ListKeys(withAuthorization(""), &keytrailv1.ListKeysRequest{Project: "acme"})
	wantGRPC(t, "no token", err, codes.Unauthenticated, "")
	// Not recorded: health checks.
	if _, err := healthpb.NewHealthClient(s.conn).Check(withAuthorization(""), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}

	const svc = "/keytrail.v1.QueryService/"
	type rec struct{ principal, role, method, code, request string }
	want := []rec{
		{"security-team", "auditor", svc + "ListAuditEvents", "OK", `{"project":"acme"}`},
		{"acme-bot", "project_reader", svc + "GetSpend", "PermissionDenied", `{"project":"globex"}`},
		{"acme-globex-bot", "project_reader", svc + "ListKeyServices", "InvalidArgument", `{"keyId":"key_acme_1","pageSize":5000}`},
		{"security-team", "auditor", svc + "GetKey", "InvalidArgument", `{}`},
		{"", "", svc + "GetSpend", "Unauthenticated", `{}`},
		{"", "", svc + "ListKeys", "Unauthenticated", `{"project":"acme"}`},
	}
	all := s.Records.All()[before:]
	if len(all) != len(want) {
		t.Fatalf("%d records, want %d: %+v", len(all), len(want), all)
	}
	start := time.Now().Add(-time.Minute)
	grpcPeer := regexp.MustCompile(`^127\.0\.0\.1:\d+$`)
	for i, r := range all {
		got := rec{r.Principal, r.Role, r.Method, r.Code, compactJSON(t, r.Request)}
		if got != want[i] {
			t.Errorf("record %d: %+v, want %+v", i, got, want[i])
		}
		if r.Time.Before(start) || r.Time.After(time.Now()) || r.Duration < 0 || r.Duration > time.Minute {
			t.Errorf("record %d: time %s, duration %s", i, r.Time, r.Duration)
		}
		// REST calls record the HTTP client's address (passed by the gateway), gRPC calls the
		// connection's: never empty, never the in-memory gateway connection.
		if !grpcPeer.MatchString(r.Peer) {
			t.Errorf("record %d: peer %q, want 127.0.0.1:port", i, r.Peer)
		}
	}
}

// Fault: a flood of calls without a valid credential. Load: 400 calls, as fast as one
// client makes them. Expected: all 400 refused with Unauthenticated; at most the burst (200)
// plus 20 a second of them recorded, so callers without credentials cannot fill the audit
// queue and make the API refuse everyone.
func TestFailedAuthenticationRecordsAreBounded(t *testing.T) {
	t.Parallel()
	s := startSecServer(t)
	client := keytrailv1.NewQueryServiceClient(s.conn)
	start := time.Now()
	for i := range 400 {
		_, err := client.ListKeys(withAuthorization(bearer(fmt.Sprintf("ktk_guess_%d", i))), &keytrailv1.ListKeysRequest{})
		if status.Code(err) != codes.Unauthenticated {
			t.Fatalf("call %d: %v, want Unauthenticated", i, err)
		}
	}
	elapsed := time.Since(start)
	var n int
	for _, r := range s.Records.All() {
		if r.Code == "Unauthenticated" && r.Principal == "" {
			n++
		}
	}
	if limit := 200 + int(20*elapsed.Seconds()) + 1; n < 200 || n > limit {
		t.Errorf("%d failed authentications recorded in %s, want between 200 and %d", n, elapsed, limit)
	}
	// Authenticated calls are still recorded, each one.
	if _, err := client.ListKeys(withAuthorization(bearer(tokAuditor)), &keytrailv1.ListKeysRequest{}); err != nil {
		t.Fatal(err)
	}
	if all := s.Records.All(); all[len(all)-1].Principal != "security-team" {
		t.Errorf("last record %+v, want the auditor's call", all[len(all)-1])
	}
}

// hostileValues are inputs that must never reach SQL as text or crash a handler.
var hostileValues = []string{
	`'`, `"`, "`", `\`, `\'`, `' OR 1=1 --`, `'); DROP TABLE usage_events; --`, `" OR ""="`,
	`key_acme_1' OR '1'='1`, `key_acme_1\' OR 1=1 --`, `%`, `_`, `*`, `?`, `??`, `$1`, `@p`, `{p:String}`,
	`/../../etc/passwd`, "a/b", "a b", "\x00", "key\x00acme", "\x01\x1f\x7f", "\n\r\t", "\u202eoverride",
	"ключ🔑", "鍵", "\u00a0", strings.Repeat("k", 256), strings.Repeat("k", 257), strings.Repeat("x", 10_000),
	strings.Repeat("'", 200), strings.Repeat(`\`, 255),
	// Near misses of stored values must not match them (no truncation at NUL, no trimming,
	// no case folding, no pattern matching).
	"key_acme_1\x00", "key_acme_1\x00' OR 1=1 --", "billing\x00", "acme\x00", "billing ", " acme", "KEY_ACME_1", "key_acme_%", "billin_",
}

func TestHostileInputIsRefusedOrAnsweredNeverAnInternalError(t *testing.T) {
	t.Parallel()
	s := startSecServer(t)
	client := keytrailv1.NewQueryServiceClient(s.conn)
	auditor := withAuthorization(bearer(tokAuditor))
	acme := withAuthorization(bearer(tokAcme))
	okCodes := []codes.Code{codes.OK, codes.InvalidArgument, codes.NotFound, codes.PermissionDenied}

	checkREST := func(path string, params url.Values, token string) []byte {
		t.Helper()
		code, body := s.get(t, path, params, bearer(token))
		switch code {
		case http.StatusOK, http.StatusBadRequest, http.StatusNotFound, http.StatusForbidden:
		default:
			t.Errorf("GET %.200q ?%.200s: HTTP %d: %.300s", path, params.Encode(), code, body)
		}
		if code == http.StatusOK {
			return body
		}
		return nil
	}
	checkGRPC := func(what string, err error) {
		t.Helper()
		if c := status.Code(err); !slices.Contains(okCodes, c) {
			t.Errorf("gRPC %.300q: %s %q", what, c, status.Convert(err).Message())
		}
	}
	// A 200 must be an empty answer: nothing in storage matches a hostile value.
	wantEmpty := func(what string, body []byte, field string) {
		t.Helper()
		if body == nil {
			return
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal(body, &m); err != nil {
			t.Errorf("%s: %v", what, err)
			return
		}
		if list := string(m[field]); list != "[]" && list != "" && list != "null" {
			t.Errorf("%.200q: %s = %.300s, want empty", what, field, list)
		}
	}

	for _, v := range hostileValues {
		seg := url.PathEscape(v)
		for _, token := range []string{tokAuditor, tokAcme} {
			wantEmpty("services of "+v, checkREST("/v1/keys/"+seg+"/services", nil, token), "services")
			wantEmpty("keys of "+v, checkREST("/v1/services/"+seg+"/keys", nil, token), "keys")
			checkREST("/v1/rotations/"+seg, nil, token)
			checkREST("/v1/rotations/key_acme_1", url.Values{"new_key_id": {v}}, token)
			checkREST("/v1/keys/"+seg, nil, token)
			for _, f := range []string{"project", "actor", "key_id"} {
				wantEmpty("audit events "+f+"="+v, checkREST("/v1/audit/events", url.Values{f: {v}}, token), "events")
			}
			for _, f := range []string{"project", "key_id", "service", "model"} {
				wantEmpty("spend "+f+"="+v, checkREST("/v1/spend", url.Values{f: {v}}, token), "rows")
			}
			for _, f := range []string{"project", "key_id"} {
				wantEmpty("budgets "+f+"="+v, checkREST("/v1/budgets", url.Values{f: {v}}, token), "budgets")
			}
			wantEmpty("keys project="+v, checkREST("/v1/keys", url.Values{"project": {v}}, token), "keys")
			checkREST("/v1/audit/verify", url.Values{"project": {v}}, token)
			checkREST("/v1/keys", url.Values{"page_token": {v}}, token)
			checkREST("/v1/audit/events", url.Values{"page_token": {v}}, token)
			checkREST("/v1/keys/key_acme_1/services", url.Values{"page_token": {v}}, token)
		}

		for name, ctx := range map[string]context.Context{"auditor": auditor, "acme": acme} {
			resp1, err := client.ListKeyServices(ctx, &keytrailv1.ListKeyServicesRequest{KeyId: v})
			checkGRPC(name+" ListKeyServices "+v, err)
			if len(resp1.GetServices()) != 0 {
				t.Errorf("ListKeyServices %.100q: %v", v, resp1.GetServices())
			}
			resp2, err := client.ListServiceKeys(ctx, &keytrailv1.ListServiceKeysRequest{Service: v})
			checkGRPC(name+" ListServiceKeys "+v, err)
			if len(resp2.GetKeys()) != 0 {
				t.Errorf("ListServiceKeys %.100q: %v", v, resp2.GetKeys())
			}
			resp3, err := client.ListAuditEvents(ctx, &keytrailv1.ListAuditEventsRequest{Project: v, Actor: v, KeyId: v})
			checkGRPC(name+" ListAuditEvents "+v, err)
			if len(resp3.GetEvents()) != 0 {
				t.Errorf("ListAuditEvents %.100q: %v", v, resp3.GetEvents())
			}
			for _, req := range []*keytrailv1.ListAuditEventsRequest{{Actor: v}, {KeyId: v}} {
				resp, err := client.ListAuditEvents(ctx, req)
				checkGRPC(name+" ListAuditEvents "+req.String(), err)
				if len(resp.GetEvents()) != 0 {
					t.Errorf("ListAuditEvents %.100q: %v", req.String(), resp.GetEvents())
				}
			}
			_, err = client.GetRotation(ctx, &keytrailv1.GetRotationRequest{OldKeyId: v})
			checkGRPC(name+" GetRotation "+v, err)
			_, err = client.GetKey(ctx, &keytrailv1.GetKeyRequest{KeyId: v})
			checkGRPC(name+" GetKey "+v, err)
			_, err = client.GetSpend(ctx, &keytrailv1.GetSpendRequest{Project: v, KeyId: v, Service: v, Model: v})
			checkGRPC(name+" GetSpend "+v, err)
			_, err = client.ListBudgets(ctx, &keytrailv1.ListBudgetsRequest{Project: v, KeyId: v})
			checkGRPC(name+" ListBudgets "+v, err)
			_, err = client.ListKeys(ctx, &keytrailv1.ListKeysRequest{Project: v, PageToken: v})
			checkGRPC(name+" ListKeys "+v, err)
			_, err = client.VerifyAuditTrail(ctx, &keytrailv1.VerifyAuditTrailRequest{Project: v})
			checkGRPC(name+" VerifyAuditTrail "+v, err)
		}
	}

	t.Run("invalid UTF-8 over REST", func(t *testing.T) {
		// gRPC clients cannot even send it; the gateway must refuse it, not fail on it.
		const want = "the request path and query parameters must be valid UTF-8"
		for _, c := range []struct {
			path   string
			params url.Values
		}{
			{"/v1/keys/%FF%FE/services", nil},
			{"/v1/services/%C3%28/keys", nil},
			{"/v1/keys/%ED%A0%80", nil}, // an encoded surrogate
			{"/v1/audit/events", url.Values{"actor": {"\xff\xfe"}}},
			{"/v1/spend", url.Values{"project": {"acme\xc0"}}},
			{"/v1/keys", url.Values{"\xff": {"acme"}}},
		} {
			code, body := s.get(t, c.path, c.params, bearer(tokAuditor))
			wantREST(t, "GET "+c.path+"?"+c.params.Encode(), code, body, http.StatusBadRequest, codes.InvalidArgument, want)
		}
	})

	t.Run("storage is intact", func(t *testing.T) {
		if n := testenv.QueryUint64(t, s.db.Conn, "SELECT count() FROM usage_events"); n != 4 {
			t.Errorf("usage_events holds %d rows, want 4", n)
		}
		if n := testenv.QueryUint64(t, s.db.Conn, "SELECT count() FROM lifecycle_events"); n != 6 {
			t.Errorf("lifecycle_events holds %d rows, want 6", n)
		}
		if n := testenv.QueryUint64(t, s.db.Conn, "SELECT count() FROM system.tables WHERE database = ? AND name = 'usage_events'", s.db.Name); n != 1 {
			t.Errorf("usage_events table missing")
		}
		// And the API still answers.
		resp, err := client.ListServiceKeys(auditor, &keytrailv1.ListServiceKeysRequest{Service: "billing"})
		if err != nil || len(resp.GetKeys()) != 3 {
			t.Errorf("keys of billing after the hostile calls: %v, %v", resp.GetKeys(), err)
		}
	})
}

// failingRecorder refuses every record, as auditlog.Recorder does when its queue is full.
type failingRecorder struct{ err error }

func (f failingRecorder) Record(context.Context, auditlog.Record) error { return f.err }

func TestFailClosedWhenQueriesCannotBeRecorded(t *testing.T) {
	t.Parallel()
	db := testenv.ClickHouse(t)
	newSecFixture().insert(t, db)
	for _, c := range []struct {
		name    string
		err     error
		message string
	}{
		{"backlog full", auditlog.ErrBacklogFull, "the query audit log is not accepting records; refusing unrecorded queries"},
		{"recorder closed", auditlog.ErrClosed, "could not record the query"},
		{"other error", errors.New("disk on fire"), "could not record the query"},
	} {
		t.Run(c.name, func(t *testing.T) {
			srv := apitest.Start(t, db, apitest.Options{Recorder: failingRecorder{c.err}})
			client, conn := srv.Client, srv.Conn
			admin := withAuthorization(bearer(apitest.AdminToken))

			resp, err := client.ListServiceKeys(admin, &keytrailv1.ListServiceKeysRequest{Service: "billing"})
			wantGRPC(t, "gRPC ListServiceKeys", err, codes.Unavailable, c.message)
			if resp != nil {
				t.Errorf("an unrecorded call was answered: %v", resp)
			}
			code, body := testenv.Get(t, "http://"+srv.HTTPAddr, "/v1/services/billing/keys", nil, bearer(apitest.AdminToken))
			wantREST(t, "REST keys of billing", code, body, http.StatusServiceUnavailable, codes.Unavailable, c.message)
			if strings.Contains(string(body), "key_acme_1") {
				t.Errorf("an unrecorded REST call leaked data: %s", body)
			}
			// Refused calls stay refused for what they are; health keeps answering.
			_, err = client.ListKeys(withAuthorization(bearer("ktk_wrong")), &keytrailv1.ListKeysRequest{})
			wantGRPC(t, "unknown token", err, codes.Unauthenticated, "invalid or expired token")
			if _, err := healthpb.NewHealthClient(conn).Check(withAuthorization(""), &healthpb.HealthCheckRequest{}); err != nil {
				t.Errorf("health: %v", err)
			}
		})
	}
}
