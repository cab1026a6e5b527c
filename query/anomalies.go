package query

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/keytrail/keytrail/anomaly"
	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
)

// The anomaly scan reads usage_key_hourly to find the keys that can have a flagged bucket and
// usage_5min for their series, and does the statistics in ClickHouse, so what crosses the
// network is the flagged buckets, not 2.9M bucket rows of 10k keys x 24 h.
//
// Shape of the SQL (one statement; 18.16 has no CTEs or window functions), innermost first:
//
//  0. The candidate keys: those with an hour of at least min_requests requests overlapping
//     the examined buckets (anomalyCandidatesSQL; an exact necessary condition).
//  1. One scan of [baseline start, end) of the candidates grouped per series into an array of (bucket,
//     requests, errors, cost) tuples. Grouping per series (10k groups) instead of per
//     series x bucket (2.9M groups) is what makes it fast: 0.2 CPU-s against 0.7-1.1 for
//     the 3M-group GROUP BY (measured on 18.16, 2 cores).
//  2. Per series, in arrays: sort by bucket and sum the rows of each bucket (a
//     SummingMergeTree keeps one row per part until parts merge, and the key scope adds up
//     its services).
//  3. Split baseline and examined buckets (the arrays are sorted: slices), zero-fill the
//     baseline and take the medians (arrayReduce quantileExact is nth_element, O(n)). A
//     series goes on only with enough history, an examined bucket with min_requests, and a
//     best bucket that could reach the sensitivity even with the smallest possible scale
//     (the floor without the MAD and burst terms): an exact necessary condition, so nothing
//     is lost by it, and the MADs are computed for few series.
//  4. For the survivors: MADs, p99 and the scales.
//  5. One row per examined bucket (ARRAY JOIN) with the three scores; only rows where a
//     requested metric reaches the sensitivity come back, highest score first.
//
// Measured (TestAnomaliesScale, KEYTRAIL_ANOMALY_SCALE=1): 10k keys with traffic in every
// bucket for 25 h (3.0M rows, every key past min_requests, so none is dismissed early),
// default request: about 1.0-1.2 CPU-s per scan, 0.8 s wall on 2 shared cores.
//
// Scope: a key used by one service in the whole window has the same series for the key and
// for the key x service; it is computed and reported once, with the service set. Keys with
// several services get their key series (service empty) and one series per service, split
// from one scan by a 64-bit hash of the service name (a collision between two services of
// one key would merge their series; at 2^-64 per pair it is not guarded against).

// AnomalySpec is a validated anomaly question: what Anomalies builds SQL from.
type AnomalySpec struct {
	// FirstBucket is the first examined bucket (5-minute aligned); examined buckets start
	// before End. The baseline is the BaselineBuckets buckets before FirstBucket.
	FirstBucket     time.Time
	End             time.Time
	BaselineBuckets int
	// Metrics is a non-empty set.
	Metrics     []keytrailv1.AnomalyMetric
	Scope       keytrailv1.AnomalyScope // UNSPECIFIED means both
	Sensitivity float64
	MinRequests int64
	Project     string
	// Projects, when not nil, keeps only these projects (a caller limited to several).
	Projects []string
	KeyID    string
	// Limit bounds the rows (each row is one bucket of one series, with up to 3 anomalies).
	Limit int
}

// BaselineStart is where the baseline window starts.
func (s AnomalySpec) BaselineStart() time.Time {
	return s.FirstBucket.Add(-time.Duration(s.BaselineBuckets) * anomaly.BucketWidth)
}

func (s AnomalySpec) has(m keytrailv1.AnomalyMetric) bool { return slices.Contains(s.Metrics, m) }

// num renders a constant of the method (never caller input) as an SQL literal.
func num(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }

