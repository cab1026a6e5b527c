package api_test

import (
	"context"
	"io"
	"maps"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/internal/apitest"
	"github.com/keytrail/keytrail/internal/testenv"
	"github.com/keytrail/keytrail/query/api"
)

// heldConn is the real ClickHouse connection with a gate in front of its reads: every query
// waits until the test opens the gate, so the calls running them hold their slots for as
// long as the test needs (a slow query, made deterministic).
type heldConn struct {
	driver.Conn
	gate    chan struct{}
	waiting atomic.Int32
}

func (c *heldConn) hold(ctx context.Context) {
	c.waiting.Add(1)
	defer c.waiting.Add(-1)
	select {
	case <-c.gate:
	case <-ctx.Done():
	}
}

func (c *heldConn) Query(ctx context.Context, query string, args ...any) (driver.Rows, error) {
	c.hold(ctx)
	return c.Conn.Query(ctx, query, args...)
}

func (c *heldConn) QueryRow(ctx context.Context, query string, args ...any) driver.Row {
	c.hold(ctx)
	return c.Conn.QueryRow(ctx, query, args...)
}

func (c *heldConn) Select(ctx context.Context, dest any, query string, args ...any) error {
	c.hold(ctx)
	return c.Conn.Select(ctx, dest, query, args...)
}

func retryDelay(err error) time.Duration {
	for _, d := range status.Convert(err).Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			return ri.GetRetryDelay().AsDuration()
		}
	}
	return 0
}

// Item 8 of issue 10: under load, calls failed with HTTP 500 ("acquire conn timeout") or hung
// for 10 s. Fault: every slot is held by a call whose query does not return. Load: 2 slots,
// 1 per principal, a 100 ms queue. Expected: a principal holding its share gets
// ResourceExhausted / 429, everyone else Unavailable / 503, both with a retry delay (3 s,
// Retry-After: 3 on REST), over gRPC and REST; the held calls complete once their queries
// do; every call is in query_audit_log with its code, and the shed metrics count them.
func TestOverloadIsShedWithRetryAfterAndRecorded(t *testing.T) {
	t.Parallel()
	db := testenv.ClickHouse(t) // the fixture goes in through the unheld connection
	held := &heldConn{Conn: db.Conn, gate: make(chan struct{})}
	reg := prometheus.NewRegistry()
	s := startStoredAPIOn(t, db, apitest.Options{
		Conn: held, Registerer: reg,
		Admission: api.Admission{MaxInFlight: 2, MaxInFlightPerPrincipal: 1, QueueTimeout: 100 * time.Millisecond, RetryAfter: 3 * time.Second},
	})
	client := keytrailv1.NewQueryServiceClient(mustDial(t, s.GRPCAddr))
	opened := false
	open := func() {
		if !opened {
			opened = true
			close(held.gate)
		}
	}
	t.Cleanup(open)

	// Two calls take both slots and wait in ClickHouse: security-team's (REST) and acme-bot's
	// (gRPC).
	var wg sync.WaitGroup
	var heldREST int
	var heldGRPC error
	wg.Add(2)
	go func() {
		defer wg.Done()
		heldREST, _ = testenv.Get(t, "http://"+s.HTTPAddr, "/v1/audit/events", nil, bearer(tokAuditor))
	}()
	testenv.Eventually(t, 10*time.Second, func() error { return wantWaiting(held, 1) })
	go func() {
		defer wg.Done()
		_, heldGRPC = client.ListAuditEvents(withAuthorization(bearer(tokAcme)), &keytrailv1.ListAuditEventsRequest{})
	}()
	testenv.Eventually(t, 10*time.Second, func() error { return wantWaiting(held, 2) })

	// Shed calls are answered within the queue timeout; the deadline only keeps a server that
	// does not shed from hanging the test.
	bounded := func(token string) context.Context {
		ctx, cancel := context.WithTimeout(withAuthorization(bearer(token)), 10*time.Second)
		t.Cleanup(cancel)
		return ctx
	}

	// security-team holds its share: 429 / ResourceExhausted.
	const share = `"security-team" has 1 calls in flight, its share of this server; retry after 3s`
	_, err := client.ListAuditEvents(bounded(tokAuditor), &keytrailv1.ListAuditEventsRequest{})
	wantGRPC(t, "security-team over gRPC", err, codes.ResourceExhausted, share)
	if d := retryDelay(err); d != 3*time.Second {
		t.Errorf("security-team over gRPC: retry delay %s, want 3s", d)
	}
	wantShed(t, s, "security-team over REST", tokAuditor, http.StatusTooManyRequests, codes.ResourceExhausted, share)

	// acme-globex-bot has no call in flight, but the server is full: 503 / Unavailable.
	const full = "the server is answering as many calls as it can (2); retry after 3s"
	_, err = client.ListAuditEvents(bounded(tokAcmeGlobex), &keytrailv1.ListAuditEventsRequest{})
	wantGRPC(t, "acme-globex-bot over gRPC", err, codes.Unavailable, full)
	if d := retryDelay(err); d != 3*time.Second {
		t.Errorf("acme-globex-bot over gRPC: retry delay %s, want 3s", d)
	}
	wantShed(t, s, "acme-globex-bot over REST", tokAcmeGlobex, http.StatusServiceUnavailable, codes.Unavailable, full)

	if v := testenv.Metric(t, reg, "keytrail_query_inflight"); v != 2 {
		t.Errorf("keytrail_query_inflight = %v while both slots are held, want 2", v)
	}

	// The held calls complete once their queries return.
	open()
	wg.Wait()
	if heldREST != http.StatusOK || heldGRPC != nil {
		t.Errorf("held calls: REST %d, gRPC %v; want both answered", heldREST, heldGRPC)
	}

	want := map[string]uint64{
		"security-team ListAuditEvents OK":                1,
		"acme-bot ListAuditEvents OK":                     1,
		"security-team ListAuditEvents ResourceExhausted": 2,
		"acme-globex-bot ListAuditEvents Unavailable":     2,
	}
	s.waitRecords(t, 6)
	if got := auditCounts(t, s); !maps.Equal(got, want) {
		t.Errorf("query_audit_log: %v, want %v", got, want)
	}
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"keytrail_query_shed_total", []string{"reason", "principal_share"}, 2},
		{"keytrail_query_shed_total", []string{"reason", "overloaded"}, 2},
		{"keytrail_query_inflight", nil, 0},
		{"keytrail_query_queued", nil, 0},
	} {
		if got := testenv.Metric(t, reg, c.name, c.labels...); got != c.want {
			t.Errorf("%s%q = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
}

func wantWaiting(c *heldConn, n int32) error {
	if got := c.waiting.Load(); got != n {
		return status.Errorf(codes.Unknown, "%d queries held, want %d", got, n)
	}
	return nil
}

// wantShed makes a REST call and checks its status, error and Retry-After: 3.
func wantShed(t *testing.T, s *storedAPI, what, token string, wantStatus int, wantCode codes.Code, wantMessage string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, "http://"+s.HTTPAddr+"/v1/audit/events", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", bearer(token))
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Errorf("%s: %v", what, err)
		return
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	wantREST(t, what, resp.StatusCode, body, wantStatus, wantCode, wantMessage)
	if ra := resp.Header.Get("Retry-After"); ra != "3" {
		t.Errorf("%s: Retry-After %q, want 3", what, ra)
	}
}
