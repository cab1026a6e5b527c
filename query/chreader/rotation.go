package chreader

import (
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
	// NewKey defaults to the new_key_id of the old key's latest rotation event.
	NewKey string
	// Quiet defaults to DefaultQuietPeriod.
	Quiet time.Duration
	// Start defaults to the rotation (or End-24h without one), End to now.
	Start, End time.Time
	// Bucket is the series width; default: the window in at most 60 whole minutes.
	Bucket time.Duration
}

// DefaultQuietPeriod is how long the old key must have served no successful request.
const DefaultQuietPeriod = 15 * time.Minute

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

// RotationReport is everything GetRotation answers.
type RotationReport struct {
	Project string
	// NewKeyProject is the new key's project as its usage shows it ("" without usage); the
	// API checks the caller may read it too, since the report shows the new key's traffic.
	NewKeyProject   string
	OldKey, NewKey  string
	RotatedAt       time.Time
	RotatedBy       string
	OldKeyStatus    string
	OldKeyRevokedAt time.Time
	Window          Range
	Quiet           time.Duration
	Bucket          time.Duration
	Series          []ShareBucket
	AfterRevocation []AfterRevocation
	rotation.Result
}

// keyLifecycle is the part of a key's lifecycle a rotation report needs.
type keyLifecycle struct {
	Project   string
	RotatedAt time.Time
	RotatedBy string
	NewKey    string
	Status    string
	// RevokedAt is when the key stopped being valid as of the window end (zero if it is).
	RevokedAt time.Time
}

// RotationSeries counts requests on both keys per bucket of width seconds, buckets numbered
// from the window's first minute. Read from the per-minute rollup, so buckets are whole
// minutes (the totals in the report are exact; the series is for plotting).
func RotationSeries(oldKey, newKey string, from, to time.Time, width time.Duration) Query {
	return Query{
		SQL: `SELECT intDiv(toUInt32(minute) - ?, ?) AS bucket, key_id, countMerge(requests) AS requests
FROM usage_key_minute
WHERE key_id IN (?, ?) AND minute >= toDateTime(?) AND minute < toDateTime(?)
GROUP BY bucket, key_id
ORDER BY bucket, key_id`,
		Args: []any{from.Unix(), int64(width / time.Second), oldKey, newKey, from.Unix(), to.Unix()},
	}
}

// RequestsAfter groups the old key's requests in [from, to) by service and status code.
func RequestsAfter(keyID string, from, to time.Time) Query {
	return Query{
		SQL: `SELECT service, status_code, count() AS request_count, min(event_time_ms) AS first_ms, max(event_time_ms) AS last_ms
FROM usage_events
WHERE key_id = ? AND event_time >= toDateTime(?) AND event_time <= toDateTime(?) AND event_time_ms >= ? AND event_time_ms < ?
GROUP BY service, status_code
ORDER BY service, status_code`,
		Args: []any{keyID, floorSec(from.UnixMilli()), floorSec(to.UnixMilli()), from.UnixMilli(), to.UnixMilli()},
	}
}