// Anomalies builds the scan. Positional arguments follow the text, innermost levels last.
func Anomalies(s AnomalySpec) Query {
	var args []any
	// Level 5 (outermost) and 4 have no arguments before their FROM; level 3's prefilter
	// and level 4's select come first in the text.
	first := s.FirstBucket.Unix()
	args = append(args, first, s.BaselineBuckets, s.BaselineBuckets, s.MinRequests)
	dedup := anomalyDedupSQL(anomalySeriesSQL(s, &args))
	var candidates []string
	if s.has(keytrailv1.AnomalyMetric_ANOMALY_METRIC_REQUESTS) {
		candidates = append(candidates, fmt.Sprintf("(arrayReduce('max', obs_requests) - req_median) / greatest(%s, %s * req_median) >= ?",
			num(anomaly.CountFloor), num(anomaly.RelativeFloor)))
		args = append(args, s.Sensitivity)
	}
	if s.has(keytrailv1.AnomalyMetric_ANOMALY_METRIC_COST) {
		candidates = append(candidates, fmt.Sprintf("(arrayReduce('max', obs_cost) - cost_median) / greatest(unit_cost, %s * cost_median) >= ?",
			num(anomaly.RelativeFloor)))
		args = append(args, s.Sensitivity)
	}
	if s.has(keytrailv1.AnomalyMetric_ANOMALY_METRIC_ERROR_RATE) {
		candidates = append(candidates, fmt.Sprintf("(arrayReduce('max', arrayMap((x, y) -> x / y, obs_errors, obs_requests)) - rate_median) / %s >= ?",
			num(anomaly.RateFloor)))
		args = append(args, s.Sensitivity)
	}
	var flagged, scores []string
	for _, m := range []struct {
		metric keytrailv1.AnomalyMetric
		score  string
	}{
		{keytrailv1.AnomalyMetric_ANOMALY_METRIC_REQUESTS, "req_score"},
		{keytrailv1.AnomalyMetric_ANOMALY_METRIC_ERROR_RATE, "rate_score"},
		{keytrailv1.AnomalyMetric_ANOMALY_METRIC_COST, "cost_score"},
	} {
		if s.has(m.metric) {
			flagged = append(flagged, m.score+" >= ?")
			args = append(args, s.Sensitivity)
			scores = append(scores, m.score)
		}
	}
	order := scores[0]
	for _, sc := range scores[1:] {
		order = "greatest(" + order + ", " + sc + ")"
	}
	args = append(args, s.Limit)

	mad, tail, rel, z := num(anomaly.MADScale), "quantileExact("+num(anomaly.TailLevel)+")", num(anomaly.RelativeFloor), num(anomaly.TailZ)
	sql := fmt.Sprintf(`SELECT project, key_id, series_service, bucket, requests, errors, cost_micros, history,
    toFloat64(req_median) AS req_expected, toFloat64(req_mad) AS req_deviation, req_scale, (requests - req_median) / req_scale AS req_score,
    toFloat64(cost_median) AS cost_expected, toFloat64(cost_mad) AS cost_deviation, cost_scale, (cost_micros - cost_median) / cost_scale AS cost_score,
    errors / requests AS error_rate, rate_median, rate_mad, greatest(greatest(%[1]s * rate_mad, %[2]s), sqrt(rate_median * (1 - rate_median) / requests)) AS rate_scale, (error_rate - rate_median) / rate_scale AS rate_score
FROM
(
    SELECT project, key_id, series_service, history, req_median, cost_median, rate_median, obs_bucket, obs_requests, obs_errors, obs_cost,
        arrayReduce('quantileExact', arrayMap(x -> abs(x - req_median), req_filled)) AS req_mad,
        greatest(greatest(%[1]s * req_mad, %[3]s), greatest(%[4]s * req_median, (arrayReduce('%[5]s', req_filled) - req_median) / %[6]s)) AS req_scale,
        arrayReduce('quantileExact', arrayMap(x -> abs(x - cost_median), cost_filled)) AS cost_mad,
        greatest(greatest(%[1]s * cost_mad, unit_cost), greatest(%[4]s * cost_median, (arrayReduce('%[5]s', cost_filled) - cost_median) / %[6]s)) AS cost_scale,
        arrayReduce('quantileExact', arrayMap(x -> abs(x - rate_median), base_rate)) AS rate_mad
    FROM
    (
        SELECT project, key_id, series_service,
            arrayCount(k -> k < ?, b) AS history,
            arraySlice(r, 1, history) AS base_r,
            arrayResize(base_r, ?, toInt64(0)) AS req_filled,
            arrayReduce('quantileExact', req_filled) AS req_median,
            arrayResize(arraySlice(c, 1, history), ?, toInt64(0)) AS cost_filled,
            arrayReduce('quantileExact', cost_filled) AS cost_median,
            greatest(arraySum(cost_filled) / arraySum(base_r), 1) AS unit_cost,
            arrayMap((x, y) -> x / y, arraySlice(e, 1, history), base_r) AS base_rate,
            arrayReduce('quantileExact', base_rate) AS rate_median,
            arrayMap(v -> v >= ?, arraySlice(r, history + 1)) AS examined,
            arrayFilter((x, o) -> o, arraySlice(b, history + 1), examined) AS obs_bucket,
            arrayFilter((x, o) -> o, arraySlice(r, history + 1), examined) AS obs_requests,
            arrayFilter((x, o) -> o, arraySlice(e, history + 1), examined) AS obs_errors,
            arrayFilter((x, o) -> o, arraySlice(c, history + 1), examined) AS obs_cost
        FROM
        (
%[7]s
        )
        WHERE history >= %[8]d AND notEmpty(obs_bucket)
          AND (%[9]s)
    )
)
ARRAY JOIN obs_bucket AS bucket, obs_requests AS requests, obs_errors AS errors, obs_cost AS cost_micros
WHERE %[10]s
ORDER BY %[11]s DESC, project, key_id, series_service, bucket
LIMIT ?`, mad, num(anomaly.RateFloor), num(anomaly.CountFloor), rel, tail, z, dedup, anomaly.MinHistoryBuckets,
		strings.Join(candidates, "\n            OR "), strings.Join(flagged, " OR "), order)
	return Query{SQL: sql, Args: args}
}

