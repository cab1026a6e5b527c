package reconcile

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/keytrail/keytrail/migrations"
)

// The SQL of a check. Every statement runs on ClickHouse 18.16 and current versions; values
// are bound, table and column names come from migrations.Rollups.

// rawMeasures are the raw quantities every raw read returns, in amounts order: the five
// additive ones, the three extremes, and the count of successful rows.
const rawMeasures = "count(), countIf(status_code >= 400), sum(input_tokens), sum(output_tokens), sum(cost_micros), " +
	"min(event_time_ms), max(event_time_ms), maxIf(event_time_ms, status_code < 400), countIf(status_code < 400)"

// daysFilter limits a time column to whole UTC days: a range for partition pruning and the
// day list itself. Arguments: from, to (Unix seconds), days ([]int64).
func daysFilter(column string) string {
	return column + " >= toDateTime(?) AND " + column + " < toDateTime(?) AND toInt64(toUInt32(toStartOfDay(" + column + "))) IN (SELECT toInt64(arrayJoin(?)))"
}

// keysFilter limits key_id to a bound list. Argument: keys ([]string).
const keysFilter = "key_id IN (SELECT arrayJoin(?))"

// fineRawSQL reads usage_events of some days and keys grouped into fine cells: the full
// measures, or the row count only (the second read of the bracket). Arguments: keys, from,
// to, days.
func fineRawSQL(countOnly bool) string {
	measures := rawMeasures
	if countOnly {
		measures = "count()"
	}
	return "SELECT toInt64(toUInt32(toStartOfMinute(event_time))) AS m, project, key_id, service, model, " + measures + "\n" +
		"FROM usage_events\n" +
		"WHERE " + keysFilter + " AND " + daysFilter("event_time") + "\n" +
		"GROUP BY m, project, key_id, service, model"
}

// allTimeRawSQL reads usage_events of some keys, over everything raw retains, grouped into
// the cells of all-time rollup r (with its view's filter). Argument: keys.
func allTimeRawSQL(r migrations.Rollup, countOnly bool) string {
	measures := rawMeasures
	if countOnly {
		measures = "count()"
	}
	where := keysFilter
	if r.Filter != "" {
		where += " AND " + r.Filter
	}
	dims := strings.Join(r.Dims, ", ")
	return "SELECT " + dims + ", " + measures + "\nFROM usage_events\nWHERE " + where + "\nGROUP BY " + dims
}

// rollupSQL reads what rollup r holds per cell for some keys (and, for a bucketed table,
// some days), merged: toUInt64 of the additive columns and toInt64 of the extremes, in
// r.Columns order. It also filters on the projects and services the raw rows of the scope
// hold (where r has those dimensions), so that a table sorted by project or service first
// reads only their ranges; a rollup cell of another project or service could only be an
// excess, which is then not seen. Arguments: rollupArgs.
func rollupSQL(r migrations.Rollup) string {
	sel := make([]string, 0, 1+len(r.Dims)+len(r.Columns))
	group := append([]string(nil), r.Dims...)
	where := keysFilter
	for _, d := range []string{"project", "service"} {
		if slices.Contains(r.Dims, d) {
			where += " AND " + d + " IN (SELECT arrayJoin(?))"
		}
	}
	if !r.AllTime() {
		sel = append(sel, "toInt64(toUInt32("+r.Bucket+")) AS b")
		group = append([]string{"b"}, group...)
		where += " AND " + daysFilter(r.Bucket)
	}
	sel = append(sel, r.Dims...)
	for _, c := range r.Columns {
		conv := "toUInt64"
		if c.Of == migrations.Cost || !c.Of.Additive() {
			conv = "toInt64"
		}
		sel = append(sel, conv+"("+r.Merge(c)+")")
	}
	return "SELECT " + strings.Join(sel, ", ") + "\nFROM " + r.Table + "\nWHERE " + where + "\nGROUP BY " + strings.Join(group, ", ")
}

// rollupArgs are rollupSQL's arguments: keys, the projects and services (where r has them),
// then from, to and days for a bucketed table.
func rollupArgs(r migrations.Rollup, keys, projects, services []string, from, to int64, days []int64) []any {
	args := []any{keys}
	if slices.Contains(r.Dims, "project") {
		args = append(args, projects)
	}
	if slices.Contains(r.Dims, "service") {
		args = append(args, services)
	}
	if !r.AllTime() {
		args = append(args, from, to, days)
	}
	return args
}

// shortHoursSQL is the sweep's cheap first look at bucketed rollup r: the (hour, key) pairs,
// or (day, key) for a daily table, of a time range where r counts fewer requests than
// usage_events holds. It is only a filter: an insert racing with it can make a pair look
// short (the exact check that follows finds it complete) or, while its views run, hide a
// shortfall of the same pair until the next sweep. Arguments: from, to (raw), from, to
// (rollup).
func shortHoursSQL(r migrations.Rollup) string {
	unit := "toStartOfHour"
	if r.Width >= 24*time.Hour {
		unit = "toStartOfDay"
	}
	return "SELECT h, key_id, raw_n, held_n FROM\n" +
		"(SELECT toInt64(toUInt32(" + unit + "(event_time))) AS h, key_id, count() AS raw_n FROM usage_events\n" +
		" WHERE event_time >= toDateTime(?) AND event_time < toDateTime(?) GROUP BY h, key_id)\n" +
		"ANY LEFT JOIN\n" +
		"(SELECT toInt64(toUInt32(" + unit + "(" + r.Bucket + "))) AS h, key_id, toUInt64(" + r.Requests + ") AS held_n FROM " + r.Table + "\n" +
		" WHERE " + r.Bucket + " >= toDateTime(?) AND " + r.Bucket + " < toDateTime(?) GROUP BY h, key_id)\n" +
		"USING h, key_id\n" +
		"WHERE raw_n > held_n"
}

