package chreader

import (
	"context"
	"errors"
	"fmt"
	"os"
	"reflect"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/internal/testenv"
	"github.com/keytrail/keytrail/query/anomaly"
)

var anomFirst = time.Date(2026, 3, 10, 11, 0, 0, 0, time.UTC)

// The candidates' hourly totals, as anomalyCandidatesSQL writes them.
const anomHourTotals = `arrayPopFront(arrayDifference(arrayPushFront(arrayFilter((x, last) -> last, arrayCumSum(arraySort((v, b) -> b, groupArray(requests), groupArray(toUInt32(hour)))), arrayMap((x, y) -> x != y, arraySort(groupArray(toUInt32(hour))), arrayPushBack(arrayPopFront(arraySort(groupArray(toUInt32(hour)))), toUInt32(0)))), toUInt64(0))))`

func TestAnomalyScanSQL(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		spec     AnomalySpec
		wantSQL  string
		wantArgs []any
	}{
		{
			name: "one project, a day of baseline",
			spec: AnomalySpec{FirstBucket: anomFirst, End: anomFirst.Add(time.Hour), BaselineBuckets: 288, Metrics: allMetrics,
				Sensitivity: 6, MinRequests: 50, Project: "acme", Limit: 1001},
			wantSQL: `SELECT cityHash64(project, key_id), cityHash64(service), toUInt32(bucket), requests, errors, total_cost_micros
FROM usage_key_5min
WHERE key_id IN (SELECT key_id FROM usage_key_hourly WHERE hour >= toDateTime(?) AND hour < toDateTime(?) AND project = ? GROUP BY project, key_id HAVING arrayExists(total -> total >= ?, ` + anomHourTotals + `))
  AND bucket >= toDateTime(?)
  AND bucket < toDateTime(?)
  AND project = ?`,
			wantArgs: []any{int64(1773140400), int64(1773144000), "acme", int64(50), int64(1773054000), int64(1773144000), "acme"},
		},
		{
			// The first bucket is 10 minutes into an hour: the candidates' hours start at that
			// hour. Scope and metrics do not change what is read.
			name: "projects and a key, key x service scope, error rate only",
			spec: AnomalySpec{FirstBucket: anomFirst.Add(10 * time.Minute), End: anomFirst.Add(40 * time.Minute), BaselineBuckets: 24,
				Metrics: []keytrailv1.AnomalyMetric{keytrailv1.AnomalyMetric_ANOMALY_METRIC_ERROR_RATE},
				Scope:   anomaly.ScopeKeyService, Sensitivity: 4.5, MinRequests: 10,
				Projects: []string{"a", "b"}, KeyID: "key_1", Limit: 1001},
			wantSQL: `SELECT cityHash64(project, key_id), cityHash64(service), toUInt32(bucket), requests, errors, total_cost_micros
FROM usage_key_5min
WHERE key_id IN (SELECT key_id FROM usage_key_hourly WHERE hour >= toDateTime(?) AND hour < toDateTime(?) AND has(?, project) AND key_id = ? GROUP BY project, key_id HAVING arrayExists(total -> total >= ?, ` + anomHourTotals + `))
  AND bucket >= toDateTime(?)
  AND bucket < toDateTime(?)
  AND has(?, project)
  AND key_id = ?`,
			wantArgs: []any{int64(1773140400), int64(1773142800), []string{"a", "b"}, "key_1", int64(10),
				int64(1773133800), int64(1773142800), []string{"a", "b"}, "key_1"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := AnomalyScan(tt.spec)
			if got.SQL != tt.wantSQL {
				t.Errorf("SQL:\n%s\nwant:\n%s", got.SQL, tt.wantSQL)
			}
			if !reflect.DeepEqual(got.Args, tt.wantArgs) {
				t.Errorf("args %#v\nwant %#v", got.Args, tt.wantArgs)
			}
		})
	}
}