// anomalyDedupSQL sorts a series' rows (bucket, requests, errors, cost) by bucket and adds
// up the rows of each bucket: b is the distinct buckets ascending, r, e and c the bucket
// totals. Rows of one bucket are adjacent after the sort; a bucket's total is the running sum
// at its last row minus the running sum at the previous bucket's last row. Rows travel as
// one array of tuples: one sort and one filter instead of four (measured 25% less CPU).
func anomalyDedupSQL(series string) string {
	return fmt.Sprintf(`            SELECT project, key_id, series_service,
                arraySort(t -> t.1, series_rows) AS sorted_rows,
                arrayMap(t -> t.1, sorted_rows) AS sorted_buckets,
                arrayMap((x, y) -> x != y, sorted_buckets, arrayPushBack(arrayPopFront(sorted_buckets), toUInt32(0))) AS run_ends,
                arrayFilter((x, last) -> last, sorted_buckets, run_ends) AS b,
                arrayPopFront(arrayDifference(arrayPushFront(arrayFilter((x, last) -> last, arrayCumSum(arrayMap(t -> t.2, sorted_rows)), run_ends), toUInt64(0)))) AS r,
                arrayPopFront(arrayDifference(arrayPushFront(arrayFilter((x, last) -> last, arrayCumSum(arrayMap(t -> t.3, sorted_rows)), run_ends), toUInt64(0)))) AS e,
                arrayPopFront(arrayDifference(arrayPushFront(arrayFilter((x, last) -> last, arrayCumSum(arrayMap(t -> t.4, sorted_rows)), run_ends), toInt64(0)))) AS c
            FROM
            (
%s
            )`, series)
}