// keyCellsSQL counts the fine cells (as fineRawSQL groups them) of some keys in some UTC
// days, to size bucketed comparisons. Arguments: keys, from, to, days.
var keyCellsSQL = "SELECT key_id, toUInt64(uniq(toStartOfMinute(event_time), project, service, model)) FROM usage_events\n" +
	"WHERE " + keysFilter + " AND " + daysFilter("event_time") + "\n" +
	"GROUP BY key_id"

// insertColumns is the column list of a correction insert into r.
func insertColumns(r migrations.Rollup) []string {
	cols := make([]string, 0, 1+len(r.Dims)+len(r.Columns))
	if !r.AllTime() {
		cols = append(cols, r.Bucket)
	}
	cols = append(cols, r.Dims...)
	for _, c := range r.Columns {
		cols = append(cols, c.Name)
	}
	return cols
}

// insertSumsSQL is the batch insert of correction rows into a SummingMergeTree rollup: the
// engine adds them to the cells they name.
func insertSumsSQL(r migrations.Rollup) string {
	return "INSERT INTO " + r.Table + " (" + strings.Join(insertColumns(r), ", ") + ")"
}

// insertStatesSQL adds corrections to an AggregatingMergeTree rollup. Aggregate states
// cannot be bound, so the server builds them: each correction cell is bound as one element
// of parallel arrays (bucket, dimensions, missing rows n, missing errors e, the raw cell's
// first, last and last successful request and whether it had one), expanded into n rows by
// ARRAY JOIN, e of them errors, and aggregated with the view's own -State functions (the
// casts give the states the column's argument types: bound literals are typed by value). Adding
// states merges like the view's insert would have: counts and sums add up, min and max of
// the raw cell's extremes leave the cell at the raw values.
func insertStatesSQL(r migrations.Rollup) (string, error) {
	params := []string{}
	if !r.AllTime() {
		params = append(params, "b")
	}
	for i := range r.Dims {
		params = append(params, fmt.Sprintf("d%d", i))
	}
	params = append(params, "n", "e", "f", "l", "s", "ok")
	at := func(name string) string {
		for i, p := range params {
			if p == name {
				return fmt.Sprintf("tupleElement(c, %d)", i+1)
			}
		}
		panic(name)
	}
	sel := []string{}
	if !r.AllTime() {
		sel = append(sel, "toDateTime("+at("b")+", 'UTC')")
	}
	for i := range r.Dims {
		sel = append(sel, at(fmt.Sprintf("d%d", i)))
	}
	for _, c := range r.Columns {
		switch c.Of {
		case migrations.Requests:
			sel = append(sel, "countState()")
		case migrations.Errors:
			sel = append(sel, "sumState(toUInt64(i < "+at("e")+"))")
		case migrations.FirstSeen:
			sel = append(sel, "minState(toInt64("+at("f")+"))")
		case migrations.LastSeen:
			sel = append(sel, "maxState(toInt64("+at("l")+"))")
		case migrations.LastSuccess:
			sel = append(sel, "maxIfState(toInt64("+at("s")+"), toUInt8("+at("ok")+"))")
		default:
			return "", fmt.Errorf("reconcile: %s column %s: no correction for an aggregate of that quantity", r.Table, c.Name)
		}
	}
	marks := strings.TrimSuffix(strings.Repeat("?, ", len(params)), ", ")
	return "INSERT INTO " + r.Table + " (" + strings.Join(insertColumns(r), ", ") + ")\n" +
		"SELECT " + strings.Join(sel, ", ") + "\n" +
		"FROM (SELECT arrayJoin(arrayMap((" + strings.Join(params, ", ") + ") -> (" + strings.Join(params, ", ") + "), " + marks + ")) AS c)\n" +
		"ARRAY JOIN range(" + at("n") + ") AS i\n" +
		"GROUP BY c", nil
}

// retainedSQL reads the earliest month usage_events still holds (its partitions are
// months, and retention drops the oldest whole): ” when it holds nothing.
const retainedSQL = "SELECT min(partition) FROM system.parts WHERE database = currentDatabase() AND table = 'usage_events' AND active"

// serverStartSQL reads when the ClickHouse server started, in Unix seconds of its clock.
const serverStartSQL = "SELECT toInt64(toUInt32(now())) - toInt64(uptime())"

// ingestedSQL reads the earliest ingested_at of some stored usage events (narrowed like the
// ingester's storage check). Arguments: keys, ids, from, to (Unix seconds).
const ingestedSQL = "SELECT toInt64(toUInt32(min(ingested_at))), count() FROM usage_events\n" +
	"WHERE key_id IN (SELECT arrayJoin(?)) AND event_id IN (SELECT arrayJoin(?)) AND event_time >= toDateTime(?) AND event_time <= toDateTime(?)"
