package ingest_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keytrail/keytrail/event"
	"github.com/keytrail/keytrail/event/decode"
	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/ingest"
	"github.com/keytrail/keytrail/ingest/broker"
	"github.com/keytrail/keytrail/ingest/chsink"
	"github.com/keytrail/keytrail/ingest/memsink"
	"github.com/keytrail/keytrail/internal/testenv"
)

// runIngester runs an ingester with the given sink until the returned stop is called.
func runIngester(t *testing.T, js *testenv.JetStream, sink ingest.Sink, logs *testenv.SyncBuffer) (stop func() error) {
	return runIngesterWith(t, js, sink, logs, 15*time.Second)
}

func runIngesterWith(t *testing.T, js *testenv.JetStream, sink ingest.Sink, logs *testenv.SyncBuffer, shutdown time.Duration) (stop func() error) {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithCancel(context.Background())
	ing, err := ingest.New(ctx, ingest.Config{JetStream: js.JS, Streams: js.Streams, Sink: sink, BatchSize: 1000, FlushInterval: 50 * time.Millisecond, Logger: logger, ShutdownTimeout: shutdown})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- ing.Run(ctx) }()
	var once sync.Once
	var runErr error
	stop = func() error {
		once.Do(func() { cancel(); runErr = <-done })
		return runErr
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

func TestSecretShapedValuesNeverReachStorageOrLogs(t *testing.T) {
	t.Parallel()
	js := testenv.NewJetStream(t, broker.DefaultStreamConfig())
	db := testenv.ClickHouse(t)
	sink, _ := chsink.New(chsink.Config{Conn: db.Conn})
	var logs testenv.SyncBuffer
	runIngester(t, js, sink, &logs)

	secret := "sk-proj-Zx8Qw2Er4Ty6Ui8Op0As2Df4Gh6Jk8L"
	u := usageEvent("s1", secret, "billing", time.Now().Add(-time.Minute), 200)
	u.RequestId = "Bearer " + secret
	b, _ := proto.Marshal(u)
	publish(t, js.JS, js.Streams.Subjects.Usage("acme"), "s1", "", b)
	l := &keytrailv1.LifecycleEvent{EventId: "s2", Time: timestamppb.Now(), Project: "acme", KeyId: "key_a",
		Action: keytrailv1.Action_ACTION_CREATED, Actor: "alice", Attributes: map[string]string{"leaked": secret}}
	b, _ = proto.Marshal(l)
	publish(t, js.JS, js.Streams.Subjects.Lifecycle("acme"), "s2", "", b)

	testenv.Eventually(t, 10*time.Second, func() error {
		if n := testenv.QueryUint64(t, db.Conn, "SELECT count() FROM usage_events") + testenv.QueryUint64(t, db.Conn, "SELECT count() FROM lifecycle_events"); n != 2 {
			return fmt.Errorf("%d rows", n)
		}
		return nil
	})
	if n := testenv.CountOccurrences(t, db, secret); n != 0 {
		t.Errorf("the secret is in %d ClickHouse cells", n)
	}
	if n := testenv.QueryUint64(t, db.Conn, "SELECT count() FROM usage_events WHERE key_id = ? AND request_id = ?", event.Fingerprint(secret), event.Fingerprint("Bearer "+secret)); n != 1 {
		t.Errorf("fingerprinted usage row count %d, want 1", n)
	}
	if n := testenv.QueryUint64(t, db.Conn, "SELECT count() FROM lifecycle_events WHERE has(attribute_values, ?)", event.Fingerprint(secret)); n != 1 {
		t.Errorf("fingerprinted lifecycle row count %d, want 1", n)
	}
	if strings.Contains(logs.String(), secret) || !strings.Contains(logs.String(), "replaced secret-shaped values with fingerprints") {
		t.Errorf("logs:\n%s", logs.String())
	}
}

// storageSink is a sink as the ingester uses it: it writes, checks and keeps dead letters.
type storageSink interface {
	ingest.Sink
	ingest.Deduper
	ingest.DeadLetterStore
}

// crashAfterWrite stores the first batch (or, with through set, its records up to that stream
// sequence, as if the process had flushed them as a batch of their own), then behaves as a
// process killed before its ack: the write is in storage, every later call fails, so no
// ack ever happens.
type crashAfterWrite struct {
	storageSink
	through uint64
	wrote   chan struct{}
	once    *sync.Once
}

func (c crashAfterWrite) Write(ctx context.Context, rows *ingest.Rows) error {
	crashed := true
	c.once.Do(func() { crashed = false })
	if crashed {
		return fmt.Errorf("process is dead")
	}
	if c.through > 0 {
		rows = rowsThrough(rows, c.through)
	}
	if err := c.storageSink.Write(ctx, rows); err != nil {
		return err
	}
	close(c.wrote)
	return fmt.Errorf("killed before the ack")
}

// rowsThrough is a copy of the rows up to a stream sequence.
func rowsThrough(rows *ingest.Rows, through uint64) *ingest.Rows {
	var records []ingest.Record
	for _, r := range rows.Lifecycle {
		if r.StreamSeq <= through {
			records = append(records, r)
		}
	}
	out := ingest.RowsOf(records)
	for i := range rows.Usage.Len() {
		if seq := rows.Usage.StreamSeq[i]; seq <= through {
			f := decode.FieldsOf(rows.Usage.Event(i))
			out.Usage.Append(&f, rows.Usage.ContentHash[i], seq)
		}
	}
	return out
}

func TestRedeliveryAfterACrashBetweenWriteAndAckStoresOnce(t *testing.T) {
	t.Parallel()
	streams := broker.DefaultStreamConfig()
	streams.AckWait = time.Second // redeliver quickly once the first ingester is gone
	js := testenv.NewJetStream(t, streams)
	st := memsink.NewStorage()
	for i := 0; i < 50; i++ {
		e := usageEvent(fmt.Sprintf("r%d", i), "key_a", "billing", time.Now().Add(-time.Minute), 200)
		b, _ := proto.Marshal(e)
		publish(t, js.JS, js.Streams.Subjects.Usage("acme"), e.EventId, "", b)
	}
	lc := &keytrailv1.LifecycleEvent{EventId: "rl", Time: timestamppb.Now(), Project: "acme", KeyId: "key_a", Action: keytrailv1.Action_ACTION_CREATED, Actor: "alice"}
	b, _ := proto.Marshal(lc)
	publish(t, js.JS, js.Streams.Subjects.Lifecycle("acme"), "rl", "", b)

	crashing := crashAfterWrite{storageSink: memsink.New(st), wrote: make(chan struct{}), once: &sync.Once{}}
	var logs testenv.SyncBuffer
	stop := runIngesterWith(t, js, crashing, &logs, 100*time.Millisecond)
	select {
	case <-crashing.wrote:
	case <-time.After(10 * time.Second):
		t.Fatal("first ingester never wrote")
	}
	_ = stop() // "crash": the batch is stored but was never acknowledged

	second := memsink.New(st)
	runIngester(t, js, second, &logs)
	testenv.Eventually(t, 15*time.Second, func() error {
		info, err := js.JS.Stream(context.Background(), js.Streams.EventsStream)
		if err != nil {
			return err
		}
		if n := info.CachedInfo().State.Msgs; n != 0 {
			return fmt.Errorf("%d messages not yet acknowledged", n)
		}
		return nil
	})
	wantStoredOnce(t, st, 50)
	if n, _ := st.Count(memsink.LifecycleTable); n != 1 {
		t.Errorf("lifecycle rows %d, want 1", n)
	}
	// The second ingester checked the redelivered batch and wrote nothing of it.
	if got := fmt.Sprint(second.Inserts()); got != "[]" {
		t.Errorf("the second ingester inserted %s", got)
	}
}

func TestReusedEventIDWithOtherContentIsDeadLettered(t *testing.T) {
	t.Parallel()
	js := testenv.NewJetStream(t, broker.DefaultStreamConfig())
	sink := memsink.New(memsink.NewStorage())
	var logs testenv.SyncBuffer
	runIngester(t, js, sink, &logs)

	original := usageEvent("same-id", "key_a", "billing", time.Now().Add(-time.Minute), 200)
	b, _ := proto.Marshal(original)
	publish(t, js.JS, js.Streams.Subjects.Usage("acme"), "msg-1", "", b)
	// The same event again under another message id: dropped quietly as a duplicate.
	publish(t, js.JS, js.Streams.Subjects.Usage("acme"), "msg-2", "", b)
	// Different content under the same event id: dead-lettered.
	forged := proto.Clone(original).(*keytrailv1.UsageEvent)
	forged.CostMicros = 99_000_000
	b, _ = proto.Marshal(forged)
	publish(t, js.JS, js.Streams.Subjects.Usage("acme"), "msg-3", "", b)
	after := usageEvent("after", "key_a", "billing", time.Now().Add(-time.Minute), 200)
	b, _ = proto.Marshal(after)
	publish(t, js.JS, js.Streams.Subjects.Usage("acme"), "after", "", b)

	testenv.Eventually(t, 10*time.Second, func() error {
		if n := sink.Storage().TimesStored(memsink.UsageTable, "after"); n != 1 {
			return fmt.Errorf("last event not stored")
		}
		return nil
	})
	var stored []string
	for _, r := range sink.Storage().Rows(memsink.UsageTable) {
		stored = append(stored, fmt.Sprintf("%s cost %d", r.ID(), r.Record.Event.Usage.GetCostMicros()))
	}
	if got, want := fmt.Sprint(stored), "[same-id cost 2500 after cost 2500]"; got != want {
		t.Errorf("stored %s, want %s (the original only)", got, want)
	}
	dl, _ := js.JS.Stream(context.Background(), js.Streams.DeadLetterStream)
	msg, err := dl.GetMsg(context.Background(), 1)
	if err != nil {
		t.Fatal(err)
	}
	if msg.Header.Get(ingest.HeaderReason) != "duplicate_event_id" || msg.Header.Get(ingest.HeaderStreamSeq) != "3" {
		t.Errorf("dead letter %v", msg.Header)
	}
}

// The sequence that stored 1000 events twice in CI: ingester A is delivered 1-30 and stores
// 1-20 before it dies; B takes over (the consumer's delivered sequence goes back to the ack
// floor), is redelivered 1-10 and dies too. The consumer now says "delivered through 10",
// but storage holds through 20: C must check 11-20 against storage as well.
func TestStoredRunAfterAChainOfTakeOversIsNotStoredAgain(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	streams := broker.DefaultStreamConfig()
	js := testenv.NewJetStream(t, streams)
	st := memsink.NewStorage()
	for i := 1; i <= 30; i++ {
		e := usageEvent(fmt.Sprintf("c%d", i), "key_a", "billing", time.Now().Add(-time.Minute), 200)
		b, _ := proto.Marshal(e)
		publish(t, js.JS, js.Streams.Subjects.Usage("acme"), e.EventId, "", b)
	}

	a := crashAfterWrite{storageSink: memsink.New(st), through: 20, wrote: make(chan struct{}), once: &sync.Once{}}
	var logs testenv.SyncBuffer
	stopA := runIngesterWith(t, js, a, &logs, 100*time.Millisecond)
	select {
	case <-a.wrote:
	case <-time.After(10 * time.Second):
		t.Fatal("ingester A never wrote")
	}
	_ = stopA()
	if n, _ := st.Count(memsink.UsageTable); n != 20 {
		t.Fatalf("A stored %d rows, want 20", n)
	}

	// B: the take-over's reset, ten redeliveries, no ack.
	if _, err := js.JS.ResetConsumer(ctx, streams.EventsStream, streams.Durable); err != nil {
		t.Fatal(err)
	}
	consumer, err := js.JS.Consumer(ctx, streams.EventsStream, streams.Durable)
	if err != nil {
		t.Fatal(err)
	}
	fetched, err := consumer.Fetch(10, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	got := 0
	for range fetched.Messages() {
		got++
	}
	info, err := consumer.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got != 10 || info.Delivered.Stream != 10 || info.NumAckPending != 10 {
		t.Fatalf("B: fetched %d, consumer delivered through %d with %d pending; want 10, 10, 10", got, info.Delivered.Stream, info.NumAckPending)
	}

	sinkC := memsink.New(st)
	runIngester(t, js, sinkC, &logs)
	testenv.Eventually(t, 15*time.Second, func() error {
		info, err := consumer.Info(ctx)
		if err != nil {
			return err
		}
		if info.AckFloor.Stream != 30 {
			return fmt.Errorf("acknowledged through %d, want 30", info.AckFloor.Stream)
		}
		return nil
	})
	wantStoredOnce(t, st, 30)
	// C checked the run and wrote only what followed it.
	if got := fmt.Sprint(sinkC.Inserts()); got != "[{usage_events 10 stored}]" {
		t.Errorf("C inserted %s, want 21-30 once", got)
	}
}

// wantStoredOnce checks that storage holds n usage events, each once.
func wantStoredOnce(t *testing.T, st *memsink.Storage, n int) {
	t.Helper()
	if rows, distinct := st.Count(memsink.UsageTable); rows != n || distinct != n {
		t.Errorf("storage holds %d usage rows of %d distinct events, want %d of %d", rows, distinct, n, n)
	}
}
