package reconcile

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/keytrail/keytrail/migrations"
)

// Run sweeps every Interval (the first time after a minute, or the interval if shorter)
// until ctx ends. A failed sweep is logged and counted; the next one starts over.
func (r *Reconciler) Run(ctx context.Context) error {
	if r.cfg.Interval <= 0 {
		return nil
	}
	wait := min(r.cfg.Interval, time.Minute)
	for {
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		wait = r.cfg.Interval
		if _, err := r.Sweep(ctx); err != nil && ctx.Err() == nil {
			r.log.Warn("rollup sweep failed; the next one starts over", "error", err)
		}
	}
}

// Sweep checks the bucketed rollups over the UTC days overlapping the last Lookback, and the
// all-time rollups of the keys it found short. Its first look compares requests per (hour,
// key) of each rollup with usage_events without holding up the ingester; only the days and
// keys that look short are then checked exactly (Check's comparison, under the lock).
func (r *Reconciler) Sweep(ctx context.Context) (Report, error) {
	rep, err := r.sweep(ctx)
	r.record(TriggerSchedule, rep, err)
	if err == nil {
		r.metrics.lastSweep.Set(float64(r.cfg.Now().Unix()))
		attrs := []any{"hours_checked", rep.HoursChecked, "cells_repaired", rep.Repaired(), "cells_deferred", rep.DeferredCells(), "cells_excess", sum(rep.Excess)}
		if rep.Repaired()+rep.DeferredCells()+sum(rep.Excess) > 0 {
			r.log.Warn("rollup sweep found rollups that disagree with usage_events", attrs...)
		} else {
			r.log.Debug("rollup sweep: every rollup agrees with usage_events", attrs...)
		}
	}
	return rep, err
}

func (r *Reconciler) sweep(ctx context.Context) (Report, error) {
	now := r.cfg.Now().UTC()
	from := now.Add(-r.cfg.Lookback).Truncate(24 * time.Hour)
	to := now.Truncate(24 * time.Hour).Add(24 * time.Hour)
	rep := newReport()
	rep.HoursChecked = int(now.Truncate(time.Hour).Add(time.Hour).Sub(from) / time.Hour)

	// First look: (day, key) pairs some rollup counts fewer requests of than raw holds.
	candidates := map[int64]map[string]bool{}
	for _, ro := range migrations.Rollups {
		if ro.AllTime() {
			continue
		}
		if err := r.shortPairs(ctx, ro, from.Unix(), to.Unix(), candidates); err != nil {
			return rep, err
		}
	}
	if len(candidates) == 0 {
		return rep, nil
	}
	days := make([]int64, 0, len(candidates))
	for d := range candidates {
		days = append(days, d)
	}
	sort.Slice(days, func(i, j int) bool { return days[i] < days[j] })

	for _, day := range days {
		chunks, err := r.weighedChunks(ctx, []int64{day}, sortedKeys(candidates[day]))
		if err != nil {
			return rep, err
		}
		// The lock is taken per comparison, not for the whole sweep: the ingester's inserts
		// go on between them (each comparison is exact on its own, see checkBucketed).
		for _, keys := range chunks {
			r.mu.Lock()
			part, err := r.check(ctx, Scope{Days: []time.Time{time.Unix(day, 0)}, Keys: keys, grouped: true}, TriggerSchedule)
			r.mu.Unlock()
			part.HoursChecked = 0 // counted above: the first look compared every hour
			rep.add(part)
			if err != nil {
				return rep, err
			}
		}
	}
	return rep, nil
}

// weighedChunks splits keys (sorted, unique) into bucketed comparisons of some days: in key
// order, each at most KeysPerCheck keys and CellsPerCheck fine cells of usage_events in those
// days (a key with more cells alone). The cells are counted by ClickHouse's uniq, which is
// exact for small sets and within a few percent beyond: close enough to size a comparison.
func (r *Reconciler) weighedChunks(ctx context.Context, days []int64, keys []string) ([][]string, error) {
	from, to := days[0], days[len(days)-1]+86400
	cellsOf := make(map[string]uint64, len(keys))
	for chunk := range slices.Chunk(keys, r.cfg.KeysPerCheck*10) {
		rows, err := r.conn.Query(ctx, keyCellsSQL, chunk, from, to, days)
		if err != nil {
			return nil, fmt.Errorf("reconcile: count the cells of the keys to compare: %w", err)
		}
		for rows.Next() {
			var key string
			var n uint64
			if err := rows.Scan(&key, &n); err != nil {
				rows.Close()
				return nil, fmt.Errorf("reconcile: count the cells of the keys to compare: %w", err)
			}
			cellsOf[key] = n
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return nil, fmt.Errorf("reconcile: count the cells of the keys to compare: %w", err)
		}
	}
	var (
		chunks [][]string
		cur    []string
		sum    uint64
	)
	for _, k := range keys {
		n := cellsOf[k]
		if len(cur) > 0 && (len(cur) == r.cfg.KeysPerCheck || sum+n > uint64(r.cfg.CellsPerCheck)) {
			chunks, cur, sum = append(chunks, cur), nil, 0
		}
		cur, sum = append(cur, k), sum+n
	}
	if len(cur) > 0 {
		chunks = append(chunks, cur)
	}
	return chunks, nil
}

// shortPairs adds to candidates the (day, key) pairs of shortHoursSQL's answer for ro.
func (r *Reconciler) shortPairs(ctx context.Context, ro migrations.Rollup, from, to int64, candidates map[int64]map[string]bool) error {
	rows, err := r.conn.Query(ctx, shortHoursSQL(ro), from, to, from, to)
	if err != nil {
		return fmt.Errorf("reconcile: compare %s with usage_events per hour: %w", ro.Table, err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			hour        int64
			key         string
			raw, rollup uint64
		)
		if err := rows.Scan(&hour, &key, &raw, &rollup); err != nil {
			return fmt.Errorf("reconcile: compare %s with usage_events per hour: %w", ro.Table, err)
		}
		day := hour - hour%86400
		if candidates[day] == nil {
			candidates[day] = map[string]bool{}
		}
		candidates[day][key] = true
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("reconcile: compare %s with usage_events per hour: %w", ro.Table, err)
	}
	return nil
}