func TestAnomalyCandidatesAndNamesSQL(t *testing.T) {
	t.Parallel()
	spec := AnomalySpec{FirstBucket: anomFirst.Add(10 * time.Minute), End: anomFirst.Add(40 * time.Minute), BaselineBuckets: 24,
		Metrics: allMetrics, Sensitivity: 6, MinRequests: 50, Project: "acme", Limit: 1001}
	got := AnomalyCandidates(spec)
	wantSQL := `SELECT project, key_id, cityHash64(project, key_id) FROM usage_key_hourly WHERE hour >= toDateTime(?) AND hour < toDateTime(?) AND project = ? GROUP BY project, key_id HAVING arrayExists(total -> total >= ?, ` + anomHourTotals + `)`
	if got.SQL != wantSQL {
		t.Errorf("candidates SQL:\n%s\nwant:\n%s", got.SQL, wantSQL)
	}
	if want := []any{int64(1773140400), int64(1773142800), "acme", int64(50)}; !reflect.DeepEqual(got.Args, want) {
		t.Errorf("candidates args %#v\nwant %#v", got.Args, want)
	}
	names := AnomalyServiceNames([]string{"key_a", "key_b"})
	wantSQL = `SELECT DISTINCT key_id, service, cityHash64(service)
FROM key_service_totals
WHERE key_id IN (SELECT arrayJoin(?))`
	if names.SQL != wantSQL || !reflect.DeepEqual(names.Args, []any{[]string{"key_a", "key_b"}}) {
		t.Errorf("names query %s %#v", names.SQL, names.Args)
	}
}

func TestAnomalySpecFor(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 3, 10, 12, 2, 30, 0, time.UTC)
	t.Run("defaults", func(t *testing.T) {
		got, err := AnomalySpecFor(AnomalyRequest{}, now)
		if err != nil {
			t.Fatal(err)
		}
		// The last hour, from the bucket containing its start: 11:00 to 12:02:30.
		want := AnomalySpec{FirstBucket: time.Date(2026, 3, 10, 11, 0, 0, 0, time.UTC), End: now, BaselineBuckets: 288,
			Metrics: allMetrics, Sensitivity: 6, MinRequests: 50, Limit: anomaly.MaxAnomalies + 1}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("got %+v\nwant %+v", got, want)
		}
		if !got.BaselineStart().Equal(time.Date(2026, 3, 9, 11, 0, 0, 0, time.UTC)) {
			t.Errorf("baseline start %s", got.BaselineStart())
		}
	})
	t.Run("explicit", func(t *testing.T) {
		got, err := AnomalySpecFor(AnomalyRequest{
			Start: now.Add(-17 * time.Minute), End: now, Baseline: 7 * 24 * time.Hour, Sensitivity: 3, MinRequests: 1,
			Metrics: []keytrailv1.AnomalyMetric{keytrailv1.AnomalyMetric_ANOMALY_METRIC_COST},
			Scope:   anomaly.ScopeKey, Project: "p", KeyID: "k",
		}, now)
		if err != nil {
			t.Fatal(err)
		}
		want := AnomalySpec{FirstBucket: time.Date(2026, 3, 10, 11, 45, 0, 0, time.UTC), End: now, BaselineBuckets: 2016,
			Metrics: []keytrailv1.AnomalyMetric{keytrailv1.AnomalyMetric_ANOMALY_METRIC_COST}, Scope: anomaly.ScopeKey,
			Sensitivity: 3, MinRequests: 1, Project: "p", KeyID: "k", Limit: anomaly.MaxAnomalies + 1}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("got %+v\nwant %+v", got, want)
		}
	})
	for _, tc := range []struct {
		name  string
		req   AnomalyRequest
		field string
	}{
		{"end before start", AnomalyRequest{Start: now, End: now.Add(-time.Minute)}, "end_time"},
		{"baseline below an hour", AnomalyRequest{Baseline: 55 * time.Minute}, "baseline"},
		{"baseline above 7 days", AnomalyRequest{Baseline: 7*24*time.Hour + 5*time.Minute}, "baseline"},
		{"baseline not whole buckets", AnomalyRequest{Baseline: time.Hour + time.Second}, "baseline"},
		{"examined range above 7 days", AnomalyRequest{Start: now.Add(-7*24*time.Hour - time.Minute)}, "start_time"},
		{"unspecified metric", AnomalyRequest{Metrics: []keytrailv1.AnomalyMetric{0}}, "metrics"},
		{"unknown scope", AnomalyRequest{Scope: 9}, "scope"},
		{"negative sensitivity", AnomalyRequest{Sensitivity: -0.5}, "sensitivity"},
		{"negative min requests", AnomalyRequest{MinRequests: -1}, "min_requests"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := AnomalySpecFor(tc.req, now)
			var invalid *InvalidError
			if !errors.As(err, &invalid) || invalid.Field != tc.field {
				t.Errorf("error %v, want InvalidError on %s", err, tc.field)
			}
		})
	}
}

