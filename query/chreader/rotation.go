package chreader

import (
	"cmp"
	"context"
	"fmt"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/query/keystate"
	"github.com/keytrail/keytrail/query/rotation"
)

// RotationRequest asks how far a double-key roll has come.
type RotationRequest struct {
	OldKey string
	// Project is the old key's project. Empty: the one project (among Projects) where the
	// old key is known; several are an InvalidError naming them.
	Project string
	// Projects, when not nil, are the only projects the key is looked for in (the caller's
	// readable ones): a key known only elsewhere is not found.
	Projects []string
	// NewKey defaults to the new_key_id of the old key's latest rotation event.
	NewKey string
	// Quiet defaults to DefaultQuietPeriod.
	Quiet time.Duration
	// Lookback defaults to DefaultLookback.
	Lookback time.Duration
	// Accepted are services the caller accepts losing the old key (accept_pending).
	Accepted []string
	// Start defaults to the rotation (or End-24h without one), End to now.
	Start, End time.Time
	// Bucket is the series width; default: the window in at most 60 whole minutes.
	Bucket time.Duration
}

// DefaultQuietPeriod is how long the old key must have served no successful request.
const DefaultQuietPeriod = 15 * time.Minute

// DefaultLookback is how far before the window the old key's callers are looked for.
const DefaultLookback = 7 * 24 * time.Hour

// ShareBucket is one point of the traffic-shift series.
type ShareBucket struct {
	Start       time.Time
	OldRequests uint64
	NewRequests uint64
}

// AfterRevocation counts requests made with the old key once it had stopped being valid.
type AfterRevocation struct {
	Service             string
	StatusCode          uint16
	Requests            uint64
	FirstSeen, LastSeen time.Time
}

// RotationReport is everything GetRotation answers. Both keys are read within Project.
type RotationReport struct {
	Project         string
	OldKey, NewKey  string
	RotatedAt       time.Time
	RotatedBy       string
	OldKeyStatus    string
	OldKeyRevokedAt time.Time
	Window          Range
	Quiet           time.Duration
	Lookback        time.Duration
	Bucket          time.Duration
	Series          []ShareBucket
	// AfterRevocation covers the window from the later of the revocation and its start.
	AfterRevocation []AfterRevocation
	rotation.Result
}

// keyLifecycle is the part of a key's lifecycle a rotation report needs.
type keyLifecycle struct {
	RotatedAt time.Time
	RotatedBy string
	NewKey    string
	Status    string
	// RevokedAt is when the key stopped being valid as of the window end (zero if it is).
	RevokedAt time.Time
}

// RotationLifecycle is KeyLifecycle within one project.
func RotationLifecycle(project, keyID string, at time.Time) Query {
	return Query{
		SQL: "SELECT " + lifecycleStateColumns + "\nFROM lifecycle_events\nWHERE project = ? AND (key_id = ? OR new_key_id = ?) AND event_time_ms <= ?" +
			"\nORDER BY event_time_ms, event_id",
		Args: []any{project, keyID, keyID, at.UnixMilli()},
	}
}

// RotationUse is each service's use of the given keys in one project over r: requests,
// first and last seen, last success, exact to the millisecond (whole minutes from
// usage_key_minute, the partial minutes at the edges from usage_events).
func RotationUse(project string, keys []string, r Range, limit int) Query {
	in := "key_id IN (?" + strings.Repeat(", ?", len(keys)-1) + ") AND project = ?"
	keyArgs := append(anySlice(keys), project)
	s := splitRange(r)
	var parts []string
	var args []any
	if s.hasRollup() {
		parts = append(parts, `    SELECT key_id, service, countMerge(requests) AS request_count, minMerge(first_seen_ms) AS first_ms, maxMerge(last_seen_ms) AS last_ms, maxIfMerge(last_success_ms) AS success_ms
    FROM usage_key_minute
    WHERE `+in+` AND minute >= toDateTime(?) AND minute < toDateTime(?)
    GROUP BY key_id, service`)
		args = append(append(args, keyArgs...), s.RollupFrom.Unix(), s.RollupTo.Unix())
	}
	if len(s.Edges) > 0 {
		cond, condArgs := s.edgeCondition()
		parts = append(parts, `    SELECT key_id, service, count() AS request_count, min(event_time_ms) AS first_ms, max(event_time_ms) AS last_ms, maxIf(event_time_ms, status_code < 400) AS success_ms
    FROM usage_events
    WHERE `+in+` AND `+cond+`
    GROUP BY key_id, service`)
		args = append(append(args, keyArgs...), condArgs...)
	}
	return Query{
		SQL: `SELECT key_id, service, sum(request_count) AS requests, min(first_ms) AS first_seen_ms, max(last_ms) AS last_seen_ms, max(success_ms) AS last_success_ms
FROM
(
` + strings.Join(parts, "\n    UNION ALL\n") + `
)
GROUP BY key_id, service
ORDER BY key_id, service
LIMIT ?`,
		Args: append(args, limit),
	}
}

