package migrations_test

import (
	"context"
	"reflect"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"

	"github.com/keytrail/keytrail/internal/testenv"
	"github.com/keytrail/keytrail/migrations"
)

func TestSplitStatements(t *testing.T) {
	t.Parallel()
	got := migrations.SplitStatements("-- comment\nCREATE TABLE a\n(\n  x UInt8\n);\n\n-- another\nCREATE VIEW b AS SELECT 1;\n")
	want := []string{"CREATE TABLE a\n(\n  x UInt8\n)", "CREATE VIEW b AS SELECT 1"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestApplyIsIdempotent(t *testing.T) {
	t.Parallel()
	db := testenv.ClickHouse(t) // applies every migration once
	all, err := migrations.All()
	if err != nil {
		t.Fatal(err)
	}
	again, err := migrations.Apply(context.Background(), db.Conn)
	if err != nil {
		t.Fatal(err)
	}
	if len(again) != 0 {
		t.Errorf("second Apply applied %v, want nothing", again)
	}
	if n := testenv.QueryUint64(t, db.Conn, "SELECT count() FROM schema_migrations"); n != uint64(len(all)) {
		t.Errorf("schema_migrations has %d rows, want %d", n, len(all))
	}
	// Every table and view the migrations create exists.
	var tables []string
	rows, err := db.Conn.Query(context.Background(), "SELECT name FROM system.tables WHERE database = ? ORDER BY name", db.Name)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var n string
		_ = rows.Scan(&n)
		tables = append(tables, n)
	}
	want := []string{
		"dead_letters", "key_client_ip_totals", "key_client_ip_totals_mv", "key_service_totals", "key_service_totals_mv",
		"lifecycle_events", "query_audit_log", "schema_migrations", "spend_daily", "spend_daily_mv",
		"spend_hourly", "spend_hourly_mv",
		"usage_by_service_minute", "usage_by_service_minute_mv", "usage_events", "usage_key_5min", "usage_key_5min_mv",
		"usage_key_hourly", "usage_key_hourly_mv", "usage_key_minute", "usage_key_minute_mv",
	}
	if !reflect.DeepEqual(tables, want) {
		t.Errorf("tables %v, want %v", tables, want)
	}
}

// TestScanRollupsBackfillExistingHistory upgrades a database holding usage from the schema
// before 0005: the new rollups (0005, and the re-sorted per-key minute and 5-minute rollups of
// 0006 and 0008) must hold
// that history, then keep counting new events, and a second run of 0005 (a process killed
// before it was recorded) must not count twice.
func TestScanRollupsBackfillExistingHistory(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.ClickHouseAt(t, 4)
	usage := func(id, at, project, key, service, model string, status uint32, in, out uint64, cost int64) *keytrailv1.UsageEvent {
		ts, err := time.Parse(time.RFC3339, at)
		if err != nil {
			t.Fatal(err)
		}
		return &keytrailv1.UsageEvent{EventId: id, Time: timestamppb.New(ts), Project: project, KeyId: key, Service: service,
			Model: model, StatusCode: status, InputTokens: in, OutputTokens: out, CostMicros: cost}
	}
	// Two inserts: two parts of spend_hourly, so the backfill has to add up unmerged rows.
	testenv.Insert(t, db,
		usage("e1", "2026-11-20T23:30:00Z", "proj_a", "key_a", "svc-1", "gpt-4o", 200, 10, 20, 1000),
		usage("e2", "2026-11-20T23:45:00Z", "proj_a", "key_a", "svc-1", "gpt-4o", 500, 0, 0, 0))
	testenv.Insert(t, db,
		usage("e3", "2026-11-21T00:10:00Z", "proj_a", "key_a", "svc-2", "gpt-4o-mini", 200, 5, 6, 300),
		usage("e4", "2026-11-21T01:20:00Z", "proj_b", "key_b", "svc-1", "gpt-4o", 200, 70, 80, 7000))

	applied, err := migrations.ApplyUpTo(ctx, db.Conn, 9)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(applied, []uint32{5, 6, 7, 8, 9}) {
		t.Fatalf("applied %v, want [5 6 7 8 9]", applied)
	}
	// After the upgrade, new events reach the new rollups through their views.
	testenv.Insert(t, db, usage("e5", "2026-11-21T01:50:00Z", "proj_b", "key_b", "svc-1", "gpt-4o", 429, 0, 0, 0))

	wantDaily := []string{
		"2026-11-20 00:00:00 proj_a key_a svc-1 gpt-4o requests=2 errors=1 in=10 out=20 cost=1000",
		"2026-11-21 00:00:00 proj_a key_a svc-2 gpt-4o-mini requests=1 errors=0 in=5 out=6 cost=300",
		"2026-11-21 00:00:00 proj_b key_b svc-1 gpt-4o requests=2 errors=1 in=70 out=80 cost=7000",
	}
	wantHourly := []string{
		"2026-11-20 23:00:00 proj_a key_a requests=2 errors=1 cost=1000",
		"2026-11-21 00:00:00 proj_a key_a requests=1 errors=0 cost=300",
		"2026-11-21 01:00:00 proj_b key_b requests=2 errors=1 cost=7000",
	}
	check := func(when string) {
		t.Helper()
		wantLines(t, db, when+": spend_daily", `SELECT concat(toString(day), ' ', project, ' ', key_id, ' ', service, ' ', model,
    ' requests=', toString(sum(requests)), ' errors=', toString(sum(errors)), ' in=', toString(sum(total_input_tokens)),
    ' out=', toString(sum(total_output_tokens)), ' cost=', toString(sum(total_cost_micros))) AS line
FROM spend_daily GROUP BY day, project, key_id, service, model ORDER BY line`, wantDaily)
		wantLines(t, db, when+": usage_key_hourly", `SELECT concat(toString(hour), ' ', project, ' ', key_id,
    ' requests=', toString(sum(requests)), ' errors=', toString(sum(errors)), ' cost=', toString(sum(total_cost_micros))) AS line
FROM usage_key_hourly GROUP BY hour, project, key_id ORDER BY line`, wantHourly)
	}
	check("after the upgrade")

	// 0006 moved the per-key minute cells, history included, to usage_key_minute.
	wantLines(t, db, "usage_key_minute", `SELECT concat(toString(minute), ' ', key_id, ' ', service, ' requests=', toString(countMerge(requests)),
    ' errors=', toString(sumMerge(errors)), ' last_success=', toString(maxIfMerge(last_success_ms))) AS line
FROM usage_key_minute GROUP BY minute, key_id, service ORDER BY line`, []string{
		"2026-11-20 23:30:00 key_a svc-1 requests=1 errors=0 last_success=1795217400000",
		"2026-11-20 23:45:00 key_a svc-1 requests=1 errors=1 last_success=0",
		"2026-11-21 00:10:00 key_a svc-2 requests=1 errors=0 last_success=1795219800000",
		"2026-11-21 01:20:00 key_b svc-1 requests=1 errors=0 last_success=1795224000000",
		"2026-11-21 01:50:00 key_b svc-1 requests=1 errors=1 last_success=0",
	})
	wantNoTables(t, db, "usage_by_key_minute%")

	// 0008 moved the 5-minute cells, history included, to usage_key_5min.
	wantLines(t, db, "usage_key_5min", `SELECT concat(toString(bucket), ' ', project, ' ', key_id, ' ', service, ' requests=', toString(sum(requests)),
    ' errors=', toString(sum(errors)), ' cost=', toString(sum(total_cost_micros))) AS line
FROM usage_key_5min GROUP BY bucket, project, key_id, service ORDER BY line`, []string{
		"2026-11-20 23:30:00 proj_a key_a svc-1 requests=1 errors=0 cost=1000",
		"2026-11-20 23:45:00 proj_a key_a svc-1 requests=1 errors=1 cost=0",
		"2026-11-21 00:10:00 proj_a key_a svc-2 requests=1 errors=0 cost=300",
		"2026-11-21 01:20:00 proj_b key_b svc-1 requests=1 errors=0 cost=7000",
		"2026-11-21 01:50:00 proj_b key_b svc-1 requests=1 errors=1 cost=0",
	})
	wantNoTables(t, db, "usage_5min%")

	// A second run of the whole file starts over from spend_hourly: the same rows, not twice.
	all, err := migrations.All()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range all {
		if m.Version != 5 {
			continue
		}
		for i, stmt := range m.Statements {
			if err := db.Conn.Exec(ctx, stmt); err != nil {
				t.Fatalf("re-run statement %d: %v", i+1, err)
			}
		}
	}
	check("after a second run of 0005")
}

// wantLines checks the one-string-column rows a query returns.
func wantLines(t *testing.T, db *testenv.Database, what, sql string, want []string) {
	t.Helper()
	if got := queryStrings(t, db, sql); !reflect.DeepEqual(got, want) {
		t.Errorf("%s\n%q\nwant\n%q", what, got, want)
	}
}

// wantNoTables checks that no table of the database matches a LIKE pattern: what a migration
// replaced is gone.
func wantNoTables(t *testing.T, db *testenv.Database, like string) {
	t.Helper()
	if n := testenv.QueryUint64(t, db.Conn, "SELECT count() FROM system.tables WHERE database = currentDatabase() AND name LIKE ?", like); n != 0 {
		t.Errorf("%d tables named like %s remain", n, like)
	}
}

func queryStrings(t *testing.T, db *testenv.Database, sql string) []string {
	t.Helper()
	rows, err := db.Conn.Query(context.Background(), sql)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}
