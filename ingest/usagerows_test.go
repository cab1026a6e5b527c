package ingest

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keytrail/keytrail/event"
	"github.com/keytrail/keytrail/event/decode"
	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
)

func rowEvent(i int) *keytrailv1.UsageEvent {
	return &keytrailv1.UsageEvent{
		EventId: fmt.Sprintf("%08x-9a4d-4e6f-b1c2-7d8e9f0a1b2c", i), Time: timestamppb.New(time.UnixMilli(1_780_000_000_000 + int64(i)*1001)),
		Project: "proj_07", KeyId: fmt.Sprintf("key_%05d", i%10_000), Service: "svc-123", GatewayInstance: "gw-7-2",
		Method: "POST", Endpoint: "/v1/chat/completions", Model: "gpt-4o-mini", Provider: "openai",
		StatusCode: uint32(200 + i%300), LatencyMs: uint32(i), InputTokens: uint64(i * 3), OutputTokens: uint64(i * 5),
		CostMicros: int64(i * 7), ClientIp: "10.7.1.171", RequestId: fmt.Sprintf("req-%x", i),
	}
}

// TestUsageRowsHoldWhatWasAppended: every row reads back as the event it was made from (time
// to the millisecond), through Keep, Reset and reuse of the buffers.
func TestUsageRowsHoldWhatWasAppended(t *testing.T) {
	var u UsageRows
	u.Grow(3)
	for round := range 2 {
		var want []*keytrailv1.UsageEvent
		for i := range 7 {
			e := rowEvent(10*round + i)
			if i == 3 {
				e.Model, e.Endpoint = "", "" // empty text between others
			}
			f := decode.FieldsOf(e)
			u.Append(&f, uint64(100+i), uint64(1000+i))
			want = append(want, e)
		}
		if u.Len() != 7 {
			t.Fatalf("round %d: Len %d, want 7", round, u.Len())
		}
		for i, e := range want {
			if got := u.Event(i); !proto.Equal(got, e) || u.ContentHash[i] != uint64(100+i) || u.StreamSeq[i] != uint64(1000+i) {
				t.Fatalf("round %d row %d: %v hash %d seq %d, want %v", round, i, got, u.ContentHash[i], u.StreamSeq[i], e)
			}
		}
		if got := u.TextColumn(UsageKeyID, 2, 5, nil); !reflect.DeepEqual(got, []string{want[2].KeyId, want[3].KeyId, want[4].KeyId}) {
			t.Fatalf("round %d: key ids of rows 2-4: %q", round, got)
		}
		keep := []bool{false, true, false, true, true, false, true}
		u.Keep(keep)
		var kept []*keytrailv1.UsageEvent
		for i, k := range keep {
			if k {
				kept = append(kept, want[i])
			}
		}
		if u.Len() != len(kept) {
			t.Fatalf("round %d: %d rows after Keep, want %d", round, u.Len(), len(kept))
		}
		for i, e := range kept {
			if got := u.Event(i); !proto.Equal(got, e) {
				t.Fatalf("round %d: row %d after Keep: %v, want %v", round, i, got, e)
			}
		}
		u.Reset()
		if u.Len() != 0 || u.TextColumn(UsageEventID, 0, 0, nil) != nil {
			t.Fatalf("round %d: Reset left %d rows", round, u.Len())
		}
	}
}

// TestRowsOfSortsRecords: RowsOf puts usage records into columns and keeps lifecycle records
// whole, each kind in the order given.
func TestRowsOfSortsRecords(t *testing.T) {
	lc := &keytrailv1.LifecycleEvent{EventId: "lc-1", Project: "acme"}
	rows := RowsOf([]Record{
		{Event: event.Event{Kind: event.KindUsage, Usage: rowEvent(1)}, StreamSeq: 1, ContentHash: 11},
		{Event: event.Event{Kind: event.KindLifecycle, Lifecycle: lc}, StreamSeq: 2},
		{Event: event.Event{Kind: event.KindUsage, Usage: rowEvent(2)}, StreamSeq: 3, ContentHash: 33},
	})
	if rows.Len() != 3 || len(rows.Lifecycle) != 1 || rows.Lifecycle[0].Event.Lifecycle != lc || rows.Usage.Len() != 2 {
		t.Fatalf("rows: %d lifecycle, %d usage", len(rows.Lifecycle), rows.Usage.Len())
	}
	if !reflect.DeepEqual(rows.Usage.StreamSeq, []uint64{1, 3}) || !reflect.DeepEqual(rows.Usage.ContentHash, []uint64{11, 33}) ||
		!strings.HasPrefix(rows.Usage.Text(UsageEventID, 1), "00000002-") {
		t.Fatalf("usage rows: seqs %v hashes %v id %q", rows.Usage.StreamSeq, rows.Usage.ContentHash, rows.Usage.Text(UsageEventID, 1))
	}
}

// BenchmarkUsageRowsAppend reports the cost of taking one event into the columns and the
// bytes a row takes in a batch of 100k (the ingester holds two batches).
func BenchmarkUsageRowsAppend(b *testing.B) {
	const batch = 100_000
	fields := make([]decode.UsageFields, 1000)
	for i := range fields {
		fields[i] = decode.FieldsOf(rowEvent(i))
	}
	var u UsageRows
	u.Grow(batch)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if u.Len() == batch {
			u.Reset()
		}
		u.Append(&fields[i%len(fields)], 1, uint64(i))
		i++
	}
	u.Reset()
	for i := range batch {
		u.Append(&fields[i%len(fields)], 1, uint64(i))
	}
	b.ReportMetric(float64(u.Bytes())/batch, "bytes/row")
}
