package chreader

import (
	"reflect"
	"testing"
	"time"
)

func TestRotationSeriesSQL(t *testing.T) {
	from := mustTime(t, "2026-11-01T10:00:00Z")
	got := RotationSeries("acme", "key_old", "key_new", from, from.Add(2*time.Hour), 2*time.Minute)
	wantSQL := `SELECT intDiv(toUInt32(minute) - ?, ?) AS bucket, key_id, countMerge(requests) AS requests
FROM usage_key_minute
WHERE key_id IN (?, ?) AND project = ? AND minute >= toDateTime(?) AND minute < toDateTime(?)
GROUP BY bucket, key_id
ORDER BY bucket, key_id`
	wantArgs := []any{int64(1793527200), int64(120), "key_old", "key_new", "acme", int64(1793527200), int64(1793534400)}
	if got.SQL != wantSQL || !reflect.DeepEqual(got.Args, wantArgs) {
		t.Errorf("got\n%s\n%#v", got.SQL, got.Args)
	}
}

func TestRequestsAfterSQL(t *testing.T) {
	from := mustTime(t, "2026-11-01T10:00:00.250Z")
	got := RequestsAfter("acme", "key_old", from, from.Add(time.Hour))
	wantSQL := `SELECT service, status_code, count() AS request_count, min(event_time_ms) AS first_ms, max(event_time_ms) AS last_ms
FROM usage_events
WHERE key_id = ? AND project = ? AND event_time >= toDateTime(?) AND event_time <= toDateTime(?) AND event_time_ms >= ? AND event_time_ms < ?
GROUP BY service, status_code
ORDER BY service, status_code`
	wantArgs := []any{"key_old", "acme", int64(1793527200), int64(1793530800), int64(1793527200250), int64(1793530800250)}
	if got.SQL != wantSQL || !reflect.DeepEqual(got.Args, wantArgs) {
		t.Errorf("got\n%s\n%#v", got.SQL, got.Args)
	}
}

func TestSeriesWidth(t *testing.T) {
	start := mustTime(t, "2026-11-01T10:00:30Z")
	for _, tc := range []struct {
		span, requested, want time.Duration
	}{
		{2 * time.Hour, 0, 3 * time.Minute}, // 120.5 minutes from the floored start -> 2m0.5s -> 3m
		{10 * time.Minute, 0, time.Minute},
		{24 * time.Hour, 0, 25 * time.Minute},
		{time.Hour, 90 * time.Second, time.Minute},
	} {
		if got := seriesWidth(Range{Start: start, End: start.Add(tc.span)}, tc.requested); got != tc.want {
			t.Errorf("span %v requested %v: width %v, want %v", tc.span, tc.requested, got, tc.want)
		}
	}
}

