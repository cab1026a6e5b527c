package chreader

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/keytrail/keytrail/query/budget"
)

// Spend reports read one rollup: spend_daily for reports by day or month, spend_hourly for
// reports by hour. Buckets are whole hours, days or months in UTC and the requested range is
// widened to whole buckets (so a range of whole days at day and month granularity), so the
// rollup answers exactly and no raw rows are needed: a report from 10:30 to 14:15 by day
// covers the whole of that day, 00:00 to 24:00 UTC. At 100M events over 30 days the daily
// rollup holds about 24 times fewer cells than the hourly one (docs/benchmarks.md).

// DefaultSpendWindow is the range of a spend report without start_time: the 30 days before
// its end.
const DefaultSpendWindow = 30 * 24 * time.Hour

// Dimension is a column spend can be grouped by. The set is closed (the field is unexported),
// so the column names in spend SQL can only be these constants, never caller input.
type Dimension struct{ column string }

// The dimensions.
var (
	DimensionKey     = Dimension{"key_id"}
	DimensionService = Dimension{"service"}
	DimensionModel   = Dimension{"model"}
	DimensionProject = Dimension{"project"}
)

// String is the column name.
func (d Dimension) String() string { return d.column }

var dimensions = []Dimension{DimensionKey, DimensionService, DimensionModel, DimensionProject}

// periodStartSQL is the SQL start of the UTC period containing a DateTime column. Date results
// (toMonday, toStartOfMonth) are turned back into DateTime('UTC'), so every bucket is an
// instant and scans as one.
func periodStartSQL(p budget.Period, column string) string {
	switch p {
	case budget.Hour:
		return "toStartOfHour(" + column + ", 'UTC')"
	case budget.Day:
		return "toStartOfDay(" + column + ", 'UTC')"
	case budget.Week:
		return "toDateTime(toMonday(" + column + ", 'UTC'), 'UTC')"
	case budget.Month:
		return "toDateTime(toStartOfMonth(" + column + ", 'UTC'), 'UTC')"
	}
	panic("query: no bucket expression for period " + p.String())
}

// SpendFilter narrows a spend report; empty fields match everything.
type SpendFilter struct {
	Project string
	KeyID   string
	Service string
	Model   string
}

// SpendSpec is a validated spend question: what SpendQuery and SpendTotals build SQL from.
type SpendSpec struct {
	// GroupBy has one or two distinct dimensions; rows are ordered by bucket, then these.
	GroupBy []Dimension
	// Bucket is budget.Hour, budget.Day or budget.Month.
	Bucket budget.Period
	// Range is whole buckets: both ends are bucket boundaries.
	Range  Range
	Filter SpendFilter
}

// spendCursor is the sort key of the last row of a page.
type spendCursor struct {
	Bucket time.Time
	Values []string // one per grouping column of the spec (SpendSpec.columns)
}

// source is the rollup that answers the spec and its time column: the daily one whenever
// the buckets are whole days or months.
func (s SpendSpec) source() (table, timeColumn string) {
	if s.Bucket == budget.Hour {
		return "spend_hourly", "hour"
	}
	return "spend_daily", "day"
}

// where is the range and the filters; the same for the rows and the totals.
func (s SpendSpec) where() ([]string, []any) {
	_, t := s.source()
	where := []string{t + " >= toDateTime(?)", t + " < toDateTime(?)"}
	args := []any{s.Range.Start.Unix(), s.Range.End.Unix()}
	for _, c := range []struct{ column, value string }{
		{"project", s.Filter.Project}, {"key_id", s.Filter.KeyID}, {"service", s.Filter.Service}, {"model", s.Filter.Model},
	} {
		if c.value != "" {
			where = append(where, c.column+" = ?")
			args = append(args, c.value)
		}
	}
	return where, args
}

// columns are the grouping columns. A key is (project, key_id): grouping by key groups by
// its project too (right after key_id) unless project is a dimension already, so the same key
// id in two projects is two rows, never one.
func (s SpendSpec) columns() []string {
	var cols []string
	for _, d := range s.GroupBy {
		cols = append(cols, d.column)
		if d == DimensionKey && !slices.Contains(s.GroupBy, DimensionProject) {
			cols = append(cols, DimensionProject.column)
		}
	}
	return cols
}

// SpendQuery is one page of a spend report: per bucket and dimension values, ordered by
// bucket then the dimensions, starting after the cursor (keyset pagination), at most limit
// rows. Result aliases differ from the rollups' columns: ClickHouse 18.16 rejects
// sum(x) AS x.
func SpendQuery(s SpendSpec, after *spendCursor, limit int) Query {
	table, timeColumn := s.source()
	cols := s.columns()
	where, args := s.where()
	if after != nil {
		keys := append([]string{"bucket"}, cols...)
		values := append([]any{after.Bucket.Unix()}, spendCursorArgs(after.Values)...)
		cond, condArgs := spendKeysetAfter(keys, values)
		where = append(where, cond)
		args = append(args, condArgs...)
	}
	keys := strings.Join(append([]string{"bucket"}, cols...), ", ")
	sql := "SELECT " + periodStartSQL(s.Bucket, timeColumn) + " AS bucket, " + strings.Join(cols, ", ") +
		", sum(requests) AS request_count, sum(total_input_tokens) AS input_tokens, sum(total_output_tokens) AS output_tokens, sum(total_cost_micros) AS cost_micros" +
		"\nFROM " + table + "\nWHERE " + strings.Join(where, "\n  AND ") +
		"\nGROUP BY " + keys + "\nORDER BY " + keys + "\nLIMIT ?"
	return Query{SQL: sql, Args: append(args, limit)}
}

