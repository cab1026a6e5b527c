package testenv

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/keytrail/keytrail/migrations"
)

// RollupMismatches compares every cell of every rollup (migrations.Rollups) with what its
// view computes from usage_events, column by column (counts, sums, first/last seen), and
// describes up to limit differing cells per rollup; nil means every rollup holds exactly
// what the raw rows say. It reads whole tables: for tests.
func RollupMismatches(t testing.TB, conn driver.Conn, limit int) []string {
	t.Helper()
	var out []string
	for _, r := range migrations.Rollups {
		rawBucket, heldBucket := "toInt64(0)", "toInt64(0)"
		if !r.AllTime() {
			rawBucket, heldBucket = "toInt64(toUInt32("+r.BucketExpr()+"))", "toInt64(toUInt32("+r.Bucket+"))"
		}
		var rawCols, heldCols, diff []string
		for i, c := range r.Columns {
			rawCols = append(rawCols, fmt.Sprintf("toInt64(%s) AS v%d", migrations.RawExpr(c.Of), i))
			heldCols = append(heldCols, fmt.Sprintf("toInt64(%s) AS v%d", r.Merge(c), i))
			diff = append(diff, fmt.Sprintf("sumIf(v%d, side = 1) != sumIf(v%d, side = 2)", i, i))
		}
		where := ""
		if r.Filter != "" {
			where = " WHERE " + r.Filter
		}
		dims := strings.Join(r.Dims, ", ")
		// Each side has at most one row per cell, so sumIf is that row's value (or 0).
		q := "SELECT b, " + dims + ", arrayStringConcat(groupArray(concat(toString(side), ': ', " + vlist(len(r.Columns)) + ")), '; ') FROM (\n" +
			"SELECT " + rawBucket + " AS b, " + dims + ", " + strings.Join(rawCols, ", ") + ", toUInt8(1) AS side FROM usage_events" + where + " GROUP BY b, " + dims + "\n" +
			"UNION ALL\n" +
			"SELECT " + heldBucket + " AS b, " + dims + ", " + strings.Join(heldCols, ", ") + ", toUInt8(2) AS side FROM " + r.Table + " GROUP BY b, " + dims + "\n" +
			") GROUP BY b, " + dims + " HAVING " + strings.Join(diff, " OR ") + " ORDER BY b, " + dims + fmt.Sprintf(" LIMIT %d", limit)
		rows, err := conn.Query(context.Background(), q)
		if err != nil {
			t.Fatalf("compare %s with usage_events: %v\n%s", r.Table, err, q)
		}
		for rows.Next() {
			var b int64
			vals := make([]string, len(r.Dims))
			var sides string
			dest := []any{&b}
			for i := range vals {
				dest = append(dest, &vals[i])
			}
			dest = append(dest, &sides)
			if err := rows.Scan(dest...); err != nil {
				rows.Close()
				t.Fatalf("compare %s with usage_events: %v", r.Table, err)
			}
			out = append(out, fmt.Sprintf("%s bucket %d %v: (side 1 raw, 2 rollup; %s) %v", r.Table, b, vals, colNames(r), sides))
		}
		rows.Close()
	}
	return out
}

// vlist renders v0..v(n-1) as text separated by spaces, for the mismatch description.
func vlist(n int) string {
	v := make([]string, n)
	for i := range v {
		v[i] = fmt.Sprintf("toString(v%d)", i)
	}
	return strings.Join(v, ", ' ', ")
}

func colNames(r migrations.Rollup) string {
	var names []string
	for _, c := range r.Columns {
		names = append(names, c.Name)
	}
	return strings.Join(names, ", ")
}
