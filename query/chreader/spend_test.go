package chreader

import (
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/keytrail/keytrail/query/budget"
)

func TestSpendQuerySQL(t *testing.T) {
	day := Range{Start: mustTime(t, "2026-03-01T00:00:00Z"), End: mustTime(t, "2026-03-03T00:00:00Z")}
	tests := []struct {
		name     string
		spec     SpendSpec
		after    *spendCursor
		limit    int
		wantSQL  string
		wantArgs []any
	}{
		{
			// A key is (project, key_id): grouping by key groups by its project too.
			name:  "by key per day, first page",
			spec:  SpendSpec{GroupBy: []Dimension{DimensionKey}, Bucket: budget.Day, Range: day},
			limit: 101,
			wantSQL: `SELECT toStartOfDay(day, 'UTC') AS bucket, key_id, project, sum(requests) AS request_count, sum(total_input_tokens) AS input_tokens, sum(total_output_tokens) AS output_tokens, sum(total_cost_micros) AS cost_micros
FROM spend_daily
WHERE day >= toDateTime(?)
  AND day < toDateTime(?)
GROUP BY bucket, key_id, project
ORDER BY bucket, key_id, project
LIMIT ?`,
			wantArgs: []any{int64(1772323200), int64(1772496000), 101},
		},
		{
			name: "key x model per month, every filter, after a cursor",
			spec: SpendSpec{
				GroupBy: []Dimension{DimensionKey, DimensionModel}, Bucket: budget.Month,
				Range:  Range{Start: mustTime(t, "2026-02-01T00:00:00Z"), End: mustTime(t, "2026-05-01T00:00:00Z")},
				Filter: SpendFilter{Project: "acme", KeyID: "key_a", Service: "billing", Model: "gpt-4o"},
			},
			after: &spendCursor{Bucket: mustTime(t, "2026-03-01T00:00:00Z"), Values: []string{"key_a", "acme", "claude"}},
			limit: 3,
			wantSQL: `SELECT toDateTime(toStartOfMonth(day, 'UTC'), 'UTC') AS bucket, key_id, project, model, sum(requests) AS request_count, sum(total_input_tokens) AS input_tokens, sum(total_output_tokens) AS output_tokens, sum(total_cost_micros) AS cost_micros
FROM spend_daily
WHERE day >= toDateTime(?)
  AND day < toDateTime(?)
  AND project = ?
  AND key_id = ?
  AND service = ?
  AND model = ?
  AND (bucket > toDateTime(?) OR (bucket = toDateTime(?) AND (key_id > ? OR (key_id = ? AND (project > ? OR (project = ? AND model > ?))))))
GROUP BY bucket, key_id, project, model
ORDER BY bucket, key_id, project, model
LIMIT ?`,
			wantArgs: []any{int64(1769904000), int64(1777593600), "acme", "key_a", "billing", "gpt-4o",
				int64(1772323200), int64(1772323200), "key_a", "key_a", "acme", "acme", "claude", 3},
		},
		{
			// Project as a dimension of its own: the key's project is not added twice.
			name:  "by project and key",
			spec:  SpendSpec{GroupBy: []Dimension{DimensionProject, DimensionKey}, Bucket: budget.Day, Range: day},
			limit: 101,
			wantSQL: `SELECT toStartOfDay(day, 'UTC') AS bucket, project, key_id, sum(requests) AS request_count, sum(total_input_tokens) AS input_tokens, sum(total_output_tokens) AS output_tokens, sum(total_cost_micros) AS cost_micros
FROM spend_daily
WHERE day >= toDateTime(?)
  AND day < toDateTime(?)
GROUP BY bucket, project, key_id
ORDER BY bucket, project, key_id
LIMIT ?`,
			wantArgs: []any{int64(1772323200), int64(1772496000), 101},
		},
		{
			name:  "by service per hour after a cursor",
			spec:  SpendSpec{GroupBy: []Dimension{DimensionService}, Bucket: budget.Hour, Range: day, Filter: SpendFilter{Model: "gpt-4o"}},
			after: &spendCursor{Bucket: mustTime(t, "2026-03-01T23:00:00Z"), Values: []string{"billing"}},
			limit: 11,
			wantSQL: `SELECT toStartOfHour(hour, 'UTC') AS bucket, service, sum(requests) AS request_count, sum(total_input_tokens) AS input_tokens, sum(total_output_tokens) AS output_tokens, sum(total_cost_micros) AS cost_micros
FROM spend_hourly
WHERE hour >= toDateTime(?)
  AND hour < toDateTime(?)
  AND model = ?
  AND (bucket > toDateTime(?) OR (bucket = toDateTime(?) AND service > ?))
GROUP BY bucket, service
ORDER BY bucket, service
LIMIT ?`,
			wantArgs: []any{int64(1772323200), int64(1772496000), "gpt-4o", int64(1772406000), int64(1772406000), "billing", 11},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := SpendQuery(tt.spec, tt.after, tt.limit)
			if got.SQL != tt.wantSQL {
				t.Errorf("SQL:\n%s\nwant:\n%s", got.SQL, tt.wantSQL)
			}
			if !reflect.DeepEqual(got.Args, tt.wantArgs) {
				t.Errorf("args %#v\nwant %#v", got.Args, tt.wantArgs)
			}
		})
	}
}

