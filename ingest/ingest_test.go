package ingest_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keytrail/keytrail/event"
	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/ingest"
	"github.com/keytrail/keytrail/ingest/broker"
	"github.com/keytrail/keytrail/ingest/chsink"
	"github.com/keytrail/keytrail/ingest/memsink"
	"github.com/keytrail/keytrail/internal/testenv"
)

// startIngester runs an ingester against db until the test ends.
func startIngester(t *testing.T, js *testenv.JetStream, db *testenv.Database) {
	t.Helper()
	sink, err := chsink.New(chsink.Config{Conn: db.Conn})
	if err != nil {
		t.Fatal(err)
	}
	testenv.RunIngester(t, ingest.Config{
		JetStream: js.JS, Streams: js.Streams, Sink: sink,
		BatchSize: 1000, FlushInterval: 50 * time.Millisecond,
	})
}

func publish(t *testing.T, js jetstream.JetStream, subject, id, contentType string, data []byte) {
	t.Helper()
	msg := nats.NewMsg(subject)
	msg.Data = data
	if id != "" {
		msg.Header.Set(nats.MsgIdHdr, id)
	}
	if contentType != "" {
		msg.Header.Set(event.ContentTypeHeader, contentType)
	}
	if _, err := js.PublishMsg(context.Background(), msg); err != nil {
		t.Fatalf("publish %s: %v", id, err)
	}
}

func usageEvent(id, key, service string, at time.Time, status uint32) *keytrailv1.UsageEvent {
	return &keytrailv1.UsageEvent{
		EventId: id, Time: timestamppb.New(at), Project: "acme", KeyId: key, Service: service,
		GatewayInstance: "gw-1", Method: "POST", Endpoint: "/v1/chat/completions", Model: "gpt-4o", Provider: "openai",
		StatusCode: status, LatencyMs: 120, InputTokens: 100, OutputTokens: 50, CostMicros: 2500,
		ClientIp: "10.0.0.7", RequestId: "req-" + id,
	}
}

func TestIngestStoresEventsAndDeadLettersPoisonWithoutStopping(t *testing.T) {
	t.Parallel()
	js := testenv.NewJetStream(t, broker.DefaultStreamConfig())
	db := testenv.ClickHouse(t)
	startIngester(t, js, db)

	base := time.Now().UTC().Add(-10 * time.Minute).Truncate(time.Second)
	subjects := js.Streams.Subjects
	for i := 0; i < 3; i++ {
		e := usageEvent(fmt.Sprintf("u%d", i), "key_a", "billing", base.Add(time.Duration(i)*1500*time.Millisecond), 200)
		b, _ := proto.Marshal(e)
		publish(t, js.JS, subjects.Usage("acme"), e.EventId, "", b)
		if i == 1 {
			publish(t, js.JS, subjects.Usage("acme"), "poison", "", []byte("not a protobuf \xff\xff"))
		}
	}
	lc := &keytrailv1.LifecycleEvent{
		EventId: "l1", Time: timestamppb.New(base), Project: "acme", KeyId: "key_a",
		Action: keytrailv1.Action_ACTION_CREATED, Actor: "alice", ActorType: keytrailv1.ActorType_ACTOR_TYPE_USER,
		Attributes: map[string]string{"ticket": "SEC-1", "a": "b"}, Scopes: []string{"chat"},
	}
	lcJSON, _ := event.EncodingJSON.Marshal(lc)
	publish(t, js.JS, subjects.Lifecycle("acme"), "l1", event.ContentTypeJSON, lcJSON)

	testenv.WaitForEvents(t, db, 3, 1, 10*time.Second)

	// The stored row carries every field, with millisecond time.
	var (
		id, service, model, ip string
		ms, cost               int64
		status                 uint16
		seq                    uint64
	)
	if err := db.Conn.QueryRow(context.Background(),
		"SELECT event_id, service, model, client_ip, event_time_ms, cost_micros, status_code, stream_seq FROM usage_events WHERE event_id = 'u1'",
	).Scan(&id, &service, &model, &ip, &ms, &cost, &status, &seq); err != nil {
		t.Fatal(err)
	}
	if service != "billing" || model != "gpt-4o" || ip != "10.0.0.7" || ms != base.Add(1500*time.Millisecond).UnixMilli() || cost != 2500 || status != 200 || seq != 2 {
		t.Errorf("row u1 = %s %s %s %d %d %d seq %d", service, model, ip, ms, cost, status, seq)
	}
	var keys, values []string
	if err := db.Conn.QueryRow(context.Background(), "SELECT attribute_keys, attribute_values FROM lifecycle_events").Scan(&keys, &values); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(keys, values) != "[a ticket] [b SEC-1]" {
		t.Errorf("attributes %v %v", keys, values)
	}
	// The rollup agrees with the raw rows.
	if n := testenv.QueryUint64(t, db.Conn, "SELECT countMerge(requests) FROM usage_key_minute WHERE key_id = 'key_a'"); n != 3 {
		t.Errorf("rollup requests %d, want 3", n)
	}

	// The poison message sits in the dead-letter stream with its reason.
	dl, err := js.JS.Stream(context.Background(), js.Streams.DeadLetterStream)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := dl.GetMsg(context.Background(), 1)
	if err != nil {
		t.Fatalf("dead letter: %v", err)
	}
	if raw.Subject != "keytrail.deadletter.usage" || raw.Header.Get(ingest.HeaderReason) != "undecodable" ||
		raw.Header.Get(ingest.HeaderStreamSeq) != "3" || raw.Header.Get(ingest.HeaderOriginalSubject) != "keytrail.usage.acme" ||
		string(raw.Data) != "not a protobuf \xff\xff" {
		t.Errorf("dead letter %s %v %q", raw.Subject, raw.Header, raw.Data)
	}
	// Everything, poison included, has been acknowledged.
	js.AwaitAcknowledged(t, 5*time.Second)
}

func TestSameEventIDPublishedTwiceIsStoredOnce(t *testing.T) {
	t.Parallel()
	js := testenv.NewJetStream(t, broker.DefaultStreamConfig())
	sink := memsink.New(memsink.NewStorage())
	var logs testenv.SyncBuffer
	runIngester(t, js, sink, &logs)
	e := usageEvent("dup-1", "key_a", "billing", time.Now().Add(-time.Minute), 200)
	b, _ := proto.Marshal(e)
	publish(t, js.JS, js.Streams.Subjects.Usage("acme"), e.EventId, "", b)
	publish(t, js.JS, js.Streams.Subjects.Usage("acme"), e.EventId, "", b)
	last := usageEvent("after", "key_a", "billing", time.Now().Add(-time.Minute), 200)
	b, _ = proto.Marshal(last)
	publish(t, js.JS, js.Streams.Subjects.Usage("acme"), last.EventId, "", b)

	testenv.Eventually(t, 10*time.Second, func() error {
		if n := sink.Storage().TimesStored(memsink.UsageTable, "after"); n != 1 {
			return fmt.Errorf("last event not stored yet")
		}
		return nil
	})
	if n := sink.Storage().TimesStored(memsink.UsageTable, "dup-1"); n != 1 {
		t.Errorf("dup-1 stored %d times, want 1", n)
	}
}
