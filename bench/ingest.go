package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/keytrail/keytrail/ingest"
	"github.com/keytrail/keytrail/ingest/chsink"
	"github.com/keytrail/keytrail/publisher"
)

// ingester is an in-process ingester (ingest.New with the ClickHouse sink, the binary's
// default batch size and flush interval) on its own ClickHouse connection, as in keytrail.
type ingester struct {
	conn     driver.Conn
	registry *prometheus.Registry
	cancel   context.CancelFunc
	done     chan error
}

func startIngester(ctx context.Context, h *harness, js *jetStreamEnv, batch int) (*ingester, error) {
	conn, err := h.ch.open(ctx, false)
	if err != nil {
		return nil, err
	}
	sink, err := chsink.New(chsink.Config{Conn: conn})
	if err != nil {
		conn.Close()
		return nil, err
	}
	reg := prometheus.NewRegistry()
	ing, err := ingest.New(ctx, ingest.Config{
		JetStream: js.js, Streams: js.streams, Sink: sink, BatchSize: batch,
		Metrics: ingest.NewMetrics(reg),
		Logger:  slog.New(slog.NewTextHandler(h.cfg.Log, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		conn.Close()
		return nil, err
	}
	runCtx, cancel := context.WithCancel(ctx)
	in := &ingester{conn: conn, registry: reg, cancel: cancel, done: make(chan error, 1)}
	go func() { in.done <- ing.Run(runCtx) }()
	return in, nil
}

// stop cancels the ingester and waits for its final flush.
func (in *ingester) stop() error {
	in.cancel()
	err := <-in.done
	in.conn.Close()
	return err
}

// histogram reads a histogram of the ingester's metrics: count, sum and the upper bound of
// the bucket holding quantile q.
func (in *ingester) histogram(name string, q float64) (count uint64, sum, bound float64) {
	families, err := in.registry.Gather()
	if err != nil {
		return 0, 0, 0
	}
	for _, f := range families {
		if f.GetName() != name || len(f.GetMetric()) == 0 {
			continue
		}
		h := f.GetMetric()[0].GetHistogram()
		return h.GetSampleCount(), h.GetSampleSum(), quantileBound(h, q)
	}
	return 0, 0, 0
}

func quantileBound(h *dto.Histogram, q float64) float64 {
	want := uint64(q * float64(h.GetSampleCount()))
	for _, b := range h.GetBucket() {
		if b.GetCumulativeCount() >= want {
			return b.GetUpperBound()
		}
	}
	return 0
}

// profile starts a CPU profile of this process into the profile directory, if configured;
// the returned function stops it.
func (h *harness) profile(name string) func() {
	if h.cfg.ProfileDir == "" {
		return func() {}
	}
	path := filepath.Join(h.cfg.ProfileDir, name+".cpu.pprof")
	f, err := os.Create(path)
	if err != nil {
		h.logf("cpu profile %s: %v", path, err)
		return func() {}
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		h.logf("cpu profile %s: %v", path, err)
		f.Close()
		return func() {}
	}
	// The heap profile kept is the one taken when the live heap was largest (sampled every
	// 500 ms after a GC): what the in-process ingester (and NATS) hold at their peak.
	heapPath := filepath.Join(h.cfg.ProfileDir, name+".heap.pprof")
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		var best uint64
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
			}
			runtime.GC()
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			if m.HeapAlloc <= best {
				continue
			}
			best = m.HeapAlloc
			var buf bytes.Buffer
			if err := pprof.Lookup("heap").WriteTo(&buf, 0); err == nil {
				_ = os.WriteFile(heapPath, buf.Bytes(), 0o644)
			}
		}
	}()
	return func() {
		close(stop)
		<-sampled
		pprof.StopCPUProfile()
		f.Close()
		h.logf("wrote %s and %s", path, heapPath)
	}
}

