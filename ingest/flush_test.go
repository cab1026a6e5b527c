package ingest_test

// The flush path on the memory sink (ingest/memsink): when a batch is written, what happens
// when the write or the storage check fails, and that nothing is acknowledged before it is
// stored or dead-lettered. JetStream is real (in-process); storage is the memory sink, whose
// contract the conformance test in ingest/memsink holds to chsink's.

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/ingest"
	"github.com/keytrail/keytrail/ingest/broker"
	"github.com/keytrail/keytrail/ingest/memsink"
	"github.com/keytrail/keytrail/internal/testenv"
)

// ids returns prefix1 ... prefixN.
func ids(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s%d", prefix, i+1)
	}
	return out
}

// consumerInfo reads the durable consumer's state.
func (e *dlEnv) consumerInfo(t *testing.T) *jetstream.ConsumerInfo {
	t.Helper()
	c, err := e.js.JS.Consumer(context.Background(), e.js.Streams.EventsStream, e.js.Streams.Durable)
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// publishLifecycle publishes a valid lifecycle event of project acme.
func (e *dlEnv) publishLifecycle(t *testing.T, id string) {
	t.Helper()
	b, _ := proto.Marshal(&keytrailv1.LifecycleEvent{EventId: id, Time: timestamppb.New(time.Now().Add(-time.Minute)), Project: "acme",
		KeyId: "key_a", Action: keytrailv1.Action_ACTION_CREATED, Actor: "alice"})
	publish(t, e.js.JS, e.js.Streams.Subjects.Lifecycle("acme"), id, "", b)
}

// memSink is the memory sink of an ingester's configuration, to program its faults.
func memSink(cfg *ingest.Config) *memsink.Sink { return cfg.Sink.(*memsink.Sink) }

// 25 events wait when the ingester starts (batch size 10, pull requests of 4, flush interval
// 1 s). Expect two writes of exactly 10 (a batch is flushed as soon as it is full, across
// pull requests, long before the interval) and one of the last 5 while the ingester runs
// (flushed when the interval passed, not at shutdown); each event stored once.
func TestBatchIsFlushedWhenFullOrOldEnough(t *testing.T) {
	t.Parallel()
	e := idleMemEnv(t, broker.DefaultStreamConfig())
	e.publishValid(t, ids("v", 25)...)
	e.start(t, func(cfg *ingest.Config) { cfg.BatchSize, cfg.FetchSize, cfg.FlushInterval = 10, 4, time.Second })
	e.waitStored(t, 25, 0)
	e.waitDrained(t)
	if got := fmt.Sprint(e.sink.Inserts()); got != "[{usage_events 10 stored} {usage_events 10 stored} {usage_events 5 stored}]" {
		t.Errorf("inserts %s", got)
	}
	wantStoredOnce(t, e.mem, 25)
}

// Fault: storage refuses the first three writes of a batch of 5.
// Expect: the write retried until it succeeds, each retry after a storage check of the 5
// (a failed write may have committed): 3 refused inserts, then 1 of 5; 4 checks of 5 (the
// take-over's and one per retry); each event stored once; 3 insert errors counted; the
// batch acknowledged.
func TestRefusedWriteIsRetriedAndStoredOnce(t *testing.T) {
	t.Parallel()
	e := idleMemEnv(t, broker.DefaultStreamConfig())
	e.publishValid(t, ids("v", 5)...)
	e.start(t, func(cfg *ingest.Config) {
		cfg.MaxBackoff = 20 * time.Millisecond
		memSink(cfg).Fail(memsink.UsageTable, 3, memsink.Refuse)
	})
	e.waitDrained(t)
	e.waitStored(t, 5, 0)
	if got := fmt.Sprint(e.sink.Inserts()); got != "[{usage_events 5 refused} {usage_events 5 refused} {usage_events 5 refused} {usage_events 5 stored}]" {
		t.Errorf("inserts %s", got)
	}
	if got := fmt.Sprint(e.sink.Checks()); got != "[{5 false} {5 false} {5 false} {5 false}]" {
		t.Errorf("checks %s", got)
	}
	if n := testenv.Metric(t, e.reg, "keytrail_ingest_insert_errors_total"); n != 3 {
		t.Errorf("insert errors %v, want 3", n)
	}
	wantStoredOnce(t, e.mem, 5)
}

// Fault: an insert commits and its reply is lost (the sink reports failure), for the usage
// insert and, separately, for the lifecycle insert of a batch of 1 lifecycle and 5 usage
// events, taken after the start's check has ended (6 events stored first), so nothing but
// the failure makes the flush check storage.
// Expect: the storage check before the retry finds everything that committed (with a lost
// usage reply, the lifecycle row the same write stored before it too) and the retry writes
// only the rest: each event stored once, the audit chain one row long, what the check found
// counted as duplicates, the batch acknowledged.
func TestWriteCommittedButReportedFailedIsStoredOnce(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		table, inserts, duplicates string
	}{
		{memsink.UsageTable, "[{usage_events 6 stored} {lifecycle_events 1 stored} {usage_events 5 committed, reported failed}]", "map[lifecycle:1 usage:5]"},
		{memsink.LifecycleTable, "[{usage_events 6 stored} {lifecycle_events 1 committed, reported failed} {usage_events 5 stored}]", "map[lifecycle:1]"},
	} {
		t.Run(c.table, func(t *testing.T) {
			t.Parallel()
			e := idleMemEnv(t, broker.DefaultStreamConfig())
			e.publishValid(t, ids("w", 6)...)
			// Batches of exactly 6: the interval is long enough never to cut one short.
			e.start(t, func(cfg *ingest.Config) {
				cfg.BatchSize, cfg.FlushInterval, cfg.MaxBackoff = 6, time.Second, 20*time.Millisecond
			})
			e.waitDrained(t)
			e.waitStored(t, 6, 0)

			e.sink.Fail(c.table, 1, memsink.CommitThenFail)
			e.publishLifecycle(t, "l1")
			e.publishValid(t, ids("v", 5)...)
			e.waitDrained(t)
			e.waitStored(t, 11, 1)
			if got := fmt.Sprint(e.sink.Inserts()); got != c.inserts {
				t.Errorf("inserts %s, want %s", got, c.inserts)
			}
			// The start's check of w1-w6, and the one before the retry.
			if got := fmt.Sprint(e.sink.Checks()); got != "[{6 false} {6 false}]" {
				t.Errorf("checks %s", got)
			}
			if got := fmt.Sprint(poisonCounters(t, e.reg, "keytrail_ingest_duplicates_dropped_total", "kind")); got != c.duplicates {
				t.Errorf("duplicates dropped %s, want %s", got, c.duplicates)
			}
			wantStoredOnce(t, e.mem, 11)
			if chain := e.mem.Chain("acme"); len(chain) != 1 || chain[0].EventID != "l1" || chain[0].Seq != 1 {
				t.Errorf("audit chain %v, want l1 alone", chain)
			}
		})
	}
}

