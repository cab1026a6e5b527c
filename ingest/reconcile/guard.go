package reconcile

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/keytrail/keytrail/event"
	"github.com/keytrail/keytrail/ingest"
	"github.com/keytrail/keytrail/ingest/chsink"
	"github.com/keytrail/keytrail/internal/retry"
)

// Guard wraps the ingester's sink (Config.Sink) so that the rollups are checked where an
// insert can have stopped half way, before the ingester acknowledges anything:
//
//   - Every Write and storage check runs under the reconciler's lock, so a comparison never
//     sees this process's inserts half done.
//   - When the storage check (Classify) finds usage events already stored, they were written
//     by an insert whose acknowledgement never came: a killed ingester's, a write reported as
//     failed, or one cut short by a ClickHouse crash. The cells of their days and keys are
//     compared and repaired before Classify returns. The ingester acknowledges those events
//     only after that, so if the process dies during the check JetStream redelivers them and
//     the next ingester checks again.
//
// The guard embeds the sink, so whatever else the sink offers the ingester (an optional
// interface it looks for) stays visible through it.
func (r *Reconciler) Guard() ingest.Sink { return &guard{Sink: r.sink, r: r} }

type guard struct {
	*chsink.Sink
	r *Reconciler
}

var (
	_ ingest.Sink            = (*guard)(nil)
	_ ingest.Deduper         = (*guard)(nil)
	_ ingest.DeadLetterStore = (*guard)(nil)
)

func (g *guard) Write(ctx context.Context, rows *ingest.Rows) error {
	g.r.mu.Lock()
	defer g.r.mu.Unlock()
	err := g.r.sink.Write(ctx, rows)
	if err != nil {
		g.r.writeFailed = true
	}
	return err
}

func (g *guard) Classify(ctx context.Context, records []ingest.Record) ([]ingest.Presence, error) {
	g.r.mu.Lock()
	defer g.r.mu.Unlock()
	presence, err := g.r.sink.Classify(ctx, records)
	if err != nil {
		return nil, err
	}
	var stored []ingest.Record
	for i, rec := range records {
		if presence[i] == ingest.AlreadyStored && rec.Event.Kind == event.KindUsage {
			stored = append(stored, rec)
		}
	}
	if len(stored) > 0 {
		if err := g.r.afterRedelivery(ctx, stored); err != nil {
			return nil, err
		}
	}
	g.r.writeFailed = false
	return presence, nil
}

// WriteDeadLetters keeps dead letters through the sink, under the lock like its other
// writes (the sink is not safe for concurrent use).
func (g *guard) WriteDeadLetters(ctx context.Context, letters []*ingest.DeadLetter) error {
	g.r.mu.Lock()
	defer g.r.mu.Unlock()
	return g.r.sink.WriteDeadLetters(ctx, letters)
}

// Bounds of the redelivery check's retries of cells another writer was inserting into.
const (
	deferredRetries  = 3
	deferredBackoff  = 200 * time.Millisecond
	defaultClockSkew = 5 * time.Minute
)

// afterRedelivery checks the rollups of the days and keys of usage events a storage check
// found already stored. The bucketed rollups are always compared. The all-time rollups
// (whose check reads the keys' whole history) are compared for every key when the insert
// may have been cut short: this process saw a write fail, or the ClickHouse server started
// after those events were stored (a crash mid-insert); otherwise for the keys the bucketed
// comparison found short. Runs under r.mu.
func (r *Reconciler) afterRedelivery(ctx context.Context, stored []ingest.Record) error {
	var (
		days []time.Time
		keys []string
	)
	for _, rec := range stored {
		days = append(days, rec.Event.Usage.GetTime().AsTime())
		keys = append(keys, rec.Event.Usage.GetKeyId())
	}
	cut := r.writeFailed
	reason := "a write of this ingester failed"
	if !cut {
		restarted, err := r.restartedSince(ctx, stored)
		if err != nil {
			return err
		}
		cut, reason = restarted, "ClickHouse restarted after they were stored"
	}
	scope := Scope{Days: days, Keys: keys, AllTime: cut}
	var deferred int
	err := retry.Do(ctx, retry.Policy{First: deferredBackoff, Max: deferredBackoff, Attempts: deferredRetries}, func(int) error {
		rep, err := r.check(ctx, scope, TriggerRedelivery)
		r.record(TriggerRedelivery, rep, err)
		if err != nil {
			return retry.Permanent(fmt.Errorf("check the rollups of %d redelivered events already stored: %w", len(stored), err))
		}
		if rep.Repaired() > 0 || cut {
			attrs := []any{"events", len(stored), "hours_checked", rep.HoursChecked, "cells_repaired", rep.Repaired(), "all_time_checked", cut}
			if cut {
				attrs = append(attrs, "why", reason)
			}
			r.log.Info("checked the rollups of events an unacknowledged insert had stored", attrs...)
		}
		if deferred = rep.DeferredCells(); deferred > 0 {
			return errCellsBusy
		}
		return nil
	}, nil)
	if errors.Is(err, errCellsBusy) {
		r.log.Warn("rollup cells stayed busy with other writers' inserts; left to the sweep",
			"cells", deferred, "keys", len(slices.Compact(slices.Sorted(slices.Values(keys)))))
		return nil
	}
	return err
}

// errCellsBusy is a check that deferred cells other writers were inserting into: tried again.
var errCellsBusy = errors.New("rollup cells busy with other writers' inserts")

// restartedSince reports whether the ClickHouse server started after (or within ClockSkew
// of) the earliest ingested_at of the given stored events: their insert may have been running
// when it went down.
func (r *Reconciler) restartedSince(ctx context.Context, stored []ingest.Record) (bool, error) {
	var serverStart int64
	if err := r.conn.QueryRow(ctx, serverStartSQL).Scan(&serverStart); err != nil {
		return false, fmt.Errorf("reconcile: read the server's uptime: %w", err)
	}
	earliest := int64(-1)
	// Chunked like the ingester's storage check: ids and keys are bound into the query text.
	for chunk := range slices.Chunk(stored, 1000) {
		var keys, ids []string
		var minT, maxT int64
		for i, rec := range chunk {
			t := rec.Event.Usage.GetTime().AsTime().Unix()
			keys, ids = append(keys, rec.Event.Usage.GetKeyId()), append(ids, rec.Event.Usage.GetEventId())
			if i == 0 || t < minT {
				minT = t
			}
			if i == 0 || t > maxT {
				maxT = t
			}
		}
		var at int64
		var n uint64
		if err := r.conn.QueryRow(ctx, ingestedSQL, keys, ids, minT, maxT).Scan(&at, &n); err != nil {
			return false, fmt.Errorf("reconcile: read when redelivered events were stored: %w", err)
		}
		if n > 0 && (earliest < 0 || at < earliest) {
			earliest = at
		}
	}
	if earliest < 0 {
		return true, nil // not found: assume the worst
	}
	return serverStart >= earliest-int64(r.cfg.ClockSkew/time.Second), nil
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