// SpendTotals sums every row of the report (all pages) in one row.
func SpendTotals(s SpendSpec) Query {
	table, _ := s.source()
	where, args := s.where()
	sql := "SELECT sum(requests) AS request_count, sum(total_cost_micros) AS cost_micros\nFROM " + table + "\nWHERE " +
		strings.Join(where, "\n  AND ")
	return Query{SQL: sql, Args: args}
}

// spendKeysetAfter is "the sort key (keys...) is greater than values", written out as nested
// comparisons: (a > ? OR (a = ? AND (b > ? OR (b = ? AND c > ?)))). The bucket, the first
// key, is compared as a DateTime.
func spendKeysetAfter(keys []string, values []any) (string, []any) {
	placeholder := func(i int) string {
		if i == 0 {
			return "toDateTime(?)"
		}
		return "?"
	}
	last := len(keys) - 1
	cond := keys[last] + " > " + placeholder(last)
	args := []any{values[last]}
	for i := last - 1; i >= 0; i-- {
		cond = "(" + keys[i] + " > " + placeholder(i) + " OR (" + keys[i] + " = " + placeholder(i) + " AND " + cond + "))"
		args = append([]any{values[i], values[i]}, args...)
	}
	return cond, args
}

func spendCursorArgs(s []string) []any {
	out := make([]any, len(s))
	for i, v := range s {
		out[i] = v
	}
	return out
}

// SpendRequest is the input of a spend report.
type SpendRequest struct {
	// GroupBy: one or two distinct dimensions; none means by key.
	GroupBy []Dimension
	// Granularity is the bucket: budget.Hour, budget.Day or budget.Month; zero means by day.
	Granularity budget.Period
	// Start, End: zero End is now, zero Start is DefaultSpendWindow before End.
	Start, End time.Time
	Filter     SpendFilter
	PageSize   int32
	PageToken  string
}

// SpendRow is the spend of one bucket and one combination of dimension values.
type SpendRow struct {
	Bucket time.Time
	// Set for the dimensions grouped by, empty otherwise; Project is set with KeyID.
	Project, KeyID, Service, Model string
	Requests                       uint64
	InputTokens, OutputTokens      uint64
	CostMicros                     int64
}

func (r *SpendRow) field(column string) *string {
	switch column {
	case DimensionKey.column:
		return &r.KeyID
	case DimensionService.column:
		return &r.Service
	case DimensionModel.column:
		return &r.Model
	case DimensionProject.column:
		return &r.Project
	}
	panic("query: unknown spend column " + column)
}

// SpendPage is one page of a spend report with the totals of the whole report.
type SpendPage struct {
	Rows []SpendRow
	// Sums over every row of the report, not only this page.
	TotalRequests   uint64
	TotalCostMicros int64
	NextPageToken   string
}

// resolveSpend validates a request and applies the defaults. Every problem names its field.
func resolveSpend(req SpendRequest, now time.Time) (SpendSpec, error) {
	var s SpendSpec
	if len(req.GroupBy) > 2 {
		return s, &InvalidError{Field: "group_by", Reason: "at most 2 dimensions"}
	}
	for i, d := range req.GroupBy {
		if !slices.Contains(dimensions, d) {
			return s, &InvalidError{Field: "group_by", Reason: fmt.Sprintf("%q is not a dimension", d.column)}
		}
		if slices.Contains(req.GroupBy[:i], d) {
			return s, &InvalidError{Field: "group_by", Reason: fmt.Sprintf("%s is repeated", d)}
		}
		s.GroupBy = append(s.GroupBy, d)
	}
	if len(s.GroupBy) == 0 {
		s.GroupBy = []Dimension{DimensionKey}
	}
	switch req.Granularity {
	case 0:
		s.Bucket = budget.Day
	case budget.Hour, budget.Day, budget.Month:
		s.Bucket = req.Granularity
	default:
		return s, &InvalidError{Field: "granularity", Reason: fmt.Sprintf("%s is not a spend bucket (hour, day or month)", req.Granularity)}
	}
	r, err := rangeBefore(req.Start, req.End, now, DefaultSpendWindow)
	if err != nil {
		return s, err
	}
	from, to := s.Bucket.Cover(r.Start, r.End)
	s.Range = Range{Start: from, End: to}
	s.Filter = req.Filter
	return s, nil
}

