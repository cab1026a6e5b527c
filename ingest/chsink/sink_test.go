package chsink_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keytrail/keytrail/event/decode"
	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/ingest"
	"github.com/keytrail/keytrail/ingest/chsink"
	"github.com/keytrail/keytrail/internal/testenv"
)

// A batch larger than one insert chunk (10k rows) is stored whole, every row once with its
// own values across the chunk boundaries, as one part: the server joins the chunks of one
// INSERT into one block.
func TestUsageBatchOfSeveralChunksIsOneBlock(t *testing.T) {
	t.Parallel()
	db := testenv.ClickHouse(t)
	sink, err := chsink.New(chsink.Config{Conn: db.Conn})
	if err != nil {
		t.Fatal(err)
	}
	const n = 25_001
	at := time.Date(2026, 11, 15, 12, 0, 0, 0, time.UTC) // one monthly partition
	rows := &ingest.Rows{Usage: &ingest.UsageRows{}}
	for i := range n {
		f := decode.FieldsOf(&keytrailv1.UsageEvent{
			EventId: fmt.Sprintf("ev-%05d", i), Time: timestamppb.New(at.Add(time.Duration(i) * time.Millisecond)),
			Project: "acme", KeyId: fmt.Sprintf("key_%d", i%7), Service: "billing", StatusCode: uint32(100 + i%500),
			CostMicros: int64(i), RequestId: fmt.Sprintf("req-%d", i),
		})
		rows.Usage.Append(&f, uint64(i)*31, uint64(i+1))
	}
	if err := sink.Write(context.Background(), rows); err != nil {
		t.Fatal(err)
	}
	q := func(sql string) uint64 { return testenv.QueryUint64(t, db.Conn, sql) }
	if got := q("SELECT count() FROM usage_events"); got != n {
		t.Fatalf("%d rows stored, want %d", got, n)
	}
	if got := q("SELECT uniqExact(stream_seq) FROM usage_events WHERE stream_seq BETWEEN 1 AND 25001"); got != n {
		t.Errorf("%d distinct stream sequences in 1..%d, want %d", got, n, n)
	}
	// Every row carries its own values: the sums over all rows, and rows at the chunk edges.
	if got, want := q("SELECT toUInt64(sum(cost_micros)) FROM usage_events"), uint64(n*(n-1)/2); got != want {
		t.Errorf("sum of cost_micros %d, want %d", got, want)
	}
	if got, want := q("SELECT sum(content_hash) FROM usage_events"), uint64(31*n*(n-1)/2); got != want {
		t.Errorf("sum of content_hash %d, want %d", got, want)
	}
	for _, i := range []int{0, 9_999, 10_000, 19_999, 20_000, 25_000} {
		var id, req string
		var seq, ms uint64
		var status uint16
		row := db.Conn.QueryRow(context.Background(), "SELECT event_id, request_id, stream_seq, toUInt64(event_time_ms), status_code FROM usage_events WHERE event_id = ?", fmt.Sprintf("ev-%05d", i))
		if err := row.Scan(&id, &req, &seq, &ms, &status); err != nil {
			t.Fatalf("row %d: %v", i, err)
		}
		if req != fmt.Sprintf("req-%d", i) || seq != uint64(i+1) || ms != uint64(at.UnixMilli())+uint64(i) || status != uint16(100+i%500) {
			t.Errorf("row %d: request %s, seq %d, time %d ms, status %d", i, req, seq, ms, status)
		}
	}
	if got := q("SELECT count() FROM system.parts WHERE database = currentDatabase() AND table = 'usage_events' AND active"); got != 1 {
		t.Errorf("the batch is %d parts, want 1 block", got)
	}
}
