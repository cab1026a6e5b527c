package bench

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keytrail/keytrail/event"
	"github.com/keytrail/keytrail/event/decode"
	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/ingest"
	"github.com/keytrail/keytrail/ingest/chsink"
)

// history is the loaded data set of the query phase: usage over [Start, End), the fleet's
// lifecycle, and the stories in it that answers are asked about.
//
//   - Every key 0..9999 is created a day before Start; keys k%50==1 get a TTL a month after End.
//   - Rotations: the 25 keys k%400==7 rotate at End-3d + (k/400) hours to new keys
//     key_10000..key_10024 (created an hour before); 70% of the old key's later traffic moves.
//   - Disabled: keys k%97==3 are disabled at End-2d; their callers keep calling.
//   - Budgets: keys k%20==0 get a budget 12 h before Start, daily for k%40==0, monthly otherwise.
//   - Spike: 0.5% of all events go to key_00500 (otherwise about 3 requests per 5 minutes at
//     scale 1) within 20 minutes starting at End-6h: the anomaly scan must find it.
type history struct {
	Start, End time.Time
	Events     int
}

const (
	rotatedKeys    = 25
	rotationStride = 400 // rotated keys: k % rotationStride == rotationOffset
	rotationOffset = 7
	newKeyBase     = fleetKeys // key_10000 onwards
	spikeKey       = 500
	spikePerMille  = 5
	spikeLength    = 20 * time.Minute
)

func (hs history) rotationAt(i int) time.Time {
	return hs.End.Add(-72 * time.Hour).Add(time.Duration(i) * time.Hour)
}
func (hs history) spikeStart() time.Time { return hs.End.Add(-6 * time.Hour) }
func (hs history) disabledAt() time.Time { return hs.End.Add(-48 * time.Hour) }

// rotatedKey is the old key of rotation i and newKey its replacement.
func rotatedKey(i int) int { return i*rotationStride + rotationOffset }
func newKey(i int) int     { return newKeyBase + i }

// usageInsertSQL inserts events [offset, offset+n) of the history with INSERT ... SELECT
// FROM numbers(): the materialized views fill the rollups during the insert, as they do for
// the ingester's inserts. Every value is a function of the row number (cityHash64 with a
// salt per use), so the load is deterministic but for event ids. The expressions mirror the
// Go generator (fleet.go). 18.16: no CTEs, so the derived values are aliases of an inner
// SELECT; aliases may refer to each other.
func (hs history) usageInsertSQL(offset, n int) string {
	startMs, endMs := hs.Start.UnixMilli(), hs.End.UnixMilli()
	arr := func(s []string) string {
		q := make([]string, len(s))
		for i, v := range s {
			q[i] = "'" + v + "'"
		}
		return "[" + strings.Join(q, ", ") + "]"
	}
	ints := func(s []int64) string {
		q := make([]string, len(s))
		for i, v := range s {
			q[i] = strconv.FormatInt(v, 10)
		}
		return "[" + strings.Join(q, ", ") + "]"
	}
	r := strings.NewReplacer(
		"@KEYS@", strconv.Itoa(fleetKeys), "@PROJECTS@", strconv.Itoa(fleetProjects), "@SERVICES@", strconv.Itoa(fleetServices),
		"@ZIPF@", strconv.Itoa(zipfExponent),
		"@START_MS@", strconv.FormatInt(startMs, 10), "@SPAN_MS@", strconv.FormatInt(endMs-startMs, 10),
		"@SPIKE_MS@", strconv.FormatInt(hs.spikeStart().UnixMilli(), 10), "@SPIKE_LEN@", strconv.FormatInt(spikeLength.Milliseconds(), 10),
		"@SPIKE_KEY@", strconv.Itoa(spikeKey), "@SPIKE_PM@", strconv.Itoa(spikePerMille),
		"@ROT_MS@", strconv.FormatInt(hs.rotationAt(0).UnixMilli(), 10), "@ROT_STRIDE@", strconv.Itoa(rotationStride), "@ROT_OFF@", strconv.Itoa(rotationOffset),
		"@NEW_BASE@", strconv.Itoa(newKeyBase),
		"@MODELS@", arr(routeModels), "@PROVIDERS@", arr(routeProviders), "@ENDPOINTS@", arr(routeEndpoints),
		"@IN10@", ints(routeIn10), "@OUT10@", ints(routeOut10), "@ROUTES@", strconv.Itoa(len(routeModels)),
		"@OFFSET@", strconv.Itoa(offset), "@N@", strconv.Itoa(n),
	)
	return r.Replace(`INSERT INTO usage_events (` + chsink.UsageColumns + `)
SELECT
    toString(generateUUIDv4()),
    toDateTime(intDiv(t_ms, 1000)),
    t_ms,
    concat('proj_', substring(toString(100 + k1 % @PROJECTS@), 2)),
    concat('key_', substring(toString(100000 + k), 2)),
    concat('svc-', substring(toString(1000 + (k1 * 37 + slot * 101) % @SERVICES@), 2)),
    concat('gw-', toString(k1 % @PROJECTS@), '-', toString(h4 % 3)),
    'POST',
    @ENDPOINTS@[route + 1],
    @MODELS@[route + 1],
    @PROVIDERS@[route + 1],
    toUInt16(status),
    toUInt32(80 + h5 % 2500),
    toUInt64(in_tokens),
    toUInt64(out_tokens),
    toInt64(intDiv(in_tokens * @IN10@[route + 1] + out_tokens * @OUT10@[route + 1], 10)),
    concat('10.', toString(k1 % @PROJECTS@), '.', toString(slot), '.', toString(k1 % 256)),
    concat('req-', lower(hex(h5))),
    h6,
    n + 1,
    toDateTime(intDiv(t_ms, 1000))
FROM
(
    SELECT
        number AS n,
        cityHash64(n, 1) AS h1,
        cityHash64(n, 2) AS h2,
        cityHash64(n, 3) AS h3,
        cityHash64(n, 4) AS h4,
        cityHash64(n, 5) AS h5,
        cityHash64(n, 6) AS h6,
        toUInt32(least(floor(@KEYS@ * pow((h1 % 1000000007) / 1000000007, @ZIPF@)), @KEYS@ - 1)) AS k0,
        cityHash64(n, 7) % 1000 < @SPIKE_PM@ AS spike,
        if(spike, @SPIKE_KEY@, k0) AS k1,
        toInt64(if(spike, @SPIKE_MS@ + h2 % @SPIKE_LEN@, @START_MS@ + h2 % @SPAN_MS@)) AS t_ms,
        k1 % @ROT_STRIDE@ = @ROT_OFF@ AND t_ms >= @ROT_MS@ + intDiv(k1, @ROT_STRIDE@) * 3600000 AND intDiv(h3, 1000) % 10 < 7 AS moved,
        if(moved, @NEW_BASE@ + intDiv(k1, @ROT_STRIDE@), k1) AS k,
        h6 % (1 + k1 % 4) AS slot,
        (k1 + slot) % @ROUTES@ AS route,
        h3 % 1000 AS s,
        multiIf(s < 940, 200, s < 970, 429, s < 985, 400, s < 995, 500, 503) AS status,
        if(status >= 400, 0, 50 + h4 % 3000) AS in_tokens,
        if(status >= 400 OR route = 2, 0, 20 + intDiv(h4, 3000) % 1000) AS out_tokens
    FROM numbers(@OFFSET@, @N@)
)`)
}

