package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/url"
	"reflect"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/keytrail/keytrail/event"
	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/query/api"
	"github.com/keytrail/keytrail/query/auditlog"
	"github.com/keytrail/keytrail/query/auth"
	"github.com/keytrail/keytrail/query/chreader"
)

// answer is one API answer and the straightforward raw-table computation of the same answer.
type answer struct {
	name string
	// p99Limit is the latency target of the API's p99 in ms (0: none).
	p99Limit float64
	// path and params of call i (varied inputs).
	call func(i int) (string, url.Values)
	// raw runs the raw-table queries of call i, reading every row.
	raw func(ctx context.Context, i int) error
	// rawNote says how the raw answer is computed.
	rawNote string
}

// discardLogger is for the API server, whose per-call logs are noise here.
var discardLogger = slog.New(slog.NewTextHandler(io.Discard, nil))

// nopRecorder accepts every query audit record and keeps none: the audit log's own cost is
// not what these figures are about.
type nopRecorder struct{}

func (nopRecorder) Record(context.Context, auditlog.Record) error { return nil }

// apiServer serves the real API (authentication, validation, REST gateway) on loopback.
type apiServer struct {
	base   string
	token  string
	client *http.Client
	stop   func()
}

func startAPI(ctx context.Context, conn driver.Conn) (*apiServer, error) {
	token := auth.NewToken()
	// A rate limit far above what sequential calls reach: throttling is not what is measured.
	authn, err := auth.NewAuthenticator(auth.File{Tokens: []auth.Entry{{
		Name: "bench-admin", SHA256: auth.HashToken(token), Role: auth.RoleAdmin, RatePerSecond: 1e6, Burst: 1_000_000,
	}}}, nil)
	if err != nil {
		return nil, err
	}
	srv, err := api.New(api.Config{
		Reader:   chreader.NewReader(conn, nil),
		Ready:    func(context.Context) error { return nil },
		Auth:     authn,
		Recorder: nopRecorder{},
		Logger:   discardLogger,
	})
	if err != nil {
		return nil, err
	}
	grpcLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	httpLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		grpcLis.Close()
		return nil, err
	}
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(sctx, grpcLis, httpLis) }()
	return &apiServer{
		base: "http://" + httpLis.Addr().String(), token: token,
		client: &http.Client{Timeout: 5 * time.Minute},
		stop:   func() { cancel(); <-done },
	}, nil
}

// errNotImplemented is a 501 from the API: the endpoint is not there yet.
var errNotImplemented = errors.New("HTTP 501 Not Implemented")

// get calls the REST API and reads the whole body.
func (s *apiServer) get(ctx context.Context, path string, params url.Values) error {
	u := s.base + path
	if len(params) > 0 {
		u += "?" + params.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+s.token)
	resp, err := s.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	switch {
	case resp.StatusCode == http.StatusNotImplemented:
		return errNotImplemented
	case resp.StatusCode != http.StatusOK:
		return fmt.Errorf("GET %s: HTTP %d: %.300s", u, resp.StatusCode, body)
	}
	return nil
}