func TestNewCallersSQL(t *testing.T) {
	t.Parallel()
	r := Range{Start: anomFirst.Add(-24 * time.Hour), End: anomFirst}
	t.Run("filtered", func(t *testing.T) {
		got := NewCallers(NewCallersSpec{Range: r, Project: "acme", KeyID: "key_1", Limit: 1001})
		wantSQL := `SELECT project, key_id, kind, caller, first_ms, last_ms, request_count, key_first_ms
FROM
(
    SELECT project, key_id, toUInt8(1) AS kind, service AS caller, minMerge(first_seen_ms) AS first_ms, maxMerge(last_seen_ms) AS last_ms, countMerge(requests) AS request_count
    FROM key_service_totals
    WHERE project = ? AND key_id = ?
    GROUP BY project, key_id, service
    HAVING first_ms >= ? AND first_ms < ?
    UNION ALL
    SELECT project, key_id, toUInt8(2) AS kind, client_ip AS caller, minMerge(first_seen_ms) AS first_ms, maxMerge(last_seen_ms) AS last_ms, countMerge(requests) AS request_count
    FROM key_client_ip_totals
    WHERE project = ? AND key_id = ?
    GROUP BY project, key_id, client_ip
    HAVING first_ms >= ? AND first_ms < ?
)
ANY LEFT JOIN
(
    SELECT project, key_id, minMerge(first_seen_ms) AS key_first_ms
    FROM key_service_totals
    WHERE project = ? AND key_id = ?
    GROUP BY project, key_id
) USING (project, key_id)
ORDER BY first_ms DESC, project, key_id, kind, caller
LIMIT ?`
		wantArgs := []any{"acme", "key_1", int64(1773054000000), int64(1773140400000), "acme", "key_1", int64(1773054000000), int64(1773140400000),
			"acme", "key_1", 1001}
		if got.SQL != wantSQL {
			t.Errorf("SQL:\n%s\nwant:\n%s", got.SQL, wantSQL)
		}
		if !reflect.DeepEqual(got.Args, wantArgs) {
			t.Errorf("args %#v\nwant %#v", got.Args, wantArgs)
		}
	})
	t.Run("unfiltered", func(t *testing.T) {
		got := NewCallers(NewCallersSpec{Range: r, Limit: 1001})
		wantSQL := `SELECT project, key_id, kind, caller, first_ms, last_ms, request_count, key_first_ms
FROM
(
    SELECT project, key_id, toUInt8(1) AS kind, service AS caller, minMerge(first_seen_ms) AS first_ms, maxMerge(last_seen_ms) AS last_ms, countMerge(requests) AS request_count
    FROM key_service_totals
    GROUP BY project, key_id, service
    HAVING first_ms >= ? AND first_ms < ?
    UNION ALL
    SELECT project, key_id, toUInt8(2) AS kind, client_ip AS caller, minMerge(first_seen_ms) AS first_ms, maxMerge(last_seen_ms) AS last_ms, countMerge(requests) AS request_count
    FROM key_client_ip_totals
    GROUP BY project, key_id, client_ip
    HAVING first_ms >= ? AND first_ms < ?
)
ANY LEFT JOIN
(
    SELECT project, key_id, minMerge(first_seen_ms) AS key_first_ms
    FROM key_service_totals
    GROUP BY project, key_id
) USING (project, key_id)
ORDER BY first_ms DESC, project, key_id, kind, caller
LIMIT ?`
		wantArgs := []any{int64(1773054000000), int64(1773140400000), int64(1773054000000), int64(1773140400000), 1001}
		if got.SQL != wantSQL {
			t.Errorf("SQL:\n%s\nwant:\n%s", got.SQL, wantSQL)
		}
		if !reflect.DeepEqual(got.Args, wantArgs) {
			t.Errorf("args %#v\nwant %#v", got.Args, wantArgs)
		}
	})
}

func TestNewCallersSpecFor(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)
	got, err := NewCallersSpecFor(NewCallersRequest{Project: "p"}, now)
	if err != nil {
		t.Fatal(err)
	}
	want := NewCallersSpec{Range: Range{Start: now.Add(-24 * time.Hour), End: now}, Project: "p", Limit: MaxNewCallers + 1}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v\nwant %+v", got, want)
	}
	_, err = NewCallersSpecFor(NewCallersRequest{Start: now, End: now}, now)
	var invalid *InvalidError
	if !errors.As(err, &invalid) || invalid.Field != "end_time" {
		t.Errorf("error %v, want InvalidError on end_time", err)
	}
}

