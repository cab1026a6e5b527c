package testenv

import (
	"context"
	"testing"

	"github.com/keytrail/keytrail/event"
	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/ingest"
	"github.com/keytrail/keytrail/ingest/chsink"
)

// Insert stores crafted events through the ingester's ClickHouse sink, exactly as ingestion
// would (materialized views fill the rollups), without going through NATS. For query tests
// that need an exact event set fast. Events may be *keytrailv1.UsageEvent or
// *keytrailv1.LifecycleEvent; they are not validated, so tests can store edge cases.
func Insert(t testing.TB, db *Database, events ...any) {
	t.Helper()
	sink, err := chsink.New(chsink.Config{Conn: db.Conn})
	if err != nil {
		t.Fatal(err)
	}
	records := make([]ingest.Record, 0, len(events))
	for i, e := range events {
		r := ingest.Record{StreamSeq: uint64(i + 1)}
		switch e := e.(type) {
		case *keytrailv1.UsageEvent:
			r.Event = event.Event{Kind: event.KindUsage, Usage: e}
		case *keytrailv1.LifecycleEvent:
			r.Event = event.Event{Kind: event.KindLifecycle, Lifecycle: e}
		default:
			t.Fatalf("Insert: unsupported event type %T", e)
		}
		records = append(records, r)
	}
	if err := sink.Write(context.Background(), ingest.RowsOf(records)); err != nil {
		t.Fatalf("insert events: %v", err)
	}
}
