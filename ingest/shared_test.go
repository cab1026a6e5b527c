package ingest_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/keytrail/keytrail/ingest/broker"
	"github.com/keytrail/keytrail/ingest/chsink"
	"github.com/keytrail/keytrail/internal/testenv"
)

// Two ingesters pulling from one shared durable consumer (per-message acks) store every
// event exactly once between them.
func TestTwoIngestersShareOneDurableConsumer(t *testing.T) {
	t.Parallel()
	streams := broker.DefaultStreamConfig()
	streams.SharedConsumer = true
	js := testenv.NewJetStream(t, streams)
	db := testenv.ClickHouse(t)
	var logs testenv.SyncBuffer
	for i := 0; i < 2; i++ {
		sink, _ := chsink.New(chsink.Config{Conn: db.Conn})
		runIngester(t, js, sink, &logs)
	}
	const n = 3000
	for i := 0; i < n; i++ {
		e := usageEvent(fmt.Sprintf("sh%d", i), fmt.Sprintf("key_%d", i%50), "billing", time.Now().Add(-time.Minute), 200)
		b, _ := proto.Marshal(e)
		publish(t, js.JS, js.Streams.Subjects.Usage("acme"), e.EventId, "", b)
	}
	testenv.WaitForEvents(t, db, n, 0, 30*time.Second)
	if got := testenv.QueryUint64(t, db.Conn, "SELECT uniqExact(event_id) FROM usage_events"); got != n {
		t.Errorf("distinct ids %d, want %d", got, n)
	}
	cons, err := js.JS.Consumer(context.Background(), js.Streams.EventsStream, js.Streams.Durable)
	if err != nil {
		t.Fatal(err)
	}
	if cons.CachedInfo().Config.AckPolicy.String() != "AckExplicit" {
		t.Errorf("ack policy %v", cons.CachedInfo().Config.AckPolicy)
	}
}