func TestSpendTotalsSQL(t *testing.T) {
	spec := SpendSpec{
		GroupBy: []Dimension{DimensionProject, DimensionService}, Bucket: budget.Day,
		Range:  Range{Start: mustTime(t, "2026-03-01T00:00:00Z"), End: mustTime(t, "2026-03-03T00:00:00Z")},
		Filter: SpendFilter{Project: "acme", Service: "billing"},
	}
	got := SpendTotals(spec)
	wantSQL := `SELECT sum(requests) AS request_count, sum(total_cost_micros) AS cost_micros
FROM spend_daily
WHERE day >= toDateTime(?)
  AND day < toDateTime(?)
  AND project = ?
  AND service = ?`
	wantArgs := []any{int64(1772323200), int64(1772496000), "acme", "billing"}
	if got.SQL != wantSQL {
		t.Errorf("SQL:\n%s\nwant:\n%s", got.SQL, wantSQL)
	}
	if !reflect.DeepEqual(got.Args, wantArgs) {
		t.Errorf("args %#v\nwant %#v", got.Args, wantArgs)
	}
}

func TestResolveSpendDefaultsAndWidening(t *testing.T) {
	now := mustTime(t, "2026-03-02T12:34:56.789Z")
	tests := []struct {
		name       string
		req        SpendRequest
		wantGroup  []Dimension
		wantBucket budget.Period
		wantRange  [2]string
	}{
		{
			name:      "all defaults: by key per day over the last 30 days, widened to whole days",
			req:       SpendRequest{},
			wantGroup: []Dimension{DimensionKey}, wantBucket: budget.Day,
			wantRange: [2]string{"2026-01-31T00:00:00Z", "2026-03-03T00:00:00Z"},
		},
		{
			name: "end given: start defaults to 30 days before it",
			req: SpendRequest{
				GroupBy:     []Dimension{DimensionModel, DimensionKey},
				Granularity: budget.Hour,
				End:         mustTime(t, "2026-02-10T10:00:00Z"),
			},
			wantGroup: []Dimension{DimensionModel, DimensionKey}, wantBucket: budget.Hour,
			wantRange: [2]string{"2026-01-11T10:00:00Z", "2026-02-10T10:00:00Z"},
		},
		{
			name: "month buckets cover whole months",
			req: SpendRequest{
				GroupBy:     []Dimension{DimensionProject},
				Granularity: budget.Month,
				Start:       mustTime(t, "2026-02-15T00:00:00Z"), End: mustTime(t, "2026-04-15T00:00:00Z"),
			},
			wantGroup: []Dimension{DimensionProject}, wantBucket: budget.Month,
			wantRange: [2]string{"2026-02-01T00:00:00Z", "2026-05-01T00:00:00Z"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := resolveSpend(tt.req, now)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(s.GroupBy, tt.wantGroup) || s.Bucket != tt.wantBucket {
				t.Errorf("group %v bucket %s, want %v %s", s.GroupBy, s.Bucket, tt.wantGroup, tt.wantBucket)
			}
			if !s.Range.Start.Equal(mustTime(t, tt.wantRange[0])) || !s.Range.End.Equal(mustTime(t, tt.wantRange[1])) {
				t.Errorf("range [%s, %s), want [%s, %s)", s.Range.Start, s.Range.End, tt.wantRange[0], tt.wantRange[1])
			}
		})
	}
}

