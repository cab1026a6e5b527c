package chsink_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keytrail/keytrail/event"
	"github.com/keytrail/keytrail/event/auditchain"
	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/ingest"
	"github.com/keytrail/keytrail/ingest/chsink"
	"github.com/keytrail/keytrail/internal/testenv"
)

// slowInsert runs, in the background, an insert tagged as a sink's insert into db that
// commits its one row only after sleeping 2 s: what the insert of an ingester killed right
// after sending its batch looks like to the next one. It returns once ClickHouse lists the
// insert as running, and a channel that yields the insert's error when it has ended.
func slowInsert(t *testing.T, db *testenv.Database, insertSelect string) <-chan error {
	t.Helper()
	queryID := "keytrail-insert/" + db.Name + "/killed-predecessor"
	done := make(chan error, 1)
	go func() {
		done <- db.Conn.Exec(clickhouse.Context(context.Background(), clickhouse.WithQueryID(queryID)), insertSelect+" FROM system.one WHERE sleep(2) = 0")
	}()
	testenv.Eventually(t, 10*time.Second, func() error {
		if testenv.QueryUint64(t, db.Conn, "SELECT count() FROM system.processes WHERE query_id = ?", queryID) == 0 {
			return errNotRunningYet
		}
		return nil
	})
	return done
}

var errNotRunningYet = errors.New("the slow insert is not running yet")

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// The storage check of a redelivered event must see an insert that was still committing
// when the check began; without the fence it answers NotStored and the event is written twice.
func TestClassifyWaitsForAnInsertStillCommitting(t *testing.T) {
	t.Parallel()
	db := testenv.ClickHouse(t)
	sink, err := chsink.New(chsink.Config{Conn: db.Conn})
	if err != nil {
		t.Fatal(err)
	}
	at := time.Now().UTC().Add(-time.Minute).Truncate(time.Second)
	done := slowInsert(t, db, "INSERT INTO usage_events (event_id, event_time, event_time_ms, project, key_id, content_hash) SELECT 'ev-late', toDateTime("+
		itoa(at.Unix())+"), "+itoa(at.UnixMilli())+", 'acme', 'key_a', toUInt64(42)")

	records := []ingest.Record{
		{Event: event.Event{Kind: event.KindUsage, Usage: &keytrailv1.UsageEvent{EventId: "ev-late", Time: timestamppb.New(at), Project: "acme", KeyId: "key_a"}},
			StreamSeq: 7, MaybeStored: true, ContentHash: 42},
		{Event: event.Event{Kind: event.KindUsage, Usage: &keytrailv1.UsageEvent{EventId: "ev-other", Time: timestamppb.New(at), Project: "acme", KeyId: "key_a"}},
			StreamSeq: 8, MaybeStored: true, ContentHash: 43},
	}
	got, err := sink.Classify(context.Background(), records)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("slow insert: %v", err)
		}
	default:
		t.Fatal("Classify returned while the insert begun before it was still running")
	}
	want := []ingest.Presence{ingest.AlreadyStored, ingest.NotStored}
	if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("Classify = %v, want %v", got, want)
	}
}

// A new sink's first lifecycle write reads where the project's audit chain ends; a
// predecessor's lifecycle insert still committing must be waited for, or the chain forks.
func TestFirstLifecycleWriteWaitsForAnInsertStillCommitting(t *testing.T) {
	t.Parallel()
	db := testenv.ClickHouse(t)
	sink, err := chsink.New(chsink.Config{Conn: db.Conn})
	if err != nil {
		t.Fatal(err)
	}
	at := time.Now().UTC().Add(-time.Minute).Truncate(time.Second)
	done := slowInsert(t, db, "INSERT INTO lifecycle_events (event_id, event_time, event_time_ms, project, key_id, action, chain_seq, chain_hash) SELECT 'lc-late', toDateTime("+
		itoa(at.Unix())+"), "+itoa(at.UnixMilli())+", 'acme', 'key_a', 'created', toUInt64(1), 'hash-of-entry-1'")

	rec := ingest.Record{Event: event.Event{Kind: event.KindLifecycle, Lifecycle: &keytrailv1.LifecycleEvent{
		EventId: "lc-next", Time: timestamppb.New(at.Add(time.Second)), Project: "acme", KeyId: "key_a",
		Action: keytrailv1.Action_ACTION_DISABLED, Actor: "alice"}}, StreamSeq: 9}
	if err := sink.Write(context.Background(), ingest.RowsOf([]ingest.Record{rec})); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("slow insert: %v", err)
	}
	var seq uint64
	var prev string
	if err := db.Conn.QueryRow(context.Background(), "SELECT chain_seq, prev_hash FROM lifecycle_events WHERE event_id = 'lc-next'").Scan(&seq, &prev); err != nil {
		t.Fatal(err)
	}
	if seq != 2 || prev != "hash-of-entry-1" {
		t.Fatalf("lc-next stored at chain_seq %d after %q; want 2 after %q (genesis is %q)", seq, prev, "hash-of-entry-1", auditchain.GenesisHead.Hash)
	}
}

// A whole 10,000-event batch with UUID ids is checked at once after a start: the lookups must
// stay under ClickHouse's max_query_size (256 KiB), which one query naming every id exceeds.
func TestClassifyAFullBatchOfUUIDIDs(t *testing.T) {
	t.Parallel()
	db := testenv.ClickHouse(t)
	sink, err := chsink.New(chsink.Config{Conn: db.Conn})
	if err != nil {
		t.Fatal(err)
	}
	at := time.Now().UTC().Add(-time.Hour).Truncate(time.Second)
	record := func(i int) ingest.Record {
		id := fmt.Sprintf("%08x-4b1c-4d2e-8f3a-%012x", i, i*7919)
		return ingest.Record{Event: event.Event{Kind: event.KindUsage, Usage: &keytrailv1.UsageEvent{
			EventId: id, Time: timestamppb.New(at.Add(time.Duration(i) * time.Millisecond)), Project: "acme", KeyId: fmt.Sprintf("key_%03d", i%300)}},
			StreamSeq: uint64(i + 1), MaybeStored: true, ContentHash: uint64(i)}
	}
	const stored, fresh = 10_000, 5
	var records []ingest.Record
	for i := range stored + fresh {
		records = append(records, record(i))
	}
	if err := sink.Write(context.Background(), ingest.RowsOf(records[:stored])); err != nil {
		t.Fatal(err)
	}
	got, err := sink.Classify(context.Background(), records)
	if err != nil {
		t.Fatal(err)
	}
	counts := map[ingest.Presence]int{}
	for i, p := range got {
		want := ingest.AlreadyStored
		if i >= stored {
			want = ingest.NotStored
		}
		if p != want {
			t.Fatalf("record %d: %v, want %v", i, p, want)
		}
		counts[p]++
	}
	if len(got) != stored+fresh || counts[ingest.AlreadyStored] != stored || counts[ingest.NotStored] != fresh {
		t.Fatalf("%d answers %v, want %d stored and %d not", len(got), counts, stored, fresh)
	}
}
