package chreader

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

func mustTime(t *testing.T, s string) time.Time {
	t.Helper()
	v, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestSplitRange(t *testing.T) {
	tests := []struct {
		name       string
		start, end string
		wantFrom   string
		wantTo     string
		wantEdges  [][2]int64
	}{
		{
			name: "aligned", start: "2026-11-01T10:00:00Z", end: "2026-11-01T11:00:00Z",
			wantFrom: "2026-11-01T10:00:00Z", wantTo: "2026-11-01T11:00:00Z",
		},
		{
			name: "both edges partial", start: "2026-11-01T10:00:30.5Z", end: "2026-11-01T10:05:10Z",
			wantFrom: "2026-11-01T10:01:00Z", wantTo: "2026-11-01T10:05:00Z",
			wantEdges: [][2]int64{{1793527230500, 1793527260000}, {1793527500000, 1793527510000}},
		},
		{
			name: "inside one minute", start: "2026-11-01T10:00:10Z", end: "2026-11-01T10:00:50Z",
			wantFrom: "2026-11-01T10:01:00Z", wantTo: "2026-11-01T10:01:00Z",
			wantEdges: [][2]int64{{1793527210000, 1793527250000}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := splitRange(Range{Start: mustTime(t, tt.start), End: mustTime(t, tt.end)})
			if !s.RollupFrom.Equal(mustTime(t, tt.wantFrom)) || !s.RollupTo.Equal(mustTime(t, tt.wantTo)) {
				t.Errorf("rollup [%s, %s), want [%s, %s)", s.RollupFrom, s.RollupTo, tt.wantFrom, tt.wantTo)
			}
			if !reflect.DeepEqual(s.Edges, tt.wantEdges) {
				t.Errorf("edges %v, want %v", s.Edges, tt.wantEdges)
			}
		})
	}
}

// A key is (project, key_id): rows are per project and service, filtered to the caller's
// projects in SQL, and the cursor is (project, service).
func TestKeyServicesSQL(t *testing.T) {
	r := Range{Start: mustTime(t, "2026-11-01T10:00:30.5Z"), End: mustTime(t, "2026-11-01T10:05:10Z")}
	got := KeyServices(UsageFilter{Value: "key_a", Projects: []string{"acme", "beta"}}, r, &usageCursor{Project: "acme", Listed: "billing"}, 101)
	wantSQL := `SELECT project, service, min(first_ms) AS first_seen_ms, max(last_ms) AS last_seen_ms, sum(request_count) AS requests, sum(error_count) AS errors, max(success_ms) AS last_success_ms
FROM
(
    SELECT project, service, minMerge(first_seen_ms) AS first_ms, maxMerge(last_seen_ms) AS last_ms, countMerge(requests) AS request_count, sumMerge(errors) AS error_count, maxIfMerge(last_success_ms) AS success_ms
    FROM usage_key_minute
    WHERE key_id = ? AND minute >= toDateTime(?) AND minute < toDateTime(?) AND has(?, project) AND (project > ? OR (project = ? AND service > ?))
    GROUP BY project, service
    UNION ALL
    SELECT project, service, min(event_time_ms) AS first_ms, max(event_time_ms) AS last_ms, count() AS request_count, countIf(status_code >= 400) AS error_count, maxIf(event_time_ms, status_code < 400) AS success_ms
    FROM usage_events
    WHERE key_id = ? AND has(?, project) AND (project > ? OR (project = ? AND service > ?)) AND ((event_time >= toDateTime(?) AND event_time <= toDateTime(?) AND event_time_ms >= ? AND event_time_ms < ?) OR (event_time >= toDateTime(?) AND event_time <= toDateTime(?) AND event_time_ms >= ? AND event_time_ms < ?))
    GROUP BY project, service
)
GROUP BY project, service
ORDER BY project, service
LIMIT ?`
	wantArgs := []any{
		"key_a", int64(1793527260), int64(1793527500), []string{"acme", "beta"}, "acme", "acme", "billing",
		"key_a", []string{"acme", "beta"}, "acme", "acme", "billing",
		int64(1793527230), int64(1793527260), int64(1793527230500), int64(1793527260000),
		int64(1793527500), int64(1793527510), int64(1793527500000), int64(1793527510000),
		101,
	}
	if got.SQL != wantSQL {
		t.Errorf("SQL:\n%s\nwant:\n%s", got.SQL, wantSQL)
	}
	if !reflect.DeepEqual(got.Args, wantArgs) {
		t.Errorf("args %#v\nwant %#v", got.Args, wantArgs)
	}
}

func TestServiceKeysSQLAlignedRangeReadsOnlyTheRollup(t *testing.T) {
	r := Range{Start: mustTime(t, "2026-11-01T00:00:00Z"), End: mustTime(t, "2026-11-02T00:00:00Z")}
	got := ServiceKeys(UsageFilter{Value: "billing"}, r, nil, 11)
	wantSQL := `SELECT project, key_id, min(first_ms) AS first_seen_ms, max(last_ms) AS last_seen_ms, sum(request_count) AS requests, sum(error_count) AS errors, max(success_ms) AS last_success_ms
FROM
(
    SELECT project, key_id, minMerge(first_seen_ms) AS first_ms, maxMerge(last_seen_ms) AS last_ms, countMerge(requests) AS request_count, sumMerge(errors) AS error_count, maxIfMerge(last_success_ms) AS success_ms
    FROM usage_by_service_minute
    WHERE service = ? AND minute >= toDateTime(?) AND minute < toDateTime(?)
    GROUP BY project, key_id
)
GROUP BY project, key_id
ORDER BY project, key_id
LIMIT ?`
	wantArgs := []any{"billing", int64(1793491200), int64(1793577600), 11}
	if got.SQL != wantSQL {
		t.Errorf("SQL:\n%s\nwant:\n%s", got.SQL, wantSQL)
	}
	if !reflect.DeepEqual(got.Args, wantArgs) {
		t.Errorf("args %#v\nwant %#v", got.Args, wantArgs)
	}
}

func TestAuditEventsSQL(t *testing.T) {
	r := Range{Start: mustTime(t, "2026-11-01T00:00:00Z"), End: mustTime(t, "2026-11-01T00:00:01.5Z")}
	got := AuditEvents(AuditFilter{Project: "acme", Projects: []string{"acme", "beta"}, Action: "rotated"}, r, &auditCursor{TimeMs: 1793491200900, EventID: "ev9"}, 51)
	wantSQL := `SELECT event_id, event_time_ms, project, key_id, action, new_key_id, actor, actor_type, reason, expires_at, budget_amount_micros, budget_period, scopes, attribute_keys, attribute_values, change_fields, change_before, change_after
FROM lifecycle_events
WHERE event_time >= toDateTime(?)
  AND event_time <= toDateTime(?)
  AND event_time_ms >= ?
  AND event_time_ms < ?
  AND project = ?
  AND action = ?
  AND has(?, project)
  AND (event_time_ms < ? OR (event_time_ms = ? AND event_id < ?))
ORDER BY event_time_ms DESC, event_id DESC
LIMIT ?`
	wantArgs := []any{int64(1793491200), int64(1793491201), int64(1793491200000), int64(1793491201500), "acme", "rotated", []string{"acme", "beta"}, int64(1793491200900), int64(1793491200900), "ev9", 51}
	if got.SQL != wantSQL {
		t.Errorf("SQL:\n%s\nwant:\n%s", got.SQL, wantSQL)
	}
	if !reflect.DeepEqual(got.Args, wantArgs) {
		t.Errorf("args %#v\nwant %#v", got.Args, wantArgs)
	}
}

func TestPageTokenRejectsOtherFiltersAndGarbage(t *testing.T) {
	tok := encodePageToken([]string{"svc", "x"}, "key_id", "key_a")
	after, err := decodePageToken(tok, 2, "key_id", "key_a")
	if err != nil || !reflect.DeepEqual(after, []string{"svc", "x"}) {
		t.Fatalf("round trip: %v %v", after, err)
	}
	if _, err := decodePageToken(tok, 2, "key_id", "key_b"); err == nil || err.Error() != "page_token: was issued for different filters" {
		t.Errorf("other filters: %v", err)
	}
	if _, err := decodePageToken("!!not-base64", 2, "key_id", "key_a"); err == nil || err.Error() != "page_token: is not a token this query issued" {
		t.Errorf("garbage: %v", err)
	}
}

func TestNewRangeAndPageSize(t *testing.T) {
	now := mustTime(t, "2026-11-01T00:00:00Z")
	if _, err := NewRange(now, now.Add(-time.Second), now); err == nil || err.Error() != "end_time: must be after start_time" {
		t.Errorf("reversed range: %v", err)
	}
	r, err := NewRange(time.Time{}, time.Time{}, now)
	if err != nil || r.Start.Unix() != 0 || !r.End.Equal(now) {
		t.Errorf("defaults: %v %v", r, err)
	}
	for _, tc := range []struct {
		in   int32
		want int
		err  string
	}{{0, 100, ""}, {1, 1, ""}, {1000, 1000, ""}, {1001, 0, "page_size: must be between 0 and 1000"}, {-1, 0, "page_size: must be between 0 and 1000"}} {
		got, err := PageSize(tc.in)
		if got != tc.want || (err == nil) != (tc.err == "") || (err != nil && err.Error() != tc.err) {
			t.Errorf("PageSize(%d) = %d, %v; want %d, %q", tc.in, got, err, tc.want, tc.err)
		}
	}
}

func TestChainQueriesSQL(t *testing.T) {
	got := ChainRows("acme", 4, 9)
	want := "SELECT event_id, event_time_ms, project, key_id, action, new_key_id, actor, actor_type, reason, expires_at, budget_amount_micros, budget_period, scopes, attribute_keys, attribute_values, change_fields, change_before, change_after, chain_seq, content_hash, prev_hash, chain_hash\nFROM lifecycle_events\nWHERE project = ? AND chain_seq >= ? AND chain_seq <= ?\nORDER BY chain_seq"
	if got.SQL != want || !reflect.DeepEqual(got.Args, []any{"acme", uint64(4), uint64(9)}) {
		t.Errorf("ChainRows:\n%s\n%#v", got.SQL, got.Args)
	}
	if got := ChainProjects(""); got.SQL != "SELECT DISTINCT project FROM lifecycle_events ORDER BY project" || got.Args != nil {
		t.Errorf("ChainProjects: %+v", got)
	}
}

func TestUsageAllHistorySQL(t *testing.T) {
	got := UsageAllHistory(true, UsageFilter{Value: "key_a", Project: "acme"}, &usageCursor{Project: "acme", Listed: "billing"}, 101)
	want := `SELECT project, service, minMerge(first_seen_ms) AS first_ms, maxMerge(last_seen_ms) AS last_ms, countMerge(requests) AS request_count, sumMerge(errors) AS error_count, maxIfMerge(last_success_ms) AS success_ms
FROM key_service_totals
WHERE key_id = ? AND project = ? AND (project > ? OR (project = ? AND service > ?))
GROUP BY project, service
ORDER BY project, service
LIMIT ?`
	if got.SQL != want || !reflect.DeepEqual(got.Args, []any{"key_a", "acme", "acme", "acme", "billing", 101}) {
		t.Errorf("got\n%s\n%#v", got.SQL, got.Args)
	}
	if got := UsageAllHistory(false, UsageFilter{Value: "billing"}, nil, 5); !strings.Contains(got.SQL, "WHERE service = ?\nGROUP BY project, key_id") {
		t.Errorf("keys of a service:\n%s", got.SQL)
	}
}