// spendTokenFilters is what a page token is bound to: the question as asked. Start and End
// enter as given ("" when defaulted); the resolved range travels in the cursor instead, so
// later pages of a report whose end defaulted to "now" keep the first page's range.
func spendTokenFilters(req SpendRequest, s SpendSpec) []string {
	given := func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.UTC().Format(time.RFC3339Nano)
	}
	filters := []string{"spend", s.Bucket.String(), given(req.Start), given(req.End),
		req.Filter.Project, req.Filter.KeyID, req.Filter.Service, req.Filter.Model}
	return append(filters, s.columns()...)
}

// Spend reads one page of a spend report and the totals of the whole report.
func (rd *Reader) Spend(ctx context.Context, req SpendRequest) (SpendPage, error) {
	spec, err := resolveSpend(req, rd.now())
	if err != nil {
		return SpendPage{}, err
	}
	limit, err := PageSize(req.PageSize)
	if err != nil {
		return SpendPage{}, err
	}
	filters := spendTokenFilters(req, spec)
	columns := spec.columns()
	// Cursor: bucket, one value per grouping column, then the resolved range.
	n := len(columns)
	fields, err := decodePageToken(req.PageToken, n+3, filters...)
	if err != nil {
		return SpendPage{}, err
	}
	var after *spendCursor
	if fields != nil {
		var secs [3]int64
		for i, f := range []string{fields[0], fields[n+1], fields[n+2]} {
			v, perr := strconv.ParseInt(f, 10, 64)
			if perr != nil {
				return SpendPage{}, &InvalidError{Field: "page_token", Reason: "is not a token this query issued"}
			}
			secs[i] = v
		}
		after = &spendCursor{Bucket: time.Unix(secs[0], 0).UTC(), Values: fields[1 : n+1]}
		spec.Range = Range{Start: time.Unix(secs[1], 0).UTC(), End: time.Unix(secs[2], 0).UTC()}
	}
	if fields == nil && req.Filter.KeyID != "" && req.Filter.Project == "" {
		// A key is (project, key_id): a key id known in several projects is several keys, whose
		// spend is not to be added up. Checked on the first page (the token binds the rest).
		// The API passes no project only for callers who read every project (others name one,
		// or have only one), so every project is looked at.
		if _, err := rd.keyProject(ctx, req.Filter.KeyID, nil); err != nil {
			return SpendPage{}, err
		}
	}

	// The totals first: QueryRow releases its connection before the page's rows hold one.
	var page SpendPage
	t := SpendTotals(spec)
	if err := rd.conn.QueryRow(ctx, t.SQL, t.Args...).Scan(&page.TotalRequests, &page.TotalCostMicros); err != nil {
		return SpendPage{}, fmt.Errorf("query spend totals: %w", err)
	}
	// Rows come in bucket order, so a page needs only the buckets up to its last row: read
	// forward from the cursor's bucket in windows of 1, 2, 4, ... buckets until the page is
	// full or the range ends. Grouping a whole range costs its cells (30 days by key and day
	// at 100M events: 300k groups, 0.5 s on 18.16); a page of 100 keys usually needs one day.
	from := spec.Range.Start
	if after != nil {
		from = after.Bucket
	}
	for width := 1; from.Before(spec.Range.End) && len(page.Rows) <= limit; width *= 2 {
		window := spec
		window.Range = Range{Start: from, End: spec.Bucket.Shift(from, width)}
		if window.Range.End.After(spec.Range.End) {
			window.Range.End = spec.Range.End
		}
		if err := rd.readSpendRows(ctx, SpendQuery(window, after, limit+1-len(page.Rows)), spec, &page); err != nil {
			return SpendPage{}, err
		}
		// Only the cursor's own bucket holds rows before the cursor.
		after = nil
		from = window.Range.End
	}
	if len(page.Rows) > limit {
		page.Rows = page.Rows[:limit]
		last := page.Rows[limit-1]
		cursor := []string{strconv.FormatInt(last.Bucket.Unix(), 10)}
		for _, c := range columns {
			cursor = append(cursor, *last.field(c))
		}
		cursor = append(cursor, strconv.FormatInt(spec.Range.Start.Unix(), 10), strconv.FormatInt(spec.Range.End.Unix(), 10))
		page.NextPageToken = encodePageToken(cursor, filters...)
	}
	return page, nil
}

// readSpendRows appends the rows of one spend query to the page.
func (rd *Reader) readSpendRows(ctx context.Context, q Query, spec SpendSpec, page *SpendPage) error {
	rows, err := rd.conn.Query(ctx, q.SQL, q.Args...)
	if err != nil {
		return fmt.Errorf("query spend: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var r SpendRow
		dest := []any{&r.Bucket}
		for _, c := range spec.columns() {
			dest = append(dest, r.field(c))
		}
		dest = append(dest, &r.Requests, &r.InputTokens, &r.OutputTokens, &r.CostMicros)
		if err := rows.Scan(dest...); err != nil {
			return fmt.Errorf("scan spend: %w", err)
		}
		r.Bucket = r.Bucket.UTC()
		page.Rows = append(page.Rows, r)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read spend: %w", err)
	}
	return nil
}