// runDrain measures the drain rate and its two baselines over the same backlog.
func (h *harness) runDrain(ctx context.Context) error {
	n := h.sizes.DrainEvents
	js, err := startJetStream(ctx)
	if err != nil {
		return err
	}
	defer js.close()
	base := time.Now()
	h.logf("drain: publishing a backlog of %s usage events", count(n))
	fill, err := js.fill(ctx, newGenerator(h.names, 1), n, base)
	if err != nil {
		return err
	}
	h.report.note("usage events average %d bytes of protobuf; the backlog of %s was published at %s/s (PublishMsgAsync, 4096 pending)",
		fill.bytes/int64(n), count(n), count(int(float64(n)/fill.duration.Seconds())))

	// (a) JetStream alone: a durable pull consumer of the same messages, fetched in the
	// ingester's fetch size, one AckAll ack per fetch, nothing else.
	h.logf("drain: baseline (a) raw JetStream consume")
	consume, err := rawConsume(ctx, js, n, 2000)
	if err != nil {
		return fmt.Errorf("raw consume: %w", err)
	}

	// (b) ClickHouse alone: the same rows, built in memory, inserted in 100k-row batches
	// with chsink's column list (materialized views included, as for the ingester).
	h.logf("drain: baseline (b) raw clickhouse-go insert")
	conn, err := h.ch.fresh(ctx)
	if err != nil {
		return err
	}
	insert, err := rawInsert(ctx, conn, newGenerator(h.names, 1), n, base, h.sizes.InsertBatch)
	conn.Close()
	if err != nil {
		return fmt.Errorf("raw insert: %w", err)
	}
	// (b') The same in the ingester's batch size: separates what the batch size costs from
	// what the ingester adds.
	conn, err = h.ch.fresh(ctx)
	if err != nil {
		return err
	}
	insertSmall, err := rawInsert(ctx, conn, newGenerator(h.names, 1), n, base, h.sizes.IngestBatch)
	conn.Close()
	if err != nil {
		return fmt.Errorf("raw insert: %w", err)
	}

	// The drain: the ingester starts with the whole backlog waiting and runs until every
	// event is in the raw table and every rollup.
	h.logf("drain: ingester draining %s events", count(n))
	conn, err = h.ch.fresh(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	stopProfile := h.profile("drain")
	start := time.Now()
	ing, err := startIngester(ctx, h, js, h.sizes.IngestBatch)
	if err != nil {
		stopProfile()
		return err
	}
	done, err := waitQueryable(ctx, conn, uint64(n), 100*time.Millisecond, 30*time.Minute)
	stopProfile()
	batches, insertSum, insertP99 := ing.histogram("keytrail_ingest_insert_duration_seconds", 0.99)
	if serr := ing.stop(); err == nil && serr != nil {
		err = serr
	}
	if err != nil {
		return err
	}
	drain := float64(n) / done.Sub(start).Seconds()
	h.report.note("drain: %d inserts of up to %d events, ClickHouse insert time %.0f%% of the drain (%.0f ms mean, p99 <= %.2f s)",
		batches, h.sizes.IngestBatch, 100*insertSum/done.Sub(start).Seconds(), 1000*insertSum/float64(max(batches, 1)), insertP99)
	h.report.add(
		Row{Figure: "drain rate (1 ingester, backlog)", Value: drain, Unit: UnitRate,
			Baseline: "(a) raw JetStream consume", BaselineValue: consume, Ratio: drain / consume,
			Target: ">= 0.6x raw consume", Met: met(drain/consume >= 0.6)},
		Row{Figure: "drain rate (1 ingester, backlog)", Value: drain, Unit: UnitRate,
			Baseline: "(b) raw clickhouse-go insert", BaselineValue: insert, Ratio: drain / insert,
			Note: fmt.Sprintf("%d-row batches", h.sizes.InsertBatch)},
		Row{Figure: "drain rate (1 ingester, backlog)", Value: drain, Unit: UnitRate,
			Baseline: fmt.Sprintf("(b') raw insert, %dk batches", h.sizes.IngestBatch/1000), BaselineValue: insertSmall, Ratio: drain / insertSmall,
			Note: "the ingester's batch size: what is left between this and the drain is the ingester's own cost"},
	)
	return nil
}

// rawConsume reads n messages with a durable pull consumer of its own (fetch batches, one
// AckAll ack per batch) and returns messages per second. The consumer is deleted after, so
// the messages stay for the ingester's durable.
func rawConsume(ctx context.Context, js *jetStreamEnv, n, fetch int) (float64, error) {
	const durable = "bench-raw-consume"
	cons, err := js.js.CreateOrUpdateConsumer(ctx, js.streams.EventsStream, jetstream.ConsumerConfig{
		Durable: durable, AckPolicy: jetstream.AckAllPolicy, AckWait: js.streams.AckWait,
		MaxAckPending: js.streams.MaxAckPending, DeliverPolicy: jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return 0, err
	}
	defer js.js.DeleteConsumer(context.Background(), js.streams.EventsStream, durable)
	got := 0
	start := time.Now()
	for got < n {
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		batch, err := cons.Fetch(min(fetch, n-got), jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return 0, err
		}
		var last jetstream.Msg
		for m := range batch.Messages() {
			last = m
			got++
		}
		if last == nil {
			if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, context.DeadlineExceeded) {
				return 0, err
			}
			if time.Since(start) > 10*time.Minute {
				return 0, fmt.Errorf("consumed %d of %d messages", got, n)
			}
			continue
		}
		if err := last.Ack(); err != nil {
			return 0, err
		}
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

// rawInsert builds the generator's n events as chsink's usage columns in memory, then times
// only their inserts, batch rows at a time, and returns rows per second.
func rawInsert(ctx context.Context, conn driver.Conn, g *generator, n int, base time.Time, batch int) (float64, error) {
	type columns struct {
		ids, projects, keys, services, gateways, methods, endpoints, models, providers, ips, requestIDs []string
		times, ingested                                                                                 []time.Time
		timesMs, costs                                                                                  []int64
		statuses                                                                                        []uint16
		latencies                                                                                       []uint32
		inTokens, outTokens, hashes, seqs                                                               []uint64
	}
	var batches []*columns
	ingestedAt := time.Now().UTC().Truncate(time.Second)
	for i := 0; i < n; i += batch {
		c := &columns{}
		for j := i; j < min(i+batch, n); j++ {
			e := g.usage(g.backlogTime(base))
			t := e.GetTime().AsTime()
			c.ids, c.projects, c.keys = append(c.ids, e.GetEventId()), append(c.projects, e.GetProject()), append(c.keys, e.GetKeyId())
			c.services, c.gateways = append(c.services, e.GetService()), append(c.gateways, e.GetGatewayInstance())
			c.methods, c.endpoints = append(c.methods, e.GetMethod()), append(c.endpoints, e.GetEndpoint())
			c.models, c.providers = append(c.models, e.GetModel()), append(c.providers, e.GetProvider())
			c.ips, c.requestIDs = append(c.ips, e.GetClientIp()), append(c.requestIDs, e.GetRequestId())
			c.times, c.timesMs, c.ingested = append(c.times, t.Truncate(time.Second)), append(c.timesMs, t.UnixMilli()), append(c.ingested, ingestedAt)
			c.statuses, c.latencies = append(c.statuses, uint16(e.GetStatusCode())), append(c.latencies, e.GetLatencyMs())
			c.inTokens, c.outTokens, c.costs = append(c.inTokens, e.GetInputTokens()), append(c.outTokens, e.GetOutputTokens()), append(c.costs, e.GetCostMicros())
			c.hashes, c.seqs = append(c.hashes, uint64(j)*0x9E3779B97F4A7C15), append(c.seqs, uint64(j+1))
		}
		batches = append(batches, c)
	}
	start := time.Now()
	for _, c := range batches {
		b, err := conn.PrepareBatch(ctx, "INSERT INTO usage_events ("+chsink.UsageColumns+")")
		if err != nil {
			return 0, err
		}
		for i, col := range []any{c.ids, c.times, c.timesMs, c.projects, c.keys, c.services, c.gateways, c.methods, c.endpoints, c.models, c.providers,
			c.statuses, c.latencies, c.inTokens, c.outTokens, c.costs, c.ips, c.requestIDs, c.hashes, c.seqs, c.ingested} {
			if err := b.Column(i).Append(col); err != nil {
				_ = b.Abort()
				return 0, fmt.Errorf("column %d: %w", i, err)
			}
		}
		if err := b.Send(); err != nil {
			return 0, err
		}
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

// newPublishers makes k publishers (package publisher, default settings), each on its own
// NATS connection as separate gateways would be. close closes them and their connections.
func newPublishers(js *jetStreamEnv, k int) (pubs []*publisher.Publisher, close func(), err error) {
	var conns []*nats.Conn
	close = func() {
		for _, p := range pubs {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			_ = p.Close(ctx)
			cancel()
		}
		for _, c := range conns {
			c.Close()
		}
	}
	for i := range k {
		nc, err := nats.Connect(js.url(), nats.Name(fmt.Sprintf("bench-gateway-%d", i)))
		if err != nil {
			close()
			return nil, nil, err
		}
		conns = append(conns, nc)
		pjs, err := jetstream.New(nc)
		if err != nil {
			close()
			return nil, nil, err
		}
		p, err := publisher.New(publisher.Config{JetStream: pjs, Subjects: js.streams.Subjects})
		if err != nil {
			close()
			return nil, nil, err
		}
		pubs = append(pubs, p)
	}
	return pubs, close, nil
}

// e2ePublishers is how many gateways publish in the end-to-end test.
const e2ePublishers = 4

// runE2E publishes events as fast as publishers can while the ingester runs, and measures
// the rate from the first publish until the last event is queryable.
func (h *harness) runE2E(ctx context.Context) error {
	n := h.sizes.E2EEvents
	js, err := startJetStream(ctx)
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
	pubs, closePubs, err := newPublishers(js, e2ePublishers)
	if err != nil {
		return err
	}
	defer closePubs()
	h.logf("e2e: %d publishers sending %s events while the ingester runs", e2ePublishers, count(n))
	stopProfile := h.profile("e2e")
	start := time.Now()
	var wg sync.WaitGroup
	errs := make([]error, len(pubs))
	for i, p := range pubs {
		share := n / len(pubs)
		if i == 0 {
			share += n % len(pubs)
		}
		wg.Go(func() {
			g := newGenerator(h.names, uint64(100+i))
			for range share {
				if err := p.PublishUsage(ctx, g.usage(time.Now())); err != nil {
					errs[i] = err
					return
				}
			}
			fctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
			defer cancel()
			errs[i] = p.Flush(fctx)
		})
	}
	wg.Wait()
	published := time.Since(start)
	if err := errors.Join(errs...); err != nil {
		stopProfile()
		return fmt.Errorf("publish: %w", err)
	}
	done, err := waitQueryable(ctx, conn, uint64(n), 100*time.Millisecond, 30*time.Minute)
	stopProfile()
	if err != nil {
		return err
	}
	total := done.Sub(start)
	rate := float64(n) / total.Seconds()
	h.report.add(Row{Figure: "end-to-end sustained rate", Value: rate, Unit: UnitRate,
		Target: ">= 100k events/s", Met: met(rate >= 100_000),
		Note: fmt.Sprintf("%d publishers published %d events at %.0f/s (acknowledged); all queryable %.1f s after the first publish", e2ePublishers, n, float64(n)/published.Seconds(), total.Seconds())})
	h.report.note("end-to-end: %d publishers acknowledged %s events at %s/s; the ingester made them all queryable in %.1f s",
		e2ePublishers, count(n), count(int(float64(n)/published.Seconds())), total.Seconds())
	return nil
}
