package auditlog_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"

	"github.com/keytrail/keytrail/internal/testenv"
	"github.com/keytrail/keytrail/query/auditlog"
)

type stored struct {
	Time       time.Time
	TimeMs     int64
	Principal  string
	Role       string
	Method     string
	Request    string
	Code       string
	DurationMs uint32
	Peer       string
}

func readAll(t *testing.T, db *testenv.Database) []stored {
	t.Helper()
	rows, err := db.Conn.Query(context.Background(),
		"SELECT time, time_ms, principal, role, method, request, code, duration_ms, peer FROM query_audit_log ORDER BY time_ms, principal")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []stored
	for rows.Next() {
		var s stored
		if err := rows.Scan(&s.Time, &s.TimeMs, &s.Principal, &s.Role, &s.Method, &s.Request, &s.Code, &s.DurationMs, &s.Peer); err != nil {
			t.Fatal(err)
		}
		s.Time = s.Time.UTC()
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func count(t *testing.T, db *testenv.Database) uint64 {
	return testenv.QueryUint64(t, db.Conn, "SELECT count() FROM query_audit_log")
}

func closeRecorder(t *testing.T, r *auditlog.Recorder) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.Close(ctx); err != nil {
		t.Fatalf("close: %v", err)
	}
}

func TestRecordsAreStoredWithEveryField(t *testing.T) {
	t.Parallel()
	db := testenv.ClickHouse(t)
	r, err := auditlog.New(auditlog.Config{Conn: db.Conn, FlushInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeRecorder(t, r) })

	t0 := time.Date(2026, 11, 22, 8, 0, 0, 125_000_000, time.FixedZone("CET", 3600))
	recs := []auditlog.Record{
		{
			Time: t0, Principal: "security-team", Role: "auditor", Method: "/keytrail.v1.QueryService/ListAuditEvents",
			Request: `{"project":"acme","actor":"' OR 1=1 --"}`, Code: "OK", Duration: 42*time.Millisecond + 900*time.Microsecond,
			Peer: "10.1.2.3:50123",
		},
		{
			Time: t0.Add(1500 * time.Millisecond), Principal: "acme-bot", Role: "project_reader", Method: "/keytrail.v1.QueryService/GetSpend",
			Request: `{"project":"globex"}`, Code: "PermissionDenied", Duration: 0,
		},
		{
			// A failed authentication: no principal, no role.
			Time: t0.Add(3 * time.Second), Method: "/keytrail.v1.QueryService/GetKey", Request: "{\"key_id\":\"k\\u0000\"}",
			Code: "Unauthenticated", Duration: time.Millisecond, Peer: "[::1]:4000",
		},
	}
	for _, rec := range recs {
		if err := r.Record(context.Background(), rec); err != nil {
			t.Fatal(err)
		}
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		if n := count(t, db); n != 3 {
			return fmt.Errorf("%d records stored, want 3", n)
		}
		return nil
	})
	got := readAll(t, db)
	want := []stored{
		{
			Time: time.Date(2026, 11, 22, 7, 0, 0, 0, time.UTC), TimeMs: t0.UnixMilli(), Principal: "security-team", Role: "auditor",
			Method: "/keytrail.v1.QueryService/ListAuditEvents", Request: `{"project":"acme","actor":"' OR 1=1 --"}`,
			Code: "OK", DurationMs: 42, Peer: "10.1.2.3:50123",
		},
		{
			Time: time.Date(2026, 11, 22, 7, 0, 1, 0, time.UTC), TimeMs: t0.UnixMilli() + 1500, Principal: "acme-bot", Role: "project_reader",
			Method: "/keytrail.v1.QueryService/GetSpend", Request: `{"project":"globex"}`, Code: "PermissionDenied",
		},
		{
			Time: time.Date(2026, 11, 22, 7, 0, 3, 0, time.UTC), TimeMs: t0.UnixMilli() + 3000,
			Method: "/keytrail.v1.QueryService/GetKey", Request: "{\"key_id\":\"k\\u0000\"}", Code: "Unauthenticated", DurationMs: 1, Peer: "[::1]:4000",
		},
	}
	if len(got) != len(want) {
		t.Fatalf("stored %d records, want %d: %+v", len(got), len(want), got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("record %d:\n got %+v\nwant %+v", i, got[i], want[i])
		}
	}
}

