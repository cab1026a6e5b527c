package memsink_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keytrail/keytrail/event"
	"github.com/keytrail/keytrail/event/auditchain"
	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/ingest"
	"github.com/keytrail/keytrail/ingest/chsink"
	"github.com/keytrail/keytrail/ingest/memsink"
	"github.com/keytrail/keytrail/internal/testenv"
)

// contractSink is what the ingester uses of a sink.
type contractSink interface {
	ingest.Sink
	ingest.Deduper
	ingest.DeadLetterStore
}

// backend is one implementation of the sink contract over storage of its own. The cases
// share it and keep apart by event ids, keys and projects named after the case.
type backend struct {
	// open opens a new sink on the storage, as a new ingester process would.
	open func(t *testing.T) contractSink
	// timesStored is how many rows of table hold the event id.
	timesStored func(t *testing.T, table, id string) int
	// chain is a project's audit chain: "seq event_id prev_hash chain_hash" per row.
	chain func(t *testing.T, project string) []string
	// deadLetters is every kept dead letter: "stream_seq reason fallback_cause".
	deadLetters func(t *testing.T) []string
	// slowInsert starts an insert of one usage row that is in flight when it returns and
	// commits about a second later, like the last insert of an ingester killed a moment ago.
	slowInsert func(t *testing.T, r ingest.Record) <-chan error
}

func memoryBackend() backend {
	st := memsink.NewStorage()
	return backend{
		open:        func(*testing.T) contractSink { return memsink.New(st) },
		timesStored: func(_ *testing.T, table, id string) int { return st.TimesStored(table, id) },
		chain: func(_ *testing.T, project string) []string {
			var out []string
			for _, r := range st.Chain(project) {
				out = append(out, fmt.Sprintf("%d %s %s %s", r.Seq, r.EventID, r.PrevHash, r.ChainHash))
			}
			return out
		},
		deadLetters: func(*testing.T) []string {
			var out []string
			for _, d := range st.DeadLetters() {
				out = append(out, fmt.Sprintf("%d %s %s", d.StreamSeq, d.Reason, d.FallbackCause))
			}
			return out
		},
		slowInsert: func(t *testing.T, r ingest.Record) <-chan error {
			sink := memsink.New(st)
			gate := sink.Hold(memsink.UsageTable)
			done := make(chan error, 1)
			go func() { done <- sink.Write(context.Background(), ingest.RowsOf([]ingest.Record{r})) }()
			<-gate.Reached()
			time.AfterFunc(time.Second, gate.Release)
			return done
		},
	}
}

func clickHouseBackend(t *testing.T) backend {
	db := testenv.ClickHouse(t)
	ctx := context.Background()
	return backend{
		open: func(t *testing.T) contractSink {
			s, err := chsink.New(chsink.Config{Conn: db.Conn})
			if err != nil {
				t.Fatal(err)
			}
			return s
		},
		timesStored: func(t *testing.T, table, id string) int {
			// The table name is one of the package's constants.
			return int(testenv.QueryUint64(t, db.Conn, "SELECT count() FROM "+table+" WHERE event_id = ?", id))
		},
		chain: func(t *testing.T, project string) []string {
			rows, err := db.Conn.Query(ctx, "SELECT chain_seq, event_id, prev_hash, chain_hash FROM lifecycle_events WHERE project = ? ORDER BY chain_seq", project)
			if err != nil {
				t.Fatal(err)
			}
			defer rows.Close()
			var out []string
			for rows.Next() {
				var seq uint64
				var id, prev, hash string
				if err := rows.Scan(&seq, &id, &prev, &hash); err != nil {
					t.Fatal(err)
				}
				out = append(out, fmt.Sprintf("%d %s %s %s", seq, id, prev, hash))
			}
			return out
		},
		deadLetters: func(t *testing.T) []string {
			letters, err := chsink.ReadDeadLetters(ctx, db.Conn, chsink.DeadLetterFilter{})
			if err != nil {
				t.Fatal(err)
			}
			var out []string
			for _, d := range letters {
				out = append(out, fmt.Sprintf("%d %s %s", d.StreamSeq, d.Reason, d.FallbackCause))
			}
			return out
		},
		slowInsert: func(t *testing.T, r ingest.Record) <-chan error {
			// Tagged as a sink's insert into this database, so the sinks' fence sees it.
			queryID := "keytrail-insert/" + db.Name + "/slow-" + r.Event.ID()
			u := r.Event.Usage
			at := u.GetTime().AsTime()
			done := make(chan error, 1)
			go func() {
				done <- db.Conn.Exec(clickhouse.Context(ctx, clickhouse.WithQueryID(queryID)),
					"INSERT INTO usage_events (event_id, event_time, event_time_ms, project, key_id, content_hash) SELECT ?, toDateTime(?), ?, ?, ?, toUInt64(?) FROM system.one WHERE sleep(1) = 0",
					u.GetEventId(), at.Unix(), at.UnixMilli(), u.GetProject(), u.GetKeyId(), strconv.FormatUint(r.ContentHash, 10))
			}()
			testenv.Eventually(t, 10*time.Second, func() error {
				if testenv.QueryUint64(t, db.Conn, "SELECT count() FROM system.processes WHERE query_id = ?", queryID) == 0 {
					return fmt.Errorf("the slow insert is not running yet")
				}
				return nil
			})
			return done
		},
	}
}