// Rotation gathers the facts of a double-key roll and judges it.
func (rd *Reader) Rotation(ctx context.Context, req RotationRequest) (RotationReport, error) {
	end := req.End
	if end.IsZero() {
		end = rd.now()
	}
	end = end.UTC()
	quiet := req.Quiet
	if quiet == 0 {
		quiet = DefaultQuietPeriod
	}
	old, err := rd.keyLifecycle(ctx, req.OldKey, end)
	if err != nil {
		return RotationReport{}, err
	}
	newKey := req.NewKey
	if newKey == "" {
		newKey = old.NewKey
	}
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
		Project: old.Project, OldKey: req.OldKey, NewKey: newKey,
		RotatedAt: old.RotatedAt, RotatedBy: old.RotatedBy,
		OldKeyStatus: old.Status, OldKeyRevokedAt: old.RevokedAt,
		Window: window, Quiet: quiet,
	}

	// The four reads below are independent: run them at once, so the answer takes the time
	// of the slowest instead of the sum (each is a narrow read, mostly waiting on one
	// ClickHouse thread; at 100M events the sum was most of the answer's p99).
	facts := rotation.Facts{OldKey: req.OldKey, NewKey: newKey, End: end, Quiet: quiet}
	var project string
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() (err error) {
		facts.OldInWindow, project, err = rd.allServices(gctx, req.OldKey, window)
		return err
	})
	g.Go(func() (err error) {
		facts.NewInWindow, rep.NewKeyProject, err = rd.allServices(gctx, newKey, window)
		return err
	})
	g.Go(func() (err error) {
		facts.OldInQuiet, _, err = rd.allServices(gctx, req.OldKey, Range{Start: end.Add(-quiet), End: end})
		return err
	})
	g.Go(func() (err error) {
		rep.Bucket, rep.Series, err = rd.rotationSeries(gctx, req.OldKey, newKey, window, req.Bucket)
		return err
	})
	if err := g.Wait(); err != nil {
		return RotationReport{}, err
	}
	if rep.Project == "" {
		// A key known only from usage (no lifecycle event yet) still has a project.
		rep.Project = project
	}
	rep.Result = rotation.Analyze(facts)

	if !old.RevokedAt.IsZero() {
		if rep.AfterRevocation, err = rd.requestsAfter(ctx, req.OldKey, old.RevokedAt, end); err != nil {
			return RotationReport{}, err
		}
		var failing uint64
		for _, a := range rep.AfterRevocation {
			failing += a.Requests
		}
		if failing > 0 {
			rep.Reasons = append(rep.Reasons, fmt.Sprintf("%d requests reached %s after it was %s at %s (see requests_after_revocation)",
				failing, req.OldKey, old.Status, old.RevokedAt.UTC().Format(time.RFC3339Nano)))
		}
	}
	return rep, nil
}

// keyLifecycle is the old key's state at end (package keystate: an expiry that has passed
// counts even without an ACTION_EXPIRED event) and its latest rotation.
func (rd *Reader) keyLifecycle(ctx context.Context, keyID string, end time.Time) (keyLifecycle, error) {
	events, err := rd.keyLifecycleEvents(ctx, KeyLifecycle(keyID, end))
	if err != nil {
		return keyLifecycle{}, err
	}
	kl := keyLifecycle{Status: "active"}
	state, known := keystate.At(keyID, events, end)
	if !known {
		return kl, nil
	}
	kl.Project = state.Project
	if state.Status != keytrailv1.KeyStatus_KEY_STATUS_ACTIVE && state.Status != keytrailv1.KeyStatus_KEY_STATUS_UNSPECIFIED {
		kl.Status = strings.ToLower(strings.TrimPrefix(state.Status.String(), "KEY_STATUS_"))
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

// allServices is every service's use of a key over r, and the key's project.
func (rd *Reader) allServices(ctx context.Context, keyID string, r Range) ([]rotation.ServiceUse, string, error) {
	q := usageQuery(servicesOfKey, keyID, r, "", maxServicesPerKey+1)
	rows, err := rd.conn.Query(ctx, q.SQL, q.Args...)
	if err != nil {
		return nil, "", fmt.Errorf("query services of %s: %w", keyID, err)
	}
	defer rows.Close()
	var out []rotation.ServiceUse
	var keyProject string
	for rows.Next() {
		var (
			service, project    string
			first, last, succ   int64
			requests, errorsCnt uint64
		)
		if err := rows.Scan(&service, &project, &first, &last, &requests, &errorsCnt, &succ); err != nil {
			return nil, "", fmt.Errorf("scan services of %s: %w", keyID, err)
		}
		keyProject = project
		u := rotation.ServiceUse{Service: service, Requests: requests, FirstSeen: time.UnixMilli(first).UTC(), LastSeen: time.UnixMilli(last).UTC()}
		if succ > 0 {
			u.LastSuccess = time.UnixMilli(succ).UTC()
		}
		out = append(out, u)
	}
	if err := rows.Err(); err != nil {
		return nil, "", fmt.Errorf("read services of %s: %w", keyID, err)
	}
	if len(out) > maxServicesPerKey {
		return nil, "", fmt.Errorf("key %s has more than %d services in the window", keyID, maxServicesPerKey)
	}
	return out, keyProject, nil
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

func (rd *Reader) rotationSeries(ctx context.Context, oldKey, newKey string, window Range, requested time.Duration) (time.Duration, []ShareBucket, error) {
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
	q := RotationSeries(oldKey, newKey, from, to, width)
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

func (rd *Reader) requestsAfter(ctx context.Context, keyID string, from, to time.Time) ([]AfterRevocation, error) {
	if !from.Before(to) {
		return nil, nil
	}
	q := RequestsAfter(keyID, from, to)
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