// anomalySeriesSQL is the scan: one row per series with its rows as arrays, for the keys
// anomalyCandidatesSQL finds.
func anomalySeriesSQL(s AnomalySpec, args *[]any) string {
	w := []string{"bucket >= toDateTime(?)", "bucket < toDateTime(?)"}
	*args = append(*args, s.BaselineStart().Unix(), s.End.Unix())
	filters, filterArgs := projectKeyFilters(s.Project, s.Projects, s.KeyID)
	w = append(w, filters...)
	*args = append(*args, filterArgs...)
	w = append(w, anomalyCandidatesSQL(s, args))
	where := strings.Join(w, " AND ")
	const rows = "groupArray((toUInt32(bucket), requests, errors, total_cost_micros)) AS series_rows"
	switch s.Scope {
	case keytrailv1.AnomalyScope_ANOMALY_SCOPE_KEY:
		return fmt.Sprintf(`                SELECT project, key_id, '' AS series_service, %s
                FROM usage_5min
                WHERE %s
                GROUP BY project, key_id`, rows, where)
	case keytrailv1.AnomalyScope_ANOMALY_SCOPE_KEY_SERVICE:
		return fmt.Sprintf(`                SELECT project, key_id, service AS series_service, %s
                FROM usage_5min
                WHERE %s
                GROUP BY project, key_id, service`, rows, where)
	}
	// Both scopes from one scan per key: a key with one service is one series (labelled
	// with the service); a key with several is its key series plus one series per service
	// (ARRAY JOIN), each keeping its service's rows.
	return fmt.Sprintf(`                SELECT project, key_id, series_service,
                    length(services) = 1 OR series_service = '' AS whole_key,
                    cityHash64(series_service) AS series_hash,
                    arrayMap(h -> whole_key OR h = series_hash, service_rows) AS keep,
                    arrayFilter((x, k) -> k, key_rows, keep) AS series_rows
                FROM
                (
                    SELECT project, key_id, groupUniqArray(service) AS services, groupArray(cityHash64(service)) AS service_rows,
                        groupArray((toUInt32(bucket), requests, errors, total_cost_micros)) AS key_rows
                    FROM usage_5min
                    WHERE %s
                    GROUP BY project, key_id
                )
                ARRAY JOIN if(length(services) = 1, services, arrayPushFront(services, '')) AS series_service`, where)
}

// projectKeyFilters are equality filters on a project, a set of projects (nil: any) and a
// key, as conditions with their arguments.
func projectKeyFilters(project string, projects []string, keyID string) ([]string, []any) {
	var w []string
	var args []any
	if project != "" {
		w = append(w, "project = ?")
		args = append(args, project)
	}
	if projects != nil {
		w = append(w, "has(?, project)")
		args = append(args, projects)
	}
	if keyID != "" {
		w = append(w, "key_id = ?")
		args = append(args, keyID)
	}
	return w, args
}

// anomalyCandidatesSQL is the set of keys that can have a flagged bucket: only an examined
// bucket with at least min_requests requests is scored, and such a bucket lies in an hour
// with at least as many, so keys without such an hour overlapping the examined buckets are
// left out before any 5-minute row is read: an exact necessary condition, nothing flagged is
// lost. It reads usage_key_hourly (24 x 10k cells for a day of 10k keys) where the series
// scan reads usage_5min (about 5M rows for 48 h of 10k keys at 100M events a month); at the
// default min_requests only the few hundred busiest keys pass (docs/benchmarks.md).
func anomalyCandidatesSQL(s AnomalySpec, args *[]any) string {
	w := []string{"hour >= toDateTime(?)", "hour < toDateTime(?)"}
	*args = append(*args, s.FirstBucket.Truncate(time.Hour).Unix(), s.End.Unix())
	filters, filterArgs := projectKeyFilters(s.Project, s.Projects, s.KeyID)
	w = append(w, filters...)
	*args = append(*args, filterArgs...)
	*args = append(*args, s.MinRequests)
	return "(project, key_id) IN (SELECT project, key_id FROM usage_key_hourly WHERE " + strings.Join(w, " AND ") +
		" GROUP BY project, key_id, hour HAVING sum(requests) >= ?)"
}

