package reconcile_test

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keytrail/keytrail/event"
	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/ingest"
	"github.com/keytrail/keytrail/ingest/chsink"
	"github.com/keytrail/keytrail/ingest/reconcile"
	"github.com/keytrail/keytrail/internal/testenv"
	"github.com/keytrail/keytrail/migrations"
)

// newReconciler makes a reconciler on db with its metrics in a registry of its own.
func newReconciler(t *testing.T, db *testenv.Database, tune func(*reconcile.Config)) (*reconcile.Reconciler, *prometheus.Registry) {
	t.Helper()
	sink, err := chsink.New(chsink.Config{Conn: db.Conn})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	cfg := reconcile.Config{Conn: db.Conn, Sink: sink, Registerer: reg}
	if tune != nil {
		tune(&cfg)
	}
	r, err := reconcile.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r, reg
}

// events builds n usage events from start, step apart: five keys of two projects, three
// services, two models, a quarter of them errors, every third without a client IP.
func events(prefix string, start time.Time, step time.Duration, n int) []*keytrailv1.UsageEvent {
	out := make([]*keytrailv1.UsageEvent, n)
	for i := range out {
		out[i] = &keytrailv1.UsageEvent{
			EventId: fmt.Sprintf("%s-%04d", prefix, i), Time: timestamppb.New(start.Add(time.Duration(i) * step)),
			Project: []string{"acme", "globex"}[i%5%2], KeyId: fmt.Sprintf("key_%d", i%5), Service: fmt.Sprintf("svc-%d", i%3),
			Model: []string{"gpt-4o", "claude"}[i%2], StatusCode: []uint32{200, 200, 503, 201}[i%4],
			InputTokens: uint64(10 + i%17), OutputTokens: uint64(i % 5), CostMicros: int64(100 + i%13),
			ClientIp: []string{"10.0.0.1", "10.0.0.2", ""}[i%3],
		}
	}
	return out
}

func insert(t *testing.T, db *testenv.Database, evs []*keytrailv1.UsageEvent) {
	t.Helper()
	all := make([]any, len(evs))
	for i, e := range evs {
		all[i] = e
	}
	testenv.Insert(t, db, all...)
}

// withViewsDetached inserts evs while the views of the given rollups are detached: those
// rollups miss exactly these rows, as when an insert stops after its raw part.
func withViewsDetached(t *testing.T, db *testenv.Database, rollups []string, evs []*keytrailv1.UsageEvent) {
	t.Helper()
	ctx := context.Background()
	for _, r := range rollups {
		if err := db.Conn.Exec(ctx, "DETACH TABLE "+r+"_mv"); err != nil {
			t.Fatal(err)
		}
	}
	insert(t, db, evs)
	for _, r := range rollups {
		if err := db.Conn.Exec(ctx, "ATTACH TABLE "+r+"_mv"); err != nil {
			t.Fatal(err)
		}
	}
}

func allTables() []string {
	var out []string
	for _, r := range migrations.Rollups {
		out = append(out, r.Table)
	}
	return out
}

// expected is what a check must report for rollups that missed exactly evs: per table, the
// cells evs fall in, the hours (days for spend_daily) of those cells, and the rows.
type expected struct {
	cells, hours map[string]int
	rows         map[string]int64
}

func expect(tables []string, evs []*keytrailv1.UsageEvent) expected {
	e := expected{cells: map[string]int{}, hours: map[string]int{}, rows: map[string]int64{}}
	for _, r := range migrations.Rollups {
		if !slices.Contains(tables, r.Table) {
			continue
		}
		cells, hours := map[string]bool{}, map[int64]bool{}
		for _, ev := range evs {
			if r.Filter != "" && ev.GetClientIp() == "" {
				continue
			}
			vals := map[string]string{"project": ev.GetProject(), "key_id": ev.GetKeyId(), "service": ev.GetService(), "model": ev.GetModel(), "client_ip": ev.GetClientIp()}
			id := ""
			for _, d := range r.Dims {
				id += vals[d] + "|"
			}
			if !r.AllTime() {
				sec := ev.GetTime().AsTime().Unix()
				bucket := sec - sec%int64(r.Width/time.Second)
				id = fmt.Sprint(bucket) + "|" + id
				hours[bucket-bucket%3600] = true
			}
			cells[id] = true
			e.rows[r.Table]++
		}
		e.cells[r.Table] = len(cells)
		if !r.AllTime() {
			e.hours[r.Table] = len(hours)
		}
	}
	return e
}

