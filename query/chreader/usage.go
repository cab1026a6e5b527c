package chreader

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// KeyServiceUsage is the use of one key by one service over a range.
type KeyServiceUsage struct {
	Project   string
	KeyID     string
	Service   string
	FirstSeen time.Time
	LastSeen  time.Time
	// LastSuccess is the last request with a status below 400; zero when there was none.
	LastSuccess time.Time
	Requests    uint64
	Errors      uint64
}

// usageAxis is one way of slicing key x service usage: fix one column, list the other.
type usageAxis struct {
	rollup string // per-minute rollup sorted by the fixed column first
	fixed  string
	listed string
}

var (
	servicesOfKey = usageAxis{rollup: "usage_key_minute", fixed: "key_id", listed: "service"}
	keysOfService = usageAxis{rollup: "usage_by_service_minute", fixed: "service", listed: "key_id"}
)

// UsageFilter is what a usage list is about: the fixed key id or service, and the projects.
type UsageFilter struct {
	// Value is the key id (services of a key) or the service (keys of a service).
	Value string
	// Project, when set, keeps that project only.
	Project string
	// Projects, when not nil, keeps only these projects (the caller's readable ones).
	Projects []string
}

// usageCursor is the sort key of the last row of a page: rows are ordered by project, then
// the listed column, one row per project and listed value: a key is (project, key_id), so
// the same key id (or service name) in two projects is two rows, never one.
type usageCursor struct {
	Project, Listed string
}

// KeyServices is "which services used this key in the range", a row per project and service
// ordered by project then service, starting after the cursor (keyset pagination; nil for
// the first page), at most limit rows.
func KeyServices(f UsageFilter, r Range, after *usageCursor, limit int) Query {
	return usageQueryIn(servicesOfKey, f, r, after, limit)
}

// ServiceKeys is "which keys did this service use in the range", a row per project and key
// id, ordered by project then key id.
func ServiceKeys(f UsageFilter, r Range, after *usageCursor, limit int) Query {
	return usageQueryIn(keysOfService, f, r, after, limit)
}

// usageConditions are the project filters and the cursor of a usage list.
func usageConditions(axis usageAxis, f UsageFilter, after *usageCursor) ([]string, []any) {
	where, args := projectKeyFilters(f.Project, f.Projects, "")
	if after != nil {
		where = append(where, "(project > ? OR (project = ? AND "+axis.listed+" > ?))")
		args = append(args, after.Project, after.Project, after.Listed)
	}
	return where, args
}

func usageQueryIn(axis usageAxis, f UsageFilter, r Range, after *usageCursor, limit int) Query {
	s := splitRange(r)
	cond, condArgs := usageConditions(axis, f, after)
	and := ""
	if len(cond) > 0 {
		and = " AND " + strings.Join(cond, " AND ")
	}
	var parts []string
	var args []any
	if s.hasRollup() {
		parts = append(parts, fmt.Sprintf(`    SELECT project, %[2]s, minMerge(first_seen_ms) AS first_ms, maxMerge(last_seen_ms) AS last_ms, countMerge(requests) AS request_count, sumMerge(errors) AS error_count, maxIfMerge(last_success_ms) AS success_ms
    FROM %[3]s
    WHERE %[1]s = ? AND minute >= toDateTime(?) AND minute < toDateTime(?)%[4]s
    GROUP BY project, %[2]s`, axis.fixed, axis.listed, axis.rollup, and))
		args = append(args, f.Value, s.RollupFrom.Unix(), s.RollupTo.Unix())
		args = append(args, condArgs...)
	}
	if len(s.Edges) > 0 {
		edges, edgeArgs := s.edgeCondition()
		parts = append(parts, fmt.Sprintf(`    SELECT project, %[2]s, min(event_time_ms) AS first_ms, max(event_time_ms) AS last_ms, count() AS request_count, countIf(status_code >= 400) AS error_count, maxIf(event_time_ms, status_code < 400) AS success_ms
    FROM usage_events
    WHERE %[1]s = ?%[3]s AND %[4]s
    GROUP BY project, %[2]s`, axis.fixed, axis.listed, and, edges))
		args = append(args, f.Value)
		args = append(args, condArgs...)
		args = append(args, edgeArgs...)
	}
	sql := fmt.Sprintf(`SELECT project, %[1]s, min(first_ms) AS first_seen_ms, max(last_ms) AS last_seen_ms, sum(request_count) AS requests, sum(error_count) AS errors, max(success_ms) AS last_success_ms
FROM
(
%[2]s
)
GROUP BY project, %[1]s
ORDER BY project, %[1]s
LIMIT ?`, axis.listed, strings.Join(parts, "\n    UNION ALL\n"))
	args = append(args, limit)
	return Query{SQL: sql, Args: args}
}

// UsageAllHistory answers a usage list over all history from the all-time totals table,
// which holds one row per key x service after merges: the cheapest read there is. Used when
// the caller gives no time range. The table is sorted by key, so the keys of a service
// scan it whole; it is small (one row per pair ever seen).
func UsageAllHistory(byKey bool, f UsageFilter, after *usageCursor, limit int) Query {
	axis := keysOfService
	if byKey {
		axis = servicesOfKey
	}
	cond, condArgs := usageConditions(axis, f, after)
	where := axis.fixed + " = ?"
	if len(cond) > 0 {
		where += " AND " + strings.Join(cond, " AND ")
	}
	return Query{
		SQL: fmt.Sprintf(`SELECT project, %[1]s, minMerge(first_seen_ms) AS first_ms, maxMerge(last_seen_ms) AS last_ms, countMerge(requests) AS request_count, sumMerge(errors) AS error_count, maxIfMerge(last_success_ms) AS success_ms
FROM key_service_totals
WHERE %[2]s
GROUP BY project, %[1]s
ORDER BY project, %[1]s
LIMIT ?`, axis.listed, where),
		Args: append(append([]any{f.Value}, condArgs...), limit),
	}
}