func TestResolveSpendRejectsBadInputNamingTheField(t *testing.T) {
	now := mustTime(t, "2026-03-02T12:00:00Z")
	// The API's own names in these messages (SPEND_DIMENSION_KEY, GRANULARITY_HOUR) are
	// checked where the API maps them: package api, TestSpendEnumMapping.
	key, svc, model := DimensionKey, DimensionService, DimensionModel
	tests := []struct {
		name string
		req  SpendRequest
		want string
	}{
		{"three dimensions", SpendRequest{GroupBy: []Dimension{key, svc, model}}, "group_by: at most 2 dimensions"},
		{"unspecified dimension", SpendRequest{GroupBy: []Dimension{{}}}, `group_by: "" is not a dimension`},
		{"repeated dimension", SpendRequest{GroupBy: []Dimension{key, key}}, "group_by: key_id is repeated"},
		{"week is a budget period, not a spend bucket", SpendRequest{Granularity: budget.Week}, "granularity: week is not a spend bucket (hour, day or month)"},
		{"unknown granularity", SpendRequest{Granularity: 9}, "granularity: unknown is not a spend bucket (hour, day or month)"},
		{"reversed range", SpendRequest{Start: now, End: now.Add(-time.Hour)}, "end_time: must be after start_time"},
		{"empty range", SpendRequest{Start: now, End: now}, "end_time: must be after start_time"},
		{"start after the default end", SpendRequest{Start: now.Add(time.Hour)}, "end_time: must be after start_time"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := resolveSpend(tt.req, now)
			var invalid *InvalidError
			if !errors.As(err, &invalid) || err.Error() != tt.want {
				t.Errorf("error %v, want InvalidError %q", err, tt.want)
			}
		})
	}
}

func TestSpendTokenFiltersBindTheQuestion(t *testing.T) {
	now := mustTime(t, "2026-03-02T12:00:00Z")
	base := SpendRequest{GroupBy: []Dimension{DimensionKey}, Filter: SpendFilter{Project: "acme"}}
	fp := func(req SpendRequest) string {
		s, err := resolveSpend(req, now)
		if err != nil {
			t.Fatal(err)
		}
		return fingerprint(spendTokenFilters(req, s)...)
	}
	same := base
	same.GroupBy = nil // the default dimension is the same question
	if fp(base) != fp(same) {
		t.Error("default group_by and explicit key differ")
	}
	others := map[string]func(r *SpendRequest){
		"project":     func(r *SpendRequest) { r.Filter.Project = "beta" },
		"key_id":      func(r *SpendRequest) { r.Filter.KeyID = "key_a" },
		"service":     func(r *SpendRequest) { r.Filter.Service = "billing" },
		"model":       func(r *SpendRequest) { r.Filter.Model = "gpt-4o" },
		"granularity": func(r *SpendRequest) { r.Granularity = budget.Month },
		"group_by":    func(r *SpendRequest) { r.GroupBy = []Dimension{DimensionService} },
		"start_time":  func(r *SpendRequest) { r.Start = now.Add(-48 * time.Hour) },
		"end_time":    func(r *SpendRequest) { r.End = now },
	}
	for name, change := range others {
		r := base
		change(&r)
		if fp(r) == fp(base) {
			t.Errorf("changing %s keeps the fingerprint", name)
		}
	}
}
