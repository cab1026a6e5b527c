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

// profile starts a CPU profile of this process; the returned function stops it and returns
// the profile (nil when none was taken). It profiles when keep is set (the drain's stage
// split reads its profile) or a profile directory is configured, which also receives the
// profile and a heap profile at the largest live heap.
func (h *harness) profile(name string, keep bool) func() []byte {
	if h.cfg.ProfileDir == "" && !keep {
		return func() []byte { return nil }
	}
	var buf bytes.Buffer
	if err := pprof.StartCPUProfile(&buf); err != nil {
		h.logf("cpu profile %s: %v", name, err)
		return func() []byte { return nil }
	}
	stopHeap := func() {}
	if h.cfg.ProfileDir != "" {
		stopHeap = h.sampleHeap(filepath.Join(h.cfg.ProfileDir, name+".heap.pprof"))
	}
	return func() []byte {
		stopHeap()
		pprof.StopCPUProfile()
		if h.cfg.ProfileDir != "" {
			path := filepath.Join(h.cfg.ProfileDir, name+".cpu.pprof")
			if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
				h.logf("cpu profile %s: %v", path, err)
			} else {
				h.logf("wrote %s and %s", path, filepath.Join(h.cfg.ProfileDir, name+".heap.pprof"))
			}
		}
		return buf.Bytes()
	}
}

// sampleHeap keeps the heap profile taken when the live heap was largest (sampled every
// 500 ms after a GC): what the in-process ingester holds at its peak. The returned function
// stops sampling.
func (h *harness) sampleHeap(path string) func() {
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
				_ = os.WriteFile(path, buf.Bytes(), 0o644)
			}
		}
	}()
	return func() {
		close(stop)
		<-sampled
	}
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
	pubs, closePubs, err := newPublishers(js, e2ePublishers)
	if err != nil {
		return err
	}
	defer closePubs()
	h.logf("e2e: %d publishers sending %s events while the ingester runs", e2ePublishers, count(n))
	stopProfile := h.profile("e2e", false)
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