// readAll runs a query and reads every row (the time includes the transfer, as the API's does).
func readAll(ctx context.Context, conn driver.Conn, sql string, args ...any) error {
	rows, err := conn.Query(ctx, sql, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	types := rows.ColumnTypes()
	dest := make([]any, len(types))
	for rows.Next() {
		for i, t := range types {
			dest[i] = newScanTarget(t)
		}
		if err := rows.Scan(dest...); err != nil {
			return err
		}
	}
	return rows.Err()
}

func newScanTarget(t driver.ColumnType) any {
	return reflect.New(t.ScanType()).Interface()
}

// runQueries loads the history, serves the API over it and times every answer both ways.
func (h *harness) runQueries(ctx context.Context) error {
	conn, hs, err := h.loadedHistory(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	srv, err := startAPI(ctx, conn)
	if err != nil {
		return err
	}
	defer srv.stop()
	if err := h.noteFloor(ctx, conn); err != nil {
		return err
	}

	for _, a := range h.answers(conn, hs) {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		h.logf("query: %s", a.name)
		h.report.add(h.timeAnswer(ctx, srv, a)...)
	}
	return nil
}

// noteFloor records what the cheapest ClickHouse query costs on this machine: no answer, raw
// or API, can take less, so a raw query that is itself a narrow primary-key read bounds the
// raw/API ratio an answer can reach.
func (h *harness) noteFloor(ctx context.Context, conn driver.Conn) error {
	var times []time.Duration
	for range h.sizes.Calls {
		t0 := time.Now()
		if err := readAll(ctx, conn, "SELECT 1"); err != nil {
			return fmt.Errorf("SELECT 1: %w", err)
		}
		times = append(times, time.Since(t0))
	}
	h.report.note("query: the floor, one ClickHouse round trip (SELECT 1 over the native protocol), p50 %.2f ms, p99 %.2f ms over %d calls",
		percentile(times, 50), percentile(times, 99), len(times))
	return nil
}

// timeAnswer makes one untimed warm-up call each way, then Calls timed API calls and up to
// Calls timed raw computations (fewer when they exceed RawCallBudget, never fewer than
// MinRawCalls), and returns the p50 row (judged on raw/API >= 10x) and the p99 row (judged on
// the answer's latency target).
func (h *harness) timeAnswer(ctx context.Context, srv *apiServer, a answer) []Row {
	p50 := Row{Figure: a.name + " p50", Unit: UnitMs, Baseline: "raw-table query p50", Target: "raw/API >= 10x", Value: math.NaN()}
	p99 := Row{Figure: a.name + " p99", Unit: UnitMs, Baseline: "raw-table query p99", Value: math.NaN()}
	if a.p99Limit > 0 {
		p99.Target = "< " + format(a.p99Limit, UnitMs)
	}
	fail := func(why string) []Row {
		p50.NA, p99.NA = why, why
		return []Row{p50, p99}
	}
	if err := h.callAPI(ctx, srv, a, -1); err != nil {
		if errors.Is(err, errNotImplemented) {
			return fail("the endpoint answers 501 Unimplemented")
		}
		return fail(err.Error())
	}
	var apiTimes []time.Duration
	for i := range h.sizes.Calls {
		t0 := time.Now()
		if err := h.callAPI(ctx, srv, a, i); err != nil {
			return fail(err.Error())
		}
		apiTimes = append(apiTimes, time.Since(t0))
	}
	if err := a.raw(ctx, -1); err != nil {
		return fail("raw query: " + err.Error())
	}
	var rawTimes []time.Duration
	var spent time.Duration
	for i := range h.sizes.Calls {
		if i >= MinRawCalls && spent.Seconds() > h.sizes.RawCallBudget {
			break
		}
		t0 := time.Now()
		if err := a.raw(ctx, i); err != nil {
			return fail("raw query: " + err.Error())
		}
		d := time.Since(t0)
		spent += d
		rawTimes = append(rawTimes, d)
	}
	p50.Value, p50.BaselineValue = percentile(apiTimes, 50), percentile(rawTimes, 50)
	p99.Value, p99.BaselineValue = percentile(apiTimes, 99), percentile(rawTimes, 99)
	p50.Ratio, p99.Ratio = p50.BaselineValue/p50.Value, p99.BaselineValue/p99.Value
	p50.Met = met(p50.Ratio >= 10)
	if a.p99Limit > 0 {
		p99.Met = met(p99.Value < a.p99Limit)
	}
	p50.Samples, p99.Samples = len(apiTimes), len(apiTimes)
	p50.RawSamples, p99.RawSamples = len(rawTimes), len(rawTimes)
	p50.Note, p99.Note = a.rawNote, a.rawNote
	return []Row{p50, p99}
}

func (h *harness) callAPI(ctx context.Context, srv *apiServer, a answer, i int) error {
	path, params := a.call(max(i, 0))
	return srv.get(ctx, path, params)
}

// spreadKeys are call i's key: ranks log-spaced from the hottest key to the coldest, so the
// calls cover keys with millions of requests and keys with a handful.
func spreadKey(i, calls int) int {
	if calls <= 1 {
		return 0
	}
	return min(int(math.Exp(math.Log(fleetKeys)*float64(i)/float64(calls-1)))-1, fleetKeys-1)
}

func rfc3339(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// answers are the timed answers over the history.
func (h *harness) answers(conn driver.Conn, hs history) []answer {
	calls := h.sizes.Calls
	day := func(t time.Time) time.Time { return t.UTC().Truncate(24 * time.Hour) }
	spendFrom, spendTo := day(hs.End.Add(-30*24*time.Hour)), day(hs.End.Add(24*time.Hour))
	stateAt := hs.End.Add(-10 * 24 * time.Hour)
	anomalyFrom := hs.End.Add(-24 * time.Hour)
	return []answer{
		{
			name: "services per key", p99Limit: 50,
			call: func(i int) (string, url.Values) {
				return "/v1/keys/" + keyName(spreadKey(i, calls)) + "/services", nil
			},
			raw: func(ctx context.Context, i int) error {
				return readAll(ctx, conn, `SELECT project, service, min(event_time_ms), max(event_time_ms), count(), countIf(status_code >= 400), maxIf(event_time_ms, status_code < 400)
FROM usage_events WHERE key_id = ? GROUP BY project, service ORDER BY project, service LIMIT 101`, keyName(spreadKey(max(i, 0), calls)))
			},
			rawNote: "raw: GROUP BY project, service over the key's rows of usage_events (its sort-key prefix)",
		},
		{
			name: "keys per service",
			call: func(i int) (string, url.Values) {
				return "/v1/services/" + serviceName(i*fleetServices/calls%fleetServices) + "/keys", nil
			},
			raw: func(ctx context.Context, i int) error {
				return readAll(ctx, conn, `SELECT project, key_id, min(event_time_ms), max(event_time_ms), count(), countIf(status_code >= 400), maxIf(event_time_ms, status_code < 400)
FROM usage_events WHERE service = ? GROUP BY project, key_id ORDER BY project, key_id LIMIT 101`, serviceName(max(i, 0)*fleetServices/calls%fleetServices))
			},
			rawNote: "raw: GROUP BY project, key_id over usage_events WHERE service = ? (a full scan of the column)",
		},
		{
			name: "rotation status", p99Limit: 100,
			call: func(i int) (string, url.Values) {
				return "/v1/rotations/" + keyName(rotatedKey(i%rotatedKeys)), nil
			},
			raw: func(ctx context.Context, i int) error {
				return rawRotation(ctx, conn, max(i, 0)%rotatedKeys, hs)
			},
			rawNote: "raw: the old key's lifecycle, its callers' gaps over the 7 days before the rotation, then per key x service counts, last success and the 60-bucket series from usage_events since the rotation",
		},
		{
			name: "spend by key per day, 30 days", p99Limit: 100,
			call: func(int) (string, url.Values) {
				return "/v1/spend", url.Values{"group_by": {"SPEND_DIMENSION_KEY"}, "granularity": {"GRANULARITY_DAY"},
					"start_time": {rfc3339(spendFrom)}, "end_time": {rfc3339(spendTo)}}
			},
			raw: func(ctx context.Context, _ int) error {
				if err := readAll(ctx, conn, "SELECT count(), sum(cost_micros) FROM usage_events WHERE event_time >= toDateTime(?) AND event_time < toDateTime(?)",
					spendFrom.Unix(), spendTo.Unix()); err != nil {
					return err
				}
				return readAll(ctx, conn, `SELECT toStartOfDay(event_time) AS bucket, key_id, count(), sum(input_tokens), sum(output_tokens), sum(cost_micros)
FROM usage_events WHERE event_time >= toDateTime(?) AND event_time < toDateTime(?)
GROUP BY bucket, key_id ORDER BY bucket, key_id LIMIT 101`, spendFrom.Unix(), spendTo.Unix())
			},
			rawNote: "raw: totals and the first page (101 rows) grouped by day and key over usage_events",
		},
		{
			name: "budget utilisation",
			call: func(int) (string, url.Values) { return "/v1/budgets", nil },
			raw: func(ctx context.Context, _ int) error {
				return rawBudgets(ctx, conn, time.Now().UTC())
			},
			rawNote: "raw: budgets from lifecycle_events, spend per key and period (current + 3 previous) from usage_events",
		},
		{
			name: "anomaly scan, all keys, 24 h", p99Limit: 1000,
			call: func(int) (string, url.Values) {
				return "/v1/anomalies", url.Values{"start_time": {rfc3339(anomalyFrom)}, "end_time": {rfc3339(hs.End)}}
			},
			raw: func(ctx context.Context, _ int) error {
				return readAll(ctx, conn, rawAnomalySQL(anomalyFrom, hs.End))
			},
			rawNote: "raw: 5-minute request counts per key from usage_events over 24 h + 24 h baseline, median/MAD score (requests metric only: a lower bound of the raw cost)",
		},
		{
			name: "key state at an instant",
			call: func(i int) (string, url.Values) {
				return "/v1/keys/" + keyName(spreadKey(i, calls)), url.Values{"at": {rfc3339(stateAt)}}
			},
			raw: func(ctx context.Context, i int) error {
				key := keyName(spreadKey(max(i, 0), calls))
				q := chreader.KeyLifecycle(key, stateAt)
				if err := readAll(ctx, conn, q.SQL, q.Args...); err != nil {
					return err
				}
				return readAll(ctx, conn, `SELECT project, service, max(event_time_ms) FROM usage_events
WHERE key_id = ? AND event_time <= toDateTime(?) AND event_time_ms <= ? GROUP BY project, service`, key, stateAt.Unix(), stateAt.UnixMilli())
			},
			rawNote: "raw: the key's lifecycle rows (the API reads the same) and last use per service from usage_events",
		},
		{
			name: "audit trail page (100 events)",
			call: func(i int) (string, url.Values) {
				return "/v1/audit/events", url.Values{"project": {projectName(i % fleetProjects)}, "page_size": {"100"}}
			},
			raw: func(ctx context.Context, i int) error {
				return readAll(ctx, conn, `SELECT event_id, event_time_ms, project, key_id, action, new_key_id, actor, actor_type, reason, expires_at, budget_amount_micros, budget_period, scopes, attribute_keys, attribute_values, change_fields, change_before, change_after
FROM lifecycle_events WHERE project = ? ORDER BY event_time_ms DESC, event_id DESC LIMIT 101`, projectName(max(i, 0)%fleetProjects))
			},
			rawNote: "raw: the same page from lifecycle_events (the API reads the raw table too)",
		},
	}
}

// rawRotation computes rotation i's answer from the raw tables.
func rawRotation(ctx context.Context, conn driver.Conn, i int, hs history) error {
	old := keyName(rotatedKey(i))
	q := chreader.KeyLifecycle(old, time.Now())
	rows, err := conn.Query(ctx, q.SQL, q.Args...)
	if err != nil {
		return err
	}
	var rotatedMs int64
	var newKey string
	for rows.Next() {
		var (
			id, project, key, action, nk, actor, period string
			ms                                          int64
			expires                                     *time.Time
			budget                                      *int64
			scopes                                      []string
		)
		if err := rows.Scan(&id, &ms, &project, &key, &action, &nk, &actor, &expires, &budget, &period, &scopes); err != nil {
			rows.Close()
			return err
		}
		if key == old && action == event.ActionName(keytrailv1.Action_ACTION_ROTATED) {
			rotatedMs, newKey = ms, nk
		}
	}
	rows.Close()
	if newKey == "" {
		return fmt.Errorf("%s has no rotation", old)
	}
	now := time.Now()
	from := time.UnixMilli(rotatedMs).UTC()
	quietFrom := now.Add(-chreader.DefaultQuietPeriod).UnixMilli()
	// The old key's callers over the lookback before the rotation: per service, the largest
	// gap between successes (the API reads the same from usage_key_minute).
	if err := readAll(ctx, conn, `SELECT service, count(), max(event_time_ms), maxIf(event_time_ms, status_code < 400),
    arrayReduce('max', arrayDifference(arraySort(groupArrayIf(event_time_ms, status_code < 400))))
FROM usage_events WHERE key_id = ? AND event_time >= toDateTime(?) GROUP BY service`, old, from.Add(-chreader.DefaultLookback).Unix()); err != nil {
		return err
	}
	if err := readAll(ctx, conn, `SELECT key_id, service, count(), countIf(event_time_ms >= ?), min(event_time_ms), max(event_time_ms), maxIf(event_time_ms, status_code < 400)
FROM usage_events WHERE key_id IN (?, ?) AND event_time >= toDateTime(?) AND event_time_ms >= ?
GROUP BY key_id, service`, quietFrom, old, newKey, from.Unix(), rotatedMs); err != nil {
		return err
	}
	width := max(now.Sub(from.Truncate(time.Minute))/60, time.Minute).Truncate(time.Minute) + time.Minute
	return readAll(ctx, conn, `SELECT intDiv(toUInt32(event_time) - ?, ?) AS bucket, key_id, count()
FROM usage_events WHERE key_id IN (?, ?) AND event_time >= toDateTime(?)
GROUP BY bucket, key_id ORDER BY bucket, key_id`, from.Truncate(time.Minute).Unix(), int64(width/time.Second), old, newKey, from.Truncate(time.Minute).Unix())
}

// rawBudgets computes the budget list from the raw tables: the budgets, then one spend query
// per period kind in use (day, month), current period and the 3 before it.
func rawBudgets(ctx context.Context, conn driver.Conn, at time.Time) error {
	if err := readAll(ctx, conn, `SELECT project, key_id, argMax(assumeNotNull(budget_amount_micros), (event_time_ms, event_id)), argMax(budget_period, (event_time_ms, event_id))
FROM lifecycle_events WHERE budget_amount_micros IS NOT NULL AND event_time_ms <= ? GROUP BY project, key_id`, at.UnixMilli()); err != nil {
		return err
	}
	dayFrom := at.Truncate(24*time.Hour).AddDate(0, 0, -3)
	monthStart := time.Date(at.Year(), at.Month(), 1, 0, 0, 0, 0, time.UTC)
	for _, p := range []struct {
		period keytrailv1.BudgetPeriod
		bucket string
		from   time.Time
	}{
		{keytrailv1.BudgetPeriod_BUDGET_PERIOD_DAY, "toStartOfDay(event_time)", dayFrom},
		{keytrailv1.BudgetPeriod_BUDGET_PERIOD_MONTH, "toStartOfMonth(event_time)", monthStart.AddDate(0, -3, 0)},
	} {
		if err := readAll(ctx, conn, `SELECT project, key_id, `+p.bucket+` AS period_start, sum(cost_micros)
FROM usage_events
WHERE event_time >= toDateTime(?) AND event_time_ms <= ?
  AND (project, key_id) IN
      (SELECT project, key_id FROM lifecycle_events WHERE budget_amount_micros IS NOT NULL AND event_time_ms <= ?
       GROUP BY project, key_id HAVING argMax(budget_period, (event_time_ms, event_id)) = ?)
GROUP BY project, key_id, period_start`, p.from.Unix(), at.UnixMilli(), at.UnixMilli(), event.BudgetPeriodName(p.period)); err != nil {
			return err
		}
	}
	return nil
}

// rawAnomalySQL scores every key's 5-minute request counts in [from, to) against the median
// and MAD of the 24 hours before, computed from usage_events. It mirrors the API's method for
// the requests metric at key scope; the API also scores error rate and cost and key x
// service series, so this is the cheaper part of the same work.
func rawAnomalySQL(from, to time.Time) string {
	first := from.Truncate(5 * time.Minute)
	baseline := first.Add(-24 * time.Hour)
	r := strings.NewReplacer("@BASE@", fmt.Sprint(baseline.Unix()), "@FIRST@", fmt.Sprint(first.Unix()), "@END@", fmt.Sprint(to.Unix()), "@N@", "288")
	return r.Replace(`SELECT key_id, bucket, requests, med, mad, (requests - med) / greatest(greatest(1.4826 * mad, 1), 0.1 * med) AS score
FROM
(
    SELECT key_id,
        arrayFilter((x, t) -> t < @FIRST@, r, b) AS base_r,
        arrayResize(base_r, @N@, toUInt64(0)) AS filled,
        arrayReduce('quantileExact', filled) AS med,
        arrayReduce('quantileExact', arrayMap(x -> abs(x - med), filled)) AS mad,
        arrayFilter((x, t) -> t >= @FIRST@, b, b) AS obs_b,
        arrayFilter((x, t) -> t >= @FIRST@, r, b) AS obs_r
    FROM
    (
        SELECT key_id, groupArray(bucket) AS b, groupArray(requests) AS r
        FROM
        (
            SELECT key_id, toUInt32(toStartOfFiveMinute(event_time)) AS bucket, count() AS requests
            FROM usage_events
            WHERE event_time >= toDateTime(@BASE@) AND event_time < toDateTime(@END@)
            GROUP BY key_id, bucket
        )
        GROUP BY key_id
    )
)
ARRAY JOIN obs_b AS bucket, obs_r AS requests
WHERE requests >= 50 AND score >= 6
ORDER BY score DESC
LIMIT 1001`)
}
