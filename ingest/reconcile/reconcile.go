package reconcile

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keytrail/keytrail/ingest/broker"
	"github.com/keytrail/keytrail/ingest/chsink"
	"github.com/keytrail/keytrail/migrations"
)

// Config configures a Reconciler.
type Config struct {
	Conn driver.Conn
	// Sink is the ingester's ClickHouse sink on the same database: its insert fence and
	// query-id tags order repairs against inserts (see doc.go).
	Sink *chsink.Sink
	// Lease, when set, serializes repairs with other processes writing the same database:
	// the broker lease named LeaseName(database), held for each check. Without it only this
	// process's repairs and inserts are serialized.
	Lease *broker.LeaseKey
	// Interval is how often the sweep runs; 0 disables it (redelivery checks still run).
	Interval time.Duration
	// Lookback is how far back the sweep looks, rounded out to whole UTC days.
	Lookback time.Duration
	// KeysPerCheck bounds the keys one comparison reads at once, and so the memory it
	// holds (default 500).
	KeysPerCheck int
	// CellsPerCheck bounds the fine cells (key, service, model, minute) of one of the sweep's
	// comparisons (default 5 000; a comparison holds about 2 KB per cell, every bucketed
	// rollup's cells beside the raw ones, so about 10 MB): KeysPerCheck alone
	// would not bound its memory (a few hot keys can hold most of a day's cells). A single
	// key with more cells is still compared alone.
	CellsPerCheck int
	Registerer    prometheus.Registerer
	Logger        *slog.Logger
	// Now is the clock the sweep's range is measured on; time.Now when nil.
	Now func() time.Time
	// ClockSkew is how far the ingester's clock (ingested_at) may be from ClickHouse's when
	// deciding whether the server restarted after redelivered events were stored (default
	// 5 minutes: a server that started that close to the insert may have cut it).
	ClockSkew time.Duration
}

// Validate reports every problem with the configuration at once.
func (c Config) Validate() error {
	var errs []error
	if c.Conn == nil {
		errs = append(errs, errors.New("reconcile: connection is required"))
	}
	if c.Sink == nil {
		errs = append(errs, errors.New("reconcile: the ingester's sink is required (its insert fence orders repairs against inserts)"))
	}
	if c.Interval < 0 {
		errs = append(errs, fmt.Errorf("reconcile: interval %s must not be negative", c.Interval))
	}
	if c.Interval > 0 && c.Lookback <= 0 {
		errs = append(errs, fmt.Errorf("reconcile: lookback %s must be positive when the sweep runs", c.Lookback))
	}
	if c.KeysPerCheck < 0 {
		errs = append(errs, errors.New("reconcile: keys per check must not be negative"))
	}
	if c.CellsPerCheck < 0 {
		errs = append(errs, errors.New("reconcile: cells per check must not be negative"))
	}
	if c.ClockSkew < 0 {
		errs = append(errs, fmt.Errorf("reconcile: clock skew %s must not be negative", c.ClockSkew))
	}
	return errors.Join(errs...)
}

// Reconciler compares the rollups with usage_events and adds to a rollup what it is
// missing. Create it with New; wrap the ingester's sink with Guard; run the sweep with Run.
type Reconciler struct {
	cfg     Config
	conn    driver.Conn
	sink    *chsink.Sink
	log     *slog.Logger
	metrics *metrics

	// mu is held by the guard around every write and storage check of the ingester and by
	// every comparison: this process never inserts into a cell while it is being compared.
	mu sync.Mutex
	// writeFailed (under mu) records that a write of the ingester failed since its last
	// storage check: the events that check finds stored may come from an insert that
	// stopped half way through its views.
	writeFailed bool

	// afterFirstRead, when set (tests), runs between a bucketed check's first raw read and
	// its fence.
	afterFirstRead func()
	// onGroup, when set (tests), is told the keys of each bucketed comparison.
	onGroup func(keys []string)
}