func TestRotationQueriesSQL(t *testing.T) {
	from := mustTime(t, "2026-11-01T10:00:30Z")
	for _, tc := range []struct {
		name     string
		got      Query
		wantSQL  string
		wantArgs []any
	}{
		{
			name: "projects of a key among readable ones",
			got:  KeyProjects("key_old", []string{"a", "b"}),
			wantSQL: `SELECT project
FROM
(
    SELECT project FROM lifecycle_events WHERE key_id = ? AND has(?, project)
    UNION ALL
    SELECT project FROM key_service_totals WHERE key_id = ? AND has(?, project)
)
GROUP BY project
ORDER BY project`,
			wantArgs: []any{"key_old", []string{"a", "b"}, "key_old", []string{"a", "b"}},
		},
		{
			name: "projects of a key, all readable",
			got:  KeyProjects("key_old", nil),
			wantSQL: `SELECT project
FROM
(
    SELECT project FROM lifecycle_events WHERE key_id = ?
    UNION ALL
    SELECT project FROM key_service_totals WHERE key_id = ?
)
GROUP BY project
ORDER BY project`,
			wantArgs: []any{"key_old", "key_old"},
		},
		{
			name: "lifecycle within the project",
			got:  RotationLifecycle("acme", "key_old", from),
			wantSQL: `SELECT event_id, event_time_ms, project, key_id, action, new_key_id, actor, expires_at, budget_amount_micros, budget_period, scopes
FROM lifecycle_events
WHERE project = ? AND (key_id = ? OR new_key_id = ?) AND event_time_ms <= ?
ORDER BY event_time_ms, event_id`,
			wantArgs: []any{"acme", "key_old", "key_old", int64(1793527230000)},
		},
		{
			name: "use of both keys: whole minutes from the rollup, the edges raw",
			got:  RotationUse("acme", []string{"key_old", "key_new"}, Range{from, from.Add(2 * time.Hour)}, 20001),
			wantSQL: `SELECT key_id, service, sum(request_count) AS requests, min(first_ms) AS first_seen_ms, max(last_ms) AS last_seen_ms, max(success_ms) AS last_success_ms
FROM
(
    SELECT key_id, service, countMerge(requests) AS request_count, minMerge(first_seen_ms) AS first_ms, maxMerge(last_seen_ms) AS last_ms, maxIfMerge(last_success_ms) AS success_ms
    FROM usage_key_minute
    WHERE key_id IN (?, ?) AND project = ? AND minute >= toDateTime(?) AND minute < toDateTime(?)
    GROUP BY key_id, service
    UNION ALL
    SELECT key_id, service, count() AS request_count, min(event_time_ms) AS first_ms, max(event_time_ms) AS last_ms, maxIf(event_time_ms, status_code < 400) AS success_ms
    FROM usage_events
    WHERE key_id IN (?, ?) AND project = ? AND ((event_time >= toDateTime(?) AND event_time <= toDateTime(?) AND event_time_ms >= ? AND event_time_ms < ?) OR (event_time >= toDateTime(?) AND event_time <= toDateTime(?) AND event_time_ms >= ? AND event_time_ms < ?))
    GROUP BY key_id, service
)
GROUP BY key_id, service
ORDER BY key_id, service
LIMIT ?`,
			wantArgs: []any{"key_old", "key_new", "acme", int64(1793527260), int64(1793534400),
				"key_old", "key_new", "acme", int64(1793527230), int64(1793527260), int64(1793527230000), int64(1793527260000),
				int64(1793534400), int64(1793534430), int64(1793534400000), int64(1793534430000), 20001},
		},
		{
			name: "use of one key within one minute: raw only",
			got:  RotationUse("acme", []string{"key_new"}, Range{from, from.Add(20 * time.Second)}, 10001),
			wantSQL: `SELECT key_id, service, sum(request_count) AS requests, min(first_ms) AS first_seen_ms, max(last_ms) AS last_seen_ms, max(success_ms) AS last_success_ms
FROM
(
    SELECT key_id, service, count() AS request_count, min(event_time_ms) AS first_ms, max(event_time_ms) AS last_ms, maxIf(event_time_ms, status_code < 400) AS success_ms
    FROM usage_events
    WHERE key_id IN (?) AND project = ? AND ((event_time >= toDateTime(?) AND event_time <= toDateTime(?) AND event_time_ms >= ? AND event_time_ms < ?))
    GROUP BY key_id, service
)
GROUP BY key_id, service
ORDER BY key_id, service
LIMIT ?`,
			wantArgs: []any{"key_new", "acme", int64(1793527230), int64(1793527250), int64(1793527230000), int64(1793527250000), 10001},
		},
		{
			name: "caller history: gaps between successes, runs split by the quiet period",
			got:  CallerHistory("acme", "key_old", Range{from, from.Add(2*time.Hour + 15*time.Second)}, 15*time.Minute, 10001),
			wantSQL: `SELECT service, requests, last_seen_ms, last_success_ms, arrayReduce('max', gaps) AS largest_gap_ms, toUInt64(arrayCount(gap -> gap > ?, gaps)) AS long_gaps
FROM
(
    SELECT service, sum(request_count) AS requests, max(seen_ms) AS last_seen_ms, max(success_ms) AS last_success_ms,
        arrayDifference(arraySort(groupArrayIf(success_ms, success_ms > 0))) AS gaps
    FROM
    (
        SELECT service, finalizeAggregation(requests) AS request_count, finalizeAggregation(last_seen_ms) AS seen_ms, finalizeAggregation(last_success_ms) AS success_ms
        FROM usage_key_minute
        WHERE key_id = ? AND project = ? AND minute >= toDateTime(?) AND minute < toDateTime(?)
        UNION ALL
        SELECT service, toUInt64(1) AS request_count, event_time_ms AS seen_ms, if(status_code < 400, event_time_ms, toInt64(0)) AS success_ms
        FROM usage_events
        WHERE key_id = ? AND project = ? AND ((event_time >= toDateTime(?) AND event_time <= toDateTime(?) AND event_time_ms >= ? AND event_time_ms < ?) OR (event_time >= toDateTime(?) AND event_time <= toDateTime(?) AND event_time_ms >= ? AND event_time_ms < ?))
    )
    GROUP BY service
)
ORDER BY service
LIMIT ?`,
			wantArgs: []any{int64(900000), "key_old", "acme", int64(1793527260), int64(1793534400),
				"key_old", "acme", int64(1793527230), int64(1793527260), int64(1793527230000), int64(1793527260000),
				int64(1793534400), int64(1793534445), int64(1793534400000), int64(1793534445000), 10001},
		},
	} {
		if tc.got.SQL != tc.wantSQL || !reflect.DeepEqual(tc.got.Args, tc.wantArgs) {
			t.Errorf("%s: got\n%s\n%#v", tc.name, tc.got.SQL, tc.got.Args)
		}
	}
}