func (e expected) check(t *testing.T, rep reconcile.Report) {
	t.Helper()
	if !maps.Equal(rep.CellsRepaired, e.cells) {
		t.Errorf("cells repaired %v, want %v", rep.CellsRepaired, e.cells)
	}
	if !maps.Equal(rep.RowsCorrected, e.rows) {
		t.Errorf("rows corrected %v, want %v", rep.RowsCorrected, e.rows)
	}
	if !maps.Equal(rep.HoursRepaired, e.hours) {
		t.Errorf("hours repaired %v, want %v", rep.HoursRepaired, e.hours)
	}
	if rep.DeferredCells() != 0 || len(nonZero(rep.Excess)) != 0 || len(nonZero(rep.Unreachable)) != 0 {
		t.Errorf("deferred %v, excess %v, unreachable %v; want none", rep.Deferred, rep.Excess, rep.Unreachable)
	}
}

func nonZero(m map[string]int) map[string]int {
	out := map[string]int{}
	for k, v := range m {
		if v != 0 {
			out[k] = v
		}
	}
	return out
}

func scopeOf(evs []*keytrailv1.UsageEvent, allTime bool) reconcile.Scope {
	s := reconcile.Scope{AllTime: allTime}
	for _, e := range evs {
		s.Days = append(s.Days, e.GetTime().AsTime())
		s.Keys = append(s.Keys, e.GetKeyId())
	}
	return s
}

func wantExact(t *testing.T, db *testenv.Database) {
	t.Helper()
	if m := testenv.RollupMismatches(t, db.Conn, 5); len(m) > 0 {
		t.Errorf("rollups differ from usage_events:\n%s", strings.Join(m, "\n"))
	}
}

func wantShort(t *testing.T, db *testenv.Database) {
	t.Helper()
	if len(testenv.RollupMismatches(t, db.Conn, 1)) == 0 {
		t.Fatal("the rollups agree with usage_events before the check: the setup did not make them short")
	}
}

// Every rollup misses one insert, whose rows share most cells (minute, key, service, model)
// with an earlier complete insert and hold the first, last and last successful request of
// many of them. The check must add exactly the missing rows to exactly those cells: after
// it every cell of every rollup equals the raw rows, counts, sums and first/last seen alike.
// A second check finds nothing.
func TestCheckAddsWhatEveryViewMissed(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.ClickHouse(t)
	rec, reg := newReconciler(t, db, nil)
	all := events("ev", time.Date(2026, 11, 20, 22, 50, 0, 0, time.UTC), 13*time.Second, 900) // 22:50 to 02:05 next day
	var kept, missed []*keytrailv1.UsageEvent
	for i, e := range all {
		if i%3 == 0 || i%50 < 4 {
			missed = append(missed, e)
		} else {
			kept = append(kept, e)
		}
	}
	insert(t, db, kept)
	withViewsDetached(t, db, allTables(), missed)
	wantShort(t, db)

	rep, err := rec.Check(ctx, scopeOf(missed, true))
	if err != nil {
		t.Fatal(err)
	}
	expect(allTables(), missed).check(t, rep)
	if rep.HoursChecked != 5 {
		t.Errorf("hours checked %d, want 5 (22:00 to 02:00 hold the keys' rows)", rep.HoursChecked)
	}
	wantExact(t, db)
	if got := testenv.Metric(t, reg, "keytrail_reconcile_rows_corrected_total", "rollup", "spend_hourly"); got != float64(len(missed)) {
		t.Errorf("keytrail_reconcile_rows_corrected_total{rollup=spend_hourly} = %v, want %d", got, len(missed))
	}

	again, err := rec.Check(ctx, scopeOf(all, true))
	if err != nil {
		t.Fatal(err)
	}
	if again.Repaired() != 0 || len(nonZero(again.Excess)) != 0 {
		t.Errorf("second check repaired %v, excess %v; want nothing", again.CellsRepaired, again.Excess)
	}
	t.Logf("repaired %v cells, %v rows", rep.CellsRepaired, rep.RowsCorrected)
}

