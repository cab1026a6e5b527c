package reconcile

import (
	"strings"
	"time"

	"github.com/keytrail/keytrail/migrations"
)

// cell identifies one row of a rollup after merges: its time bucket (Unix seconds of the
// bucket's start, 0 in an all-time table) and its dimension values in Rollup.Dims order,
// joined by dimSep.
type cell struct {
	bucket int64
	dims   string
}

const dimSep = "\x00"

func (c cell) dimValues() []string { return strings.Split(c.dims, dimSep) }

// amounts is what a group of usage_events rows adds up to, or what a rollup holds for a
// cell. The additive quantities are kept as int64 (token sums past 9.2e18 are not a
// concern); the extremes are event_time_ms values.
type amounts struct {
	add                      [migrations.Cost + 1]int64
	first, last, lastSuccess int64
	// successes counts rows with status_code < 400: whether lastSuccess means anything.
	successes uint64
}

func (a *amounts) merge(b amounts) {
	empty := a.add[migrations.Requests] == 0
	for i := range a.add {
		a.add[i] += b.add[i]
	}
	if empty || b.first < a.first {
		a.first = b.first
	}
	if empty || b.last > a.last {
		a.last = b.last
	}
	if b.successes > 0 && (a.successes == 0 || b.lastSuccess > a.lastSuccess) {
		a.lastSuccess = b.lastSuccess
	}
	a.successes += b.successes
}

// fineCell is the finest grouping of usage_events every time-bucketed rollup is folded
// from: one minute of one key x service x model of a project.
type fineCell struct {
	minute                       int64
	project, key, service, model string
}

// dim returns the value of a usage_events dimension column of the fine cell.
func (f fineCell) dim(name string) string {
	switch name {
	case "project":
		return f.project
	case "key_id":
		return f.key
	case "service":
		return f.service
	case "model":
		return f.model
	}
	panic("reconcile: rollup dimension " + name + " is not among the fine cell's (project, key_id, service, model)")
}

// fold maps a fine cell to the cell of rollup r it is counted in.
func fold(r migrations.Rollup, f fineCell) cell {
	width := int64(r.Width / time.Second)
	vals := make([]string, len(r.Dims))
	for i, d := range r.Dims {
		vals[i] = f.dim(d)
	}
	// Buckets start at multiples of their width since the Unix epoch, in UTC: true of
	// toStartOfMinute/FiveMinute/Hour/Day on a DateTime('UTC') column.
	return cell{bucket: f.minute - f.minute%width, dims: strings.Join(vals, dimSep)}
}

// correction is what must be added to one rollup cell for it to equal the raw rows.
type correction struct {
	cell cell
	// add holds raw minus rollup for each additive quantity; the extremes are the raw
	// cell's, which an aggregate of min or max absorbs whatever the rollup already holds.
	add                      [migrations.Cost + 1]int64
	first, last, lastSuccess int64
	successes                uint64
}

// verdict is the outcome of comparing one rollup cell with the raw rows.
type verdict int

const (
	agrees      verdict = iota
	short               // the rollup lacks rows: repairable by adding the difference
	excess              // the rollup holds more than raw (or a difference adding rows cannot express)
	unreachable         // an all-time cell holding history older than what raw retains
)

// compare decides what cell c of rollup r needs, given what raw and the rollup hold.
func compare(r migrations.Rollup, c cell, raw, held amounts) (verdict, correction) {
	corr := correction{cell: c, first: raw.first, last: raw.last, lastSuccess: raw.lastSuccess, successes: raw.successes}
	anyShort := false
	for _, col := range r.Columns {
		if !col.Of.Additive() {
			continue
		}
		d := raw.add[col.Of] - held.add[col.Of]
		if d < 0 {
			return excess, corr
		}
		corr.add[col.Of] = d
		anyShort = anyShort || d > 0
	}
	if !anyShort {
		return agrees, corr
	}
	if r.Aggregating {
		// A correction of an aggregate-state table is built from rows (see insertStates):
		// it can only add whole rows, with errors among them.
		n, e := corr.add[migrations.Requests], corr.add[migrations.Errors]
		if n == 0 || e > n {
			return excess, corr
		}
		for _, col := range r.Columns {
			if col.Of.Additive() && col.Of != migrations.Requests && col.Of != migrations.Errors && corr.add[col.Of] != 0 {
				return excess, corr
			}
		}
	}
	return short, corr
}
