package bench

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Publish-to-queryable latency.
//
// Events go out at a fixed rate in ticks of latencyTick; the last event of every tick is a
// probe: a usage event of the key probeKey whose time is its publish instant in milliseconds
// (unique per tick). A poller asks ClickHouse every probePoll, by primary key, which probes
// the raw table holds and how many each 5-minute bucket of the usage_key_5min rollup counts. A
// probe is queryable once it is in both; its latency is the time the poll that first saw it
// returned minus its publish instant (an upper bound: it became visible after the previous
// poll was sent and before this one returned). The events of a tick were published before
// its probe, on the same connection, so the stream and the ingester (which writes in stream
// order) store them no later than the probe: every event's latency is within one tick of
// its tick's probe.
const (
	latencyTick = 10 * time.Millisecond
	probePoll   = 25 * time.Millisecond
	probeKey    = "bench-latency-probe"
	// latencyWarmup waves are published before the measured ones, and their probes ignored:
	// the ingester's first fetch and take-over are start-up, not steady state.
	latencyWarmup = 2
)

func (h *harness) runLatency(ctx context.Context) error {
	rate, waves := h.sizes.LatencyRate, h.sizes.LatencyWaves
	js, err := h.startJetStream(ctx)
	if err != nil {
		return err
	}
	defer js.close()
	conn, err := h.ch.fresh(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	ing, err := startIngester(ctx, h, js, h.sizes.IngestBatch)
	if err != nil {
		return err
	}
	defer ing.stop()
	pubs, closePubs, err := newPublishers(js, 1)
	if err != nil {
		return err
	}
	defer closePubs()
	pub := pubs[0]
	h.logf("latency: publishing %d waves of %s events/s (after %d warm-up waves), probing every %s", waves, count(rate), latencyWarmup, latencyTick)

	perTick := rate * int(latencyTick) / int(time.Second)
	ticks := (waves + latencyWarmup) * int(time.Second/latencyTick)
	firstMeasured := latencyWarmup * int(time.Second/latencyTick)
	probes := make([]int64, 0, ticks-firstMeasured) // publish instants (ms) of measured probes

	poller := newProbePoller(conn)
	pollCtx, stopPolling := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { poller.run(pollCtx) })
	defer func() { stopPolling(); wg.Wait() }()

	g := newGenerator(h.names, 7)
	start := time.Now()
	late := 0
	for tick := range ticks {
		due := start.Add(time.Duration(tick) * latencyTick)
		if d := time.Until(due); d > 0 {
			time.Sleep(d)
		} else if -d > latencyTick {
			late++
		}
		for range perTick - 1 {
			if err := pub.PublishUsage(ctx, g.usage(time.Now())); err != nil {
				return err
			}
		}
		// The probe: its time is the publish instant, to the millisecond (ticks are 10 ms apart,
		// so no two probes share one).
		now := time.Now().Truncate(time.Millisecond)
		probe := g.usage(now)
		probe.Project, probe.KeyId, probe.Service, probe.Time = projectName(0), probeKey, "svc-probe", timestamppb.New(now)
		if err := pub.PublishUsage(ctx, probe); err != nil {
			return err
		}
		if tick >= firstMeasured {
			probes = append(probes, now.UnixMilli())
		}
	}
	elapsed := time.Since(start)
	fctx, cancel := context.WithTimeout(ctx, time.Minute)
	err = pub.Flush(fctx)
	cancel()
	if err != nil {
		return err
	}
	// Wait for the last probe, then stop polling.
	deadline := time.Now().Add(time.Minute)
	for !poller.seen(probes[len(probes)-1]) {
		if err := poller.failed(); err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the last probe was not queryable a minute after it was published")
		}
		time.Sleep(probePoll)
	}
	stopPolling()
	wg.Wait()
	// Every event published before the last probe must be stored by now (stream order); this
	// checks that the probes stand for all events, and that nothing was lost or doubled.
	if _, err := waitQueryable(ctx, conn, uint64(ticks*perTick), 50*time.Millisecond, 5*time.Second); err != nil {
		return fmt.Errorf("after the last probe was queryable: %w", err)
	}
	lat := make([]time.Duration, 0, len(probes))
	for _, p := range probes {
		at, ok := poller.queryableAt(p)
		if !ok {
			return fmt.Errorf("probe published at %d ms was never seen", p)
		}
		lat = append(lat, at.Sub(time.UnixMilli(p)))
	}
	achieved := float64(ticks*perTick) / elapsed.Seconds()
	_, _, insertP99 := ing.histogram("keytrail_ingest_insert_duration_seconds", 0.99)
	note := fmt.Sprintf("%d probes, one per %s tick; publish rate achieved %.0f/s; %d ticks started late; poll every %s", len(lat), latencyTick, achieved, late, probePoll)
	h.report.add(
		Row{Figure: fmt.Sprintf("publish-to-queryable p50 at %s/s", count(rate)), Value: percentile(lat, 50), Unit: UnitMs, Samples: len(lat), Note: note},
		Row{Figure: fmt.Sprintf("publish-to-queryable p99 at %s/s", count(rate)), Value: percentile(lat, 99), Unit: UnitMs, Samples: len(lat),
			Target: "< 2 s", Met: met(percentile(lat, 99) < 2000), Note: note},
	)
	h.report.note("latency: %s; ingester insert p99 <= %.2f s", note, insertP99)
	return nil
}

