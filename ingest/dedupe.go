package ingest

import (
	"context"

	"github.com/cespare/xxhash/v2"
	"google.golang.org/protobuf/proto"

	"github.com/keytrail/keytrail/event"
)

// Presence is what storage already holds for a record's event id.
type Presence int

const (
	NotStored Presence = iota
	// AlreadyStored: the same event (equal content hash) is stored; skip it.
	AlreadyStored
	// Conflict: a different event with this id is stored; dead-letter this one.
	Conflict
)

// Deduper is implemented by sinks that can tell which records are already stored. The
// ingester asks only about records marked MaybeStored: redeliveries, the records after a
// take-over until the first one storage lacks, and writes reported as failed.
type Deduper interface {
	Classify(ctx context.Context, records []Record) ([]Presence, error)
}

// RetryDeduplicator is implemented by sinks whose storage drops a write sent again
// identically (ClickHouse's replicated tables deduplicate insert blocks by content, each table
// on its own). When DeduplicatesRetries reports true, the ingester retries a failed Write with
// the same records, as they are, and the sink makes the retry identical to the first attempt.
// It does not check the records against storage first: an insert that failed half way (a
// server killed after it stored the raw rows and before a rollup's view ran) would show the
// records as stored, and dropping them would leave that rollup short for good, where the
// identical retry completes every table and stores nothing twice.
type RetryDeduplicator interface {
	DeduplicatesRetries() bool
}

// contentHash fingerprints an event's content after redaction. Deterministic marshalling
// makes equal events hash equal whatever the wire encoding they arrived in.
func contentHash(ev event.Event) uint64 {
	var m proto.Message = ev.Usage
	if ev.Kind == event.KindLifecycle {
		m = ev.Lifecycle
	}
	b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	return xxhash.Sum64(b)
}

// recentIDs remembers the content hash of the last N event ids taken, to catch an id reused
// within that horizon (JetStream's duplicate window catches retries within its own window;
// this catches the same id re-published later or under another Nats-Msg-Id). Memory is
// bounded: N entries in a ring.
//
// An id is remembered by its 64-bit hash, not its text: the map then holds no pointers, so
// the garbage collector never scans it (100k id strings were a large part of the ingester's
// GC marking), and 100k entries take about 3 MB. A new id shares the hash of one of the 100k
// remembered with a probability of about 5e-15 (one in 2e14 events); it is then
// dead-lettered as duplicate_event_id (its content differs), never dropped.
type recentIDs struct {
	hashes map[uint64]uint64
	ring   []uint64
	next   int
	filled bool
}

func newRecentIDs(n int) *recentIDs {
	return &recentIDs{hashes: make(map[uint64]uint64, n), ring: make([]uint64, n)}
}

// check returns the presence of id among the recent ones and remembers it.
func (r *recentIDs) check(id string, hash uint64) Presence {
	if len(r.ring) == 0 {
		return NotStored
	}
	key := xxhash.Sum64String(id)
	if h, ok := r.hashes[key]; ok {
		if h == hash {
			return AlreadyStored
		}
		return Conflict
	}
	if r.filled {
		delete(r.hashes, r.ring[r.next])
	}
	r.ring[r.next] = key
	r.hashes[key] = hash
	r.next = (r.next + 1) % len(r.ring)
	r.filled = r.filled || r.next == 0
	return NotStored
}
