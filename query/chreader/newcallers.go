package chreader

import (
	"context"
	"fmt"
	"strings"
	"time"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/query/anomaly"
)

// New callers are read from the all-time rollups key_service_totals and key_client_ip_totals
// (one row per key x service / key x client IP after merges, so the scan is small and never
// touches raw history). "First use" is the minimum over all stored history, so a caller is
// new exactly once, whatever range is asked.
//
// A key's very first callers are included: they are new too, and key_first_seen (the key's
// first use by any service) lets a reader or an alert rule tell "a new key got its first
// callers" (first_seen close to key_first_seen) from "an old key got a new caller".

// DefaultNewCallersWindow is the range without start_time: the 24 hours before its end.
const DefaultNewCallersWindow = 24 * time.Hour

// MaxNewCallers bounds one answer; the newest are kept.
const MaxNewCallers = 1000

// NewCallersSpec is a validated new-callers question.
type NewCallersSpec struct {
	// Range is first uses in [Start, End), exact to the millisecond.
	Range   Range
	Project string
	// Projects, when not nil, keeps only these projects.
	Projects []string
	KeyID    string
	Limit    int
}

// NewCallers lists callers whose first use of a key falls in the range, newest first.
func NewCallers(s NewCallersSpec) Query {
	var args []any
	filters := func() string {
		w, wArgs := projectKeyFilters(s.Project, s.Projects, s.KeyID)
		args = append(args, wArgs...)
		if len(w) == 0 {
			return ""
		}
		return "\n    WHERE " + strings.Join(w, " AND ")
	}
	from, to := s.Range.Start.UnixMilli(), s.Range.End.UnixMilli()
	services := filters()
	args = append(args, from, to)
	ips := filters()
	args = append(args, from, to)
	keys := filters()
	args = append(args, s.Limit)
	sql := fmt.Sprintf(`SELECT project, key_id, kind, caller, first_ms, last_ms, request_count, key_first_ms
FROM
(
    SELECT project, key_id, toUInt8(%d) AS kind, service AS caller, minMerge(first_seen_ms) AS first_ms, maxMerge(last_seen_ms) AS last_ms, countMerge(requests) AS request_count
    FROM key_service_totals%s
    GROUP BY project, key_id, service
    HAVING first_ms >= ? AND first_ms < ?
    UNION ALL
    SELECT project, key_id, toUInt8(%d) AS kind, client_ip AS caller, minMerge(first_seen_ms) AS first_ms, maxMerge(last_seen_ms) AS last_ms, countMerge(requests) AS request_count
    FROM key_client_ip_totals%s
    GROUP BY project, key_id, client_ip
    HAVING first_ms >= ? AND first_ms < ?
)
ANY LEFT JOIN
(
    SELECT project, key_id, minMerge(first_seen_ms) AS key_first_ms
    FROM key_service_totals%s
    GROUP BY project, key_id
) USING (project, key_id)
ORDER BY first_ms DESC, project, key_id, kind, caller
LIMIT ?`, int(keytrailv1.CallerKind_CALLER_KIND_SERVICE), services, int(keytrailv1.CallerKind_CALLER_KIND_CLIENT_IP), ips, keys)
	return Query{SQL: sql, Args: args}
}

// NewCallersRequest is the input of the new-callers list; zero values take the defaults.
type NewCallersRequest struct {
	Start, End time.Time
	Project    string
	// Projects, when not nil, keeps only these projects.
	Projects []string
	KeyID    string
}

// NewCallersResult is the new callers, newest first.
type NewCallersResult struct {
	Callers []anomaly.NewCaller
	Range   Range
	// Truncated is set when more than MaxNewCallers matched (the newest are kept).
	Truncated bool
}

// NewCallersSpecFor validates a request and applies the defaults.
func NewCallersSpecFor(req NewCallersRequest, now time.Time) (NewCallersSpec, error) {
	r, err := rangeBefore(req.Start, req.End, now, DefaultNewCallersWindow)
	if err != nil {
		return NewCallersSpec{}, err
	}
	return NewCallersSpec{
		Range:   r,
		Project: req.Project, Projects: req.Projects, KeyID: req.KeyID,
		Limit: MaxNewCallers + 1,
	}, nil
}

// NewCallers runs the list.
func (rd *Reader) NewCallers(ctx context.Context, req NewCallersRequest) (NewCallersResult, error) {
	spec, err := NewCallersSpecFor(req, rd.now())
	if err != nil {
		return NewCallersResult{}, err
	}
	res := NewCallersResult{Range: spec.Range}
	if spec.Projects != nil && len(spec.Projects) == 0 {
		return res, nil
	}
	q := NewCallers(spec)
	rows, err := rd.conn.Query(ctx, q.SQL, q.Args...)
	if err != nil {
		return NewCallersResult{}, fmt.Errorf("query new callers: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			c                  anomaly.NewCaller
			kind               uint8
			first, last, keyMs int64
		)
		if err := rows.Scan(&c.Project, &c.KeyID, &kind, &c.Caller, &first, &last, &c.Requests, &keyMs); err != nil {
			return NewCallersResult{}, fmt.Errorf("scan new caller: %w", err)
		}
		c.Kind = keytrailv1.CallerKind(kind)
		c.FirstSeen, c.LastSeen, c.KeyFirstSeen = time.UnixMilli(first).UTC(), time.UnixMilli(last).UTC(), time.UnixMilli(keyMs).UTC()
		res.Callers = append(res.Callers, c)
	}
	if err := rows.Err(); err != nil {
		return NewCallersResult{}, fmt.Errorf("read new callers: %w", err)
	}
	if len(res.Callers) > MaxNewCallers {
		res.Callers, res.Truncated = res.Callers[:MaxNewCallers], true
	}
	return res, nil
}
