package ingest

import (
	"context"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/keytrail/keytrail/event"
	"github.com/keytrail/keytrail/event/decode"
	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/ingest/broker"
)

// storedThrough is a Deduper whose storage holds every event up to a stream sequence (as
// after a take-over: an unbroken run of the stream), and records what it was asked.
type storedThrough struct {
	through uint64
	asked   []uint64
}

func (d *storedThrough) Classify(_ context.Context, records []Record) ([]Presence, error) {
	out := make([]Presence, len(records))
	for i, r := range records {
		d.asked = append(d.asked, r.StreamSeq)
		if r.StreamSeq <= d.through {
			out[i] = AlreadyStored
		}
	}
	return out, nil
}

func dropStoredIngester(d Deduper, checkStored bool) *Ingester {
	in := &Ingester{
		cfg:     Config{Streams: broker.DefaultStreamConfig(), MaxBackoff: time.Second},
		log:     slog.New(slog.DiscardHandler),
		metrics: NewMetrics(nil),
		deduper: d,
	}
	in.checkStored.Store(checkStored)
	return in
}

// usageBatch is a batch of usage rows with the given stream sequences, every one of them a
// candidate for the storage check; redelivered ones are not candidates only by the run.
func usageBatch(seqs []uint64, redelivered func(seq uint64) bool) *batch {
	b := &batch{rows: Rows{Usage: &UsageRows{}}}
	for _, seq := range seqs {
		f := decode.FieldsOf(&keytrailv1.UsageEvent{EventId: "e", KeyId: "k", Project: "p"})
		b.maybeUsage = append(b.maybeUsage, maybeRow{row: b.rows.Usage.Len(), onlyRun: !redelivered(seq)})
		b.rows.Usage.Append(&f, seq, seq)
	}
	return b
}

func seqRange(from, to uint64) []uint64 {
	var s []uint64
	for seq := from; seq <= to; seq++ {
		s = append(s, seq)
	}
	return s
}

// After a start, storage is asked about the take-over's run chunk by chunk until a row it
// does not hold; the rows of the run after that are not asked about, and the next batch's
// rows only where they are redeliveries. The stored ones are dropped, nothing else.
func TestDropStoredAsksUntilTheRunEnds(t *testing.T) {
	d := &storedThrough{through: 5_000}
	in := dropStoredIngester(d, true)
	b := usageBatch(seqRange(1, 25_000), func(uint64) bool { return false })
	if !in.dropStored(context.Background(), b) {
		t.Fatal("dropStored gave up")
	}
	// The first chunk (10k rows) finds row 5001 not stored; the 15k rows after it are not asked.
	if !slices.Equal(d.asked, seqRange(1, dedupeChunk)) {
		t.Fatalf("asked about %d rows (%d..%d), want rows 1..%d", len(d.asked), d.asked[0], d.asked[len(d.asked)-1], dedupeChunk)
	}
	if !slices.Equal(b.rows.Usage.StreamSeq, seqRange(5_001, 25_000)) {
		t.Fatalf("kept %d rows from %d, want 5001..25000", b.rows.Usage.Len(), b.rows.Usage.StreamSeq[0])
	}
	if in.checkStored.Load() {
		t.Error("the run has ended, but checkStored is still set")
	}

	// The next batch was taken while the run had not ended yet: its rows are candidates by
	// the run (skipped) or redeliveries (asked: 25010 and 25020).
	d.asked = nil
	next := usageBatch(seqRange(25_001, 25_020), func(seq uint64) bool { return seq%10 == 0 })
	if !in.dropStored(context.Background(), next) {
		t.Fatal("dropStored gave up")
	}
	if !slices.Equal(d.asked, []uint64{25_010, 25_020}) || next.rows.Usage.Len() != 20 {
		t.Fatalf("asked %v and kept %d rows; want [25010 25020] and 20", d.asked, next.rows.Usage.Len())
	}
}

// A lifecycle record storage does not hold ends the run for the usage rows after it in the
// stream: storage is asked about the first chunk (the lifecycle record and the first usage
// rows, before anything is known), and not about the rows after it.
func TestDropStoredEndsTheRunAtTheFirstRecordNotHeld(t *testing.T) {
	d := &storedThrough{through: 3}
	in := dropStoredIngester(d, true)
	seqs := append([]uint64{1, 2, 3}, seqRange(5, 15_000)...)
	b := usageBatch(seqs, func(uint64) bool { return false })
	lc := &keytrailv1.LifecycleEvent{EventId: "lc", Project: "p", KeyId: "k"}
	b.rows.Lifecycle = []Record{{Event: event.Event{Kind: event.KindLifecycle, Lifecycle: lc}, StreamSeq: 4, MaybeStored: true}}
	if !in.dropStored(context.Background(), b) {
		t.Fatal("dropStored gave up")
	}
	// One chunk: the lifecycle record 4, then usage 1, 2, 3 and 5 .. 10000.
	want := append([]uint64{4}, seqs[:dedupeChunk-1]...)
	if !slices.Equal(d.asked, want) {
		t.Fatalf("asked about %d records (%v ...), want %d (%v ...)", len(d.asked), d.asked[:5], len(want), want[:5])
	}
	if !slices.Equal(b.rows.Usage.StreamSeq, seqRange(5, 15_000)) || len(b.rows.Lifecycle) != 1 {
		t.Fatalf("kept %d usage rows from %d and %d lifecycle records; want 5..15000 and 1", b.rows.Usage.Len(), b.rows.Usage.StreamSeq[0], len(b.rows.Lifecycle))
	}
}
