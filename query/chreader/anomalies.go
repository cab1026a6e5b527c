package chreader

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/query/anomaly"
)

// The anomaly scan reads usage_key_hourly to find the keys that can have a flagged bucket and
// usage_key_5min for their rows; the statistics are computed here, in Go, with package
// anomaly (the same functions the tests' reference implementation uses). Three queries:
//
//  1. AnomalyCandidates: the keys with an hour of at least min_requests requests overlapping
//     the examined buckets (an exact necessary condition for a flagged bucket), with the
//     hash the scan identifies them by.
//  2. AnomalyScan: the candidates' rows of [baseline start, end) from usage_key_5min, sorted
//     by key so only their ranges are read, keys and services as 64-bit hashes so no string
//     crosses the network per row.
//  3. AnomalyServiceNames: names for the services of the flagged series.
//
// Between 2 and 3 package anomaly's Scorer adds up the rows of each series per bucket (a
// bucket can be in several rows while SummingMergeTree parts are unmerged), forms the series
// of the requested scope and scores each.
//
// Why not in ClickHouse: 18.16 has no window functions, so medians, MADs and tail quantiles
// were array expressions over series grouped with groupArray; at 100M events a month (428
// candidate keys, 1.2M rows in 48 h) the arrays took 4 of the scan's 6-7 s and grouping the
// rows 1.3-2.1 s, where streaming them here costs no more than ClickHouse reading them, and
// scoring takes tens of milliseconds (docs/benchmarks.md). The price is memory in this
// process: about 40 bytes per scanned row while the answer is computed (50 MB for the 1.2M
// rows above), the same order ClickHouse spent on the grouped arrays.
//
// Scope: see anomaly.Scope. Keys and services are told apart by 64-bit hashes (see
// anomaly.Scorer).