// The sweep is told nothing: it must find, in the days of its lookback, the rollups that
// missed an insert (two bucketed ones and an all-time one) and repair them exactly; the
// keys of the other insert are left alone.
func TestSweepFindsAndRepairsShortRollups(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.ClickHouse(t)
	now := time.Date(2026, 11, 21, 10, 30, 0, 0, time.UTC)
	rec, _ := newReconciler(t, db, func(c *reconcile.Config) {
		c.Lookback = 24 * time.Hour
		c.Now = func() time.Time { return now }
	})
	evs := events("sw", now.Add(-3*time.Hour), 7*time.Second, 600)
	insert(t, db, evs[:300])
	short := []string{"spend_hourly", "usage_by_service_minute", "key_client_ip_totals"}
	withViewsDetached(t, db, short, evs[300:])
	// Older than the lookback's first day: not swept.
	old := events("old", time.Date(2026, 11, 19, 12, 0, 0, 0, time.UTC), time.Minute, 10)
	withViewsDetached(t, db, []string{"spend_hourly"}, old)

	rep, err := rec.Sweep(ctx)
	if err != nil {
		t.Fatal(err)
	}
	expect(short, evs[300:]).check(t, rep)
	if want := 35; rep.HoursChecked != want { // 2026-11-20 00:00 to 2026-11-21 11:00
		t.Errorf("hours checked %d, want %d", rep.HoursChecked, want)
	}
	m := testenv.RollupMismatches(t, db.Conn, 100)
	if len(m) != 10 || !allPrefixed(m, fmt.Sprintf("spend_hourly bucket %d ", old[0].GetTime().AsTime().Unix())) {
		t.Errorf("after the sweep, want only the 10 spend_hourly cells of 2026-11-19 short, got:\n%s", strings.Join(m, "\n"))
	}
}

// usageRecords turns events into what the ingester hands its sink.
func usageRecords(evs []*keytrailv1.UsageEvent, firstSeq uint64) []ingest.Record {
	out := make([]ingest.Record, len(evs))
	for i, e := range evs {
		out[i] = ingest.Record{Event: event.Event{Kind: event.KindUsage, Usage: e}, StreamSeq: firstSeq + uint64(i), MaybeStored: true, ContentHash: 1000 + uint64(i)}
	}
	return out
}