// at is the event time every case starts from.
var at = time.Now().UTC().Add(-time.Hour).Truncate(time.Second)

func usage(id, key string, when time.Time, seq, hash uint64) ingest.Record {
	return ingest.Record{Event: event.Event{Kind: event.KindUsage, Usage: &keytrailv1.UsageEvent{
		EventId: id, Time: timestamppb.New(when), Project: "acme", KeyId: key, Service: "billing", StatusCode: 200, CostMicros: 2500,
	}}, StreamSeq: seq, ContentHash: hash, MaybeStored: true}
}

func lifecycle(id, project, actor string, when time.Time, seq uint64) ingest.Record {
	return ingest.Record{Event: event.Event{Kind: event.KindLifecycle, Lifecycle: &keytrailv1.LifecycleEvent{
		EventId: id, Time: timestamppb.New(when), Project: project, KeyId: "key_a", Action: keytrailv1.Action_ACTION_CREATED, Actor: actor,
		Attributes: map[string]string{"ticket": "SEC-1"},
	}}, StreamSeq: seq, ContentHash: seq, MaybeStored: true}
}

func write(t *testing.T, s ingest.Sink, records ...ingest.Record) {
	t.Helper()
	if err := s.Write(context.Background(), ingest.RowsOf(records)); err != nil {
		t.Fatal(err)
	}
}

func wantClassify(t *testing.T, s ingest.Deduper, records []ingest.Record, want ...ingest.Presence) {
	t.Helper()
	got, err := s.Classify(context.Background(), records)
	if err != nil {
		t.Fatal(err)
	}
	if names(got) != names(want) {
		t.Errorf("Classify = %s, want %s", names(got), names(want))
	}
}

func names(p []ingest.Presence) string {
	out := make([]string, len(p))
	for i, v := range p {
		out[i] = map[ingest.Presence]string{no: "not stored", same: "stored", diff: "conflict"}[v]
	}
	return "[" + strings.Join(out, ", ") + "]"
}

var (
	no   = ingest.NotStored
	same = ingest.AlreadyStored
	diff = ingest.Conflict
)