// Fault: the storage check fails twice (the take-over's check of a batch of 3).
// Expect: the check retried until it answers, then one write; each event stored once.
func TestFailedStorageCheckIsRetried(t *testing.T) {
	t.Parallel()
	e := idleMemEnv(t, broker.DefaultStreamConfig())
	e.publishValid(t, ids("v", 3)...)
	e.start(t, func(cfg *ingest.Config) {
		cfg.MaxBackoff = 20 * time.Millisecond
		memSink(cfg).FailChecks(2)
	})
	e.waitDrained(t)
	e.waitStored(t, 3, 0)
	if got := fmt.Sprint(e.sink.Checks()); got != "[{3 true} {3 true} {3 false}]" {
		t.Errorf("checks %s", got)
	}
	if got := fmt.Sprint(e.sink.Inserts()); got != "[{usage_events 3 stored}]" {
		t.Errorf("inserts %s", got)
	}
	wantStoredOnce(t, e.mem, 3)
}

// Fault: storage refuses a batch's write 10 times (backoff capped at 100 ms) with an AckWait
// of 500 ms, so the retries outlast the leases JetStream gave.
// Expect: the leases are extended while the write is retried: each of the 5 messages
// delivered exactly once (no redelivery, no duplicate dropped), stored once.
func TestLeasesAreKeptWhileAWriteIsRetried(t *testing.T) {
	t.Parallel()
	streams := broker.DefaultStreamConfig()
	streams.AckWait = 500 * time.Millisecond
	e := idleMemEnv(t, streams)
	e.publishValid(t, ids("v", 5)...)
	start := time.Now()
	e.start(t, func(cfg *ingest.Config) {
		cfg.MaxBackoff = 100 * time.Millisecond
		memSink(cfg).Fail(memsink.UsageTable, 10, memsink.Refuse)
	})
	e.waitDrained(t)
	if took := time.Since(start); took < streams.AckWait {
		t.Fatalf("the retries took %s, less than AckWait %s: the test proves nothing", took, streams.AckWait)
	}
	if info := e.consumerInfo(t); info.Delivered.Consumer != 5 || info.Delivered.Stream != 5 {
		t.Errorf("consumer delivered %d times through stream sequence %d, want 5 deliveries of 5 messages", info.Delivered.Consumer, info.Delivered.Stream)
	}
	if got := poisonCounters(t, e.reg, "keytrail_ingest_duplicates_dropped_total", "kind"); len(got) != 0 {
		t.Errorf("duplicates dropped %v, want none", got)
	}
	if n := len(e.sink.Inserts()); n != 11 {
		t.Errorf("%d inserts, want 10 refused and 1 stored", n)
	}
	wantStoredOnce(t, e.mem, 5)
}

