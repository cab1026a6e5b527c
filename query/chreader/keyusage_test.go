package chreader

import (
	"errors"
	"reflect"
	"testing"
	"time"
)

func TestKeyUsageSeriesSQL(t *testing.T) {
	from := mustTime(t, "2026-11-01T10:00:00Z")
	for _, tc := range []struct {
		service  string
		project  string
		projects []string
		wantSQL  string
		wantArgs []any
	}{
		{
			service: "",
			wantSQL: `SELECT intDiv(toUInt32(bucket) - ?, ?) AS n, project, service, sum(requests) AS request_count, sum(errors) AS error_count, sum(total_cost_micros) AS cost
FROM usage_key_5min
WHERE key_id = ? AND bucket >= toDateTime(?) AND bucket < toDateTime(?)
GROUP BY n, project, service
ORDER BY service, n`,
			wantArgs: []any{int64(1793527200), int64(900), "key_a", int64(1793527200), int64(1793534400)},
		},
		{
			service: "billing",
			wantSQL: `SELECT intDiv(toUInt32(bucket) - ?, ?) AS n, project, service, sum(requests) AS request_count, sum(errors) AS error_count, sum(total_cost_micros) AS cost
FROM usage_key_5min
WHERE key_id = ? AND bucket >= toDateTime(?) AND bucket < toDateTime(?) AND service = ?
GROUP BY n, project, service
ORDER BY service, n`,
			wantArgs: []any{int64(1793527200), int64(900), "key_a", int64(1793527200), int64(1793534400), "billing"},
		},
		{
			// A key is (project, key_id): within the project asked for and the caller's.
			project: "acme", projects: []string{"acme", "beta"},
			wantSQL: `SELECT intDiv(toUInt32(bucket) - ?, ?) AS n, project, service, sum(requests) AS request_count, sum(errors) AS error_count, sum(total_cost_micros) AS cost
FROM usage_key_5min
WHERE key_id = ? AND bucket >= toDateTime(?) AND bucket < toDateTime(?) AND project = ? AND has(?, project)
GROUP BY n, project, service
ORDER BY service, n`,
			wantArgs: []any{int64(1793527200), int64(900), "key_a", int64(1793527200), int64(1793534400), "acme", []string{"acme", "beta"}},
		},
	} {
		got := KeyUsageSeries("key_a", tc.service, tc.project, tc.projects, from, from.Add(2*time.Hour), 15*time.Minute)
		if got.SQL != tc.wantSQL || !reflect.DeepEqual(got.Args, tc.wantArgs) {
			t.Errorf("service %q: got\n%s\n%#v", tc.service, got.SQL, got.Args)
		}
	}
}

func TestUsageSeriesWindow(t *testing.T) {
	now := mustTime(t, "2026-11-01T10:07:30Z")
	for _, tc := range []struct {
		name       string
		req        KeyUsageRequest
		from, to   string
		width      time.Duration
		wrongField string
	}{
		// 24 hours before now, widened to whole 5-minute buckets: 289 buckets, under 300.
		{name: "defaults", from: "2026-10-31T10:05:00Z", to: "2026-11-01T10:10:00Z", width: 5 * time.Minute},
		{name: "two days: 15m", req: KeyUsageRequest{Start: now.Add(-48 * time.Hour)}, from: "2026-10-30T10:00:00Z", to: "2026-11-01T10:15:00Z", width: 15 * time.Minute},
		{name: "30 days: 6h", req: KeyUsageRequest{Start: now.Add(-30 * 24 * time.Hour)}, from: "2026-10-02T06:00:00Z", to: "2026-11-01T12:00:00Z", width: 6 * time.Hour},
		{name: "a day's buckets are UTC days", req: KeyUsageRequest{Start: now.Add(-72 * time.Hour), Bucket: 24 * time.Hour}, from: "2026-10-29T00:00:00Z", to: "2026-11-02T00:00:00Z", width: 24 * time.Hour},
		{name: "exact range", req: KeyUsageRequest{Start: mustTime(t, "2026-11-01T08:00:00Z"), End: mustTime(t, "2026-11-01T09:00:00Z"), Bucket: 10 * time.Minute}, from: "2026-11-01T08:00:00Z", to: "2026-11-01T09:00:00Z", width: 10 * time.Minute},
		{name: "not a multiple of 5m", req: KeyUsageRequest{Bucket: 7 * time.Minute}, wrongField: "bucket"},
		{name: "over a day", req: KeyUsageRequest{Bucket: 25 * time.Hour}, wrongField: "bucket"},
		{name: "too many buckets", req: KeyUsageRequest{Start: now.Add(-8 * 24 * time.Hour), Bucket: 5 * time.Minute}, wrongField: "start_time"},
		{name: "end before start", req: KeyUsageRequest{Start: now, End: now.Add(-time.Minute)}, wrongField: "end_time"},
	} {
		from, to, width, err := usageSeriesWindow(tc.req, now)
		if tc.wrongField != "" {
			var invalid *InvalidError
			if !errors.As(err, &invalid) || invalid.Field != tc.wrongField {
				t.Errorf("%s: error %v, want one naming %s", tc.name, err, tc.wrongField)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if !from.Equal(mustTime(t, tc.from)) || !to.Equal(mustTime(t, tc.to)) || width != tc.width {
			t.Errorf("%s: [%s, %s) by %s, want [%s, %s) by %s", tc.name, from.Format(time.RFC3339), to.Format(time.RFC3339), width, tc.from, tc.to, tc.width)
		}
	}
}
