package chreader

import (
	"context"
	"fmt"
	"time"
)

// Key usage series read usage_key_5min, which is sorted by key and then time: a key's series
// over a range reads that key's cells of the range only. Buckets are whole multiples of five
// minutes aligned on the Unix epoch, so each rollup cell falls in exactly one bucket and the
// sums are exact; the range is widened to whole buckets.

// UsageSeriesStep is the rollup's cell width: bucket widths are multiples of it.
const UsageSeriesStep = 5 * time.Minute

// Bounds of a key usage series.
const (
	DefaultUsageSeriesWindow = 24 * time.Hour
	MaxUsageSeriesBucket     = 24 * time.Hour
	MaxUsageSeriesBuckets    = 2000
	// defaultUsageSeriesBuckets is how many buckets the default width aims to stay under.
	defaultUsageSeriesBuckets = 300
)

// defaultUsageSeriesWidths are tried in order for a request without a bucket width.
var defaultUsageSeriesWidths = []time.Duration{5 * time.Minute, 15 * time.Minute, time.Hour, 6 * time.Hour, 24 * time.Hour}

// KeyUsageRequest asks for one key's usage per service over time.
type KeyUsageRequest struct {
	KeyID string
	// Project, when set, is the key's project. Without it the key id is looked up in every
	// project of Projects (every project when nil); known in more than one it is ambiguous
	// (an *InvalidError on project naming them).
	Project string
	// Projects, when not nil, are the projects the caller may read.
	Projects []string
	// Service keeps one service; "" keeps every service.
	Service string
	// Start defaults to End - DefaultUsageSeriesWindow, End to now.
	Start, End time.Time
	// Bucket defaults to the smallest of defaultUsageSeriesWidths giving at most 300 buckets.
	Bucket time.Duration
}

// UsageSeries is one service's use of a key, one value per bucket of the report.
type UsageSeries struct {
	Service    string
	Requests   []uint64
	Errors     []uint64
	CostMicros []int64
}

// KeyUsageReport is a key's usage per service in buckets of Bucket from From to To.
type KeyUsageReport struct {
	KeyID string
	// Projects are the projects the key's rows carry: at most one, the key's, read within
	// the request's projects.
	Projects []string
	Bucket   time.Duration
	From, To time.Time
	Series   []UsageSeries
}

// BucketStarts are the starts of the report's buckets, oldest first.
func (r KeyUsageReport) BucketStarts() []time.Time {
	var out []time.Time
	for t := r.From; t.Before(r.To); t = t.Add(r.Bucket) {
		out = append(out, t)
	}
	return out
}

// KeyUsageSeries sums a key's 5-minute cells into buckets of width, numbered from from, per
// project and service, within a project (when set) and a set of projects (when not nil).
// service "" keeps every service.
func KeyUsageSeries(keyID, service, project string, projects []string, from, to time.Time, width time.Duration) Query {
	sql := `SELECT intDiv(toUInt32(bucket) - ?, ?) AS n, project, service, sum(requests) AS request_count, sum(errors) AS error_count, sum(total_cost_micros) AS cost
FROM usage_key_5min
WHERE key_id = ? AND bucket >= toDateTime(?) AND bucket < toDateTime(?)`
	args := []any{from.Unix(), int64(width / time.Second), keyID, from.Unix(), to.Unix()}
	if service != "" {
		sql += " AND service = ?"
		args = append(args, service)
	}
	filters, filterArgs := projectKeyFilters(project, projects, "")
	for _, f := range filters {
		sql += " AND " + f
	}
	args = append(args, filterArgs...)
	sql += `
GROUP BY n, project, service
ORDER BY service, n`
	return Query{SQL: sql, Args: args}
}