// The ingester's path: a batch whose insert stopped after the raw part (views detached) is
// redelivered; the guarded storage check finds it stored and repairs its rollups before it
// returns. An all-time rollup that alone missed an insert is repaired only when the insert
// may have been cut (here: a write of this ingester failed); otherwise the bucketed rollups
// are compared and it is left for the case where they show the insert was cut.
func TestRedeliveryCheckRepairsBeforeTheBatchIsAcknowledged(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.ClickHouse(t)
	// A test server may have started minutes ago (a fresh CI machine): the default 5-minute
	// skew would read that as a restart after the insert and check every all-time rollup.
	rec, _ := newReconciler(t, db, func(c *reconcile.Config) { c.ClockSkew = time.Second })
	sink := rec.Guard()
	deduper := sink.(ingest.Deduper)

	// 1. Bucketed and all-time rollups missed the batch.
	batch := usageRecords(events("rd", time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC), 11*time.Second, 400), 1)
	for _, v := range []string{"spend_daily", "key_service_totals"} {
		if err := db.Conn.Exec(ctx, "DETACH TABLE "+v+"_mv"); err != nil {
			t.Fatal(err)
		}
	}
	if err := sink.Write(ctx, ingest.RowsOf(batch)); err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"spend_daily", "key_service_totals"} {
		if err := db.Conn.Exec(ctx, "ATTACH TABLE "+v+"_mv"); err != nil {
			t.Fatal(err)
		}
	}
	wantShort(t, db)
	presence, err := deduper.Classify(ctx, batch)
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range presence {
		if p != ingest.AlreadyStored {
			t.Fatalf("record %d: presence %v, want AlreadyStored", i, p)
		}
	}
	wantExact(t, db)

	// 2. Only an all-time rollup missed the next batch, and the write succeeded.
	batch2 := usageRecords(events("rd2", time.Date(2026, 11, 20, 14, 0, 0, 0, time.UTC), 11*time.Second, 50), 401)
	if err := db.Conn.Exec(ctx, "DETACH TABLE key_client_ip_totals_mv"); err != nil {
		t.Fatal(err)
	}
	if err := sink.Write(ctx, ingest.RowsOf(batch2)); err != nil {
		t.Fatal(err)
	}
	if err := db.Conn.Exec(ctx, "ATTACH TABLE key_client_ip_totals_mv"); err != nil {
		t.Fatal(err)
	}
	if _, err := deduper.Classify(ctx, batch2); err != nil {
		t.Fatal(err)
	}
	m := testenv.RollupMismatches(t, db.Conn, 100)
	if len(m) == 0 || !allPrefixed(m, "key_client_ip_totals ") {
		t.Fatalf("want only key_client_ip_totals short (not checked: no sign the insert was cut), got:\n%s", strings.Join(m, "\n"))
	}

	// 3. A failed write is such a sign: the next storage check compares the all-time rollups
	// of every key it finds stored.
	if err := db.Conn.Exec(ctx, "DETACH TABLE usage_events"); err != nil {
		t.Fatal(err)
	}
	err = sink.Write(ctx, ingest.RowsOf(usageRecords(events("rd3", time.Date(2026, 11, 20, 15, 0, 0, 0, time.UTC), time.Second, 5), 451)))
	if err := db.Conn.Exec(ctx, "ATTACH TABLE usage_events"); err != nil {
		t.Fatal(err)
	}
	if err == nil {
		t.Fatal("a write into a detached usage_events succeeded")
	}
	if _, err := deduper.Classify(ctx, batch2); err != nil {
		t.Fatal(err)
	}
	wantExact(t, db)
}

func allPrefixed(lines []string, prefix string) bool {
	for _, l := range lines {
		if !strings.HasPrefix(l, prefix) {
			return false
		}
	}
	return true
}

// An insert that lands in cells being compared (between the check's first and second raw
// read) makes them busy: they are deferred, not judged, whatever that insert did to the
// rollups; the next check repairs them exactly.
func TestCellsWrittenDuringACheckAreDeferred(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.ClickHouse(t)
	rec, _ := newReconciler(t, db, nil)
	base := time.Date(2026, 11, 20, 9, 0, 0, 0, time.UTC)
	evs := events("busy", base, 5*time.Second, 200)
	insert(t, db, evs[:100])
	withViewsDetached(t, db, []string{"spend_hourly"}, evs[100:])
	// During the check, one more event lands in the cell of evs[150] (same hour, key,
	// service, model), through every view.
	late := events("late", base, 5*time.Second, 200)[150]
	late.EventId = "late-one"
	landed := false
	reconcile.SetAfterFirstRead(rec, func() {
		if !landed {
			landed = true
			insert(t, db, []*keytrailv1.UsageEvent{late})
		}
	})
	rep, err := rec.Check(ctx, scopeOf(evs, false))
	if err != nil {
		t.Fatal(err)
	}
	if rep.Deferred["spend_hourly"] != 1 {
		t.Errorf("deferred %v, want spend_hourly: 1 (the cell the late event landed in)", rep.Deferred)
	}
	missed := expect([]string{"spend_hourly"}, evs[100:])
	if want := missed.cells["spend_hourly"] - 1; rep.CellsRepaired["spend_hourly"] != want {
		t.Errorf("repaired %v, want spend_hourly: %d (all short cells but the busy one)", rep.CellsRepaired, want)
	}
	if m := testenv.RollupMismatches(t, db.Conn, 10); len(m) != 1 {
		t.Errorf("want the one deferred spend_hourly cell still short, got %q", m)
	}
	rep, err = rec.Check(ctx, scopeOf(evs, false))
	if err != nil {
		t.Fatal(err)
	}
	if rep.CellsRepaired["spend_hourly"] != 1 || rep.DeferredCells() != 0 {
		t.Errorf("second check repaired %v, deferred %v; want the one cell, nothing deferred", rep.CellsRepaired, rep.Deferred)
	}
	wantExact(t, db)
}

