package main

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/internal/testenv"
)

// Fault: ClickHouse refuses the ingester's inserts (usage_events detached) while an event
// waits, with -ingest-stall-timeout 500ms; then the table is attached again.
// Expect: /readyz answers 503 naming the stall and /metrics shows keytrail_ingest_stalled 1;
// once the table is back the event is stored (rollups too), /readyz answers 200 and the
// gauge is 0.
func TestReadyzReportsAStalledIngester(t *testing.T) {
	db := testenv.ClickHouse(t)
	m := startKeytrail(t, db, "-role", "ingest", "-ingest-stall-timeout", "500ms")
	base := "http://" + m.HTTPAddr
	if code, body := testenv.Get(t, base, "/readyz", nil, ""); code != http.StatusOK {
		t.Fatalf("/readyz before the fault: %d %s", code, body)
	}
	ctx := context.Background()
	if err := db.Conn.Exec(ctx, "DETACH TABLE usage_events"); err != nil {
		t.Fatal(err)
	}
	attached := false
	t.Cleanup(func() { // a detached table would outlive the test database's DROP
		if !attached {
			_ = db.Conn.Exec(context.Background(), "ATTACH TABLE usage_events")
		}
	})
	nc, err := nats.Connect(m.NATSURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	b, _ := proto.Marshal(&keytrailv1.UsageEvent{EventId: "st1", Time: timestamppb.New(time.Now().Add(-time.Minute)), Project: "acme",
		KeyId: "key_a", Service: "billing", StatusCode: 200})
	if _, err := js.Publish(ctx, "keytrail.usage.acme", b, jetstream.WithMsgID("st1")); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 15*time.Second, func() error {
		code, body := testenv.Get(t, base, "/readyz", nil, "")
		if code != http.StatusServiceUnavailable || !strings.Contains(string(body), "ingester stalled: 1 messages waiting") {
			return fmt.Errorf("/readyz: %d %s", code, body)
		}
		return nil
	})
	if _, body := testenv.Get(t, base, "/metrics", nil, ""); !strings.Contains(string(body), "\nkeytrail_ingest_stalled 1\n") {
		t.Errorf("/metrics while stalled lacks keytrail_ingest_stalled 1")
	}

	if err := db.Conn.Exec(ctx, "ATTACH TABLE usage_events"); err != nil {
		t.Fatal(err)
	}
	attached = true
	testenv.WaitForEvents(t, db, 1, 0, 20*time.Second)
	testenv.Eventually(t, 15*time.Second, func() error {
		code, body := testenv.Get(t, base, "/readyz", nil, "")
		if code != http.StatusOK {
			return fmt.Errorf("/readyz: %d %s", code, body)
		}
		if _, body := testenv.Get(t, base, "/metrics", nil, ""); !strings.Contains(string(body), "\nkeytrail_ingest_stalled 0\n") {
			return fmt.Errorf("keytrail_ingest_stalled is not 0")
		}
		return nil
	})
}