// CallerHistory is, per service, the old key's use in one project over r and the shape of
// its successful calls: the largest gap between them and the number of gaps longer than
// quiet (a new run starts after each). The rollup gives the last success of each minute, so
// the gaps are exact to about a minute; the partial minutes at the range's edges come from
// usage_events, every success of them. The gaps are computed in ClickHouse, so a busy service
// sends one row, not its minutes. Each rollup row's states are finalized where they lie
// rather than merged per minute first: a cell split over unmerged parts only adds an entry
// within its minute, which changes neither the largest gap nor the long ones, and skipping
// the per-minute GROUP BY made the read of one key's 30 days (36k cells) about 3x faster.
// The cost is bounded by minutes x services of the key, not by its events.
func CallerHistory(project, keyID string, r Range, quiet time.Duration, limit int) Query {
	s := splitRange(r)
	var parts []string
	args := []any{quiet.Milliseconds()}
	if s.hasRollup() {
		parts = append(parts, `        SELECT service, finalizeAggregation(requests) AS request_count, finalizeAggregation(last_seen_ms) AS seen_ms, finalizeAggregation(last_success_ms) AS success_ms
        FROM usage_key_minute
        WHERE key_id = ? AND project = ? AND minute >= toDateTime(?) AND minute < toDateTime(?)`)
		args = append(args, keyID, project, s.RollupFrom.Unix(), s.RollupTo.Unix())
	}
	if len(s.Edges) > 0 {
		cond, condArgs := s.edgeCondition()
		parts = append(parts, `        SELECT service, toUInt64(1) AS request_count, event_time_ms AS seen_ms, if(status_code < 400, event_time_ms, toInt64(0)) AS success_ms
        FROM usage_events
        WHERE key_id = ? AND project = ? AND `+cond)
		args = append(append(args, keyID, project), condArgs...)
	}
	return Query{
		SQL: `SELECT service, requests, last_seen_ms, last_success_ms, arrayReduce('max', gaps) AS largest_gap_ms, toUInt64(arrayCount(gap -> gap > ?, gaps)) AS long_gaps
FROM
(
    SELECT service, sum(request_count) AS requests, max(seen_ms) AS last_seen_ms, max(success_ms) AS last_success_ms,
        arrayDifference(arraySort(groupArrayIf(success_ms, success_ms > 0))) AS gaps
    FROM
    (
` + strings.Join(parts, "\n        UNION ALL\n") + `
    )
    GROUP BY service
)
ORDER BY service
LIMIT ?`,
		Args: append(args, limit),
	}
}

// RotationSeries counts requests on both keys of one project per bucket of width seconds,
// buckets numbered from the window's first minute. Read from the per-minute rollup, so
// buckets are whole minutes (the totals in the report are exact; the series is for
// plotting).
func RotationSeries(project, oldKey, newKey string, from, to time.Time, width time.Duration) Query {
	return Query{
		SQL: `SELECT intDiv(toUInt32(minute) - ?, ?) AS bucket, key_id, countMerge(requests) AS requests
FROM usage_key_minute
WHERE key_id IN (?, ?) AND project = ? AND minute >= toDateTime(?) AND minute < toDateTime(?)
GROUP BY bucket, key_id
ORDER BY bucket, key_id`,
		Args: []any{from.Unix(), int64(width / time.Second), oldKey, newKey, project, from.Unix(), to.Unix()},
	}
}