// probePoller watches for probes becoming queryable.
type probePoller struct {
	conn driver.Conn
	mu   sync.Mutex
	// raw and rollup hold when each probe (publish ms) was first seen in the raw table and
	// counted in the usage_key_5min rollup.
	raw, rollup map[int64]time.Time
	// from is the oldest publish ms not yet seen in both; polls look from there on.
	from int64
	// err is why polling stopped before it was asked to.
	err error
}

func newProbePoller(conn driver.Conn) *probePoller {
	return &probePoller{conn: conn, raw: map[int64]time.Time{}, rollup: map[int64]time.Time{}}
}

// run polls until ctx ends or a poll fails (see failed).
func (p *probePoller) run(ctx context.Context) {
	t := time.NewTicker(probePoll)
	defer t.Stop()
	for {
		if err := p.poll(ctx); err != nil {
			if ctx.Err() == nil {
				p.mu.Lock()
				p.err = err
				p.mu.Unlock()
			}
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (p *probePoller) failed() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

func (p *probePoller) poll(ctx context.Context) error {
	p.mu.Lock()
	from := p.from
	p.mu.Unlock()
	// Raw rows: a primary-key range (usage_events is sorted by key_id first).
	rows, err := p.conn.Query(ctx, "SELECT event_time_ms FROM usage_events WHERE key_id = ? AND event_time >= toDateTime(?) AND event_time_ms >= ? ORDER BY event_time_ms",
		probeKey, from/1000, from)
	if err != nil {
		return fmt.Errorf("poll raw probes: %w", err)
	}
	var raw []int64
	for rows.Next() {
		var ms int64
		if err := rows.Scan(&ms); err != nil {
			rows.Close()
			return err
		}
		raw = append(raw, ms)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	// The rollup: requests per 5-minute bucket of the probe key. The ingester writes in stream
	// order, so a bucket counting c probes holds the first c of that bucket.
	fromBucket := from / 1000 / 300 * 300
	rows, err = p.conn.Query(ctx, "SELECT toUInt32(bucket), sum(requests) FROM usage_key_5min WHERE bucket >= toDateTime(?) AND key_id = ? GROUP BY bucket",
		fromBucket, probeKey)
	if err != nil {
		return fmt.Errorf("poll rollup probes: %w", err)
	}
	counted := map[int64]uint64{}
	for rows.Next() {
		var bucket uint32
		var n uint64
		if err := rows.Scan(&bucket, &n); err != nil {
			rows.Close()
			return err
		}
		counted[int64(bucket)] = n
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	now := time.Now()

	p.mu.Lock()
	defer p.mu.Unlock()
	for _, ms := range raw {
		if _, ok := p.raw[ms]; !ok {
			p.raw[ms] = now
		}
	}
	// Probes of each bucket in publish order; all probes of a bucket at or after from were
	// returned by the raw query above only if raw-visible, so count from what the rollup holds:
	// the rollup's count includes probes before from (already seen), which are skipped.
	byBucket := map[int64][]int64{}
	for ms := range p.raw {
		b := ms / 1000 / 300 * 300
		byBucket[b] = append(byBucket[b], ms)
	}
	for b, list := range byBucket {
		sort.Slice(list, func(i, j int) bool { return list[i] < list[j] })
		n := counted[b]
		for i, ms := range list {
			if uint64(i) >= n {
				break
			}
			if _, ok := p.rollup[ms]; !ok {
				p.rollup[ms] = now
			}
		}
	}
	// Advance from past probes seen in both (keeps the polls small).
	var pending []int64
	for ms := range p.raw {
		if _, ok := p.rollup[ms]; !ok {
			pending = append(pending, ms)
		}
	}
	switch {
	case len(pending) > 0:
		sort.Slice(pending, func(i, j int) bool { return pending[i] < pending[j] })
		p.from = pending[0]
	case len(raw) > 0:
		p.from = raw[len(raw)-1] + 1
	}
	return nil
}

func (p *probePoller) queryableAt(ms int64) (time.Time, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	r, ok1 := p.raw[ms]
	c, ok2 := p.rollup[ms]
	if !ok1 || !ok2 {
		return time.Time{}, false
	}
	if c.After(r) {
		return c, true
	}
	return r, true
}

func (p *probePoller) seen(ms int64) bool {
	_, ok := p.queryableAt(ms)
	return ok
}
