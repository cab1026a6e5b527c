package chreader

import (
	"reflect"
	"testing"
	"time"
)

func TestRotationSeriesSQL(t *testing.T) {
	from := mustTime(t, "2026-11-01T10:00:00Z")
	got := RotationSeries("key_old", "key_new", from, from.Add(2*time.Hour), 2*time.Minute)
	wantSQL := `SELECT intDiv(toUInt32(minute) - ?, ?) AS bucket, key_id, countMerge(requests) AS requests
FROM usage_key_minute
WHERE key_id IN (?, ?) AND minute >= toDateTime(?) AND minute < toDateTime(?)
GROUP BY bucket, key_id
ORDER BY bucket, key_id`
	wantArgs := []any{int64(1793527200), int64(120), "key_old", "key_new", int64(1793527200), int64(1793534400)}
	if got.SQL != wantSQL || !reflect.DeepEqual(got.Args, wantArgs) {
		t.Errorf("got\n%s\n%#v", got.SQL, got.Args)
	}
}

func TestRequestsAfterSQL(t *testing.T) {
	from := mustTime(t, "2026-11-01T10:00:00.250Z")
	got := RequestsAfter("key_old", from, from.Add(time.Hour))
	wantSQL := `SELECT service, status_code, count() AS request_count, min(event_time_ms) AS first_ms, max(event_time_ms) AS last_ms
FROM usage_events
WHERE key_id = ? AND event_time >= toDateTime(?) AND event_time <= toDateTime(?) AND event_time_ms >= ? AND event_time_ms < ?
GROUP BY service, status_code
ORDER BY service, status_code`
	wantArgs := []any{"key_old", int64(1793527200), int64(1793530800), int64(1793527200250), int64(1793530800250)}
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