// Fault: one insert of a batch of 5 stays in flight for three times AckWait (500 ms), as a
// slow ClickHouse insert would.
// Expect: the leases are extended while the write is in flight: each message delivered
// exactly once, one insert, stored once.
func TestLeasesAreKeptWhileAWriteIsInFlight(t *testing.T) {
	t.Parallel()
	streams := broker.DefaultStreamConfig()
	streams.AckWait = 500 * time.Millisecond
	e := idleMemEnv(t, streams)
	e.publishValid(t, ids("v", 5)...)
	var gate *memsink.Gate
	e.start(t, func(cfg *ingest.Config) { gate = memSink(cfg).Hold(memsink.UsageTable) })
	select {
	case <-gate.Reached():
	case <-time.After(10 * time.Second):
		t.Fatal("the write never started")
	}
	time.AfterFunc(3*streams.AckWait, gate.Release) // the fault: a slow insert
	e.waitDrained(t)
	if info := e.consumerInfo(t); info.Delivered.Consumer != 5 || info.Delivered.Stream != 5 {
		t.Errorf("consumer delivered %d times through stream sequence %d, want 5 deliveries of 5 messages", info.Delivered.Consumer, info.Delivered.Stream)
	}
	if got := fmt.Sprint(e.sink.Inserts()); got != "[{usage_events 5 stored}]" {
		t.Errorf("inserts %s", got)
	}
	wantStoredOnce(t, e.mem, 5)
}

// Rejected messages between valid ones: v1 p1 v2 p2 v3 (p undecodable), with the usage
// insert held in flight; then, by a restarted ingester with the dead-letter stream full,
// v4 p3 v5 with the dead-letter store refusing once and then held in flight.
// Expect: p1 and p2 are in the dead-letter stream before the batch is stored, but nothing is
// acknowledged until v1-v3 are stored (AckAll must not pass an unstored event); p3 goes to
// the dead-letter store, retried after the refusal, and the batch is acknowledged only once
// p3 is kept, after v4 and v5 are stored. At the end: 5 events stored once, 2 dead letters
// in the stream, 1 kept in storage, everything acknowledged.
func TestDeadLettersBetweenValidEventsAreAcknowledgedInOrder(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := idleMemEnv(t, broker.DefaultStreamConfig())
	bad := []byte("not a protobuf \xff")
	e.publishValid(t, "v1")
	e.publishMsg(t, e.poison("p1", bad))
	e.publishValid(t, "v2")
	e.publishMsg(t, e.poison("p2", bad))
	e.publishValid(t, "v3")
	var events *memsink.Gate
	e.start(t, func(cfg *ingest.Config) { events = memSink(cfg).Hold(memsink.UsageTable) })
	<-events.Reached()
	if dl := e.deadLetters(t); len(dl) != 2 || dl["p1"] == nil || dl["p2"] == nil {
		t.Fatalf("dead-letter stream holds %d messages, want p1 and p2", len(dl))
	}
	if info := e.consumerInfo(t); info.AckFloor.Stream != 0 || info.NumAckPending != 5 {
		t.Errorf("while v1-v3 are being stored: acknowledged through %d with %d awaiting ack, want 0 and 5", info.AckFloor.Stream, info.NumAckPending)
	}
	events.Release()
	e.waitDrained(t)
	e.waitStored(t, 3, 0)
	if got := fmt.Sprint(e.sink.Inserts()); got != "[{usage_events 3 stored}]" {
		t.Errorf("inserts %s", got)
	}
	if err := e.stop(); err != nil {
		t.Fatal(err)
	}

	s, err := e.js.JS.Stream(ctx, e.js.Streams.DeadLetterStream)
	if err != nil {
		t.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	cfg.MaxMsgs, cfg.Discard = 2, jetstream.DiscardNew
	if _, err := e.js.JS.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	e.publishValid(t, "v4")
	e.publishMsg(t, e.poison("p3", bad)) // stream sequence 7
	e.publishValid(t, "v5")
	var kept *memsink.Gate
	e.start(t, func(cfg *ingest.Config) {
		cfg.MaxBackoff = 20 * time.Millisecond
		memSink(cfg).Fail(memsink.DeadLetterTable, 1, memsink.Refuse)
		kept = memSink(cfg).Hold(memsink.DeadLetterTable)
	})
	<-kept.Reached()
	if n := e.mem.TimesStored(memsink.UsageTable, "v4") + e.mem.TimesStored(memsink.UsageTable, "v5"); n != 2 {
		t.Errorf("v4 and v5 stored %d times before p3 is kept, want 2", n)
	}
	if info := e.consumerInfo(t); info.AckFloor.Stream != 5 {
		t.Errorf("while p3 is being kept: acknowledged through %d, want 5", info.AckFloor.Stream)
	}
	kept.Release()
	e.waitDrained(t)
	if got := fmt.Sprint(e.tableDeadLetters(t)); got != "[7 undecodable stream_full]" {
		t.Errorf("dead letters kept in storage %s", got)
	}
	if got := fmt.Sprint(e.sink.Inserts()); got != "[{usage_events 2 stored} {dead_letters 1 refused} {dead_letters 1 stored}]" {
		t.Errorf("inserts of the restarted ingester %s", got)
	}
	if got := poisonCounters(t, e.reg, "keytrail_ingest_events_dead_lettered_total", "reason"); fmt.Sprint(got) != "map[undecodable:1]" {
		t.Errorf("dead letters by reason (restarted ingester) %v", got)
	}
	if dl := e.deadLetters(t); len(dl) != 2 {
		t.Errorf("dead-letter stream holds %d messages, want p1 and p2", len(dl))
	}
	wantStoredOnce(t, e.mem, 5)
}