// An insert whose raw rows are stored while its views are still running (a view named to
// run first sleeps) looks like a short rollup. The check must wait for it (the fence)
// instead of adding what its views are about to add: no repair, and every rollup exact
// once it ends.
func TestCheckWaitsForAnInsertWhoseViewsAreStillRunning(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.ClickHouse(t)
	rec, _ := newReconciler(t, db, nil)
	evs := events("slow", time.Date(2026, 11, 20, 9, 0, 0, 0, time.UTC), 5*time.Second, 50)
	// 18.16 runs an insert's views one after the other in name order.
	for _, q := range []string{
		"CREATE TABLE aaa_slow (n UInt64) ENGINE = Memory",
		"CREATE MATERIALIZED VIEW aaa_slow_mv TO aaa_slow AS SELECT count() AS n FROM usage_events WHERE sleep(2) = 0",
	} {
		if err := db.Conn.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		insert(t, db, evs)
	}()
	// Wait for the window: raw rows stored, the rollups' views not run yet.
	testenv.Eventually(t, 10*time.Second, func() error {
		raw := testenv.QueryUint64(t, db.Conn, "SELECT count() FROM usage_events")
		rolled := testenv.QueryUint64(t, db.Conn, "SELECT sum(requests) FROM spend_hourly")
		if raw != 50 || rolled != 0 {
			return fmt.Errorf("raw %d, spend_hourly %d: not between the raw part and the views", raw, rolled)
		}
		return nil
	})
	rep, err := rec.Check(ctx, scopeOf(evs, true))
	<-done
	if err != nil {
		t.Fatal(err)
	}
	if rep.Repaired() != 0 || rep.DeferredCells() != 0 {
		t.Errorf("repaired %v, deferred %v; want nothing (the insert's views were still running)", rep.CellsRepaired, rep.Deferred)
	}
	wantExact(t, db)
}