// Reader runs queries against ClickHouse.
type Reader struct {
	conn driver.Conn
	now  func() time.Time
	// maxAnomalyScanRows is MaxAnomalyScanRows; tests lower it.
	maxAnomalyScanRows int
}

// NewReader creates a Reader; now is the clock for default range ends (time.Now when nil).
func NewReader(conn driver.Conn, now func() time.Time) *Reader {
	if now == nil {
		now = time.Now
	}
	return &Reader{conn: conn, now: now, maxAnomalyScanRows: MaxAnomalyScanRows}
}

// UsageRequest is the input shared by the two usage lists.
type UsageRequest struct {
	Value string // the key id or the service
	// Project, when set, keeps that project only; Projects, when not nil, only these (the
	// caller's readable projects; empty: none).
	Project    string
	Projects   []string
	Start, End time.Time
	PageSize   int32
	PageToken  string
}

// UsagePage is one page of a usage list.
type UsagePage struct {
	Rows          []KeyServiceUsage
	NextPageToken string
}

// KeyServices lists the services that used a key.
func (rd *Reader) KeyServices(ctx context.Context, req UsageRequest) (UsagePage, error) {
	return rd.usage(ctx, servicesOfKey, req)
}

// ServiceKeys lists the keys a service used.
func (rd *Reader) ServiceKeys(ctx context.Context, req UsageRequest) (UsagePage, error) {
	return rd.usage(ctx, keysOfService, req)
}

func (rd *Reader) usage(ctx context.Context, axis usageAxis, req UsageRequest) (UsagePage, error) {
	r, err := NewRange(req.Start, req.End, rd.now())
	if err != nil {
		return UsagePage{}, err
	}
	limit, err := PageSize(req.PageSize)
	if err != nil {
		return UsagePage{}, err
	}
	f := UsageFilter{Value: req.Value, Project: req.Project, Projects: req.Projects}
	// The fingerprint pins the range as resolved, so a default "now" end is carried over
	// from the first page instead of moving under the caller's feet.
	filters := []string{axis.fixed, req.Value, req.Project, projectsStamp(req.Projects), r.Start.Format(time.RFC3339Nano)}
	cursor, err := decodePageToken(req.PageToken, 3, filters...)
	if err != nil {
		return UsagePage{}, err
	}
	var after *usageCursor
	if cursor != nil {
		after = &usageCursor{Project: cursor[0], Listed: cursor[1]}
		end, perr := time.Parse(time.RFC3339Nano, cursor[2])
		if perr != nil {
			return UsagePage{}, &InvalidError{Field: "page_token", Reason: "is not a token this query issued"}
		}
		if req.End.IsZero() {
			r.End = end
		} else if !r.End.Equal(end) {
			return UsagePage{}, &InvalidError{Field: "page_token", Reason: "was issued for different filters"}
		}
	}
	if req.Projects != nil && len(req.Projects) == 0 {
		return UsagePage{}, nil
	}
	q := usageQueryIn(axis, f, r, after, limit+1)
	if req.Start.IsZero() && req.End.IsZero() {
		// No range: all history, from the all-time totals (the same answer, exact).
		q = UsageAllHistory(axis == servicesOfKey, f, after, limit+1)
	}
	rows, err := rd.conn.Query(ctx, q.SQL, q.Args...)
	if err != nil {
		return UsagePage{}, fmt.Errorf("query %s usage: %w", axis.fixed, err)
	}
	defer rows.Close()
	var page UsagePage
	for rows.Next() {
		var (
			project, listed string
			first, last     int64
			requests, errs  uint64
			success         int64
		)
		if err := rows.Scan(&project, &listed, &first, &last, &requests, &errs, &success); err != nil {
			return UsagePage{}, fmt.Errorf("scan %s usage: %w", axis.fixed, err)
		}
		u := KeyServiceUsage{Project: project, FirstSeen: time.UnixMilli(first).UTC(), LastSeen: time.UnixMilli(last).UTC(), Requests: requests, Errors: errs}
		if success > 0 {
			u.LastSuccess = time.UnixMilli(success).UTC()
		}
		if axis == servicesOfKey {
			u.KeyID, u.Service = req.Value, listed
		} else {
			u.KeyID, u.Service = listed, req.Value
		}
		page.Rows = append(page.Rows, u)
	}
	if err := rows.Err(); err != nil {
		return UsagePage{}, fmt.Errorf("read %s usage: %w", axis.fixed, err)
	}
	if len(page.Rows) > limit {
		page.Rows = page.Rows[:limit]
		lastRow := page.Rows[limit-1]
		next := lastRow.Service
		if axis == keysOfService {
			next = lastRow.KeyID
		}
		page.NextPageToken = encodePageToken([]string{lastRow.Project, next, r.End.Format(time.RFC3339Nano)}, filters...)
	}
	return page, nil
}