// New validates the configuration and creates a Reconciler.
func New(cfg Config) (*Reconciler, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.KeysPerCheck == 0 {
		cfg.KeysPerCheck = 500
	}
	if cfg.CellsPerCheck == 0 {
		cfg.CellsPerCheck = 5_000
	}
	if cfg.ClockSkew == 0 {
		cfg.ClockSkew = defaultClockSkew
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Reconciler{
		cfg: cfg, conn: cfg.Conn, sink: cfg.Sink,
		log:     cfg.Logger.With("component", "reconcile"),
		metrics: newMetrics(cfg.Registerer),
	}, nil
}

// Triggers of a check, the label of its metrics.
const (
	TriggerRedelivery = "redelivery"
	TriggerSchedule   = "schedule"
	TriggerManual     = "manual"
)

// Scope is what a check compares: the cells of every bucketed rollup of some UTC days and
// keys and, with AllTime, the all-time rollups' cells of those keys.
type Scope struct {
	Days    []time.Time
	Keys    []string
	AllTime bool
	// grouped says Keys are already one comparison's (the sweep sizes its own groups).
	grouped bool
}

// Report says what a check compared and what it did, per rollup table.
type Report struct {
	HoursChecked  int
	HoursRepaired map[string]int
	CellsRepaired map[string]int
	RowsCorrected map[string]int64
	Deferred      map[string]int
	Excess        map[string]int
	// Unreachable counts all-time cells left alone because they hold history older than
	// the oldest month usage_events retains.
	Unreachable map[string]int
	// repairedHours are the hours behind HoursRepaired, so that comparisons of the same
	// hours (several chunks of keys) count each hour once.
	repairedHours map[string]map[int64]bool
}

// hoursRepaired records that ro's cells of these hours were repaired.
func (r *Report) hoursRepaired(table string, hours map[int64]bool) {
	if r.repairedHours[table] == nil {
		r.repairedHours[table] = map[int64]bool{}
	}
	for h := range hours {
		r.repairedHours[table][h] = true
	}
	r.HoursRepaired[table] = len(r.repairedHours[table])
}

func newReport() Report {
	return Report{HoursRepaired: map[string]int{}, CellsRepaired: map[string]int{}, RowsCorrected: map[string]int64{},
		Deferred: map[string]int{}, Excess: map[string]int{}, Unreachable: map[string]int{}, repairedHours: map[string]map[int64]bool{}}
}

func (r *Report) add(o Report) {
	r.HoursChecked += o.HoursChecked
	for table, hours := range o.repairedHours {
		r.hoursRepaired(table, hours)
	}
	for k, v := range o.CellsRepaired {
		r.CellsRepaired[k] += v
	}
	for k, v := range o.RowsCorrected {
		r.RowsCorrected[k] += v
	}
	for k, v := range o.Deferred {
		r.Deferred[k] += v
	}
	for k, v := range o.Excess {
		r.Excess[k] += v
	}
	for k, v := range o.Unreachable {
		r.Unreachable[k] += v
	}
}

// Repaired is the number of cells corrected in every rollup.
func (r Report) Repaired() int { return sum(r.CellsRepaired) }

// DeferredCells is the number of cells left for a later check.
func (r Report) DeferredCells() int { return sum(r.Deferred) }

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// Check compares and repairs a scope now, as the sweep does after its first look (exposed
// for tests and operators).
func (r *Reconciler) Check(ctx context.Context, s Scope) (Report, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	rep, err := r.check(ctx, s, TriggerManual)
	r.record(TriggerManual, rep, err)
	return rep, err
}

// record counts one run into the metrics.
func (r *Reconciler) record(trigger string, rep Report, err error) {
	r.metrics.runs.WithLabelValues(trigger).Inc()
	if err != nil {
		r.metrics.failures.WithLabelValues(trigger).Inc()
	}
	r.metrics.hoursChecked.WithLabelValues(trigger).Add(float64(rep.HoursChecked))
	for table, n := range rep.HoursRepaired {
		r.metrics.hoursRepaired.WithLabelValues(table).Add(float64(n))
	}
	for table, n := range rep.CellsRepaired {
		r.metrics.cellsRepaired.WithLabelValues(table).Add(float64(n))
		r.metrics.rowsCorrected.WithLabelValues(table).Add(float64(rep.RowsCorrected[table]))
	}
	for table, n := range rep.Deferred {
		r.metrics.deferred.WithLabelValues(table).Add(float64(n))
	}
	for table, n := range rep.Excess {
		r.metrics.excess.WithLabelValues(table).Add(float64(n))
	}
}

// check runs under r.mu, holding Config.Lease when set. What it repaired before an error is
// in the report.
func (r *Reconciler) check(ctx context.Context, s Scope, trigger string) (rep Report, err error) {
	rep = newReport()
	if len(s.Keys) == 0 {
		return rep, nil
	}
	if r.cfg.Lease == nil {
		return r.checkHeld(ctx, s, trigger)
	}
	held := false
	err = r.cfg.Lease.With(ctx, func(ctx context.Context, _ *broker.Lease) error {
		held = true
		rep, err = r.checkHeld(ctx, s, trigger)
		return err
	})
	if !held {
		err = fmt.Errorf("reconcile: take the repair lease: %w", err)
	}
	return rep, err
}

// checkHeld is check once the lease, if any, is held: ctx ends if it is lost.
func (r *Reconciler) checkHeld(ctx context.Context, s Scope, trigger string) (rep Report, err error) {
	rep = newReport()
	days := dayStarts(s.Days)
	keys := slices.Clone(s.Keys)
	sort.Strings(keys)
	keys = slices.Compact(keys)

	// The bucketed comparisons go in groups bounded by cells as well as keys, so that their
	// memory is bounded whatever the keys' traffic (weighedChunks).
	groups := [][]string{keys}
	switch {
	case len(days) == 0:
		groups = slices.Collect(slices.Chunk(keys, r.cfg.KeysPerCheck))
	case !s.grouped:
		if groups, err = r.weighedChunks(ctx, days, keys); err != nil {
			return rep, err
		}
	}
	allTimeKeys := map[string]bool{}
	for _, chunk := range groups {
		if len(days) > 0 {
			if r.onGroup != nil {
				r.onGroup(chunk)
			}
			part, suspect, err := r.checkBucketed(ctx, days, chunk, trigger)
			if err != nil {
				return rep, err
			}
			rep.add(part)
			for k := range suspect {
				allTimeKeys[k] = true
			}
		}
		if s.AllTime {
			for _, k := range chunk {
				allTimeKeys[k] = true
			}
		}
	}
	if len(allTimeKeys) > 0 {
		keys := make([]string, 0, len(allTimeKeys))
		for k := range allTimeKeys {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for chunk := range slices.Chunk(keys, r.cfg.KeysPerCheck) {
			part, err := r.checkAllTime(ctx, chunk, trigger)
			if err != nil {
				return rep, err
			}
			rep.add(part)
		}
	}
	return rep, nil
}

func dayStarts(ts []time.Time) []int64 {
	var days []int64
	for _, t := range ts {
		u := t.Unix()
		days = append(days, u-((u%86400)+86400)%86400)
	}
	slices.Sort(days)
	return slices.Compact(days)
}

// checkBucketed compares the bucketed rollups' cells of some days and keys with the raw rows
// and corrects the short ones. It returns the keys with a short or deferred cell: an insert
// that missed them may have missed the all-time rollups too.
//
// The order of the reads is what makes the comparison exact while inserts go on (doc.go):
//  1. raw, in full;
//  2. the fence (awaitInserts): every insert running now has ended, views included;
//  3. each rollup;
//  4. raw again, counts only, when some cell disagrees (when all agree there is nothing to
//     repair). A fine cell whose count changed between 1 and 4 had an insert land in it
//     meanwhile: the rollup cells it folds into are deferred, not judged.
//  5. corrections, tagged so that a later fence waits for them.
func (r *Reconciler) checkBucketed(ctx context.Context, days []int64, keys []string, trigger string) (Report, map[string]bool, error) {
	rep := newReport()
	suspect := map[string]bool{}
	from, to := days[0], days[len(days)-1]+86400
	args := []any{keys, from, to, days}

	first, err := r.readFine(ctx, false, args)
	if err != nil {
		return rep, nil, err
	}
	if r.afterFirstRead != nil {
		r.afterFirstRead()
	}
	if err := r.awaitInserts(ctx); err != nil {
		return rep, nil, err
	}
	projects, services := map[string]bool{}, map[string]bool{}
	for f := range first {
		projects[f.project], services[f.service] = true, true
	}
	held := map[string]map[cell]amounts{}
	raws := map[string]map[cell]amounts{}
	agree := true
	for _, ro := range migrations.Rollups {
		if ro.AllTime() {
			continue
		}
		if held[ro.Table], err = r.readRollup(ctx, ro, rollupArgs(ro, keys, sortedKeys(projects), sortedKeys(services), from, to, days)); err != nil {
			return rep, nil, err
		}
		raw := map[cell]amounts{}
		for f, a := range first {
			c := fold(ro, f)
			sum := raw[c]
			sum.merge(a)
			raw[c] = sum
		}
		raws[ro.Table] = raw
		agree = agree && allAgree(ro, raw, held[ro.Table])
	}
	// The second raw read tells cells an insert landed in meanwhile; when every cell agrees
	// there is nothing to repair and nothing it could change.
	changed := map[fineCell]bool{}
	if !agree {
		second, err := r.readFine(ctx, true, args)
		if err != nil {
			return rep, nil, err
		}
		for f, a := range first {
			if second[f].add[migrations.Requests] != a.add[migrations.Requests] {
				changed[f] = true
			}
		}
		for f := range second {
			if _, ok := first[f]; !ok {
				changed[f] = true
			}
		}
	}
	hours := map[int64]bool{}
	for f := range first {
		hours[f.minute-f.minute%3600] = true
	}
	rep.HoursChecked = len(hours)

	for _, ro := range migrations.Rollups {
		if ro.AllTime() {
			continue
		}
		raw := raws[ro.Table]
		busy := map[cell]bool{}
		for f := range changed {
			busy[fold(ro, f)] = true
		}
		fixes, err := r.judge(ro, raw, held[ro.Table], busy, 0, &rep)
		if err != nil {
			return rep, nil, err
		}
		for c := range busy {
			suspect[keyOfCell(ro, c)] = true
		}
		if len(fixes) == 0 {
			continue
		}
		if err := r.insert(ctx, ro, fixes); err != nil {
			return rep, nil, err
		}
		buckets := map[int64]bool{}
		for _, f := range fixes {
			suspect[keyOfCell(ro, f.cell)] = true
			buckets[f.cell.bucket-f.cell.bucket%3600] = true
		}
		rep.hoursRepaired(ro.Table, buckets)
		r.logRepair(ro, fixes, trigger)
	}
	return rep, suspect, nil
}

// checkAllTime does for the all-time rollups what checkBucketed does for the bucketed ones,
// over the whole history raw retains of some keys.
func (r *Reconciler) checkAllTime(ctx context.Context, keys []string, trigger string) (Report, error) {
	rep := newReport()
	retainedMs, held, err := r.retainedFrom(ctx)
	if err != nil || !held {
		return rep, err
	}
	for _, ro := range migrations.Rollups {
		if !ro.AllTime() {
			continue
		}
		first, err := r.readAllTimeRaw(ctx, ro, false, keys)
		if err != nil {
			return rep, err
		}
		if err := r.awaitInserts(ctx); err != nil {
			return rep, err
		}
		projects, services := map[string]bool{}, map[string]bool{}
		for c := range first {
			vals := c.dimValues()
			for i, d := range ro.Dims {
				switch d {
				case "project":
					projects[vals[i]] = true
				case "service":
					services[vals[i]] = true
				}
			}
		}
		held, err := r.readRollup(ctx, ro, rollupArgs(ro, keys, sortedKeys(projects), sortedKeys(services), 0, 0, nil))
		if err != nil {
			return rep, err
		}
		busy := map[cell]bool{}
		if !allAgree(ro, first, held) {
			second, err := r.readAllTimeRaw(ctx, ro, true, keys)
			if err != nil {
				return rep, err
			}
			for c, a := range first {
				if second[c].add[migrations.Requests] != a.add[migrations.Requests] {
					busy[c] = true
				}
			}
			for c := range second {
				if _, ok := first[c]; !ok {
					busy[c] = true
				}
			}
		}
		fixes, err := r.judge(ro, first, held, busy, retainedMs, &rep)
		if err != nil {
			return rep, err
		}
		if len(fixes) == 0 {
			continue
		}
		if err := r.insert(ctx, ro, fixes); err != nil {
			return rep, err
		}
		r.logRepair(ro, fixes, trigger)
	}
	return rep, nil
}

// judge compares every cell raw or the rollup holds and returns the corrections; it counts
// deferred, excess and unreachable cells into rep. retainedMs, for an all-time rollup, is
// where raw's history starts: a cell first seen before it holds rows raw no longer has.
func (r *Reconciler) judge(ro migrations.Rollup, raw, held map[cell]amounts, busy map[cell]bool, retainedMs int64, rep *Report) ([]correction, error) {
	var fixes []correction
	var examples []string
	visit := func(c cell) {
		if busy[c] {
			rep.Deferred[ro.Table]++
			return
		}
		h, isHeld := held[c]
		if ro.AllTime() && isHeld && h.add[migrations.Requests] > 0 && h.first < retainedMs {
			rep.Unreachable[ro.Table]++
			return
		}
		switch v, corr := compare(ro, c, raw[c], h); v {
		case short:
			fixes = append(fixes, corr)
		case excess:
			rep.Excess[ro.Table]++
			if len(examples) < 5 {
				examples = append(examples, fmt.Sprintf("%s raw %v rollup %v", describe(ro, c), raw[c].add, h.add))
			}
		}
	}
	for c := range raw {
		visit(c)
	}
	for c := range held {
		if _, ok := raw[c]; !ok {
			visit(c)
		}
	}
	if len(examples) > 0 {
		r.log.Error("rollup holds more than the raw rows (a lost insert cannot cause this; not repaired)",
			"rollup", ro.Table, "cells", rep.Excess[ro.Table], "examples", examples)
	}
	sort.Slice(fixes, func(i, j int) bool {
		if fixes[i].cell.bucket != fixes[j].cell.bucket {
			return fixes[i].cell.bucket < fixes[j].cell.bucket
		}
		return fixes[i].cell.dims < fixes[j].cell.dims
	})
	for _, f := range fixes {
		rep.CellsRepaired[ro.Table]++
		rep.RowsCorrected[ro.Table] += f.add[migrations.Requests]
	}
	return fixes, nil
}

// keyOfCell is the key_id of a cell of ro.
func keyOfCell(ro migrations.Rollup, c cell) string {
	return c.dimValues()[slices.Index(ro.Dims, "key_id")]
}

// allAgree reports whether every cell raw or the rollup holds agrees.
func allAgree(ro migrations.Rollup, raw, held map[cell]amounts) bool {
	for c, a := range raw {
		if v, _ := compare(ro, c, a, held[c]); v != agrees {
			return false
		}
	}
	for c, h := range held {
		if _, ok := raw[c]; !ok {
			if v, _ := compare(ro, c, amounts{}, h); v != agrees {
				return false
			}
		}
	}
	return true
}

func sortedKeys(set map[string]bool) []string {
	out := make([]string, 0, len(set))
	for k := range set {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func describe(ro migrations.Rollup, c cell) string {
	s := ""
	if !ro.AllTime() {
		s = time.Unix(c.bucket, 0).UTC().Format(time.RFC3339) + " "
	}
	return s + fmt.Sprintf("%q", c.dimValues())
}

func (r *Reconciler) logRepair(ro migrations.Rollup, fixes []correction, trigger string) {
	var rows, errs, cost int64
	for _, f := range fixes {
		rows += f.add[migrations.Requests]
		errs += f.add[migrations.Errors]
		cost += f.add[migrations.Cost]
	}
	attrs := []any{"rollup", ro.Table, "trigger", trigger, "cells", len(fixes), "requests", rows, "errors", errs}
	if ro.Column(migrations.Cost) != "" {
		attrs = append(attrs, "cost_micros", cost)
	}
	if !ro.AllTime() {
		attrs = append(attrs, "from", time.Unix(fixes[0].cell.bucket, 0).UTC(), "through", time.Unix(fixes[len(fixes)-1].cell.bucket, 0).UTC())
	}
	r.log.Warn("rollup was missing rows of usage_events (an insert stopped after the raw rows and before this rollup's view); added the difference", attrs...)
}

// retainedFrom is the first millisecond of the oldest month usage_events holds; holds is
// false when it holds nothing.
func (r *Reconciler) retainedFrom(ctx context.Context) (ms int64, holds bool, err error) {
	var partition string
	if err := r.conn.QueryRow(ctx, retainedSQL).Scan(&partition); err != nil {
		return 0, false, fmt.Errorf("reconcile: read the oldest partition of usage_events: %w", err)
	}
	if partition == "" {
		return 0, false, nil
	}
	month, err := strconv.Atoi(partition)
	if err != nil || month < 100001 {
		return 0, false, fmt.Errorf("reconcile: usage_events partition %q is not a toYYYYMM month", partition)
	}
	start := time.Date(month/100, time.Month(month%100), 1, 0, 0, 0, 0, time.UTC)
	return start.UnixMilli(), true, nil
}

// readFine runs fineRawSQL.
func (r *Reconciler) readFine(ctx context.Context, countOnly bool, args []any) (map[fineCell]amounts, error) {
	rows, err := r.conn.Query(ctx, fineRawSQL(countOnly), args...)
	if err != nil {
		return nil, fmt.Errorf("reconcile: read usage_events: %w", err)
	}
	defer rows.Close()
	out := map[fineCell]amounts{}
	for rows.Next() {
		var f fineCell
		var a amounts
		dest := []any{&f.minute, &f.project, &f.key, &f.service, &f.model}
		var raw rawScan
		if countOnly {
			dest = append(dest, &raw.n)
		} else {
			dest = append(dest, raw.dest()...)
		}
		if err := rows.Scan(dest...); err != nil {
			return nil, fmt.Errorf("reconcile: read usage_events: %w", err)
		}
		a = raw.amounts()
		out[f] = a
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reconcile: read usage_events: %w", err)
	}
	return out, nil
}

// readAllTimeRaw runs allTimeRawSQL.
func (r *Reconciler) readAllTimeRaw(ctx context.Context, ro migrations.Rollup, countOnly bool, keys []string) (map[cell]amounts, error) {
	rows, err := r.conn.Query(ctx, allTimeRawSQL(ro, countOnly), keys)
	if err != nil {
		return nil, fmt.Errorf("reconcile: read usage_events for %s: %w", ro.Table, err)
	}
	defer rows.Close()
	out := map[cell]amounts{}
	for rows.Next() {
		dims := make([]string, len(ro.Dims))
		dest := make([]any, 0, len(dims)+9)
		for i := range dims {
			dest = append(dest, &dims[i])
		}
		var raw rawScan
		if countOnly {
			dest = append(dest, &raw.n)
		} else {
			dest = append(dest, raw.dest()...)
		}
		if err := rows.Scan(dest...); err != nil {
			return nil, fmt.Errorf("reconcile: read usage_events for %s: %w", ro.Table, err)
		}
		out[cell{dims: joinDims(dims)}] = raw.amounts()
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reconcile: read usage_events for %s: %w", ro.Table, err)
	}
	return out, nil
}

// rawScan receives the columns of rawMeasures.
type rawScan struct {
	n, errors, in, out  uint64
	cost                int64
	first, last, lastOK int64
	successes           uint64
}

func (s *rawScan) dest() []any {
	return []any{&s.n, &s.errors, &s.in, &s.out, &s.cost, &s.first, &s.last, &s.lastOK, &s.successes}
}

func (s rawScan) amounts() amounts {
	var a amounts
	a.add[migrations.Requests] = int64(s.n)
	a.add[migrations.Errors] = int64(s.errors)
	a.add[migrations.InputTokens] = int64(s.in)
	a.add[migrations.OutputTokens] = int64(s.out)
	a.add[migrations.Cost] = s.cost
	a.first, a.last, a.lastSuccess, a.successes = s.first, s.last, s.lastOK, s.successes
	return a
}

func joinDims(dims []string) string { return strings.Join(dims, dimSep) }

// readRollup runs rollupSQL.
func (r *Reconciler) readRollup(ctx context.Context, ro migrations.Rollup, args []any) (map[cell]amounts, error) {
	rows, err := r.conn.Query(ctx, rollupSQL(ro), args...)
	if err != nil {
		return nil, fmt.Errorf("reconcile: read %s: %w", ro.Table, err)
	}
	defer rows.Close()
	out := map[cell]amounts{}
	for rows.Next() {
		var c cell
		dims := make([]string, len(ro.Dims))
		dest := []any{}
		if !ro.AllTime() {
			dest = append(dest, &c.bucket)
		}
		for i := range dims {
			dest = append(dest, &dims[i])
		}
		unsigned := make([]uint64, len(ro.Columns))
		signed := make([]int64, len(ro.Columns))
		for i, col := range ro.Columns {
			if col.Of == migrations.Cost || !col.Of.Additive() {
				dest = append(dest, &signed[i])
			} else {
				dest = append(dest, &unsigned[i])
			}
		}
		if err := rows.Scan(dest...); err != nil {
			return nil, fmt.Errorf("reconcile: read %s: %w", ro.Table, err)
		}
		c.dims = joinDims(dims)
		var a amounts
		for i, col := range ro.Columns {
			switch col.Of {
			case migrations.Cost:
				a.add[col.Of] = signed[i]
			case migrations.FirstSeen:
				a.first = signed[i]
			case migrations.LastSeen:
				a.last = signed[i]
			case migrations.LastSuccess:
				a.lastSuccess = signed[i]
			default:
				a.add[col.Of] = int64(unsigned[i])
			}
		}
		out[c] = a
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reconcile: read %s: %w", ro.Table, err)
	}
	return out, nil
}

// insert writes the corrections of rollup ro, at most insertChunk cells per statement
// (the states' insert binds its cells into the query text, which max_query_size bounds).
func (r *Reconciler) insert(ctx context.Context, ro migrations.Rollup, fixes []correction) error {
	for chunk := range slices.Chunk(fixes, insertChunk) {
		tagged, err := r.sink.InsertContext(ctx)
		if err != nil {
			return fmt.Errorf("reconcile: %w", err)
		}
		if ro.Aggregating {
			err = r.insertStates(tagged, ro, chunk)
		} else {
			err = r.insertSums(tagged, ro, chunk)
		}
		if err != nil {
			return fmt.Errorf("reconcile: correct %d cells of %s: %w", len(chunk), ro.Table, err)
		}
	}
	return nil
}

const insertChunk = 500

func (r *Reconciler) insertSums(ctx context.Context, ro migrations.Rollup, fixes []correction) error {
	batch, err := r.conn.PrepareBatch(ctx, insertSumsSQL(ro))
	if err != nil {
		return err
	}
	for _, f := range fixes {
		row := []any{}
		if !ro.AllTime() {
			row = append(row, time.Unix(f.cell.bucket, 0).UTC())
		}
		for _, d := range f.cell.dimValues() {
			row = append(row, d)
		}
		for _, c := range ro.Columns {
			if c.Of == migrations.Cost {
				row = append(row, f.add[c.Of])
			} else {
				row = append(row, uint64(f.add[c.Of]))
			}
		}
		if err := batch.Append(row...); err != nil {
			_ = batch.Abort()
			return err
		}
	}
	return batch.Send()
}

func (r *Reconciler) insertStates(ctx context.Context, ro migrations.Rollup, fixes []correction) error {
	query, err := insertStatesSQL(ro)
	if err != nil {
		return err
	}
	var (
		buckets        []int64
		dims           = make([][]string, len(ro.Dims))
		n, e           []uint64
		first, last, s []int64
		ok             []uint64 // not []uint8, which binds as a string
	)
	for _, f := range fixes {
		buckets = append(buckets, f.cell.bucket)
		for i, v := range f.cell.dimValues() {
			dims[i] = append(dims[i], v)
		}
		n = append(n, uint64(f.add[migrations.Requests]))
		e = append(e, uint64(f.add[migrations.Errors]))
		first, last, s = append(first, f.first), append(last, f.last), append(s, f.lastSuccess)
		var had uint64
		if f.successes > 0 {
			had = 1
		}
		ok = append(ok, had)
	}
	args := []any{}
	if !ro.AllTime() {
		args = append(args, buckets)
	}
	for _, d := range dims {
		args = append(args, d)
	}
	args = append(args, n, e, first, last, s, ok)
	return r.conn.Exec(ctx, query, args...)
}