// AnomalyRequest is the input of the anomaly scan; zero values take the defaults.
type AnomalyRequest struct {
	Start, End  time.Time
	Metrics     []keytrailv1.AnomalyMetric
	Scope       keytrailv1.AnomalyScope
	Sensitivity float64
	Baseline    time.Duration
	MinRequests int64
	Project     string
	// Projects, when not nil, keeps only these projects.
	Projects []string
	KeyID    string
}

// AnomalyResult is the flagged buckets, highest score first, and the window they are from.
type AnomalyResult struct {
	Anomalies []anomaly.Anomaly
	// FirstBucket and End are the examined buckets; BaselineStart where history begins.
	FirstBucket, End, BaselineStart time.Time
	// Truncated is set when more than anomaly.MaxAnomalies buckets were flagged.
	Truncated bool
}

var allMetrics = []keytrailv1.AnomalyMetric{
	keytrailv1.AnomalyMetric_ANOMALY_METRIC_REQUESTS,
	keytrailv1.AnomalyMetric_ANOMALY_METRIC_ERROR_RATE,
	keytrailv1.AnomalyMetric_ANOMALY_METRIC_COST,
}

// AnomalySpecFor validates a request and applies the defaults.
func AnomalySpecFor(req AnomalyRequest, now time.Time) (AnomalySpec, error) {
	end := req.End
	if end.IsZero() {
		end = now
	}
	start := req.Start
	if start.IsZero() {
		start = end.Add(-anomaly.DefaultWindow)
	}
	if !end.After(start) {
		return AnomalySpec{}, &InvalidError{Field: "end_time", Reason: "must be after start_time"}
	}
	baseline := req.Baseline
	switch {
	case baseline == 0:
		baseline = anomaly.DefaultBaseline
	case baseline < anomaly.MinBaseline || baseline > anomaly.MaxBaseline:
		return AnomalySpec{}, &InvalidError{Field: "baseline", Reason: fmt.Sprintf("must be between %s and %s", anomaly.MinBaseline, anomaly.MaxBaseline)}
	case baseline%anomaly.BucketWidth != 0:
		return AnomalySpec{}, &InvalidError{Field: "baseline", Reason: "must be a whole number of 5-minute buckets"}
	}
	first := anomaly.BucketStart(start)
	// The examined range is bounded too: a week of buckets per series is already an
	// exhaustive scan; longer belongs to a report, not an anomaly query.
	if end.Sub(first) > anomaly.MaxBaseline {
		return AnomalySpec{}, &InvalidError{Field: "start_time", Reason: fmt.Sprintf("the examined range must not exceed %s", anomaly.MaxBaseline)}
	}
	metrics := slices.Clone(allMetrics)
	if len(req.Metrics) > 0 {
		metrics = nil
		for _, m := range req.Metrics {
			if !slices.Contains(allMetrics, m) {
				return AnomalySpec{}, &InvalidError{Field: "metrics", Reason: fmt.Sprintf("unknown metric %s", m)}
			}
			if !slices.Contains(metrics, m) {
				metrics = append(metrics, m)
			}
		}
	}
	switch req.Scope {
	case keytrailv1.AnomalyScope_ANOMALY_SCOPE_UNSPECIFIED, keytrailv1.AnomalyScope_ANOMALY_SCOPE_KEY, keytrailv1.AnomalyScope_ANOMALY_SCOPE_KEY_SERVICE:
	default:
		return AnomalySpec{}, &InvalidError{Field: "scope", Reason: fmt.Sprintf("unknown scope %s", req.Scope)}
	}
	sensitivity := req.Sensitivity
	switch {
	case sensitivity == 0:
		sensitivity = anomaly.DefaultSensitivity
	case sensitivity < 0 || sensitivity > 100 || sensitivity != sensitivity:
		return AnomalySpec{}, &InvalidError{Field: "sensitivity", Reason: "must be between 0 and 100"}
	}
	minRequests := req.MinRequests
	switch {
	case minRequests == 0:
		minRequests = anomaly.DefaultMinRequests
	case minRequests < 0:
		return AnomalySpec{}, &InvalidError{Field: "min_requests", Reason: "must not be negative"}
	}
	return AnomalySpec{
		FirstBucket:     first,
		End:             end.UTC(),
		BaselineBuckets: int(baseline / anomaly.BucketWidth),
		Metrics:         metrics,
		Scope:           req.Scope,
		Sensitivity:     sensitivity,
		MinRequests:     minRequests,
		Project:         req.Project,
		Projects:        req.Projects,
		KeyID:           req.KeyID,
		Limit:           anomaly.MaxAnomalies + 1,
	}, nil
}

