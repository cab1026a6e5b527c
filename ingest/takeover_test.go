package ingest_test

// Take-over on the memory sink: what a (re)started ingester checks against storage, and
// deliveries it never received. See takeOver in ingest.go.

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/keytrail/keytrail/ingest"
	"github.com/keytrail/keytrail/ingest/broker"
	"github.com/keytrail/keytrail/ingest/memsink"
	"github.com/keytrail/keytrail/internal/testenv"
)

// Ingester A was delivered events 1-20 and stored 1-15 before it died; B took the consumer
// over (reset to the ack floor, 0) and died before fetching. C starts with batches of 10.
// Expect: storage holds an unbroken run from the ack floor (1-15), so C checks every record
// until the first one storage lacks (16, in its second batch) and no further: two checks of
// 10, one insert of 16-20; events published once C has caught up (21-30) are not checked.
// At the end 30 events stored once, 15 found stored and dropped.
func TestTakeOverChecksStorageUntilTheFirstEventItLacks(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := idleMemEnv(t, broker.DefaultStreamConfig())
	e.publishValid(t, ids("v", 20)...)

	a := crashAfterWrite{storageSink: memsink.New(e.mem), through: 15, wrote: make(chan struct{}), once: &sync.Once{}}
	stopA := runIngesterWith(t, e.js, a, e.logs, 100*time.Millisecond)
	select {
	case <-a.wrote:
	case <-time.After(10 * time.Second):
		t.Fatal("ingester A never wrote")
	}
	_ = stopA()
	if n, _ := e.mem.Count(memsink.UsageTable); n != 15 {
		t.Fatalf("A stored %d events, want 15", n)
	}
	if _, err := e.js.JS.ResetConsumer(ctx, e.js.Streams.EventsStream, e.js.Streams.Durable); err != nil { // B
		t.Fatal(err)
	}
	if info := e.consumerInfo(t); info.NumAckPending != 0 || info.AckFloor.Stream != 0 {
		t.Fatalf("after B: %d awaiting ack, acknowledged through %d; want 0 and 0", info.NumAckPending, info.AckFloor.Stream)
	}

	e.start(t, func(cfg *ingest.Config) { cfg.BatchSize = 10 })
	e.waitDrained(t)
	e.waitStored(t, 20, 0)
	e.publishValid(t, ids("w", 10)...)
	e.waitDrained(t)
	e.waitStored(t, 30, 0)
	if got := fmt.Sprint(e.sink.Checks()); got != "[{10 false} {10 false}]" {
		t.Errorf("checks %s, want two of 10", got)
	}
	if got := fmt.Sprint(e.sink.Inserts()); got != "[{usage_events 5 stored} {usage_events 10 stored}]" {
		t.Errorf("inserts %s", got)
	}
	if got := fmt.Sprint(poisonCounters(t, e.reg, "keytrail_ingest_duplicates_dropped_total", "kind")); got != "map[usage:15]" {
		t.Errorf("duplicates dropped %s, want 15", got)
	}
	wantStoredOnce(t, e.mem, 30)
}

// Deliveries the ingester never received: while it holds two batches (the first one's
// insert held in flight, the second waiting at the hand-over), another client pulls event 5
// from its durable and never acknowledges it; event 6 then goes to the ingester.
// Expect: the ingester sees that its delivery sequence skipped one, stores and acknowledges
// what came before, and takes the consumer over, which redelivers 5 and 6 at once (not after
// AckWait). Without that, its AckAll ack of 6 would acknowledge 5 unstored: lost. At the
// end: 6 events stored once, in three inserts of 2, everything acknowledged, the skip
// logged once.
func TestMissedDeliveriesAreTakenOver(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := idleMemEnv(t, broker.DefaultStreamConfig())
	var first *memsink.Gate
	e.start(t, func(cfg *ingest.Config) {
		cfg.BatchSize = 2
		first = memSink(cfg).Hold(memsink.UsageTable)
	})
	e.publishValid(t, ids("v", 4)...)
	<-first.Reached()
	// The reader has taken 3 and 4 and waits at the hand-over, with no pull request open.
	testenv.Eventually(t, 10*time.Second, func() error {
		if info := e.consumerInfo(t); info.Delivered.Stream != 4 || info.NumWaiting != 0 {
			return fmt.Errorf("delivered through %d with %d pull requests waiting, want 4 and 0", info.Delivered.Stream, info.NumWaiting)
		}
		return nil
	})
	e.publishValid(t, "v5", "v6")
	other, err := e.js.JS.Consumer(ctx, e.js.Streams.EventsStream, e.js.Streams.Durable)
	if err != nil {
		t.Fatal(err)
	}
	stolen, err := other.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for m := range stolen.Messages() {
		if meta, _ := m.Metadata(); meta.Sequence.Stream != 5 {
			t.Fatalf("the other client got stream sequence %d, want 5", meta.Sequence.Stream)
		}
	}
	first.Release()
	e.waitDrained(t)
	e.waitStored(t, 6, 0)
	if got := fmt.Sprint(e.sink.Inserts()); got != "[{usage_events 2 stored} {usage_events 2 stored} {usage_events 2 stored}]" {
		t.Errorf("inserts %s", got)
	}
	if n := e.logs.Count("missed deliveries of the consumer; taking it over"); n != 1 {
		t.Errorf("%d skip log lines, want 1", n)
	}
	wantStoredOnce(t, e.mem, 6)
}
