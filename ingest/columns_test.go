package ingest_test

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"github.com/keytrail/keytrail/event"
	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/ingest"
	"github.com/keytrail/keytrail/ingest/broker"
	"github.com/keytrail/keytrail/ingest/chsink"
	"github.com/keytrail/keytrail/internal/testenv"
)

// legacyContentHash is the content hash as keytrail has always stored it: xxhash of the
// event's deterministic protobuf encoding.
func legacyContentHash(t *testing.T, e *keytrailv1.UsageEvent) uint64 {
	t.Helper()
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	return xxhash.Sum64(b)
}

// Rows stored before a restart (by this version or an earlier one, with the content hash
// keytrail has always computed) are recognised when their events come again after it,
// whether the events arrive as canonical protobuf (decoded without a message, hashed from the
// bytes received) or as JSON (decoded as a message): the same event is dropped, another event
// under a stored id is dead-lettered from the stream's copy of its message, headers and
// payload as published. New events are stored with that same hash.
func TestRestartRecognisesStoredRowsWhateverTheEncoding(t *testing.T) {
	t.Parallel()
	js := testenv.NewJetStream(t, broker.DefaultStreamConfig())
	db := testenv.ClickHouse(t)
	at := time.Now().Add(-time.Minute).Truncate(time.Millisecond)
	same := usageEvent("stored-same", "key_a", "billing", at, 200)
	sameJSON := usageEvent("stored-same-json", "key_b", "billing", at, 200)
	other := usageEvent("stored-other", "key_c", "billing", at, 200)
	fresh := usageEvent("fresh", "key_d", "billing", at, 429)

	// Storage already holds three of them, as a flush whose ack was lost left them.
	storedOther := proto.Clone(other).(*keytrailv1.UsageEvent)
	storedOther.CostMicros = 1
	sink, err := chsink.New(chsink.Config{Conn: db.Conn})
	if err != nil {
		t.Fatal(err)
	}
	var records []ingest.Record
	for i, e := range []*keytrailv1.UsageEvent{same, sameJSON, storedOther} {
		records = append(records, ingest.Record{Event: event.Event{Kind: event.KindUsage, Usage: e}, StreamSeq: uint64(i + 1), ContentHash: legacyContentHash(t, e)})
	}
	if err := sink.Write(context.Background(), ingest.RowsOf(records)); err != nil {
		t.Fatal(err)
	}

	subject := js.Streams.Subjects.Usage("acme")
	pb := func(e *keytrailv1.UsageEvent) []byte { b, _ := proto.Marshal(e); return b }
	publish(t, js.JS, subject, same.EventId, "", pb(same))
	j, _ := event.EncodingJSON.Marshal(sameJSON)
	publish(t, js.JS, subject, sameJSON.EventId, event.ContentTypeJSON, j)
	otherMsg := nats.NewMsg(subject)
	otherMsg.Data = pb(other)
	otherMsg.Header.Set(nats.MsgIdHdr, other.EventId)
	otherMsg.Header.Set("X-Gateway", "gw-eu-1")
	if _, err := js.JS.PublishMsg(context.Background(), otherMsg); err != nil {
		t.Fatal(err)
	}
	publish(t, js.JS, subject, fresh.EventId, "", pb(fresh))
	startIngester(t, js, db)

	testenv.Eventually(t, 10*time.Second, func() error {
		if n := testenv.QueryUint64(t, db.Conn, "SELECT count() FROM usage_events WHERE event_id = 'fresh'"); n != 1 {
			return errors.New("fresh not stored yet")
		}
		return nil
	})
	if n, ids := testenv.QueryUint64(t, db.Conn, "SELECT count() FROM usage_events"), testenv.QueryUint64(t, db.Conn, "SELECT uniqExact(event_id) FROM usage_events"); n != 4 || ids != 4 {
		t.Errorf("usage_events holds %d rows of %d ids, want 4 of 4", n, ids)
	}
	if got := testenv.QueryUint64(t, db.Conn, "SELECT toUInt64(cost_micros) FROM usage_events WHERE event_id = 'stored-other'"); got != 1 {
		t.Errorf("stored-other costs %d, want the stored 1", got)
	}
	if got, want := testenv.QueryUint64(t, db.Conn, "SELECT content_hash FROM usage_events WHERE event_id = 'fresh'"), legacyContentHash(t, fresh); got != want {
		t.Errorf("fresh stored with content hash %d, want %d", got, want)
	}
	dl, err := js.JS.Stream(context.Background(), js.Streams.DeadLetterStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := dl.Info(context.Background())
	if err != nil || info.State.Msgs != 1 {
		t.Fatalf("dead letters: %d (%v), want 1", info.State.Msgs, err)
	}
	msg, err := dl.GetMsg(context.Background(), 1)
	if err != nil {
		t.Fatal(err)
	}
	if msg.Header.Get(ingest.HeaderReason) != "duplicate_event_id" || msg.Header.Get(ingest.HeaderStreamSeq) != "3" ||
		msg.Header.Get(ingest.HeaderDetail) != "event_id is already stored with different content" ||
		msg.Header.Get("X-Gateway") != "gw-eu-1" || !bytes.Equal(msg.Data, otherMsg.Data) {
		t.Errorf("dead letter %v % x, want stream seq 3 with its header and payload as published", msg.Header, msg.Data)
	}
}