// RequestsAfter groups a key's requests in one project in [from, to) by service and status
// code.
func RequestsAfter(project, keyID string, from, to time.Time) Query {
	return Query{
		SQL: `SELECT service, status_code, count() AS request_count, min(event_time_ms) AS first_ms, max(event_time_ms) AS last_ms
FROM usage_events
WHERE key_id = ? AND project = ? AND event_time >= toDateTime(?) AND event_time <= toDateTime(?) AND event_time_ms >= ? AND event_time_ms < ?
GROUP BY service, status_code
ORDER BY service, status_code`,
		Args: []any{keyID, project, floorSec(from.UnixMilli()), floorSec(to.UnixMilli()), from.UnixMilli(), to.UnixMilli()},
	}
}

// Rotation gathers the facts of a double-key roll within the old key's project and judges it.
func (rd *Reader) Rotation(ctx context.Context, req RotationRequest) (RotationReport, error) {
	end := req.End
	if end.IsZero() {
		end = rd.now()
	}
	end = end.UTC()
	quiet := cmp.Or(req.Quiet, DefaultQuietPeriod)
	lookback := cmp.Or(req.Lookback, DefaultLookback)
	project, err := rd.rotationProject(ctx, req, end)
	if err != nil {
		return RotationReport{}, err
	}
	old, err := rd.keyLifecycle(ctx, project, req.OldKey, end)
	if err != nil {
		return RotationReport{}, err
	}
	newKey := cmp.Or(req.NewKey, old.NewKey)
	if newKey == "" {
		return RotationReport{}, &InvalidError{Field: "new_key_id", Reason: fmt.Sprintf("%s has no ACTION_ROTATED event; pass new_key_id", req.OldKey)}
	}
	if newKey == req.OldKey {
		return RotationReport{}, &InvalidError{Field: "new_key_id", Reason: "must differ from old_key_id"}
	}
	start := req.Start
	switch {
	case !start.IsZero():
	case !old.RotatedAt.IsZero() && old.RotatedAt.Before(end):
		start = old.RotatedAt
	default:
		start = end.Add(-24 * time.Hour)
	}
	window, err := NewRange(start, end, end)
	if err != nil {
		return RotationReport{}, err
	}
	rep := RotationReport{
		Project: project, OldKey: req.OldKey, NewKey: newKey,
		RotatedAt: old.RotatedAt, RotatedBy: old.RotatedBy,
		OldKeyStatus: old.Status, OldKeyRevokedAt: old.RevokedAt,
		Window: window, Quiet: quiet, Lookback: lookback,
	}
	facts := rotation.Facts{
		OldKey: req.OldKey, NewKey: newKey, Start: window.Start, End: end, Quiet: quiet, Lookback: lookback,
		OldKeyStatus: old.Status, RevokedAt: old.RevokedAt, Accepted: req.Accepted,
	}
	// The quiet rule looks at the quiet period wherever it lies; the window lists only at
	// its part within the window.
	history := Range{Start: rotation.HistoryStart(window.Start, end, quiet, lookback), End: end}
	quietInWindow := Range{Start: later(window.Start, end.Add(-quiet)), End: end}

	// The reads below are independent: run them at once, so the answer takes the time of
	// the slowest instead of the sum (each is a narrow read of one key's range, mostly
	// waiting on one ClickHouse thread).
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		use, err := rd.rotationUse(gctx, project, []string{req.OldKey, newKey}, window)
		facts.OldInWindow, facts.NewInWindow = use[req.OldKey], use[newKey]
		return err
	})
	g.Go(func() error {
		use, err := rd.rotationUse(gctx, project, []string{req.OldKey}, quietInWindow)
		facts.OldInQuiet = use[req.OldKey]
		return err
	})
	g.Go(func() (err error) {
		facts.OldHistory, err = rd.callerHistory(gctx, project, req.OldKey, history, quiet)
		return err
	})
	g.Go(func() error {
		use, err := rd.rotationUse(gctx, project, []string{newKey}, history)
		facts.NewHistory = use[newKey]
		return err
	})
	g.Go(func() (err error) {
		rep.Bucket, rep.Series, err = rd.rotationSeries(gctx, project, req.OldKey, newKey, window, req.Bucket)
		return err
	})
	if !old.RevokedAt.IsZero() {
		g.Go(func() (err error) {
			rep.AfterRevocation, err = rd.requestsAfter(gctx, project, req.OldKey, later(old.RevokedAt, window.Start), end)
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return RotationReport{}, err
	}
	rep.Result = rotation.Analyze(facts)

	var failing uint64
	for _, a := range rep.AfterRevocation {
		failing += a.Requests
	}
	if failing > 0 {
		rep.Reasons = append(rep.Reasons, fmt.Sprintf("%d requests reached %s in the window after it was %s at %s (see requests_after_revocation)",
			failing, req.OldKey, old.Status, old.RevokedAt.UTC().Format(time.RFC3339Nano)))
	}
	return rep, nil
}

// rotationProject is the old key's project: the one named, or the one among those the
// request allows where the old key is known. A key known in none of them is not found.
func (rd *Reader) rotationProject(ctx context.Context, req RotationRequest, end time.Time) (string, error) {
	allowed := req.Projects
	if req.Project != "" {
		allowed = []string{req.Project}
	}
	project := ""
	if allowed == nil || len(allowed) > 0 {
		var err error
		if project, err = rd.keyProject(ctx, req.OldKey, allowed); err != nil {
			return "", err
		}
	}
	if project == "" {
		return "", &KeyNotFoundError{KeyID: req.OldKey, At: end}
	}
	return project, nil
}

// keyLifecycle is the old key's state at end (package keystate: an expiry that has passed
// counts even without an ACTION_EXPIRED event) and its latest rotation, within its project.
func (rd *Reader) keyLifecycle(ctx context.Context, project, keyID string, end time.Time) (keyLifecycle, error) {
	events, err := rd.keyLifecycleEvents(ctx, RotationLifecycle(project, keyID, end))
	if err != nil {
		return keyLifecycle{}, err
	}
	kl := keyLifecycle{Status: keystate.Active.String()}
	state, known := keystate.At(keyID, events, end)
	if !known {
		return kl, nil
	}
	if state.Status != keystate.Active && state.Status != keystate.Unregistered {
		kl.Status = state.Status.String()
		kl.RevokedAt = state.StatusSince
	}
	for _, e := range events {
		if e.KeyID == keyID && e.Action == keytrailv1.Action_ACTION_ROTATED {
			kl.RotatedAt, kl.RotatedBy, kl.NewKey = e.Time, e.Actor, e.NewKeyID
		}
	}
	return kl, nil
}

// maxServicesPerKey bounds one key's service list in a rotation report.
const maxServicesPerKey = 10_000

// rotationUse is every service's use of each key over r, by key.
func (rd *Reader) rotationUse(ctx context.Context, project string, keys []string, r Range) (map[string][]rotation.ServiceUse, error) {
	limit := len(keys)*maxServicesPerKey + 1
	q := RotationUse(project, keys, r, limit)
	rows, err := rd.conn.Query(ctx, q.SQL, q.Args...)
	if err != nil {
		return nil, fmt.Errorf("query services of %v: %w", keys, err)
	}
	defer rows.Close()
	out := map[string][]rotation.ServiceUse{}
	n := 0
	for rows.Next() {
		var (
			key, service      string
			requests          uint64
			first, last, succ int64
		)
		if err := rows.Scan(&key, &service, &requests, &first, &last, &succ); err != nil {
			return nil, fmt.Errorf("scan services of %v: %w", keys, err)
		}
		out[key] = append(out[key], rotation.ServiceUse{
			Service: service, Requests: requests, FirstSeen: time.UnixMilli(first).UTC(), LastSeen: time.UnixMilli(last).UTC(), LastSuccess: msOrZero(succ),
		})
		n++
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read services of %v: %w", keys, err)
	}
	if n >= limit {
		return nil, fmt.Errorf("keys %v have more than %d services each in the range", keys, maxServicesPerKey)
	}
	return out, nil
}

// callerHistory is every service's calls on the old key over r, with their rhythm.
func (rd *Reader) callerHistory(ctx context.Context, project, keyID string, r Range, quiet time.Duration) ([]rotation.Calls, error) {
	q := CallerHistory(project, keyID, r, quiet, maxServicesPerKey+1)
	rows, err := rd.conn.Query(ctx, q.SQL, q.Args...)
	if err != nil {
		return nil, fmt.Errorf("query callers of %s: %w", keyID, err)
	}
	defer rows.Close()
	var out []rotation.Calls
	for rows.Next() {
		var (
			service                  string
			requests, longGaps       uint64
			lastSeen, succ, largestG int64
		)
		if err := rows.Scan(&service, &requests, &lastSeen, &succ, &largestG, &longGaps); err != nil {
			return nil, fmt.Errorf("scan callers of %s: %w", keyID, err)
		}
		c := rotation.Calls{Service: service, Requests: requests, LastSeen: time.UnixMilli(lastSeen).UTC(), LastSuccess: msOrZero(succ)}
		if succ > 0 {
			c.Runs, c.LargestGap = int(longGaps)+1, time.Duration(largestG)*time.Millisecond
		}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read callers of %s: %w", keyID, err)
	}
	if len(out) > maxServicesPerKey {
		return nil, fmt.Errorf("key %s has more than %d services in the history", keyID, maxServicesPerKey)
	}
	return out, nil
}

func msOrZero(ms int64) time.Time {
	if ms <= 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms).UTC()
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

func anySlice(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}

// maxSeriesBuckets bounds the series; wider windows get wider buckets.
const maxSeriesBuckets = 60

func seriesWidth(window Range, requested time.Duration) time.Duration {
	if requested > 0 {
		return max(requested.Truncate(time.Minute), time.Minute)
	}
	span := window.End.Sub(window.Start.Truncate(time.Minute))
	width := (span + maxSeriesBuckets - 1) / maxSeriesBuckets
	if width%time.Minute != 0 {
		width = width.Truncate(time.Minute) + time.Minute
	}
	return max(width, time.Minute)
}

func (rd *Reader) rotationSeries(ctx context.Context, project, oldKey, newKey string, window Range, requested time.Duration) (time.Duration, []ShareBucket, error) {
	width := seriesWidth(window, requested)
	from := window.Start.Truncate(time.Minute)
	to := window.End.Truncate(time.Minute)
	if to.Before(window.End) {
		to = to.Add(time.Minute)
	}
	n := int((to.Sub(from) + width - 1) / width)
	if n > 10*maxSeriesBuckets {
		return 0, nil, &InvalidError{Field: "bucket", Reason: fmt.Sprintf("makes %d buckets (at most %d)", n, 10*maxSeriesBuckets)}
	}
	series := make([]ShareBucket, n)
	for i := range series {
		series[i].Start = from.Add(time.Duration(i) * width)
	}
	q := RotationSeries(project, oldKey, newKey, from, to, width)
	rows, err := rd.conn.Query(ctx, q.SQL, q.Args...)
	if err != nil {
		return 0, nil, fmt.Errorf("query rotation series: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			bucket   int64
			key      string
			requests uint64
		)
		if err := rows.Scan(&bucket, &key, &requests); err != nil {
			return 0, nil, fmt.Errorf("scan rotation series: %w", err)
		}
		if bucket < 0 || int(bucket) >= n {
			continue
		}
		if key == oldKey {
			series[bucket].OldRequests += requests
		} else {
			series[bucket].NewRequests += requests
		}
	}
	return width, series, rows.Err()
}

func (rd *Reader) requestsAfter(ctx context.Context, project, keyID string, from, to time.Time) ([]AfterRevocation, error) {
	if !from.Before(to) {
		return nil, nil
	}
	q := RequestsAfter(project, keyID, from, to)
	rows, err := rd.conn.Query(ctx, q.SQL, q.Args...)
	if err != nil {
		return nil, fmt.Errorf("query requests after revocation: %w", err)
	}
	defer rows.Close()
	var out []AfterRevocation
	for rows.Next() {
		var (
			a           AfterRevocation
			first, last int64
		)
		if err := rows.Scan(&a.Service, &a.StatusCode, &a.Requests, &first, &last); err != nil {
			return nil, fmt.Errorf("scan requests after revocation: %w", err)
		}
		a.FirstSeen, a.LastSeen = time.UnixMilli(first).UTC(), time.UnixMilli(last).UTC()
		out = append(out, a)
	}
	return out, rows.Err()
}
