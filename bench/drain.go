package bench

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keytrail/keytrail/ingest/chsink"
)

// runDrain measures the drain rate, what each process spends per event while draining
// (the cost table), and the raw baselines over the same backlog.
func (h *harness) runDrain(ctx context.Context) error {
	n := h.sizes.DrainEvents
	js, err := h.startJetStream(ctx)
	if err != nil {
		return err
	}
	defer js.close()
	meter := h.meter(js)
	base := time.Now()
	h.logf("drain: publishing a backlog of %s usage events", count(n))
	s0 := meter.sample()
	fill, err := js.fill(ctx, newGenerator(h.names, 1), n, base)
	if err != nil {
		return err
	}
	fillCPU := s0.to(meter.sample())
	h.report.note("usage events average %d bytes of protobuf; the backlog of %s was published at %s/s (PublishMsgAsync, 4096 pending; nats-server %.1f µs of CPU per event)",
		fill.bytes/int64(n), count(n), count(int(float64(n)/fill.duration.Seconds())), perEvent(fillCPU.nats, n))

	// (a) JetStream alone: a durable pull consumer of the same messages, fetched in the
	// ingester's fetch size, one AckAll ack per fetch, nothing else.
	h.logf("drain: baseline (a) raw JetStream consume")
	s0 = meter.sample()
	consume, err := rawConsume(ctx, js, n, 2000)
	if err != nil {
		return fmt.Errorf("raw consume: %w", err)
	}
	consumeCPU := s0.to(meter.sample())

	// (b) ClickHouse alone: the same rows, built in memory, inserted in 100k-row batches
	// with chsink's column list (materialized views included, as for the ingester), and
	// (b') the same in the ingester's batch size, which separates what the batch size costs
	// from what the ingester adds.
	h.logf("drain: baseline (b) raw clickhouse-go insert, %s-row batches", count(h.sizes.InsertBatch))
	insert, err := h.rawInsertRun(ctx, meter, n, base, h.sizes.InsertBatch)
	if err != nil {
		return err
	}
	insertSmall := insert
	if h.sizes.IngestBatch != h.sizes.InsertBatch {
		h.logf("drain: baseline (b') raw clickhouse-go insert, %s-row batches", count(h.sizes.IngestBatch))
		if insertSmall, err = h.rawInsertRun(ctx, meter, n, base, h.sizes.IngestBatch); err != nil {
			return err
		}
	}

	// The drain: the ingester starts with the whole backlog waiting and runs until every
	// event is in the raw table and every rollup. Its CPU profile splits its CPU into stages.
	h.logf("drain: ingester draining %s events", count(n))
	conn, err := h.ch.fresh(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	stopProfile := h.profile("drain", true)
	s0 = meter.sample()
	ing, err := startIngester(ctx, h, js, h.sizes.IngestBatch)
	if err != nil {
		stopProfile()
		return err
	}
	done, err := waitQueryable(ctx, conn, uint64(n), 100*time.Millisecond, 30*time.Minute)
	s1 := meter.sample()
	prof := stopProfile()
	batches, insertSum, insertP99 := ing.histogram("keytrail_ingest_insert_duration_seconds", 0.99)
	if serr := ing.stop(); err == nil && serr != nil {
		err = serr
	}
	if err != nil {
		return err
	}
	settled := h.settleMerges(ctx, conn)
	drainCPU, drainCH := s0.to(s1), s0.to(meter.sample())
	drain := float64(n) / done.Sub(s0.at).Seconds()
	h.report.note("drain: %d inserts of up to %d events, ClickHouse insert time %.0f%% of the drain (%.0f ms mean, p99 <= %.2f s); merges settled %.1f s after",
		batches, h.sizes.IngestBatch, 100*insertSum/done.Sub(s0.at).Seconds(), 1000*insertSum/float64(max(batches, 1)), insertP99, settled.Seconds())

	ingesterCPU := perEvent(drainCPU.self, n)
	chCPU := perMillion(drainCH.ch, n)
	consumeClient := perEvent(consumeCPU.self, n)
	h.report.add(
		Row{Figure: "drain rate (1 ingester, backlog)", Value: drain, Unit: UnitRate,
			Baseline: "(a) raw JetStream consume", BaselineValue: consume, Ratio: drain / consume,
			Target: ">= 0.6x raw consume", Met: met(drain/consume >= 0.6)},
		Row{Figure: "drain rate (1 ingester, backlog)", Value: drain, Unit: UnitRate,
			Baseline: fmt.Sprintf("(b) raw insert, %s batches", count(h.sizes.InsertBatch)), BaselineValue: insert.rate, Ratio: drain / insert.rate},
	)
	if h.sizes.IngestBatch != h.sizes.InsertBatch {
		h.report.add(Row{Figure: "drain rate (1 ingester, backlog)", Value: drain, Unit: UnitRate,
			Baseline: fmt.Sprintf("(b') raw insert, %s batches", count(h.sizes.IngestBatch)), BaselineValue: insertSmall.rate, Ratio: drain / insertSmall.rate,
			Note: "the ingester's batch size: what is left between this and the drain is the ingester's own cost"})
	}
	h.report.add(
		Row{Figure: "ingester process CPU per event (drain)", Value: ingesterCPU, Unit: UnitMicrosPerEvent,
			Baseline: "raw consume, client CPU", BaselineValue: consumeClient, Ratio: consumeClient / ingesterCPU,
			Target: "<= 10 µs", Met: metIf(ingesterCPU, func(v float64) bool { return v <= 10 })},
		Row{Figure: "ClickHouse CPU per 1M usage rows (drain)", Value: chCPU, Unit: UnitCPUPerMillion,
			Baseline: fmt.Sprintf("raw insert, %s batches", count(h.sizes.InsertBatch)), BaselineValue: insert.chPerMillion, Ratio: insert.chPerMillion / chCPU,
			Target: "<= 8 CPU-s", Met: metIf(chCPU, func(v float64) bool { return v <= 8 })},
	)

	// The cost table: each process's CPU per event while draining, the ingester's split
	// into stages by its profile, beside the raw baselines.
	h.report.cost(
		CostRow{Stage: "nats-server: store a publish", Value: perEvent(fillCPU.nats, n), Unit: UnitMicrosPerEvent,
			Note: "while the backlog was published (raw PublishMsgAsync)"},
		CostRow{Stage: costDeliver, Value: perEvent(drainCPU.nats, n), Unit: UnitMicrosPerEvent,
			Baseline: "raw consume", BaselineValue: perEvent(consumeCPU.nats, n),
			Note: "the drain's acks also delete (interest retention); the raw consumer's do not"},
		CostRow{Stage: costIngester, Value: ingesterCPU, Unit: UnitMicrosPerEvent,
			Baseline: "raw consume, client", BaselineValue: consumeClient,
			Note: fmt.Sprintf("drain %s/s; raw consume %s/s", count(int(drain)), count(int(consume)))},
	)
	shares, err := stageShares(prof)
	if err != nil {
		h.report.note("drain: no stage split (%v)", err)
	}
	for _, st := range append(ingestStages, stage{name: stageOther}) {
		row := CostRow{Stage: "  " + st.name, Value: nan, Unit: UnitMicrosPerEvent}
		if shares != nil {
			row.Value = shares[st.name] * ingesterCPU
			row.Note = fmt.Sprintf("%.0f%% of the ingester's CPU", 100*shares[st.name])
		}
		switch st.name {
		case stageNATS:
			row.Baseline, row.BaselineValue = "raw consume, client", consumeClient
		case stageInsert:
			row.Baseline, row.BaselineValue = fmt.Sprintf("raw insert %s, client", count(h.sizes.IngestBatch)), insertSmall.clientPerRow
		}
		h.report.cost(row)
	}
	h.report.cost(
		CostRow{Stage: costClickHouse, Value: chCPU, Unit: UnitCPUPerMillion,
			Baseline: fmt.Sprintf("raw insert %s", count(h.sizes.IngestBatch)), BaselineValue: insertSmall.chPerMillion,
			Note: fmt.Sprintf("raw insert %s: %.1f CPU-s/1M", count(h.sizes.InsertBatch), insert.chPerMillion)},
	)
	return nil
}

// meter reads the CPU of this process, the phase's nats-server and the ClickHouse server.
func (h *harness) meter(js *jetStreamEnv) cpuMeter {
	return cpuMeter{natsPID: js.proc.pid(), chPID: h.chPID}
}

func metIf(v float64, ok func(float64) bool) *bool {
	if v != v { // NaN: not measured
		return nil
	}
	return met(ok(v))
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

// insertResult is one raw insert run: rows per second, the client's CPU per row (building
// nothing: encoding and sending the prepared columns), and ClickHouse's CPU per million rows
// from the first insert until the merges the inserts caused settled.
type insertResult struct {
	rate, clientPerRow, chPerMillion float64
}

// rawInsertRun inserts the generator's n events in batches of the given size into a fresh
// database with its materialized views.
func (h *harness) rawInsertRun(ctx context.Context, meter cpuMeter, n int, base time.Time, batch int) (insertResult, error) {
	conn, err := h.ch.fresh(ctx)
	if err != nil {
		return insertResult{}, err
	}
	defer conn.Close()
	batches := buildInsertColumns(newGenerator(h.names, 1), n, base, batch)
	s0 := meter.sample()
	if err := rawInsert(ctx, conn, batches); err != nil {
		return insertResult{}, fmt.Errorf("raw insert: %w", err)
	}
	s1 := meter.sample()
	h.settleMerges(ctx, conn)
	return insertResult{
		rate:         float64(n) / s0.to(s1).wall.Seconds(),
		clientPerRow: perEvent(s0.to(s1).self, n),
		chPerMillion: perMillion(s0.to(meter.sample()).ch, n),
	}, nil
}

// settleMerges waits until ClickHouse runs no merge in the benchmark database for a second
// (at most a minute), so that the CPU read after it includes the merges the inserts caused,
// and returns how long it waited.
func (h *harness) settleMerges(ctx context.Context, conn driver.Conn) time.Duration {
	start := time.Now()
	quiet := 0
	for quiet < 5 && time.Since(start) < time.Minute && ctx.Err() == nil {
		var merges uint64
		if err := conn.QueryRow(ctx, "SELECT count() FROM system.merges WHERE database = ?", h.cfg.Database).Scan(&merges); err != nil {
			return time.Since(start)
		}
		if merges == 0 {
			quiet++
		} else {
			quiet = 0
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
	return time.Since(start)
}

// insertColumns is one batch of usage rows as chsink's columns.
type insertColumns struct {
	ids, projects, keys, services, gateways, methods, endpoints, models, providers, ips, requestIDs []string
	times, ingested                                                                                 []time.Time
	timesMs, costs                                                                                  []int64
	statuses                                                                                        []uint16
	latencies                                                                                       []uint32
	inTokens, outTokens, hashes, seqs                                                               []uint64
}

// buildInsertColumns builds the generator's n events as chsink's usage columns in memory.
func buildInsertColumns(g *generator, n int, base time.Time, batch int) []*insertColumns {
	var batches []*insertColumns
	ingestedAt := time.Now().UTC().Truncate(time.Second)
	for i := 0; i < n; i += batch {
		c := &insertColumns{}
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
	return batches
}

// rawInsert inserts prepared batches with column-wise appends and Send, as chsink does.
func rawInsert(ctx context.Context, conn driver.Conn, batches []*insertColumns) error {
	for _, c := range batches {
		b, err := conn.PrepareBatch(ctx, "INSERT INTO usage_events ("+chsink.UsageColumns+")")
		if err != nil {
			return err
		}
		for i, col := range []any{c.ids, c.times, c.timesMs, c.projects, c.keys, c.services, c.gateways, c.methods, c.endpoints, c.models, c.providers,
			c.statuses, c.latencies, c.inTokens, c.outTokens, c.costs, c.ips, c.requestIDs, c.hashes, c.seqs, c.ingested} {
			if err := b.Column(i).Append(col); err != nil {
				_ = b.Abort()
				return fmt.Errorf("column %d: %w", i, err)
			}
		}
		if err := b.Send(); err != nil {
			return err
		}
	}
	return nil
}
