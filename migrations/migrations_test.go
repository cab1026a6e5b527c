package migrations_test

import (
	"context"
	"reflect"
	"testing"

	"github.com/keytrail/keytrail/internal/testenv"
	"github.com/keytrail/keytrail/migrations"
)

func TestSplitStatements(t *testing.T) {
	got := migrations.SplitStatements("-- comment\nCREATE TABLE a\n(\n  x UInt8\n);\n\n-- another\nCREATE VIEW b AS SELECT 1;\n")
	want := []string{"CREATE TABLE a\n(\n  x UInt8\n)", "CREATE VIEW b AS SELECT 1"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestApplyIsIdempotent(t *testing.T) {
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
		"key_client_ip_totals", "key_client_ip_totals_mv", "key_service_totals", "key_service_totals_mv",
		"lifecycle_events", "query_audit_log", "schema_migrations", "spend_hourly", "spend_hourly_mv",
		"usage_5min", "usage_5min_mv", "usage_by_key_minute", "usage_by_key_minute_mv",
		"usage_by_service_minute", "usage_by_service_minute_mv", "usage_events",
	}
	if !reflect.DeepEqual(tables, want) {
		t.Errorf("tables %v, want %v", tables, want)
	}
}
