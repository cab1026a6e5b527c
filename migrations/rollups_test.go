package migrations_test

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/internal/testenv"
	"github.com/keytrail/keytrail/migrations"
)

// TestRollupsDescribeTheSchema holds migrations.Rollups to the schema: every materialized
// view on usage_events feeds a table it lists and no other, each listed table has the
// engine and column types the description implies, and, for a varied set of events, every
// cell of every rollup equals what the description computes from the raw rows
// (testenv.RollupMismatches uses the description's expressions). A rollup added by a
// migration without its description, or described wrongly, fails here.
func TestRollupsDescribeTheSchema(t *testing.T) {
	ctx := context.Background()
	db := testenv.ClickHouse(t)

	// 1. The views and their targets.
	rows, err := db.Conn.Query(ctx, "SELECT name FROM system.tables WHERE database = ? AND engine = 'MaterializedView' ORDER BY name", db.Name)
	if err != nil {
		t.Fatal(err)
	}
	var views []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			t.Fatal(err)
		}
		views = append(views, n)
	}
	rows.Close()
	target := regexp.MustCompile(`(?s) TO (\S+)\.(\S+) .* FROM (\S+)\.(\S+)`)
	var targets []string
	for _, v := range views {
		var create string
		if err := db.Conn.QueryRow(ctx, "SHOW CREATE TABLE `"+db.Name+"`.`"+v+"`").Scan(&create); err != nil {
			t.Fatal(err)
		}
		m := target.FindStringSubmatch(create)
		if m == nil || m[4] != "usage_events" {
			t.Errorf("view %s does not read usage_events into a table: %s", v, create)
			continue
		}
		targets = append(targets, m[2])
	}
	var described []string
	for _, r := range migrations.Rollups {
		described = append(described, r.Table)
	}
	slices.Sort(targets)
	slices.Sort(described)
	if !slices.Equal(targets, described) {
		t.Errorf("views feed %v; migrations.Rollups describes %v", targets, described)
	}

	// 2. Engines and column types.
	for _, r := range migrations.Rollups {
		var engine string
		if err := db.Conn.QueryRow(ctx, "SELECT engine FROM system.tables WHERE database = ? AND name = ?", db.Name, r.Table).Scan(&engine); err != nil {
			t.Fatalf("%s: %v", r.Table, err)
		}
		if want := map[bool]string{true: "AggregatingMergeTree", false: "SummingMergeTree"}[r.Aggregating]; engine != want {
			t.Errorf("%s engine %s, described as %s", r.Table, engine, want)
		}
		want := map[string]string{}
		if !r.AllTime() {
			want[r.Bucket] = "DateTime('UTC')"
		}
		for _, d := range r.Dims {
			want[d] = "String"
		}
		for _, c := range r.Columns {
			want[c.Name] = columnType(r.Aggregating, c.Of)
		}
		for name, typ := range want {
			var got string
			if err := db.Conn.QueryRow(ctx, "SELECT type FROM system.columns WHERE database = ? AND table = ? AND name = ?", db.Name, r.Table, name).Scan(&got); err != nil {
				t.Errorf("%s.%s: %v", r.Table, name, err)
				continue
			}
			if got != typ {
				t.Errorf("%s.%s is %s, described as %s", r.Table, name, got, typ)
			}
		}
	}

	// 3. Cell by cell, the description computes what the views stored.
	base := time.Date(2026, 11, 30, 22, 58, 30, 0, time.UTC)
	var events []any
	for i := range 240 {
		events = append(events, &keytrailv1.UsageEvent{
			EventId: fmt.Sprintf("e%03d", i), Time: timestamppb.New(base.Add(time.Duration(i*47) * time.Second)),
			Project: []string{"p1", "p2"}[i%2], KeyId: fmt.Sprintf("k%d", i%5), Service: fmt.Sprintf("s%d", i%3),
			Model: []string{"m1", "m2", ""}[i%3], StatusCode: []uint32{200, 503, 429, 201}[i%4],
			InputTokens: uint64(i * 3), OutputTokens: uint64(i % 11), CostMicros: int64(i * 7),
			ClientIp: []string{"10.0.0.1", "", "10.0.0.2"}[i%3],
		})
	}
	testenv.Insert(t, db, events[:100]...)
	testenv.Insert(t, db, events[100:]...)
	if m := testenv.RollupMismatches(t, db.Conn, 5); len(m) > 0 {
		t.Errorf("rollups differ from what migrations.Rollups computes from usage_events:\n%v", m)
	}
}

func columnType(aggregating bool, q migrations.Quantity) string {
	if !aggregating {
		if q == migrations.Cost {
			return "Int64"
		}
		return "UInt64"
	}
	return map[migrations.Quantity]string{
		migrations.Requests:    "AggregateFunction(count)",
		migrations.Errors:      "AggregateFunction(sum, UInt64)",
		migrations.FirstSeen:   "AggregateFunction(min, Int64)",
		migrations.LastSeen:    "AggregateFunction(max, Int64)",
		migrations.LastSuccess: "AggregateFunction(maxIf, Int64, UInt8)",
	}[q]
}