// TestAnomaliesScale measures the default scan (both scopes, all metrics, 24 h baseline) over
// 10k keys with traffic in every 5-minute bucket for 25 hours: 3.0M usage_key_5min rows, 2.88M of
// them baseline, every key above min_requests in every examined bucket (the worst case: no
// key is dismissed early). Set KEYTRAIL_ANOMALY_SCALE=1 to run it; it logs the best of five.
func TestAnomaliesScale(t *testing.T) {
	t.Parallel()
	if os.Getenv("KEYTRAIL_ANOMALY_SCALE") == "" {
		t.Skip("set KEYTRAIL_ANOMALY_SCALE=1 to run the 10k-key scan measurement")
	}
	db := testenv.ClickHouse(t)
	ctx := context.Background()
	end := time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)
	// Synthetic rollup rows straight into usage_key_5min (the scan reads nothing else): 80-119
	// requests, 0-4 errors, 1000 micros a request; key_42 spikes to 1000 requests at 11:30.
	fill := fmt.Sprintf(`INSERT INTO usage_key_5min (bucket, project, key_id, service, requests, errors, total_cost_micros)
SELECT toDateTime(%d - 300 * (number %% 300)) AS b, concat('p', toString(intDiv(number, 300) %% 10)), concat('key_', toString(intDiv(number, 300))), 'svc',
    if(intDiv(number, 300) = 42 AND b = toDateTime(%d), 1000, 80 + cityHash64(number) %% 40) AS r, cityHash64(number, 1) %% 5, r * 1000
FROM numbers(3000000)`, end.Add(-5*time.Minute).Unix(), end.Add(-30*time.Minute).Unix())
	if err := db.Conn.Exec(ctx, fill); err != nil {
		t.Fatal(err)
	}
	// The candidate search reads the hourly per-key rollup, which the views would fill too.
	if err := db.Conn.Exec(ctx, `INSERT INTO usage_key_hourly (hour, project, key_id, requests, errors, total_cost_micros)
SELECT toStartOfHour(bucket), project, key_id, sum(requests), sum(errors), sum(total_cost_micros) FROM usage_key_5min GROUP BY toStartOfHour(bucket), project, key_id`); err != nil {
		t.Fatal(err)
	}
	// Flagged series are named from the all-time key x service rollup.
	if err := db.Conn.Exec(ctx, `INSERT INTO key_service_totals (project, key_id, service) SELECT DISTINCT project, key_id, service FROM usage_key_5min`); err != nil {
		t.Fatal(err)
	}
	rows := testenv.QueryUint64(t, db.Conn, "SELECT count() FROM usage_key_5min")
	rd := NewReader(db.Conn, func() time.Time { return end })
	best := time.Hour
	var found int
	for range 5 {
		start := time.Now()
		res, err := rd.Anomalies(ctx, AnomalyRequest{})
		if err != nil {
			t.Fatal(err)
		}
		best = min(best, time.Since(start))
		found = len(res.Anomalies)
	}
	t.Logf("%d usage_key_5min rows, 10k keys: best scan %v, %d anomalies", rows, best, found)
	if found < 1 {
		t.Errorf("the spike of key_42 was not found")
	}
}

// A scan that would hold more rows than the bound is refused with InvalidArgument naming the
// range, after reading one row past the bound and no more.
func TestAnomalyScanRowBound(t *testing.T) {
	t.Parallel()
	db := testenv.ClickHouse(t)
	end := time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)
	var events []any
	for i := range 5 { // five 5-minute buckets of the examined hour
		events = append(events, &keytrailv1.UsageEvent{EventId: fmt.Sprintf("b%d", i), Time: timestamppb.New(end.Add(-time.Duration(5*i+1) * time.Minute)),
			Project: "acme", KeyId: "key_a", Service: "billing", StatusCode: 200})
	}
	testenv.Insert(t, db, events...)
	testenv.WaitForEvents(t, db, 5, 0, 10*time.Second)
	rd := NewReader(db.Conn, func() time.Time { return end })
	req := AnomalyRequest{MinRequests: 1}

	rd.maxAnomalyScanRows = 4
	_, err := rd.Anomalies(context.Background(), req)
	var invalid *InvalidError
	if !errors.As(err, &invalid) || invalid.Field != "start_time" {
		t.Fatalf("5 rows with a bound of 4: error %v, want InvalidError on start_time", err)
	}
	rd.maxAnomalyScanRows = 5
	res, err := rd.Anomalies(context.Background(), req)
	if err != nil || len(res.Anomalies) != 0 {
		t.Fatalf("5 rows with a bound of 5: %+v, %v; want no anomalies (too little history) and no error", res.Anomalies, err)
	}
}
