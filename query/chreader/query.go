package chreader

import (
	"fmt"
	"strings"
	"time"
)

// Query is one SQL statement with its positional (?) arguments.
type Query struct {
	SQL  string
	Args []any
}

// Range is a half-open time range [Start, End). A zero Start means the beginning of history.
type Range struct {
	Start time.Time
	End   time.Time
}

// NewRange applies the defaults: no start means the beginning, no end means now.
func NewRange(start, end time.Time, now time.Time) (Range, error) {
	if end.IsZero() {
		end = now
	}
	if start.IsZero() {
		start = time.Unix(0, 0)
	}
	if !end.After(start) {
		return Range{}, &InvalidError{Field: "end_time", Reason: "must be after start_time"}
	}
	return Range{Start: start.UTC(), End: end.UTC()}, nil
}

// rangeBefore is NewRange for the reports that look back from their end: end defaults to
// now and start to window before end.
func rangeBefore(start, end, now time.Time, window time.Duration) (Range, error) {
	if end.IsZero() {
		end = now
	}
	if start.IsZero() {
		start = end.Add(-window)
	}
	return NewRange(start, end, now)
}

// split divides a range into the whole minutes a per-minute rollup can answer and the
// partial minutes at the edges, which only the raw events can answer exactly.
type split struct {
	// Rollup covers minutes [RollupFrom, RollupTo); empty when RollupFrom == RollupTo.
	RollupFrom, RollupTo time.Time
	// Edges are raw millisecond ranges [a, b).
	Edges [][2]int64
}

func splitRange(r Range) split {
	from := r.Start.Truncate(time.Minute)
	if from.Before(r.Start) {
		from = from.Add(time.Minute)
	}
	to := r.End.Truncate(time.Minute)
	if !to.After(from) {
		return split{RollupFrom: from, RollupTo: from, Edges: [][2]int64{{r.Start.UnixMilli(), r.End.UnixMilli()}}}
	}
	s := split{RollupFrom: from, RollupTo: to}
	if r.Start.Before(from) {
		s.Edges = append(s.Edges, [2]int64{r.Start.UnixMilli(), from.UnixMilli()})
	}
	if to.Before(r.End) {
		s.Edges = append(s.Edges, [2]int64{to.UnixMilli(), r.End.UnixMilli()})
	}
	return s
}

func (s split) hasRollup() bool { return s.RollupTo.After(s.RollupFrom) }

// edgeCondition is the raw-table filter for the edge ranges, coarse on event_time (for
// partition and index pruning) and exact on event_time_ms.
func (s split) edgeCondition() (string, []any) {
	var parts []string
	var args []any
	for _, e := range s.Edges {
		parts = append(parts, "(event_time >= toDateTime(?) AND event_time <= toDateTime(?) AND event_time_ms >= ? AND event_time_ms < ?)")
		args = append(args, floorSec(e[0]), floorSec(e[1]), e[0], e[1])
	}
	return "(" + strings.Join(parts, " OR ") + ")", args
}

func floorSec(ms int64) int64 {
	if ms < 0 {
		return (ms - 999) / 1000
	}
	return ms / 1000
}

// projectsStamp is a set of projects in a page token's fingerprint: nil (no filter) and empty
// (no project) differ.
func projectsStamp(projects []string) string {
	if projects == nil {
		return "*"
	}
	return strings.Join(projects, "\x00")
}

// InvalidError is a problem with the caller's input; the API maps it to InvalidArgument.
type InvalidError struct {
	Field  string
	Reason string
}

func (e *InvalidError) Error() string { return fmt.Sprintf("%s: %s", e.Field, e.Reason) }

// Page sizes.
const (
	DefaultPageSize = 100
	MaxPageSize     = 1000
)

// PageSize applies the default and bounds.
func PageSize(requested int32) (int, error) {
	switch {
	case requested == 0:
		return DefaultPageSize, nil
	case requested < 0 || requested > MaxPageSize:
		return 0, &InvalidError{Field: "page_size", Reason: fmt.Sprintf("must be between 0 and %d", MaxPageSize)}
	}
	return int(requested), nil
}