// AnomalySpec is a validated anomaly question: what Anomalies builds SQL from.
type AnomalySpec struct {
	// FirstBucket is the first examined bucket (5-minute aligned); examined buckets start
	// before End. The baseline is the BaselineBuckets buckets before FirstBucket.
	FirstBucket     time.Time
	End             time.Time
	BaselineBuckets int
	// Metrics is a non-empty set.
	Metrics     []keytrailv1.AnomalyMetric
	Scope       anomaly.Scope
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
func (s AnomalySpec) BaselineStart() time.Time { return s.scan().BaselineStart() }

// scan is what package anomaly's Scorer needs of the spec.
func (s AnomalySpec) scan() anomaly.ScanSpec {
	return anomaly.ScanSpec{
		FirstBucket: s.FirstBucket, End: s.End, BaselineBuckets: s.BaselineBuckets,
		Metrics: s.Metrics, Scope: s.Scope, Sensitivity: s.Sensitivity, MinRequests: s.MinRequests, Limit: s.Limit,
	}
}

// AnomalyScan builds the scan: the candidates' rows of [baseline start, end). The candidates
// are selected by key id alone so that the primary key (key_id, bucket, ...) narrows the read;
// a row of the same key id in a project that is not a candidate is dropped by its hash.
// Positional arguments follow the text.
func AnomalyScan(s AnomalySpec) Query {
	var args []any
	w := []string{"key_id IN (" + anomalyCandidatesSQL(s, &args, "key_id") + ")", "bucket >= toDateTime(?)", "bucket < toDateTime(?)"}
	args = append(args, s.BaselineStart().Unix(), s.End.Unix())
	filters, filterArgs := projectKeyFilters(s.Project, s.Projects, s.KeyID)
	w = append(w, filters...)
	args = append(args, filterArgs...)
	return Query{SQL: `SELECT cityHash64(project, key_id), cityHash64(service), toUInt32(bucket), requests, errors, total_cost_micros
FROM usage_key_5min
WHERE ` + strings.Join(w, "\n  AND "), Args: args}
}

// AnomalyCandidates lists the candidate keys with the hash AnomalyScan identifies them by.
func AnomalyCandidates(s AnomalySpec) Query {
	var args []any
	return Query{SQL: anomalyCandidatesSQL(s, &args, "project, key_id, cityHash64(project, key_id)"), Args: args}
}

// AnomalyServiceNames maps service hashes back to names for the given keys (the keys with a
// flagged series): key_service_totals holds every key x service ever seen, sorted by key.
func AnomalyServiceNames(keyIDs []string) Query {
	return Query{SQL: `SELECT DISTINCT key_id, service, cityHash64(service)
FROM key_service_totals
WHERE key_id IN (SELECT arrayJoin(?))`, Args: []any{keyIDs}}
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
// lost. It reads usage_key_hourly (24 x 10k cells for a day of 10k keys); at 100M events a
// month only the few hundred busiest keys pass the default min_requests, and the scan reads
// 1.2M of the 5.2M rows of 48 h (docs/benchmarks.md).
//
// The hourly totals are summed per key in arrays (hours sorted, the rows of one hour added
// up: parts may be unmerged) rather than by GROUP BY key, hour: 18.16 groups 250k
// (key, hour) pairs in 0.3 s, 10k keys with arrays in 0.05 s.
func anomalyCandidatesSQL(s AnomalySpec, args *[]any, columns string) string {
	w := []string{"hour >= toDateTime(?)", "hour < toDateTime(?)"}
	*args = append(*args, s.FirstBucket.Truncate(time.Hour).Unix(), s.End.Unix())
	filters, filterArgs := projectKeyFilters(s.Project, s.Projects, s.KeyID)
	w = append(w, filters...)
	*args = append(*args, filterArgs...)
	*args = append(*args, s.MinRequests)
	return "SELECT " + columns + " FROM usage_key_hourly WHERE " + strings.Join(w, " AND ") +
		" GROUP BY project, key_id HAVING arrayExists(total -> total >= ?, " +
		perBucketTotalsSQL("groupArray(toUInt32(hour))", "groupArray(requests)") + ")"
}

// perBucketTotalsSQL is the array of per-bucket totals of two parallel arrays, buckets and
// values, in bucket order: sort by bucket, then a bucket's total is the running sum at its
// last row minus the running sum at the previous bucket's last row.
func perBucketTotalsSQL(buckets, values string) string {
	sorted := "arraySort(" + buckets + ")"
	lastOfBucket := "arrayMap((x, y) -> x != y, " + sorted + ", arrayPushBack(arrayPopFront(" + sorted + "), toUInt32(0)))"
	running := "arrayCumSum(arraySort((v, b) -> b, " + values + ", " + buckets + "))"
	return "arrayPopFront(arrayDifference(arrayPushFront(arrayFilter((x, last) -> last, " + running + ", " + lastOfBucket + "), toUInt64(0))))"
}

// MaxAnomalyScanRows bounds the usage_key_5min rows one scan holds in memory (about 40 bytes
// each): the default scan at 100M events a month reads 1.2M; every key with traffic over a
// week's baseline at that volume would be 20M.
const MaxAnomalyScanRows = 10_000_000

// AnomalyRequest is the input of the anomaly scan; zero values take the defaults.
type AnomalyRequest struct {
	Start, End  time.Time
	Metrics     []keytrailv1.AnomalyMetric
	Scope       anomaly.Scope
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

var allMetrics = anomaly.Metrics

// AnomalySpecFor validates a request and applies the defaults.
func AnomalySpecFor(req AnomalyRequest, now time.Time) (AnomalySpec, error) {
	r, err := rangeBefore(req.Start, req.End, now, anomaly.DefaultWindow)
	if err != nil {
		return AnomalySpec{}, err
	}
	start, end := r.Start, r.End
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
	if !req.Scope.Valid() {
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

// Anomalies finds the candidate keys, reads their rows, scores their series and names the
// flagged ones: three queries, the scan being the one that costs.
func (rd *Reader) Anomalies(ctx context.Context, req AnomalyRequest) (AnomalyResult, error) {
	spec, err := AnomalySpecFor(req, rd.now())
	if err != nil {
		return AnomalyResult{}, err
	}
	res := AnomalyResult{FirstBucket: spec.FirstBucket, End: spec.End, BaselineStart: spec.BaselineStart()}
	if spec.Projects != nil && len(spec.Projects) == 0 {
		return res, nil
	}
	sc := anomaly.NewScorer(spec.scan())
	if err := rd.readAnomalyCandidates(ctx, spec, sc); err != nil {
		return AnomalyResult{}, err
	}
	if sc.Keys() == 0 {
		return res, nil
	}
	q := AnomalyScan(spec)
	rows, err := rd.conn.Query(ctx, q.SQL, q.Args...)
	if err != nil {
		return AnomalyResult{}, fmt.Errorf("query anomaly series: %w", err)
	}
	defer rows.Close()
	scanned := 0
	for rows.Next() {
		if scanned++; scanned > rd.maxAnomalyScanRows {
			return AnomalyResult{}, &InvalidError{Field: "start_time", Reason: fmt.Sprintf(
				"the scan would read more than %d rows of 5-minute usage; narrow it with project or key_id, a shorter range or baseline, or a higher min_requests", rd.maxAnomalyScanRows)}
		}
		var keyHash, serviceHash, requests, errs uint64
		var bucket uint32
		var cost int64
		if err := rows.Scan(&keyHash, &serviceHash, &bucket, &requests, &errs, &cost); err != nil {
			return AnomalyResult{}, fmt.Errorf("scan anomaly series: %w", err)
		}
		sc.Add(keyHash, serviceHash, bucket, requests, errs, cost)
	}
	if err := rows.Err(); err != nil {
		return AnomalyResult{}, fmt.Errorf("read anomaly series: %w", err)
	}
	flagged := sc.Score()
	if err := rd.nameServices(ctx, flagged); err != nil {
		return AnomalyResult{}, err
	}
	res.Anomalies, res.Truncated = sc.Result(flagged)
	return res, nil
}

func (rd *Reader) readAnomalyCandidates(ctx context.Context, spec AnomalySpec, sc *anomaly.Scorer) error {
	q := AnomalyCandidates(spec)
	rows, err := rd.conn.Query(ctx, q.SQL, q.Args...)
	if err != nil {
		return fmt.Errorf("query anomaly candidates: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var project, key string
		var hash uint64
		if err := rows.Scan(&project, &key, &hash); err != nil {
			return fmt.Errorf("scan anomaly candidate: %w", err)
		}
		sc.AddKey(hash, project, key)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read anomaly candidates: %w", err)
	}
	return nil
}

// nameServices fills in the service names of the flagged buckets' series.
func (rd *Reader) nameServices(ctx context.Context, flagged []anomaly.Flagged) error {
	var keyIDs []string
	for i := range flagged {
		if flagged[i].PerService() {
			keyIDs = append(keyIDs, flagged[i].KeyID())
		}
	}
	if len(keyIDs) == 0 {
		return nil
	}
	slices.Sort(keyIDs)
	keyIDs = slices.Compact(keyIDs)
	names := map[keyService]string{}
	// The ids are bound into the query text, which ClickHouse bounds (max_query_size).
	for chunk := range slices.Chunk(keyIDs, 1000) {
		if err := rd.readServiceNames(ctx, chunk, names); err != nil {
			return err
		}
	}
	for i := range flagged {
		fb := &flagged[i]
		if !fb.PerService() {
			continue
		}
		name, ok := names[keyService{fb.KeyID(), fb.ServiceHash()}]
		if !ok {
			// Both tables are written by the same insert; a miss means a rollup lost rows.
			return fmt.Errorf("service of a flagged series of key %s is missing from key_service_totals (hash %d)", fb.KeyID(), fb.ServiceHash())
		}
		fb.SetService(name)
	}
	return nil
}

type keyService struct {
	key  string
	hash uint64
}

func (rd *Reader) readServiceNames(ctx context.Context, keyIDs []string, names map[keyService]string) error {
	q := AnomalyServiceNames(keyIDs)
	rows, err := rd.conn.Query(ctx, q.SQL, q.Args...)
	if err != nil {
		return fmt.Errorf("query service names: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var key, service string
		var hash uint64
		if err := rows.Scan(&key, &service, &hash); err != nil {
			return fmt.Errorf("scan service name: %w", err)
		}
		names[keyService{key, hash}] = service
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read service names: %w", err)
	}
	return nil
}
