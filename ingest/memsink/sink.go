package memsink

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/keytrail/keytrail/event"
	"github.com/keytrail/keytrail/event/auditchain"
	"github.com/keytrail/keytrail/ingest"
	"github.com/keytrail/keytrail/ingest/chsink"
)

// Failure is what a programmed fault makes an insert do.
type Failure int

const (
	// Refuse stores nothing and reports an error: storage refused the insert.
	Refuse Failure = iota + 1
	// CommitThenFail stores the rows and reports an error: the insert committed and its
	// reply was lost.
	CommitThenFail
)

// Errors the programmed faults report.
var (
	ErrRefused     = errors.New("memsink: insert refused (programmed fault)")
	ErrReplyLost   = errors.New("memsink: insert committed, reply lost (programmed fault)")
	ErrCheckFailed = errors.New("memsink: storage check failed (programmed fault)")
)

// Outcome is how an insert ended.
type Outcome string

const (
	Stored          Outcome = "stored"
	Refused         Outcome = "refused"
	CommittedFailed Outcome = "committed, reported failed"
	// Abandoned: the caller's context ended while the insert was held; it commits when
	// released.
	Abandoned Outcome = "abandoned in flight"
)

// Insert is one insert a Sink attempted.
type Insert struct {
	Table   string
	Rows    int
	Outcome Outcome
}

// Check is one storage check (Classify) a Sink answered or failed.
type Check struct {
	Records int
	Failed  bool
}

// Gate holds an insert in flight until released.
type Gate struct {
	reached, release chan struct{}
	once             sync.Once
}

// Reached is closed once the held insert is in flight.
func (g *Gate) Reached() <-chan struct{} { return g.reached }

// Release lets the held insert commit.
func (g *Gate) Release() { g.once.Do(func() { close(g.release) }) }

// fault is one programmed fault, for the next inserts into table ("" for any table).
type fault struct {
	table string
	how   Failure
	times int
	gate  *Gate
}

// Sink is one ingester process's view of a Storage, like a chsink.Sink on a database. The
// ingester calls it from one goroutine; tests program faults and read what it did from
// others.
type Sink struct {
	st *Storage

	mu sync.Mutex
	// storedThrough is the highest stream sequence stored per table, for retries.
	storedThrough map[string]uint64
	// heads caches where each project's audit chain ends.
	heads         map[string]auditchain.Head
	faults        []*fault
	checkFailures int
	inserts       []Insert
	checks        []Check
}

var (
	_ ingest.Sink            = (*Sink)(nil)
	_ ingest.Deduper         = (*Sink)(nil)
	_ ingest.DeadLetterStore = (*Sink)(nil)
)

// New returns a Sink on st, as a new process would open chsink on the database.
func New(st *Storage) *Sink {
	return &Sink{st: st, storedThrough: map[string]uint64{}, heads: map[string]auditchain.Head{}}
}

// Storage is the storage the sink writes to.
func (s *Sink) Storage() *Storage { return s.st }

// Fail makes the next n inserts into table ("" for any table) fail as how says.
func (s *Sink) Fail(table string, n int, how Failure) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, &fault{table: table, how: how, times: n})
}

// Hold makes the next insert into table ("" for any table) wait in flight until the
// returned gate is released.
func (s *Sink) Hold(table string) *Gate {
	g := &Gate{reached: make(chan struct{}), release: make(chan struct{})}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, &fault{table: table, times: 1, gate: g})
	return g
}

// FailChecks makes the next n storage checks fail.
func (s *Sink) FailChecks(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.checkFailures += n
}

// Heal drops the faults not yet used (held inserts already in flight stay held).
func (s *Sink) Heal() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults, s.checkFailures = nil, 0
}

// Inserts returns the inserts attempted so far, in order.
func (s *Sink) Inserts() []Insert {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.inserts)
}

// Checks returns the storage checks asked so far, in order.
func (s *Sink) Checks() []Check {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.checks)
}

// Write stores the rows: lifecycle rows first, then usage, as chsink does. (Usage rows are
// kept as records, their time to the millisecond as chsink stores it.)
func (s *Sink) Write(ctx context.Context, rows *ingest.Rows) error {
	var usage, lifecycle []ingest.Record
	for _, r := range rows.Records() {
		switch r.Event.Kind {
		case event.KindUsage:
			usage = append(usage, r)
		case event.KindLifecycle:
			lifecycle = append(lifecycle, r)
		}
	}
	if err := s.writeOnce(ctx, LifecycleTable, lifecycle); err != nil {
		return err
	}
	return s.writeOnce(ctx, UsageTable, usage)
}

