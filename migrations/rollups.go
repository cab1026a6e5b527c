package migrations

import (
	"strings"
	"time"
)

// Quantity is what a rollup column holds, in terms of the usage_events rows its view read.
type Quantity int

// The quantities a rollup column can hold. The first five add up across inserts (a rollup
// short of some rows is short in each of them); the last three are extremes, which an insert
// of the same value again leaves unchanged.
const (
	Requests     Quantity = iota // count()
	Errors                       // countIf(status_code >= 400)
	InputTokens                  // sum(input_tokens)
	OutputTokens                 // sum(output_tokens)
	Cost                         // sum(cost_micros)
	FirstSeen                    // min(event_time_ms)
	LastSeen                     // max(event_time_ms)
	LastSuccess                  // maxIf(event_time_ms, status_code < 400)
)

// Additive reports whether the quantity adds up across inserts.
func (q Quantity) Additive() bool { return q <= Cost }

// Column is one measure column of a rollup table.
type Column struct {
	Name string
	Of   Quantity
}

// Rollup is a table a materialized view fills from usage_events: what identifies one of its
// rows (the time bucket and the dimensions), what each measure column holds, and the
// expressions whose values must equal usage_events' own once every insert's views have run.
// Tests, the fault suite, the benchmark and the rollup reconciliation (ingest/reconcile)
// read it, so a rollup added by a migration is added here (TestRollupsDescribeTheSchema
// fails otherwise).
type Rollup struct {
	Table string
	// Aggregating is true for an AggregatingMergeTree of -State columns, false for a
	// SummingMergeTree of plain sums.
	Aggregating bool
	// Bucket is the time-bucket column and Width its width (toStartOfMinute: a minute, ...,
	// toStartOfDay: 24h, all in UTC); both are empty for an all-time table.
	Bucket string
	Width  time.Duration
	// Dims are the other columns of a row's identity, named as in usage_events.
	Dims []string
	// Filter is the view's WHERE clause on usage_events; empty when it reads every row.
	Filter  string
	Columns []Column

	// Requests, Errors and Cost read the table's totals of count(), countIf(status_code >=
	// 400) and sum(cost_micros); Errors and Cost are "" where the table does not keep them.
	Requests, Errors, Cost string
}

// AllTime reports whether the table has no time bucket (one row per dimension tuple).
func (r Rollup) AllTime() bool { return r.Bucket == "" }

// Column returns the name of the column holding q, or "".
func (r Rollup) Column(q Quantity) string {
	for _, c := range r.Columns {
		if c.Of == q {
			return c.Name
		}
	}
	return ""
}

// Merge is the expression that reads column c's value over the rows of a group:
// countMerge(requests) or sum(requests).
func (r Rollup) Merge(c Column) string {
	if !r.Aggregating {
		return "sum(" + c.Name + ")"
	}
	switch c.Of {
	case Requests:
		return "countMerge(" + c.Name + ")"
	case FirstSeen:
		return "minMerge(" + c.Name + ")"
	case LastSeen:
		return "maxMerge(" + c.Name + ")"
	case LastSuccess:
		return "maxIfMerge(" + c.Name + ")"
	default:
		return "sumMerge(" + c.Name + ")"
	}
}

// The measure columns of the two rollup shapes.
var (
	pairStates = []Column{{"requests", Requests}, {"errors", Errors}, {"first_seen_ms", FirstSeen}, {"last_seen_ms", LastSeen}, {"last_success_ms", LastSuccess}}
	spendSums  = []Column{{"requests", Requests}, {"errors", Errors}, {"total_input_tokens", InputTokens}, {"total_output_tokens", OutputTokens}, {"total_cost_micros", Cost}}
	usageSums  = []Column{{"requests", Requests}, {"errors", Errors}, {"total_cost_micros", Cost}}
)

// Rollups are every table a materialized view fills from usage_events (migrations
// 0002-0009), in the order the tests list them.
var Rollups = withTotals([]Rollup{
	{Table: "usage_key_minute", Aggregating: true, Bucket: "minute", Width: time.Minute, Dims: []string{"project", "key_id", "service"}, Columns: pairStates},
	{Table: "usage_by_service_minute", Aggregating: true, Bucket: "minute", Width: time.Minute, Dims: []string{"project", "service", "key_id"}, Columns: pairStates},
	{Table: "key_service_totals", Aggregating: true, Dims: []string{"project", "key_id", "service"}, Columns: pairStates},
	{Table: "spend_hourly", Bucket: "hour", Width: time.Hour, Dims: []string{"project", "key_id", "service", "model"}, Columns: spendSums},
	{Table: "usage_key_5min", Bucket: "bucket", Width: 5 * time.Minute, Dims: []string{"project", "key_id", "service"}, Columns: usageSums},
	{Table: "spend_daily", Bucket: "day", Width: 24 * time.Hour, Dims: []string{"project", "key_id", "service", "model"}, Columns: spendSums},
	{Table: "usage_key_hourly", Bucket: "hour", Width: time.Hour, Dims: []string{"project", "key_id"}, Columns: usageSums},
	{Table: "key_client_ip_totals", Aggregating: true, Dims: []string{"project", "key_id", "client_ip"}, Filter: "client_ip != ''",
		Columns: []Column{{"requests", Requests}, {"first_seen_ms", FirstSeen}, {"last_seen_ms", LastSeen}}},
})

// UsageRollups are every rollup that counts every usage event: Rollups without a Filter.
// key_client_ip_totals is not among them: it counts only events with a client IP.
var UsageRollups = func() []Rollup {
	var out []Rollup
	for _, r := range Rollups {
		if r.Filter == "" {
			out = append(out, r)
		}
	}
	return out
}()

func withTotals(rollups []Rollup) []Rollup {
	for i, r := range rollups {
		for _, c := range r.Columns {
			switch c.Of {
			case Requests:
				rollups[i].Requests = r.Merge(c)
			case Errors:
				rollups[i].Errors = r.Merge(c)
			case Cost:
				rollups[i].Cost = r.Merge(c)
			}
		}
	}
	return rollups
}

// RawExpr is the expression over usage_events whose value over a group of rows equals what
// the view stores for q.
func RawExpr(q Quantity) string {
	return [...]string{
		Requests:     "count()",
		Errors:       "countIf(status_code >= 400)",
		InputTokens:  "sum(input_tokens)",
		OutputTokens: "sum(output_tokens)",
		Cost:         "sum(cost_micros)",
		FirstSeen:    "min(event_time_ms)",
		LastSeen:     "max(event_time_ms)",
		LastSuccess:  "maxIf(event_time_ms, status_code < 400)",
	}[q]
}

// BucketExpr is the view's bucket expression over usage_events (toStartOfMinute(event_time)
// ...), or "" for an all-time table.
func (r Rollup) BucketExpr() string {
	switch r.Width {
	case time.Minute:
		return "toStartOfMinute(event_time)"
	case 5 * time.Minute:
		return "toStartOfFiveMinute(event_time)"
	case time.Hour:
		return "toStartOfHour(event_time)"
	case 24 * time.Hour:
		return "toStartOfDay(event_time)"
	}
	return ""
}

// String names the table and its identity, for logs.
func (r Rollup) String() string {
	id := strings.Join(r.Dims, ", ")
	if r.Bucket != "" {
		id = r.Bucket + ", " + id
	}
	return r.Table + " (" + id + ")"
}