// lifecycle is the fleet's lifecycle events in time order.
func (hs history) lifecycle() []*keytrailv1.LifecycleEvent {
	var out []*keytrailv1.LifecycleEvent
	seq := 0
	ev := func(at time.Time, k int, action keytrailv1.Action) *keytrailv1.LifecycleEvent {
		seq++
		project := k
		if k >= newKeyBase {
			project = rotatedKey(k - newKeyBase)
		}
		e := &keytrailv1.LifecycleEvent{
			EventId: fmt.Sprintf("bench-lc-%06d", seq), Time: timestamppb.New(at), Project: projectName(projectOfKey(project)),
			KeyId: keyName(k), Action: action, Actor: "terraform", ActorType: keytrailv1.ActorType_ACTOR_TYPE_SERVICE,
			Attributes: map[string]string{"ticket": fmt.Sprintf("OPS-%d", 1000+seq)},
		}
		out = append(out, e)
		return e
	}
	created := hs.Start.Add(-24 * time.Hour)
	for k := range fleetKeys {
		e := ev(created.Add(time.Duration(k)*time.Second), k, keytrailv1.Action_ACTION_CREATED)
		e.Scopes = []string{"chat", "embeddings"}
		if k%50 == 1 {
			e.ExpiresAt = timestamppb.New(hs.End.Add(30 * 24 * time.Hour))
		}
	}
	for k := 0; k < fleetKeys; k += 20 {
		e := ev(hs.Start.Add(-12*time.Hour).Add(time.Duration(k)*time.Second), k, keytrailv1.Action_ACTION_BUDGET_CHANGED)
		e.Actor, e.ActorType, e.Reason = "erin", keytrailv1.ActorType_ACTOR_TYPE_USER, "quarterly budget review"
		e.Budget = &keytrailv1.Budget{AmountMicros: int64(1+k%7) * 1_000_000, Period: keytrailv1.BudgetPeriod_BUDGET_PERIOD_MONTH}
		if k%40 == 0 {
			e.Budget = &keytrailv1.Budget{AmountMicros: int64(1+k%5) * 200_000, Period: keytrailv1.BudgetPeriod_BUDGET_PERIOD_DAY}
		}
	}
	for i := range rotatedKeys {
		at := hs.rotationAt(i)
		c := ev(at.Add(-time.Hour), newKey(i), keytrailv1.Action_ACTION_CREATED)
		c.Actor, c.ActorType, c.Scopes = "dana", keytrailv1.ActorType_ACTOR_TYPE_USER, []string{"chat", "embeddings"}
		r := ev(at, rotatedKey(i), keytrailv1.Action_ACTION_ROTATED)
		r.NewKeyId, r.Actor, r.ActorType, r.Reason = keyName(newKey(i)), "dana", keytrailv1.ActorType_ACTOR_TYPE_USER, "scheduled 90-day roll"
	}
	for k := 3; k < fleetKeys; k += 97 {
		e := ev(hs.disabledAt().Add(time.Duration(k)*time.Second), k, keytrailv1.Action_ACTION_DISABLED)
		e.Actor, e.ActorType, e.Reason = "carol", keytrailv1.ActorType_ACTOR_TYPE_USER, "suspected leak"
	}
	return out
}