func TestCloseFlushesQueuedRecords(t *testing.T) {
	t.Parallel()
	db := testenv.ClickHouse(t)
	// No timed flush during the test: only Close (or a full batch) writes.
	r, err := auditlog.New(auditlog.Config{Conn: db.Conn, FlushInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for i := range 5 {
		if err := r.Record(context.Background(), auditlog.Record{Time: start.Add(time.Duration(i) * time.Millisecond), Principal: fmt.Sprintf("p%d", i), Method: "/m", Code: "OK"}); err != nil {
			t.Fatal(err)
		}
	}
	if n := count(t, db); n != 0 {
		t.Fatalf("%d records stored before Close, want 0 (flush interval is an hour)", n)
	}
	closeRecorder(t, r)
	if n := count(t, db); n != 5 {
		t.Fatalf("%d records stored after Close, want 5", n)
	}
	// Closed: a late call gets an error instead of a panic or a silently lost record.
	if err := r.Record(context.Background(), auditlog.Record{Principal: "late"}); !errors.Is(err, auditlog.ErrClosed) {
		t.Fatalf("Record after Close: %v, want ErrClosed", err)
	}
	closeRecorder(t, r) // idempotent
}

func TestFullBatchIsWrittenWithoutWaitingForTheInterval(t *testing.T) {
	t.Parallel()
	db := testenv.ClickHouse(t)
	r, err := auditlog.New(auditlog.Config{Conn: db.Conn, FlushInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeRecorder(t, r) })
	now := time.Now()
	for i := range 1000 {
		if err := r.Record(context.Background(), auditlog.Record{Time: now, Principal: fmt.Sprint(i), Code: "OK"}); err != nil {
			t.Fatal(err)
		}
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		if n := count(t, db); n != 1000 {
			return fmt.Errorf("%d records stored, want 1000", n)
		}
		return nil
	})
}

// logCapture is a slog handler that keeps messages and their "records" attribute.
type logCapture struct {
	mu    sync.Mutex
	lines []string
}

func (c *logCapture) Enabled(context.Context, slog.Level) bool { return true }
func (c *logCapture) WithAttrs([]slog.Attr) slog.Handler       { return c }
func (c *logCapture) WithGroup(string) slog.Handler            { return c }
func (c *logCapture) Handle(_ context.Context, r slog.Record) error {
	line := r.Message
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "records" || a.Key == "attempt" {
			line += fmt.Sprintf(" %s=%v", a.Key, a.Value)
		}
		return true
	})
	c.mu.Lock()
	c.lines = append(c.lines, line)
	c.mu.Unlock()
	return nil
}

func (c *logCapture) all() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.lines...)
}

func (c *logCapture) has(prefix string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, l := range c.lines {
		if strings.HasPrefix(l, prefix) {
			return true
		}
	}
	return false
}

// closedAddr is a local TCP address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	return addr
}

// Fault: ClickHouse unreachable (connection refused). Load: 1 record taken into a batch
// that keeps failing, then Capacity (3) records filling the queue, then one more. Expected:
// the 4 first calls are accepted at once, the 5th waits EnqueueTimeout and gets
// ErrBacklogFull (the API turns that into Unavailable); Close gives up after its deadline
// and reports the 4 records it could not store.
//
// Not parallel: it times calls to tens of milliseconds.
func TestBacklogFullWhenClickHouseIsUnreachable(t *testing.T) {
	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{closedAddr(t)}, DialTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	logs := &logCapture{}
	const capacity, enqueueTimeout = 3, 150 * time.Millisecond
	r, err := auditlog.New(auditlog.Config{
		Conn: conn, Capacity: capacity, FlushInterval: 10 * time.Millisecond, EnqueueTimeout: enqueueTimeout,
		Logger: slog.New(logs),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	rec := func(i int) auditlog.Record {
		return auditlog.Record{Time: time.Now(), Principal: fmt.Sprint(i), Method: "/m", Code: "OK"}
	}

	if err := r.Record(ctx, rec(0)); err != nil {
		t.Fatal(err)
	}
	// Once a write of exactly that one record has failed, the writer is stuck retrying it
	// and takes nothing more from the queue.
	testenv.Eventually(t, 10*time.Second, func() error {
		if !logs.has("writing query audit records failed; retrying records=1 attempt=1") {
			return errors.New("no failed write of 1 record logged yet")
		}
		return nil
	})
	for i := 1; i <= capacity; i++ {
		start := time.Now()
		if err := r.Record(ctx, rec(i)); err != nil {
			t.Fatalf("record %d: %v, want accepted (queue has room)", i, err)
		}
		if d := time.Since(start); d > enqueueTimeout/2 {
			t.Errorf("record %d took %s: a queue with room must not wait", i, d)
		}
	}
	start := time.Now()
	if err := r.Record(ctx, rec(capacity+1)); !errors.Is(err, auditlog.ErrBacklogFull) {
		t.Fatalf("record %d: %v, want ErrBacklogFull", capacity+1, err)
	}
	if d := time.Since(start); d < enqueueTimeout {
		t.Errorf("ErrBacklogFull after %s, want after EnqueueTimeout (%s)", d, enqueueTimeout)
	}
	// The caller's deadline wins over EnqueueTimeout.
	short, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
	defer cancel()
	if err := r.Record(short, rec(capacity+2)); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("record with an expiring context: %v, want DeadlineExceeded", err)
	}

	closeCtx, cancelClose := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancelClose()
	if err := r.Close(closeCtx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Close with ClickHouse unreachable: %v, want DeadlineExceeded", err)
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		if !logs.has(fmt.Sprintf("query audit records dropped: closed before ClickHouse took them records=%d", capacity+1)) {
			return fmt.Errorf("drop of %d records not logged: %q", capacity+1, logs.all())
		}
		return nil
	})
	if err := r.Record(ctx, rec(99)); !errors.Is(err, auditlog.ErrClosed) {
		t.Errorf("Record after Close: %v, want ErrClosed", err)
	}
}

func TestConfigValidate(t *testing.T) {
	_, err := auditlog.New(auditlog.Config{Capacity: -1, EnqueueTimeout: -time.Second})
	want := "auditlog: connection is required\nauditlog: sizes and durations must not be negative"
	if err == nil || err.Error() != want {
		t.Errorf("New: %v, want %q", err, want)
	}
}