// A rollup cell holding more than the raw rows (not something a lost insert does) is
// reported and left alone; so is an all-time cell holding history older than what raw
// retains (a dropped month). Cells beside them are still repaired.
func TestExcessAndRetentionAreNotRepaired(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.ClickHouse(t)
	rec, _ := newReconciler(t, db, nil)
	october := events("oct", time.Date(2026, 10, 30, 9, 0, 0, 0, time.UTC), time.Minute, 10)
	november := events("nov", time.Date(2026, 11, 20, 9, 0, 0, 0, time.UTC), time.Minute, 10)
	insert(t, db, october)
	insert(t, db, november)
	if err := db.Conn.Exec(ctx, "ALTER TABLE usage_events DROP PARTITION 202610"); err != nil {
		t.Fatal(err)
	}
	// key_9 only ever used in November, and its insert missed every all-time view.
	fresh := events("fresh", time.Date(2026, 11, 20, 10, 0, 0, 0, time.UTC), time.Minute, 3)
	for _, e := range fresh {
		e.KeyId, e.ClientIp = "key_9", "10.9.9.9"
	}
	withViewsDetached(t, db, []string{"key_service_totals", "key_client_ip_totals"}, fresh)
	// An extra spend_hourly row out of nowhere.
	if err := db.Conn.Exec(ctx, "INSERT INTO spend_hourly (hour, project, key_id, service, model, requests, errors, total_input_tokens, total_output_tokens, total_cost_micros) SELECT toDateTime('2026-11-20 09:00:00', 'UTC'), 'acme', 'key_0', 'svc-0', 'gpt-4o', 5, 0, 0, 0, 0"); err != nil {
		t.Fatal(err)
	}

	keys := append(scopeOf(november, true).Keys, "key_9")
	rep, err := rec.Check(ctx, reconcile.Scope{Days: scopeOf(november, true).Days, Keys: keys, AllTime: true})
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(nonZero(rep.Excess), map[string]int{"spend_hourly": 1}) {
		t.Errorf("excess %v, want spend_hourly: 1", rep.Excess)
	}
	// October's pairs: key_0..key_4 x their services; the client-IP pairs likewise.
	if rep.Unreachable["key_service_totals"] == 0 || rep.Unreachable["key_client_ip_totals"] == 0 {
		t.Errorf("unreachable %v: want the all-time cells first seen in the dropped October", rep.Unreachable)
	}
	if !maps.Equal(nonZero(rep.CellsRepaired), map[string]int{"key_service_totals": 3, "key_client_ip_totals": 2}) {
		t.Errorf("repaired %v, want key_9's cells: key_service_totals 3 (three services), key_client_ip_totals 2 (two projects)", rep.CellsRepaired)
	}
	var extra uint64
	if err := db.Conn.QueryRow(ctx, "SELECT sum(requests) FROM spend_hourly WHERE key_id = 'key_0' AND hour = toDateTime('2026-11-20 09:00:00', 'UTC') AND service = 'svc-0' AND model = 'gpt-4o'").Scan(&extra); err != nil {
		t.Fatal(err)
	}
	if extra != 5+1 { // the bogus row and November's one event in that cell (event 0)
		t.Errorf("spend_hourly cell holds %d requests, want 6 (left alone)", extra)
	}
}

// A redelivery check that finds cells another writer is inserting into tries again, at most
// deferredRetries (3) times in all: once the other writer is done the cells are repaired
// before the storage check returns; while it never is, the check gives up on them (the sweep
// will find them) and the events are still acknowledged.
func TestRedeliveryCheckRetriesBusyCells(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		busyTimes int // checks during which another insert lands in a compared cell
		wantCalls int
		wantSweep bool
	}{
		{name: "busy once", busyTimes: 1, wantCalls: 2},
		{name: "always busy", busyTimes: 100, wantCalls: 3, wantSweep: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			db := testenv.ClickHouse(t)
			logs := &testenv.SyncBuffer{}
			rec, _ := newReconciler(t, db, func(c *reconcile.Config) { c.Logger = slog.New(slog.NewTextHandler(logs, nil)) })
			base := time.Date(2026, 11, 20, 9, 0, 0, 0, time.UTC)
			evs := events("rb", base, 5*time.Second, 100)
			withViewsDetached(t, db, []string{"spend_hourly"}, evs)
			calls := 0
			reconcile.SetAfterFirstRead(rec, func() {
				calls++
				if calls <= tc.busyTimes {
					late := events("rb", base, 5*time.Second, 100)[50]
					late.EventId = fmt.Sprintf("late-%d", calls)
					insert(t, db, []*keytrailv1.UsageEvent{late})
				}
			})
			records := make([]ingest.Record, len(evs))
			for i, e := range evs {
				records[i] = ingest.Record{Event: event.Event{Kind: event.KindUsage, Usage: e}, StreamSeq: uint64(i + 1), MaybeStored: true}
			}
			presence, err := rec.Guard().(ingest.Deduper).Classify(ctx, records)
			if err != nil {
				t.Fatal(err)
			}
			for i, p := range presence {
				if p != ingest.AlreadyStored {
					t.Fatalf("record %d: presence %v, want AlreadyStored", i, p)
				}
			}
			if calls != tc.wantCalls {
				t.Errorf("%d checks, want %d", calls, tc.wantCalls)
			}
			if got := strings.Contains(logs.String(), "left to the sweep"); got != tc.wantSweep {
				t.Errorf("left to the sweep: %v, want %v; log:\n%s", got, tc.wantSweep, logs.String())
			}
			if !tc.wantSweep {
				wantExact(t, db)
			} else if m := testenv.RollupMismatches(t, db.Conn, 10); len(m) != 1 {
				t.Errorf("want the one busy spend_hourly cell still short, got %q", m)
			}
		})
	}
}