// load fills the database: lifecycle through the ingester's sink (which computes the audit
// hash chain), usage with INSERT ... SELECT in chunks (each chunk bounded in memory), then
// waits for background merges to settle so every answer sees the same part layout.
func (h *harness) load(ctx context.Context, conn driver.Conn, database string, hs history) error {
	lifecycle := hs.lifecycle()
	sink, err := chsink.New(chsink.Config{Conn: conn})
	if err != nil {
		return err
	}
	records := make([]ingest.Record, len(lifecycle))
	for i, e := range lifecycle {
		if err := decode.ValidateLifecycle(e, time.Now()); err != nil {
			return fmt.Errorf("generated lifecycle event %s: %w", e.GetEventId(), err)
		}
		records[i] = ingest.Record{Event: event.Event{Kind: event.KindLifecycle, Lifecycle: e}, StreamSeq: uint64(i + 1)}
	}
	if err := sink.Write(ctx, ingest.RowsOf(records)); err != nil {
		return fmt.Errorf("insert lifecycle events: %w", err)
	}

	// Chunks of at most QueryChunk rows bound each INSERT's memory; one INSERT per CPU at a
	// time, since an INSERT ... SELECT with its views runs on about one core.
	workers := runtime.NumCPU()
	chunk := min(h.sizes.QueryChunk, (hs.Events+workers-1)/workers)
	offsets := make(chan int)
	var (
		mu     sync.Mutex
		loaded int
		errs   []error
		wg     sync.WaitGroup
	)
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	start := time.Now()
	for range workers {
		wg.Go(func() {
			for offset := range offsets {
				n := min(chunk, hs.Events-offset)
				if err := conn.Exec(lctx, hs.usageInsertSQL(offset, n)); err != nil {
					mu.Lock()
					errs = append(errs, fmt.Errorf("load usage rows %d-%d: %w", offset, offset+n, err))
					mu.Unlock()
					cancel()
					continue
				}
				mu.Lock()
				loaded += n
				h.logf("query: loaded %s of %s usage events (%s rows/s)", count(loaded), count(hs.Events), count(int(float64(loaded)/time.Since(start).Seconds())))
				mu.Unlock()
			}
		})
	}
	for offset := 0; offset < hs.Events && lctx.Err() == nil; offset += chunk {
		offsets <- offset
	}
	close(offsets)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	took := time.Since(start)

	settleStart := time.Now()
	if err := waitMerges(ctx, conn, database, 15*time.Minute); err != nil {
		return err
	}
	parts, err := activeParts(ctx, conn, database)
	if err != nil {
		return err
	}
	h.report.note("query: loaded %s usage events over %d days and %d lifecycle events in %.0f s (%s rows/s, rollups by the materialized views); merges settled in %.0f s; active parts: %s",
		count(hs.Events), h.sizes.HistoryDays, len(lifecycle), took.Seconds(), count(int(float64(hs.Events)/took.Seconds())), time.Since(settleStart).Seconds(), parts)
	return nil
}

