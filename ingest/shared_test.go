package ingest_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/keytrail/keytrail/ingest/broker"
	"github.com/keytrail/keytrail/ingest/memsink"
	"github.com/keytrail/keytrail/internal/testenv"
)

// Two ingesters pulling from one shared durable consumer (per-message acks) store every
// event exactly once between them.
func TestTwoIngestersShareOneDurableConsumer(t *testing.T) {
	t.Parallel()
	streams := broker.DefaultStreamConfig()
	streams.SharedConsumer = true
	js := testenv.NewJetStream(t, streams)
	st := memsink.NewStorage()
	var logs testenv.SyncBuffer
	var sinks []*memsink.Sink
	for i := 0; i < 2; i++ {
		sinks = append(sinks, memsink.New(st))
		runIngester(t, js, sinks[i], &logs)
	}
	const n = 3000
	for i := 0; i < n; i++ {
		e := usageEvent(fmt.Sprintf("sh%d", i), fmt.Sprintf("key_%d", i%50), "billing", time.Now().Add(-time.Minute), 200)
		b, _ := proto.Marshal(e)
		publish(t, js.JS, js.Streams.Subjects.Usage("acme"), e.EventId, "", b)
	}
	testenv.Eventually(t, 30*time.Second, func() error {
		if rows, _ := st.Count(memsink.UsageTable); rows < n {
			return fmt.Errorf("%d of %d events stored", rows, n)
		}
		return nil
	})
	wantStoredOnce(t, st, n)
	cons, err := js.JS.Consumer(context.Background(), js.Streams.EventsStream, js.Streams.Durable)
	if err != nil {
		t.Fatal(err)
	}
	if cons.CachedInfo().Config.AckPolicy.String() != "AckExplicit" {
		t.Errorf("ack policy %v", cons.CachedInfo().Config.AckPolicy)
	}
	// Both took part.
	for i, s := range sinks {
		if len(s.Inserts()) == 0 {
			t.Errorf("ingester %d stored nothing", i+1)
		}
	}
}