// The sweep's comparisons are sized by the cells they read, not only by their keys: with a
// bound of 45 cells, 20 cells per key go two keys at a time, and a key with more cells than
// the bound is compared alone. Every short rollup is still repaired.
func TestSweepComparisonsAreBoundedByCells(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.ClickHouse(t)
	now := time.Date(2026, 11, 21, 10, 30, 0, 0, time.UTC)
	rec, _ := newReconciler(t, db, func(c *reconcile.Config) {
		c.Lookback = 24 * time.Hour
		c.CellsPerCheck = 45
		c.Now = func() time.Time { return now }
	})
	// One event a minute, so every row is a cell of its own: key_0..key_4 with 20 each, and
	// key_5 with 50, all of one day.
	evs := events("rc", now.Add(-3*time.Hour), time.Minute, 100)
	for i, e := range events("hot", now.Add(-2*time.Hour), time.Minute, 50) {
		e.KeyId, e.Project = "key_5", "acme"
		e.EventId = fmt.Sprintf("hot-%04d", i)
		evs = append(evs, e)
	}
	short := []string{"usage_key_hourly", "spend_daily"}
	withViewsDetached(t, db, short, evs)

	day := now.Truncate(24 * time.Hour).Unix()
	chunks, err := reconcile.WeighedChunks(rec, ctx, day, []string{"key_4", "key_0", "key_5", "key_2", "key_1", "key_3", "key_unknown"})
	if err != nil {
		t.Fatal(err)
	}
	want := [][]string{{"key_0", "key_1"}, {"key_2", "key_3"}, {"key_4"}, {"key_5"}, {"key_unknown"}}
	if !slices.EqualFunc(chunks, want, slices.Equal[[]string]) {
		t.Errorf("comparisons %v, want %v", chunks, want)
	}

	rep, err := rec.Sweep(ctx)
	if err != nil {
		t.Fatal(err)
	}
	expect(short, evs).check(t, rep)
	if m := testenv.RollupMismatches(t, db.Conn, 100); len(m) != 0 {
		t.Errorf("after the sweep, rollups still short:\n%s", strings.Join(m, "\n"))
	}
}

// The check after a redelivery groups its comparisons by cells too: a redelivered batch of
// hot keys does not make one comparison hold all their cells at once.
func TestRedeliveryCheckComparisonsAreBoundedByCells(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.ClickHouse(t)
	rec, _ := newReconciler(t, db, func(c *reconcile.Config) {
		c.CellsPerCheck = 45
		c.ClockSkew = time.Second
	})
	var groups [][]string
	reconcile.SetOnGroup(rec, func(keys []string) { groups = append(groups, slices.Clone(keys)) })
	sink := rec.Guard()

	// One event a minute: key_0..key_4 with 20 cells each, key_5 with 50.
	start := time.Date(2026, 11, 20, 8, 0, 0, 0, time.UTC)
	evs := events("rb", start, time.Minute, 100)
	for i, e := range events("rbhot", start, time.Minute, 50) {
		e.KeyId, e.Project = "key_5", "acme"
		e.EventId = fmt.Sprintf("rbhot-%04d", i)
		evs = append(evs, e)
	}
	batch := usageRecords(evs, 1)
	if err := sink.Write(ctx, ingest.RowsOf(batch)); err != nil {
		t.Fatal(err)
	}
	presence, err := sink.(ingest.Deduper).Classify(ctx, batch)
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range presence {
		if p != ingest.AlreadyStored {
			t.Fatalf("record %d: presence %v, want AlreadyStored", i, p)
		}
	}
	want := [][]string{{"key_0", "key_1"}, {"key_2", "key_3"}, {"key_4"}, {"key_5"}}
	if !slices.EqualFunc(groups, want, slices.Equal[[]string]) {
		t.Errorf("comparisons %v, want %v", groups, want)
	}
}