// Anomalies runs the scan.
func (rd *Reader) Anomalies(ctx context.Context, req AnomalyRequest) (AnomalyResult, error) {
	spec, err := AnomalySpecFor(req, rd.now())
	if err != nil {
		return AnomalyResult{}, err
	}
	res := AnomalyResult{FirstBucket: spec.FirstBucket, End: spec.End, BaselineStart: spec.BaselineStart()}
	if spec.Projects != nil && len(spec.Projects) == 0 {
		return res, nil
	}
	q := Anomalies(spec)
	rows, err := rd.conn.Query(ctx, q.SQL, q.Args...)
	if err != nil {
		return AnomalyResult{}, fmt.Errorf("query anomalies: %w", err)
	}
	defer rows.Close()
	nrows := 0
	for rows.Next() {
		var (
			project, key, service                           string
			bucket                                          uint32
			requests, errs, cost                            int64
			history                                         uint32
			reqExpected, reqMAD, reqScale, reqScore         float64
			costExpected, costMAD, costScale, costScore     float64
			rate, rateExpected, rateMAD, rateScale, rateScr float64
		)
		if err := rows.Scan(&project, &key, &service, &bucket, &requests, &errs, &cost, &history,
			&reqExpected, &reqMAD, &reqScale, &reqScore,
			&costExpected, &costMAD, &costScale, &costScore,
			&rate, &rateExpected, &rateMAD, &rateScale, &rateScr); err != nil {
			return AnomalyResult{}, fmt.Errorf("scan anomaly: %w", err)
		}
		nrows++
		if nrows > spec.Limit-1 {
			res.Truncated = true
			continue
		}
		base := anomaly.Anomaly{
			Project: project, KeyID: key, Service: service, Bucket: time.Unix(int64(bucket), 0).UTC(),
			Requests: requests, BaselineEnd: spec.FirstBucket,
		}
		add := func(m keytrailv1.AnomalyMetric, observed, expected, mad, scale, score float64, buckets int) {
			if !spec.has(m) || score < spec.Sensitivity {
				return
			}
			a := base
			a.Metric, a.Observed, a.Expected, a.MAD, a.Scale, a.Score, a.BaselineBuckets = m, observed, expected, mad, scale, anomaly.RoundScore(score), buckets
			res.Anomalies = append(res.Anomalies, a)
		}
		add(keytrailv1.AnomalyMetric_ANOMALY_METRIC_REQUESTS, float64(requests), reqExpected, reqMAD, reqScale, reqScore, spec.BaselineBuckets)
		add(keytrailv1.AnomalyMetric_ANOMALY_METRIC_ERROR_RATE, rate, rateExpected, rateMAD, rateScale, rateScr, int(history))
		add(keytrailv1.AnomalyMetric_ANOMALY_METRIC_COST, float64(cost), costExpected, costMAD, costScale, costScore, spec.BaselineBuckets)
	}
	if err := rows.Err(); err != nil {
		return AnomalyResult{}, fmt.Errorf("read anomalies: %w", err)
	}
	anomaly.SortAnomalies(res.Anomalies)
	if len(res.Anomalies) > anomaly.MaxAnomalies {
		res.Anomalies, res.Truncated = res.Anomalies[:anomaly.MaxAnomalies], true
	}
	return res, nil
}