// usageSeriesWindow resolves the defaults and widens the range to whole buckets.
func usageSeriesWindow(req KeyUsageRequest, now time.Time) (from, to time.Time, width time.Duration, err error) {
	r, err := rangeBefore(req.Start, req.End, now, DefaultUsageSeriesWindow)
	if err != nil {
		return time.Time{}, time.Time{}, 0, err
	}
	start, end := r.Start, r.End
	width = req.Bucket
	switch {
	case width == 0:
		for _, w := range defaultUsageSeriesWidths {
			width = w
			if bucketCount(start, end, w) <= defaultUsageSeriesBuckets {
				break
			}
		}
	case width < 0 || width > MaxUsageSeriesBucket || width%UsageSeriesStep != 0:
		return time.Time{}, time.Time{}, 0, &InvalidError{Field: "bucket", Reason: fmt.Sprintf("must be a whole number of %s, at most %s", UsageSeriesStep, MaxUsageSeriesBucket)}
	}
	if n := bucketCount(start, end, width); n > MaxUsageSeriesBuckets {
		return time.Time{}, time.Time{}, 0, &InvalidError{Field: "start_time", Reason: fmt.Sprintf("the range holds %d buckets of %s, at most %d: narrow the range or widen bucket", n, width, MaxUsageSeriesBuckets)}
	}
	from, to = floorTo(start, width), ceilTo(end, width)
	return from, to, width, nil
}

func floorTo(t time.Time, width time.Duration) time.Time {
	w := int64(width / time.Second)
	s := t.Unix()
	s -= ((s % w) + w) % w
	return time.Unix(s, 0).UTC()
}

func ceilTo(t time.Time, width time.Duration) time.Time {
	f := floorTo(t, width)
	if f.Before(t) {
		f = f.Add(width)
	}
	return f
}

func bucketCount(start, end time.Time, width time.Duration) int64 {
	return int64(ceilTo(end, width).Sub(floorTo(start, width)) / width)
}

// KeyUsage reads a key's usage series, one per service, dense (zeros where a service had no
// request in a bucket). A key is (project, key_id): the series are one project's, read within
// the request's projects; a key id no project of the request knows has no series.
func (rd *Reader) KeyUsage(ctx context.Context, req KeyUsageRequest) (KeyUsageReport, error) {
	from, to, width, err := usageSeriesWindow(req, rd.now())
	if err != nil {
		return KeyUsageReport{}, err
	}
	rep := KeyUsageReport{KeyID: req.KeyID, Bucket: width, From: from, To: to}
	if req.Projects != nil && len(req.Projects) == 0 {
		return rep, nil
	}
	if req.Project == "" {
		if _, err := rd.keyProject(ctx, req.KeyID, req.Projects); err != nil {
			return KeyUsageReport{}, err
		}
	}
	n := int(to.Sub(from) / width)
	q := KeyUsageSeries(req.KeyID, req.Service, req.Project, req.Projects, from, to, width)
	rows, err := rd.conn.Query(ctx, q.SQL, q.Args...)
	if err != nil {
		return KeyUsageReport{}, fmt.Errorf("query key usage series: %w", err)
	}
	defer rows.Close()
	projects := map[string]bool{}
	for rows.Next() {
		var (
			bucket           int64
			project, service string
			requests, errs   uint64
			cost             int64
		)
		if err := rows.Scan(&bucket, &project, &service, &requests, &errs, &cost); err != nil {
			return KeyUsageReport{}, fmt.Errorf("scan key usage series: %w", err)
		}
		if !projects[project] {
			projects[project] = true
			rep.Projects = append(rep.Projects, project)
		}
		if bucket < 0 || int(bucket) >= n {
			continue // cannot happen with the WHERE above; never index past the series
		}
		// Rows come ordered by service: a new service starts a new series.
		if len(rep.Series) == 0 || rep.Series[len(rep.Series)-1].Service != service {
			rep.Series = append(rep.Series, UsageSeries{Service: service, Requests: make([]uint64, n), Errors: make([]uint64, n), CostMicros: make([]int64, n)})
		}
		s := &rep.Series[len(rep.Series)-1]
		s.Requests[bucket] += requests
		s.Errors[bucket] += errs
		s.CostMicros[bucket] += cost
	}
	if err := rows.Err(); err != nil {
		return KeyUsageReport{}, fmt.Errorf("read key usage series: %w", err)
	}
	return rep, nil
}