// waitMerges waits until no merge runs in the database for two seconds in a row.
func waitMerges(ctx context.Context, conn driver.Conn, database string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	quiet := 0
	for quiet < 4 {
		var n uint64
		if err := conn.QueryRow(ctx, "SELECT count() FROM system.merges WHERE database = ?", database).Scan(&n); err != nil {
			return fmt.Errorf("read system.merges: %w", err)
		}
		if n == 0 {
			quiet++
		} else {
			quiet = 0
		}
		if time.Now().After(deadline) {
			return nil // measured with merges still running; the parts note says how many
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
	return nil
}

// activeParts lists rows and active parts per table, for the record.
func activeParts(ctx context.Context, conn driver.Conn, database string) (string, error) {
	rows, err := conn.Query(ctx, "SELECT table, sum(rows), count() FROM system.parts WHERE database = ? AND active GROUP BY table ORDER BY table", database)
	if err != nil {
		return "", err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var table string
		var n, parts uint64
		if err := rows.Scan(&table, &n, &parts); err != nil {
			return "", err
		}
		out = append(out, fmt.Sprintf("%s %s rows/%d parts", table, count(int(n)), parts))
	}
	return strings.Join(out, ", "), rows.Err()
}

// historyMarker records, in a kept history's database, the history it holds: written after
// a complete load, so a database without it (a load interrupted half way) is never reused.
const historyMarker = `CREATE TABLE IF NOT EXISTS bench_history
(
    events UInt64,
    days UInt32,
    history_start DateTime('UTC'),
    history_end DateTime('UTC'),
    loaded_at DateTime('UTC')
)
ENGINE = TinyLog`

// loadedHistory returns a connection to a database holding the query phase's history, and
// the history. Without KeepHistory it is the run's database, freshly loaded. With it, it is
// the kept database, reused when its marker says it holds a history of this run's size, else
// dropped and loaded again; a reused database gets the migrations added since its load.
func (h *harness) loadedHistory(ctx context.Context) (driver.Conn, history, error) {
	end := time.Now().UTC().Truncate(time.Minute)
	hs := history{Start: end.Add(-time.Duration(h.sizes.HistoryDays) * 24 * time.Hour), End: end, Events: h.sizes.QueryEvents}
	ch := h.historyCH()
	if h.cfg.KeepHistory {
		conn, err := ch.open(ctx, true) // creates the database if need be
		if err != nil {
			return nil, history{}, err
		}
		kept, ok, err := keptHistory(ctx, conn)
		if err != nil {
			conn.Close()
			return nil, history{}, err
		}
		if ok && kept.Events == hs.Events && kept.End.Sub(kept.Start) == hs.End.Sub(hs.Start) {
			h.report.note("query: reused the history kept in %s (loaded for an end of %s; migrations added since were applied to it)", ch.database, kept.End.Format(time.RFC3339))
			h.logf("query: reusing the %s-event history in %s", count(kept.Events), ch.database)
			return conn, kept, nil
		}
		conn.Close()
	}
	conn, err := ch.fresh(ctx)
	if err != nil {
		return nil, history{}, err
	}
	h.logf("query: loading %s usage events over %d days into %s", count(hs.Events), h.sizes.HistoryDays, ch.database)
	if err := h.load(ctx, conn, ch.database, hs); err != nil {
		conn.Close()
		return nil, history{}, err
	}
	if h.cfg.KeepHistory {
		if err := markHistory(ctx, conn, hs); err != nil {
			conn.Close()
			return nil, history{}, err
		}
	}
	return conn, hs, nil
}

// historyCH is the database loadedHistory loads into.
func (h *harness) historyCH() clickHouse {
	ch := h.ch
	if h.cfg.KeepHistory {
		ch.database += historySuffix
	}
	return ch
}

func keptHistory(ctx context.Context, conn driver.Conn) (history, bool, error) {
	var tables uint64
	if err := conn.QueryRow(ctx, "SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'bench_history'").Scan(&tables); err != nil {
		return history{}, false, fmt.Errorf("look for the history marker: %w", err)
	}
	if tables == 0 {
		return history{}, false, nil
	}
	rows, err := conn.Query(ctx, "SELECT events, days, history_start, history_end FROM bench_history")
	if err != nil {
		return history{}, false, fmt.Errorf("read the history marker: %w", err)
	}
	defer rows.Close()
	var hs history
	found := false
	for rows.Next() {
		var events uint64
		var days uint32
		if err := rows.Scan(&events, &days, &hs.Start, &hs.End); err != nil {
			return history{}, false, fmt.Errorf("read the history marker: %w", err)
		}
		hs.Events, hs.Start, hs.End, found = int(events), hs.Start.UTC(), hs.End.UTC(), true
	}
	return hs, found, rows.Err()
}

func markHistory(ctx context.Context, conn driver.Conn, hs history) error {
	if err := conn.Exec(ctx, historyMarker); err != nil {
		return fmt.Errorf("create the history marker: %w", err)
	}
	batch, err := conn.PrepareBatch(ctx, "INSERT INTO bench_history (events, days, history_start, history_end, loaded_at)")
	if err != nil {
		return fmt.Errorf("write the history marker: %w", err)
	}
	if err := batch.Append(uint64(hs.Events), uint32(hs.End.Sub(hs.Start)/(24*time.Hour)), hs.Start, hs.End, time.Now().UTC()); err != nil {
		batch.Abort()
		return fmt.Errorf("write the history marker: %w", err)
	}
	if err := batch.Send(); err != nil {
		return fmt.Errorf("write the history marker: %w", err)
	}
	return nil
}