// contract is the sink behaviour the ingester relies on, as cases any backend must pass.
// Each case names its ids after itself (n), so the cases share one database.
var contract = []struct {
	name string
	run  func(t *testing.T, b backend, n func(string) string)
}{
	{"empty storage holds nothing", func(t *testing.T, b backend, n func(string) string) {
		wantClassify(t, b.open(t), []ingest.Record{usage(n("u1"), n("key"), at, 1, 1), lifecycle(n("l1"), n("p"), "alice", at, 2)}, no, no)
	}},
	{"stored events are found by id and content hash", func(t *testing.T, b backend, n func(string) string) {
		s := b.open(t)
		write(t, s, usage(n("u1"), n("key"), at, 1, 11), usage(n("u2"), n("key"), at.Add(time.Second), 2, 12), lifecycle(n("l1"), n("p"), "alice", at, 3))
		otherCost := usage(n("u2"), n("key"), at.Add(time.Second), 2, 12)
		otherCost.Event.Usage.CostMicros = 1
		otherActor := lifecycle(n("l1"), n("p"), "mallory", at, 3)
		otherRecordHash := lifecycle(n("l1"), n("p"), "alice", at, 3)
		otherRecordHash.ContentHash = 999
		usageIDAsLifecycle := lifecycle(n("u1"), n("p"), "alice", at, 4)
		wantClassify(t, s, []ingest.Record{
			usage(n("u1"), n("key"), at, 1, 11), // the same event
			usage(n("u1"), n("key"), at, 1, 77), // another content hash
			otherCost,                           // other content, same hash: usage compares the hash only
			usage(n("u3"), n("key"), at, 3, 13), // never stored
			lifecycle(n("l1"), n("p"), "alice", at, 3),
			otherActor,         // lifecycle compares the stored audit entry
			otherRecordHash,    // ... not Record.ContentHash
			usageIDAsLifecycle, // the tables are separate
		}, same, diff, same, no, same, diff, same, no)
		// A new sink (a restarted ingester) sees the same.
		wantClassify(t, b.open(t), []ingest.Record{usage(n("u1"), n("key"), at, 1, 11), otherActor}, same, diff)
	}},
	{"a write never deduplicates across sinks", func(t *testing.T, b backend, n func(string) string) {
		write(t, b.open(t), usage(n("u1"), n("key"), at, 1, 1), lifecycle(n("l1"), n("p"), "alice", at, 2))
		write(t, b.open(t), usage(n("u1"), n("key"), at, 1, 1), lifecycle(n("l1"), n("p"), "alice", at, 2))
		if u, l := b.timesStored(t, memsink.UsageTable, n("u1")), b.timesStored(t, memsink.LifecycleTable, n("l1")); u != 2 || l != 2 {
			t.Errorf("stored %d usage and %d lifecycle rows, want 2 and 2", u, l)
		}
	}},
	{"a sink skips a kind it stored through a later sequence", func(t *testing.T, b backend, n func(string) string) {
		s := b.open(t)
		write(t, s, usage(n("u1"), n("key"), at, 1, 1), usage(n("u2"), n("key"), at, 2, 2))
		write(t, s, usage(n("u1"), n("key"), at, 1, 1), usage(n("u2"), n("key"), at, 2, 2)) // skipped: through 2
		write(t, s, usage(n("u2"), n("key"), at, 2, 2), usage(n("u3"), n("key"), at, 3, 3)) // through 3: all of it
		write(t, s, lifecycle(n("l4"), n("p"), "alice", at, 4))                             // another table
		got := fmt.Sprint(b.timesStored(t, memsink.UsageTable, n("u1")), b.timesStored(t, memsink.UsageTable, n("u2")),
			b.timesStored(t, memsink.UsageTable, n("u3")), b.timesStored(t, memsink.LifecycleTable, n("l4")))
		if got != "1 2 1 1" {
			t.Errorf("u1 u2 u3 l4 stored %s times, want 1 2 1 1", got)
		}
	}},
	{"the check looks among the keys and time span of its records", func(t *testing.T, b backend, n func(string) string) {
		s := b.open(t)
		write(t, s, usage(n("u1"), n("key_a"), at, 1, 1), lifecycle(n("l1"), n("p"), "alice", at, 2))
		later := at.Add(time.Hour)
		// Other content under another key, or an hour later: not found on their own ...
		wantClassify(t, s, []ingest.Record{usage(n("u1"), n("key_b"), at, 5, 9)}, no)
		wantClassify(t, s, []ingest.Record{usage(n("u1"), n("key_a"), later, 5, 9)}, no)
		wantClassify(t, s, []ingest.Record{lifecycle(n("l1"), n("p"), "mallory", later, 5)}, no)
		// ... found when another record of the check brings the key or time into its span.
		wantClassify(t, s, []ingest.Record{usage(n("u1"), n("key_b"), at, 5, 9), usage(n("u9"), n("key_a"), at, 6, 9)}, diff, no)
		wantClassify(t, s, []ingest.Record{usage(n("u1"), n("key_a"), later, 5, 9), usage(n("u9"), n("key_a"), at, 6, 9)}, diff, no)
		wantClassify(t, s, []ingest.Record{lifecycle(n("l1"), n("p"), "mallory", later, 5), usage(n("u9"), n("key_a"), at, 6, 9)}, diff, no)
		// Within the same second is within the span.
		wantClassify(t, s, []ingest.Record{usage(n("u1"), n("key_a"), at.Add(999*time.Millisecond), 5, 1)}, same)
	}},
	{"each project's audit chain continues from storage", func(t *testing.T, b backend, n func(string) string) {
		l1, l2, l3, l4 := lifecycle(n("l1"), n("p"), "alice", at, 1), lifecycle(n("l2"), n("q"), "bob", at, 2),
			lifecycle(n("l3"), n("p"), "carol", at.Add(time.Second), 3), lifecycle(n("l4"), n("p"), "dave", at.Add(2*time.Second), 4)
		write(t, b.open(t), l1, l2, l3)
		write(t, b.open(t), l4) // a restarted ingester reads the head from storage
		var want []string
		head := auditchain.GenesisHead
		for _, r := range []ingest.Record{l1, l3, l4} {
			var row auditchain.Row
			row, head = head.Next(chsink.LifecycleEntry(r))
			want = append(want, fmt.Sprintf("%d %s %s %s", row.Seq, row.EventID, row.PrevHash, row.ChainHash))
		}
		if got := b.chain(t, n("p")); strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Errorf("chain of p:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		first, _ := auditchain.GenesisHead.Next(chsink.LifecycleEntry(l2))
		if got, want := b.chain(t, n("q")), fmt.Sprintf("1 %s %s %s", n("l2"), auditchain.Genesis, first.ChainHash); fmt.Sprint(got) != "["+want+"]" {
			t.Errorf("chain of q %v, want [%s]", got, want)
		}
	}},
	{"a dead letter kept twice is kept once", func(t *testing.T, b backend, n func(string) string) {
		s := b.open(t)
		letter := func(seq uint64, reason event.Reason) *ingest.DeadLetter {
			return &ingest.DeadLetter{Stream: n("EVENTS"), StreamSeq: seq, At: at, ReceivedAt: at, Reason: reason, Kind: "usage",
				Subject: "keytrail.usage.acme", Payload: []byte("x"), PayloadBytes: 1, FallbackCause: "stream_full"}
		}
		if err := s.WriteDeadLetters(context.Background(), []*ingest.DeadLetter{letter(3, event.ReasonUndecodable), letter(5, event.ReasonOversize)}); err != nil {
			t.Fatal(err)
		}
		if err := s.WriteDeadLetters(context.Background(), []*ingest.DeadLetter{letter(3, event.ReasonUndecodable)}); err != nil {
			t.Fatal(err)
		}
		if got := fmt.Sprint(b.deadLetters(t)); got != "[3 undecodable stream_full 5 oversize stream_full]" {
			t.Errorf("dead letters %s", got)
		}
	}},
	{"the check waits for an insert still in flight", func(t *testing.T, b backend, n func(string) string) {
		r := usage(n("late"), n("key"), at, 7, 42)
		done := b.slowInsert(t, r)
		// Asked while the insert is in flight, before it committed: found all the same.
		wantClassify(t, b.open(t), []ingest.Record{r, usage(n("other"), n("key"), at, 8, 43)}, same, no)
		if err := <-done; err != nil {
			t.Fatalf("slow insert: %v", err)
		}
	}},
}

// The memory sink answers every case of the sink contract exactly as the ClickHouse sink
// does on a real ClickHouse.
func TestMemorySinkKeepsTheClickHouseSinksContract(t *testing.T) {
	t.Parallel()
	for _, impl := range []struct {
		name string
		open func(t *testing.T) backend
	}{
		{"memsink", func(*testing.T) backend { return memoryBackend() }},
		{"chsink", clickHouseBackend},
	} {
		t.Run(impl.name, func(t *testing.T) {
			t.Parallel()
			b := impl.open(t)
			for i, c := range contract {
				t.Run(c.name, func(t *testing.T) {
					t.Parallel()
					n := func(s string) string { return fmt.Sprintf("c%d_%s", i, s) }
					c.run(t, b, n)
				})
			}
		})
	}
}
