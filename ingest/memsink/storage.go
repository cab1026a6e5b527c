package memsink

import (
	"cmp"
	"context"
	"slices"
	"sync"
	"time"

	"github.com/keytrail/keytrail/event/auditchain"
	"github.com/keytrail/keytrail/ingest"
)

// The tables, named as in ClickHouse; faults name the table they hit.
const (
	UsageTable      = "usage_events"
	LifecycleTable  = "lifecycle_events"
	DeadLetterTable = "dead_letters"
)

// Row is one stored event.
type Row struct {
	Record ingest.Record
	// Second is the event time in whole seconds, what the storage check's time span compares.
	Second int64
	// Hash is the content hash the storage check compares: Record.ContentHash for usage, the
	// audit entry's content hash for lifecycle.
	Hash string
	// Chain is a lifecycle row's place in its project's audit chain.
	Chain auditchain.Row
}

// ID is the row's event id.
func (r Row) ID() string { return r.Record.Event.ID() }

// Storage is the database the sinks share. Its methods are safe for concurrent use.
type Storage struct {
	mu          sync.Mutex
	rows        map[string][]Row // by table, in insert order
	deadLetters []*ingest.DeadLetter
	// inflight holds a channel per insert held in flight, closed when it ends.
	inflight map[chan struct{}]struct{}
}

// NewStorage returns an empty storage.
func NewStorage() *Storage {
	return &Storage{rows: map[string][]Row{}, inflight: map[chan struct{}]struct{}{}}
}

// Rows returns the rows of UsageTable or LifecycleTable in insert order.
func (st *Storage) Rows(table string) []Row {
	st.mu.Lock()
	defer st.mu.Unlock()
	return slices.Clone(st.rows[table])
}

// Count returns how many rows a table holds and how many distinct event ids.
func (st *Storage) Count(table string) (rows, distinct int) {
	st.mu.Lock()
	defer st.mu.Unlock()
	ids := map[string]bool{}
	for _, r := range st.rows[table] {
		ids[r.ID()] = true
	}
	return len(st.rows[table]), len(ids)
}

// TimesStored returns how many rows of a table hold the event id.
func (st *Storage) TimesStored(table, id string) int {
	st.mu.Lock()
	defer st.mu.Unlock()
	n := 0
	for _, r := range st.rows[table] {
		if r.ID() == id {
			n++
		}
	}
	return n
}

// Chain returns a project's audit chain rows in chain order.
func (st *Storage) Chain(project string) []auditchain.Row {
	st.mu.Lock()
	defer st.mu.Unlock()
	var out []auditchain.Row
	for _, r := range st.rows[LifecycleTable] {
		if r.Chain.Project == project {
			out = append(out, r.Chain)
		}
	}
	slices.SortStableFunc(out, func(a, b auditchain.Row) int { return cmp.Compare(a.Seq, b.Seq) })
	return out
}

// DeadLetters returns the kept dead letters, one per stream position (the first kept),
// ordered as chsink.ReadDeadLetters orders them: by second dead-lettered, stream, sequence.
func (st *Storage) DeadLetters() []*ingest.DeadLetter {
	st.mu.Lock()
	defer st.mu.Unlock()
	type position struct {
		stream string
		seq    uint64
	}
	seen := map[position]bool{}
	var out []*ingest.DeadLetter
	for _, d := range st.deadLetters {
		if p := (position{d.Stream, d.StreamSeq}); !seen[p] {
			seen[p] = true
			out = append(out, d)
		}
	}
	slices.SortStableFunc(out, func(a, b *ingest.DeadLetter) int {
		return cmp.Or(a.At.Truncate(time.Second).Compare(b.At.Truncate(time.Second)), cmp.Compare(a.Stream, b.Stream), cmp.Compare(a.StreamSeq, b.StreamSeq))
	})
	return out
}

// DeadLetterRows is how many dead-letter rows were written, before collapsing.
func (st *Storage) DeadLetterRows() int {
	st.mu.Lock()
	defer st.mu.Unlock()
	return len(st.deadLetters)
}

func (st *Storage) appendRows(table string, rows []Row) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.rows[table] = append(st.rows[table], rows...)
}

func (st *Storage) appendDeadLetters(letters []*ingest.DeadLetter) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.deadLetters = append(st.deadLetters, letters...)
}

// begin registers an insert in flight; end it by closing the returned channel through end.
func (st *Storage) begin() chan struct{} {
	st.mu.Lock()
	defer st.mu.Unlock()
	done := make(chan struct{})
	st.inflight[done] = struct{}{}
	return done
}

func (st *Storage) end(done chan struct{}) {
	st.mu.Lock()
	defer st.mu.Unlock()
	delete(st.inflight, done)
	close(done)
}

// awaitInflight returns once every insert in flight when it was called has ended, as
// chsink's fence waits for the inserts ClickHouse is still running.
func (st *Storage) awaitInflight(ctx context.Context) error {
	st.mu.Lock()
	var running []chan struct{}
	for done := range st.inflight {
		running = append(running, done)
	}
	st.mu.Unlock()
	for _, done := range running {
		select {
		case <-done:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// head is where a project's stored audit chain ends (chsink: ORDER BY chain_seq DESC LIMIT 1).
func (st *Storage) head(project string) auditchain.Head {
	st.mu.Lock()
	defer st.mu.Unlock()
	h := auditchain.GenesisHead
	for _, r := range st.rows[LifecycleTable] {
		if r.Chain.Project == project && r.Chain.Seq >= h.Seq && r.Chain.Seq > 0 {
			h = auditchain.Head{Seq: r.Chain.Seq, Hash: r.Chain.ChainHash}
		}
	}
	return h
}

// classifyChunk is chsink's: each lookup names at most this many records, and its key and
// time narrowing is the chunk's.
const classifyChunk = 1000

// classify answers the storage check for one chunk as chsink's two lookups do.
func (st *Storage) classify(records []ingest.Record) []ingest.Presence {
	st.mu.Lock()
	defer st.mu.Unlock()
	ids := map[string]map[string]bool{UsageTable: {}, LifecycleTable: {}}
	keys := map[string]bool{}
	var minSec, maxSec int64
	for i, r := range records {
		sec := eventTime(r).Unix()
		if i == 0 || sec < minSec {
			minSec = sec
		}
		if i == 0 || sec > maxSec {
			maxSec = sec
		}
		ids[table(r)][r.Event.ID()] = true
		if table(r) == UsageTable {
			keys[r.Event.Usage.GetKeyId()] = true
		}
	}
	// What each lookup returns: stored hash by event id, the last row read winning (which
	// of several rows ClickHouse returns last is unspecified; storage holds one per id
	// unless something already went wrong).
	stored := map[string]map[string]string{UsageTable: {}, LifecycleTable: {}}
	for tbl, found := range stored {
		for _, row := range st.rows[tbl] {
			if !ids[tbl][row.ID()] || row.Second < minSec || row.Second > maxSec {
				continue
			}
			if tbl == UsageTable && !keys[row.Record.Event.Usage.GetKeyId()] {
				continue
			}
			found[row.ID()] = row.Hash
		}
	}
	out := make([]ingest.Presence, len(records))
	for i, r := range records {
		if h, ok := stored[table(r)][r.Event.ID()]; ok {
			out[i] = ingest.Conflict
			if h == contentHash(r) {
				out[i] = ingest.AlreadyStored
			}
		}
	}
	return out
}
