package reconcile

import (
	"testing"

	"github.com/keytrail/keytrail/migrations"
)

func rollup(t *testing.T, table string) migrations.Rollup {
	t.Helper()
	for _, r := range migrations.Rollups {
		if r.Table == table {
			return r
		}
	}
	t.Fatalf("no rollup %s", table)
	return migrations.Rollup{}
}

// The statements a check sends, exactly (the arguments are bound in the order the
// comments of each builder list).
func TestSQL(t *testing.T) {
	states, err := insertStatesSQL(rollup(t, "key_client_ip_totals"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ name, got, want string }{
		{"fine raw, counts", fineRawSQL(true), `SELECT toInt64(toUInt32(toStartOfMinute(event_time))) AS m, project, key_id, service, model, count()
FROM usage_events
WHERE key_id IN (SELECT arrayJoin(?)) AND event_time >= toDateTime(?) AND event_time < toDateTime(?) AND toInt64(toUInt32(toStartOfDay(event_time))) IN (SELECT toInt64(arrayJoin(?)))
GROUP BY m, project, key_id, service, model`},
		{"all-time raw with the view's filter", allTimeRawSQL(rollup(t, "key_client_ip_totals"), false), `SELECT project, key_id, client_ip, count(), countIf(status_code >= 400), sum(input_tokens), sum(output_tokens), sum(cost_micros), min(event_time_ms), max(event_time_ms), maxIf(event_time_ms, status_code < 400), countIf(status_code < 400)
FROM usage_events
WHERE key_id IN (SELECT arrayJoin(?)) AND client_ip != ''
GROUP BY project, key_id, client_ip`},
		{"summing rollup", rollupSQL(rollup(t, "spend_hourly")), `SELECT toInt64(toUInt32(hour)) AS b, project, key_id, service, model, toUInt64(sum(requests)), toUInt64(sum(errors)), toUInt64(sum(total_input_tokens)), toUInt64(sum(total_output_tokens)), toInt64(sum(total_cost_micros))
FROM spend_hourly
WHERE key_id IN (SELECT arrayJoin(?)) AND project IN (SELECT arrayJoin(?)) AND service IN (SELECT arrayJoin(?)) AND hour >= toDateTime(?) AND hour < toDateTime(?) AND toInt64(toUInt32(toStartOfDay(hour))) IN (SELECT toInt64(arrayJoin(?)))
GROUP BY b, project, key_id, service, model`},
		{"aggregating all-time rollup", rollupSQL(rollup(t, "key_service_totals")), `SELECT project, key_id, service, toUInt64(countMerge(requests)), toUInt64(sumMerge(errors)), toInt64(minMerge(first_seen_ms)), toInt64(maxMerge(last_seen_ms)), toInt64(maxIfMerge(last_success_ms))
FROM key_service_totals
WHERE key_id IN (SELECT arrayJoin(?)) AND project IN (SELECT arrayJoin(?)) AND service IN (SELECT arrayJoin(?))
GROUP BY project, key_id, service`},
		{"sweep's first look, daily", shortHoursSQL(rollup(t, "spend_daily")), `SELECT h, key_id, raw_n, held_n FROM
(SELECT toInt64(toUInt32(toStartOfDay(event_time))) AS h, key_id, count() AS raw_n FROM usage_events
 WHERE event_time >= toDateTime(?) AND event_time < toDateTime(?) GROUP BY h, key_id)
ANY LEFT JOIN
(SELECT toInt64(toUInt32(toStartOfDay(day))) AS h, key_id, toUInt64(sum(requests)) AS held_n FROM spend_daily
 WHERE day >= toDateTime(?) AND day < toDateTime(?) GROUP BY h, key_id)
USING h, key_id
WHERE raw_n > held_n`},
		{"states correction", states, `INSERT INTO key_client_ip_totals (project, key_id, client_ip, requests, first_seen_ms, last_seen_ms)
SELECT tupleElement(c, 1), tupleElement(c, 2), tupleElement(c, 3), countState(), minState(toInt64(tupleElement(c, 6))), maxState(toInt64(tupleElement(c, 7)))
FROM (SELECT arrayJoin(arrayMap((d0, d1, d2, n, e, f, l, s, ok) -> (d0, d1, d2, n, e, f, l, s, ok), ?, ?, ?, ?, ?, ?, ?, ?, ?)) AS c)
ARRAY JOIN range(tupleElement(c, 4)) AS i
GROUP BY c`},
		{"sums correction", insertSumsSQL(rollup(t, "usage_key_hourly")), `INSERT INTO usage_key_hourly (hour, project, key_id, requests, errors, total_cost_micros)`},
	} {
		if c.got != c.want {
			t.Errorf("%s:\n got %s\nwant %s", c.name, c.got, c.want)
		}
	}
}

// compare's verdicts, one rollup of each engine.
func TestCompare(t *testing.T) {
	amt := func(n, e, cost int64) amounts {
		var a amounts
		a.add[migrations.Requests], a.add[migrations.Errors], a.add[migrations.Cost] = n, e, cost
		a.first, a.last, a.lastSuccess, a.successes = 10, 90, 80, uint64(n-e)
		return a
	}
	sums, states := rollup(t, "usage_key_hourly"), rollup(t, "usage_key_minute")
	for _, c := range []struct {
		name      string
		r         migrations.Rollup
		raw, held amounts
		want      verdict
		wantAdd   [3]int64 // requests, errors, cost
	}{
		{"equal", sums, amt(5, 1, 50), amt(5, 1, 50), agrees, [3]int64{}},
		{"short by rows", sums, amt(5, 1, 50), amt(3, 0, 20), short, [3]int64{2, 1, 30}},
		{"cell missing", sums, amt(5, 1, 50), amounts{}, short, [3]int64{5, 1, 50}},
		{"more than raw", sums, amt(5, 1, 50), amt(6, 1, 60), excess, [3]int64{}},
		{"more errors than raw, fewer rows", sums, amt(5, 1, 50), amt(4, 2, 40), excess, [3]int64{}},
		{"states short", states, amt(5, 2, 0), amt(2, 1, 0), short, [3]int64{3, 1, 0}},
		{"states short of errors only: not expressible as rows", states, amt(5, 2, 0), amt(5, 1, 0), excess, [3]int64{}},
	} {
		v, corr := compare(c.r, cell{}, c.raw, c.held)
		if v != c.want {
			t.Errorf("%s: verdict %d, want %d", c.name, v, c.want)
			continue
		}
		if v == short {
			got := [3]int64{corr.add[migrations.Requests], corr.add[migrations.Errors], corr.add[migrations.Cost]}
			if got != c.wantAdd || corr.first != 10 || corr.last != 90 || corr.lastSuccess != 80 {
				t.Errorf("%s: correction %v first %d last %d lastSuccess %d, want %v and the raw extremes 10 90 80", c.name, got, corr.first, corr.last, corr.lastSuccess, c.wantAdd)
			}
		}
	}
}