// writeOnce inserts one kind's records unless this sink stored them already.
func (s *Sink) writeOnce(ctx context.Context, table string, records []ingest.Record) error {
	if len(records) == 0 {
		return nil
	}
	last := records[len(records)-1].StreamSeq
	s.mu.Lock()
	done := last <= s.storedThrough[table]
	s.mu.Unlock()
	if done {
		return nil
	}
	rows := make([]Row, len(records))
	heads := map[string]auditchain.Head{}
	for i, r := range records {
		rows[i] = Row{Record: r, Second: eventTime(r).Unix(), Hash: contentHash(r)}
		if table != LifecycleTable {
			continue
		}
		// Extend each project's chain in stream order; the cached heads move only once the
		// insert succeeded, so a retried batch gets the same chain rows.
		project := r.Event.Lifecycle.GetProject()
		head, ok := heads[project]
		if !ok {
			var err error
			if head, err = s.head(ctx, project); err != nil {
				return err
			}
		}
		rows[i].Chain, heads[project] = head.Next(chsink.LifecycleEntry(r))
	}
	if err := s.insert(ctx, table, len(rows), func() { s.st.appendRows(table, rows) }); err != nil {
		s.mu.Lock()
		// The insert may have committed although it reported an error: continue the chain
		// from what storage holds.
		for p := range heads {
			delete(s.heads, p)
		}
		s.mu.Unlock()
		return fmt.Errorf("insert %d rows into %s: %w", len(rows), table, err)
	}
	s.mu.Lock()
	s.storedThrough[table] = last
	for p, h := range heads {
		s.heads[p] = h
	}
	s.mu.Unlock()
	return nil
}

// head is where a project's chain ends, from the cache or from storage once the inserts in
// flight (a predecessor's last one) have ended.
func (s *Sink) head(ctx context.Context, project string) (auditchain.Head, error) {
	s.mu.Lock()
	h, ok := s.heads[project]
	s.mu.Unlock()
	if ok {
		return h, nil
	}
	if err := s.st.awaitInflight(ctx); err != nil {
		return auditchain.Head{}, err
	}
	h = s.st.head(project)
	s.mu.Lock()
	s.heads[project] = h
	s.mu.Unlock()
	return h, nil
}

// WriteDeadLetters keeps dead letters; DeadLetters shows each once however often it is
// kept.
func (s *Sink) WriteDeadLetters(ctx context.Context, letters []*ingest.DeadLetter) error {
	if err := s.insert(ctx, DeadLetterTable, len(letters), func() { s.st.appendDeadLetters(letters) }); err != nil {
		return fmt.Errorf("insert %d rows into %s: %w", len(letters), DeadLetterTable, err)
	}
	return nil
}

// Classify answers the storage check as chsink does: after the inserts in flight have
// ended, per chunk of records.
func (s *Sink) Classify(ctx context.Context, records []ingest.Record) ([]ingest.Presence, error) {
	s.mu.Lock()
	fail := s.checkFailures > 0
	if fail {
		s.checkFailures--
	}
	s.checks = append(s.checks, Check{Records: len(records), Failed: fail})
	s.mu.Unlock()
	if fail {
		return nil, ErrCheckFailed
	}
	if err := s.st.awaitInflight(ctx); err != nil {
		return nil, err
	}
	out := make([]ingest.Presence, 0, len(records))
	for chunk := range slices.Chunk(records, classifyChunk) {
		out = append(out, s.st.classify(chunk)...)
	}
	return out, nil
}

// insert runs one insert through the next programmed fault for its table; commit stores its
// rows.
func (s *Sink) insert(ctx context.Context, table string, rows int, commit func()) error {
	f := s.takeFault(table)
	outcome := Stored
	defer func() {
		s.mu.Lock()
		s.inserts = append(s.inserts, Insert{Table: table, Rows: rows, Outcome: outcome})
		s.mu.Unlock()
	}()
	switch {
	case f == nil:
		commit()
		return nil
	case f.gate != nil:
		done := s.st.begin()
		close(f.gate.reached)
		select {
		case <-f.gate.release:
			commit()
			s.st.end(done)
			return nil
		case <-ctx.Done():
			// The caller gave up (or died); storage still has the whole insert and commits it.
			go func() {
				<-f.gate.release
				commit()
				s.st.end(done)
			}()
			outcome = Abandoned
			return ctx.Err()
		}
	case f.how == CommitThenFail:
		commit()
		outcome = CommittedFailed
		return ErrReplyLost
	default:
		outcome = Refused
		return ErrRefused
	}
}

// takeFault uses up the first programmed fault for table, if any.
func (s *Sink) takeFault(table string) *fault {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, f := range s.faults {
		if f.table != "" && f.table != table {
			continue
		}
		if f.times--; f.times <= 0 {
			s.faults = slices.Delete(s.faults, i, i+1)
		}
		return f
	}
	return nil
}

func table(r ingest.Record) string {
	if r.Event.Kind == event.KindLifecycle {
		return LifecycleTable
	}
	return UsageTable
}

func eventTime(r ingest.Record) time.Time {
	if r.Event.Kind == event.KindLifecycle {
		return r.Event.Lifecycle.GetTime().AsTime()
	}
	return r.Event.Usage.GetTime().AsTime()
}

// contentHash is the hash storage keeps and compares for a record.
func contentHash(r ingest.Record) string {
	if r.Event.Kind == event.KindLifecycle {
		return auditchain.ContentHash(chsink.LifecycleEntry(r))
	}
	return strconv.FormatUint(r.ContentHash, 10)
}
