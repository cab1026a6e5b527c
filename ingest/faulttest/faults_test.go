package faulttest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keytrail/keytrail/ingest"
	"github.com/keytrail/keytrail/ingest/broker"
	"github.com/keytrail/keytrail/ingest/chsink"
	"github.com/keytrail/keytrail/ingest/reconcile"
	"github.com/keytrail/keytrail/internal/testenv"
	"github.com/keytrail/keytrail/migrations"
	"github.com/keytrail/keytrail/publisher"
)

// Fault: the ingester process (`keytrail serve -role ingest -batch-size 5000
// -flush-interval 200ms`) is killed with SIGKILL KEYTRAIL_FAULT_KILLS (default 10) times at
// random intervals of 0.2-1.1 s while events arrive, and restarted after each kill: batches
// are cut between fetch and write, mid-write and between write and ack.
// Load: KEYTRAIL_FAULT_KILL_EVENTS (default 200,000) usage events published with the
// publisher package, paced to span the kills, from a JetStream server in the test process.
// Expect: the publisher acknowledged all 200,000 (Failed 0), the stream drains, and
// ClickHouse holds count() == uniqExact(event_id) == 200,000 with every rollup's requests
// == 200,000, errors == 8,000 and cost == the raw sum.
func TestIngesterKilledRepeatedlyStoresEachEventOnce(t *testing.T) {
	kills := testenv.EnvInt(t, "KEYTRAIL_FAULT_KILLS", 10)
	n := testenv.EnvInt(t, "KEYTRAIL_FAULT_KILL_EVENTS", 200_000)
	started := time.Now()

	streams := broker.DefaultStreamConfig() // what the binary itself ensures at start-up
	js := testenv.NewJetStream(t, streams)
	db := testenv.ClickHouse(t)
	l := newLoad("kill", n)
	p, failed := newPublisher(t, js.URL, streams, nil)

	ing := newIngesterProcess(t, js.URL, db.DSN)
	ing.Start()

	// Spread the load over the time the kills take (about 0.65 s pause + 0.3 s restart each).
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rate := n * 1000 / (kills * 800)
	published := make(chan error, 1)
	go func() { published <- publishPaced(ctx, p, l, 0, n, rate) }()

	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, 1))
	killedHolding := 0
	for k := 1; k <= kills; k++ {
		time.Sleep(time.Duration(200+rng.IntN(900)) * time.Millisecond) // paces the kills
		info, err := consumerInfo(ctx, js.JS, streams)
		if err != nil {
			t.Fatal(err)
		}
		rows := testenv.QueryUint64(t, db.Conn, "SELECT count() FROM usage_events")
		ing.Kill()
		if info.NumAckPending > 0 {
			killedHolding++
		}
		t.Logf("kill %d at %s: %d rows stored, %d delivered and unacknowledged, %d not yet delivered",
			k, time.Since(started).Round(time.Millisecond), rows, info.NumAckPending, info.NumPending)
		ing.Start()
	}
	if err := <-published; err != nil {
		t.Fatal(err)
	}
	flushPublisher(t, p, time.Minute)
	st := p.Stats()
	if st.Accepted != uint64(n) || st.Acked != uint64(n) || st.Failed != 0 || len(failed.list()) != 0 {
		t.Fatalf("publisher stats %+v, failures %v; want %d accepted and acknowledged", st, failed.list(), n)
	}
	// The fault must have hit: a kill while nothing was held proves nothing.
	if killedHolding == 0 {
		t.Fatalf("none of the %d kills caught the ingester holding unacknowledged events", kills)
	}

	waitDrained(t, js.JS, streams, 2*time.Minute)
	got := waitExactlyOnce(t, db.Conn, l, 30*time.Second)
	t.Logf("fault: %d SIGKILLs (%d while holding unacknowledged events, seed %d; %d take-overs of unacknowledged deliveries logged); load: %d events; took %s",
		kills, killedHolding, seed, strings.Count(ing.Logs(), "took over unacknowledged deliveries"), n, time.Since(started).Round(time.Millisecond))
	t.Logf("publisher: %+v", st)
	t.Logf("final: %v", got)
}

// Fault: the ClickHouse server the ingester writes to (a private instance started with
// deploy/clickhouse/local.sh on random ports) is killed with SIGKILL in the middle of one of
// the ingester's inserts, after the insert's raw rows were stored and before its
// materialized views had all run (the test watches system.processes and the raw count, and
// kills in that window). It stays down for KEYTRAIL_FAULT_OUTAGE (default 25 s) and is
// started again on its data while the ingester is paused (SIGSTOP), so the test can measure
// what the kill left: the rollups short of the cut insert's rows.
// Load: KEYTRAIL_FAULT_OUTAGE_EVENTS (default 100,000) usage events: 20% before the outage,
// 60% during it (a burst of 15,000, more than the ingester may hold, then paced), 20% after
// ClickHouse is back; the ingester is the keytrail binary (batch size 5000) so its memory
// can be measured alone.
// Expect, during the outage: the ingester stops fetching (its consumer's delivered sequence
// does not move from 2 s in), holds at most two batches, the one being written and the one
// read ahead (ack pending <= 10,000, far below MaxAckPending 50,000), the backlog stays in
// the stream (consumer lag >= events published during the outage - 10,000 - any it managed
// to store) and its resident memory grows by less than 32 MiB.
// Expect, after the restart: some rollup is short of the raw rows (the fault hit), and the
// ingester, finding the cut batch stored when it retries, adds exactly the missing rows
// before acknowledging it (its log reports the same shortfall, rollup by rollup).
// Expect, at the end: count() == uniqExact(event_id) == 100,000, every rollup's requests ==
// 100,000, errors == 4,000, tokens and cost == the raw sums, every rollup cell equal to the
// raw rows.
func TestClickHouseKilledMidInsertStoresEachEventOnce(t *testing.T) {
	outage := testenv.EnvDuration(t, "KEYTRAIL_FAULT_OUTAGE", 25*time.Second)
	n := testenv.EnvInt(t, "KEYTRAIL_FAULT_OUTAGE_EVENTS", 100_000)
	const batchSize = 5000        // newIngesterProcess's -batch-size
	const maxHeld = 2 * batchSize // the batch being written and the one read ahead
	const rssGrowthLimit = 32 << 20
	const database = "kt_fault_outage"
	started := time.Now()

	ch := testenv.StartClickHouseServer(t)
	dsn := ch.DSN(database)
	conn := ch.OpenDatabase(database)
	streams := broker.DefaultStreamConfig()
	js := testenv.NewJetStream(t, streams)
	l := newLoad("outage", n)
	p, failed := newPublisher(t, js.URL, streams, nil)
	ing := newIngesterProcess(t, js.URL, dsn)
	ing.Start()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	t.Logf("private ClickHouse on tcp port %d and the ingester started in %s", ch.TCPPort, time.Since(started).Round(time.Millisecond))

	before, during := n/5, n/5+n*3/5
	burst := min(during-before, maxHeld+batchSize)
	if err := publishPaced(ctx, p, l, 0, before, 20_000); err != nil {
		t.Fatal(err)
	}
	flushPublisher(t, p, 30*time.Second)
	testenv.Eventually(t, 30*time.Second, func() error {
		if n := testenv.QueryUint64(t, conn, "SELECT count() FROM usage_events"); n != uint64(before) {
			return fmt.Errorf("%d of %d rows before the outage", n, before)
		}
		return nil
	})
	rssBefore, err := ing.RSS()
	if err != nil {
		t.Fatal(err)
	}

	// The burst makes the ingester insert; the kill lands inside one of those inserts.
	published := make(chan error, 1)
	go func() {
		if err := publishPaced(ctx, p, l, before, before+burst, 50_000); err != nil {
			published <- err
			return
		}
		rate := (during - before - burst) * 1000 / int(outage.Milliseconds()*3/5)
		published <- publishPaced(ctx, p, l, before+burst, during, max(rate, 1))
	}()
	rawAtKill := killMidInsert(t, ch, conn, database, 30*time.Second)
	stoppedAt := time.Now()
	t.Logf("ClickHouse killed at %s, mid-insert: %d raw rows stored, the insert's views still running; ingester RSS %d MiB",
		stoppedAt.Sub(started).Round(time.Millisecond), rawAtKill, rssBefore>>20)

	// Sample the consumer and the process until the outage ends. Until its first write
	// fails the ingester may still fill the batch it reads ahead; from 2 s after the kill
	// it must be stalled.
	var (
		maxAckPending         uint64
		frozenAt              uint64
		lastInfo              *jetstream.ConsumerInfo
		rssMax                = rssBefore
		samples, stalledCheck int
	)
	for time.Since(stoppedAt) < outage {
		time.Sleep(250 * time.Millisecond) // sampling period
		info, err := consumerInfo(ctx, js.JS, streams)
		if err != nil {
			t.Fatal(err)
		}
		rss, err := ing.RSS()
		if err != nil {
			t.Fatal(err)
		}
		samples++
		lastInfo = info
		maxAckPending = max(maxAckPending, uint64(info.NumAckPending))
		rssMax = max(rssMax, rss)
		if info.NumAckPending > maxHeld {
			t.Errorf("%s into the outage: %d events delivered and unacknowledged, more than two batches (%d)", time.Since(stoppedAt).Round(time.Millisecond), info.NumAckPending, maxHeld)
		}
		if time.Since(stoppedAt) < 2*time.Second {
			continue
		}
		if frozenAt == 0 {
			frozenAt = info.Delivered.Stream
		}
		stalledCheck++
		if info.Delivered.Stream != frozenAt {
			t.Errorf("%s into the outage the ingester fetched again (delivered stream seq %d -> %d) while its write was failing",
				time.Since(stoppedAt).Round(time.Millisecond), frozenAt, info.Delivered.Stream)
			frozenAt = info.Delivered.Stream
		}
	}
	if err := <-published; err != nil {
		t.Fatal(err)
	}
	flushPublisher(t, p, 30*time.Second)
	info, err := consumerInfo(ctx, js.JS, streams)
	if err != nil {
		t.Fatal(err)
	}
	lastInfo = info
	// Whatever the ingester did not store (acknowledge) or hold is still in the stream.
	storedDuring := int64(info.AckFloor.Stream) - int64(before)
	if lag, want := int64(info.NumPending), int64(during-before-maxHeld)-storedDuring; lag < want {
		t.Errorf("consumer lag %d at the end of the outage, want >= %d (%d published during the outage, %d acknowledged): the ingester took events it could not store",
			lag, want, during-before, storedDuring)
	}
	if growth := rssMax - rssBefore; growth > rssGrowthLimit {
		t.Errorf("ingester RSS grew by %d MiB during the outage (%d -> %d MiB), limit %d MiB", growth>>20, rssBefore>>20, rssMax>>20, rssGrowthLimit>>20)
	}
	if stalledCheck == 0 {
		t.Fatalf("outage %s too short to check the stall", outage)
	}
	t.Logf("outage of %s: %d samples, max ack pending %d (limit %d, MaxAckPending %d), delivered seq frozen at %d, lag at the end %d, RSS %d -> max %d MiB",
		time.Since(stoppedAt).Round(time.Millisecond), samples, maxAckPending, maxHeld, streams.MaxAckPending, frozenAt, lastInfo.NumPending, rssBefore>>20, rssMax>>20)
	if !bytes.Contains([]byte(ing.Logs()), []byte("storing batch failed; retrying")) {
		t.Errorf("the ingester never reported a failed write during the outage")
	}

	// Back up, with the ingester paused: what did the kill leave?
	ing.Pause()
	ch.Start()
	t.Logf("ClickHouse started again at %s", time.Since(started).Round(time.Millisecond))
	left, err := readTotals(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	shortfall := map[string]int64{}
	for _, q := range rollupQueries {
		if q.of == migrations.Requests && left.Rollups[q.name] < left.Rows {
			shortfall[strings.TrimSuffix(q.name, ".requests")] = left.Rows - left.Rollups[q.name]
		}
	}
	t.Logf("after the restart, before the ingester retried: %v", left)
	if len(shortfall) == 0 {
		t.Fatalf("every rollup holds the %d raw rows: the kill did not land between the cut insert's raw part and its views", left.Rows)
	}
	t.Logf("rollups short of the raw rows (requests): %v", shortfall)
	ing.Resume()

	if err := publishPaced(ctx, p, l, during, n, 20_000); err != nil {
		t.Fatal(err)
	}
	flushPublisher(t, p, 30*time.Second)
	st := p.Stats()
	if st.Accepted != uint64(n) || st.Acked != uint64(n) || st.Failed != 0 || len(failed.list()) != 0 {
		t.Fatalf("publisher stats %+v, failures %v; want %d accepted and acknowledged", st, failed.list(), n)
	}
	waitDrained(t, js.JS, streams, 2*time.Minute)
	got := waitExactlyOnce(t, conn, l, 30*time.Second)
	if repaired := repairsLogged(ing.Logs()); !maps.Equal(repaired, shortfall) {
		t.Errorf("the ingester's log reports repairs (requests by rollup) %v, want the shortfall the kill left %v", repaired, shortfall)
	}
	t.Logf("fault: ClickHouse SIGKILLed mid-insert and down %s; load: %d events (%d during the outage); took %s", outage, n, during-before, time.Since(started).Round(time.Millisecond))
	t.Logf("final: %v", got)
}

// killMidInsert SIGKILLs the ClickHouse server while one of the ingester's inserts into
// database is running with its raw rows already stored: between the raw part and the
// materialized views. It returns the raw row count it saw last. An insert is recognised by
// its query id (chsink tags them); the kill is sent only once the same insert has been seen
// running before and after the raw count grew.
func killMidInsert(t *testing.T, ch *testenv.ClickHouseServer, conn driver.Conn, database string, timeout time.Duration) uint64 {
	t.Helper()
	prefix := "keytrail-insert/" + database + "/"
	var seen string // the insert being watched
	var base uint64 // raw rows when it was first seen
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		var id string
		var rows uint64
		err := conn.QueryRow(context.Background(), "SELECT (SELECT any(query_id) FROM system.processes WHERE substring(query_id, 1, ?) = ?), (SELECT count() FROM usage_events)",
			len(prefix), prefix).Scan(&id, &rows)
		switch {
		case err != nil:
			t.Fatalf("watch inserts: %v", err)
		case id == "":
			seen = ""
		case id != seen:
			seen, base = id, rows
		case rows > base:
			ch.Kill()
			return rows
		}
	}
	t.Fatalf("no insert seen between its raw part and its views within %s", timeout)
	return 0
}

// repairsLogged adds up, by rollup, the requests the reconciliation's log lines say it
// added.
func repairsLogged(logs string) map[string]int64 {
	out := map[string]int64{}
	for _, line := range strings.Split(logs, "\n") {
		if !strings.Contains(line, "rollup was missing rows of usage_events") {
			continue
		}
		var rollup string
		var requests int64
		for _, f := range strings.Fields(line) {
			if v, ok := strings.CutPrefix(f, "rollup="); ok {
				rollup = v
			}
			if v, ok := strings.CutPrefix(f, "requests="); ok {
				requests, _ = strconv.ParseInt(v, 10, 64)
			}
		}
		out[rollup] += requests
	}
	return out
}

// Fault: the NATS server, a nats-server process of its own (built from the module keytrail
// embeds, JetStream on a file store), is killed with SIGKILL KEYTRAIL_FAULT_NATS_KILLS
// (default 3) times, about 2 s apart, while a gateway publishes and the ingester (in process,
// batch size 5000) consumes, and started again on the same port and store about 1 s later;
// both clients reconnect on their own. No shutdown, no flush: the store is what the
// operating system had of it.
// Load: KEYTRAIL_FAULT_NATS_EVENTS (default 100,000) usage events published with the
// publisher package (30 retries under the same Nats-Msg-Id, 1 s ack timeout), paced to span
// the kills.
// Expect: the publisher gave up on nothing (Failed 0, no OnFailure call) and acknowledged all
// 100,000 (Acked == Accepted, retries whose first attempt had landed counted as Duplicates),
// and ClickHouse holds count() == uniqExact(event_id) == 100,000, every rollup's requests ==
// 100,000, errors == 4,000, tokens and cost == the raw sums: nothing acknowledged is lost,
// nothing retried is stored twice.
func TestNATSKilledLosesNothingAcknowledged(t *testing.T) {
	kills := testenv.EnvInt(t, "KEYTRAIL_FAULT_NATS_KILLS", 3)
	n := testenv.EnvInt(t, "KEYTRAIL_FAULT_NATS_EVENTS", 100_000)
	started := time.Now()

	natsSrv := testenv.StartNATSServer(t, testenv.NATSServerConfig{Name: "faulttest"})
	t.Logf("nats-server process (pid %d) on %s ready in %s", natsSrv.PID(), natsSrv.URL, time.Since(started).Round(time.Millisecond))
	streams := broker.DefaultStreamConfig()
	admin := connect(t, natsSrv.URL, "faulttest-admin")
	adminJS, err := jetstream.New(admin)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := broker.EnsureStreams(ctx, adminJS, streams); err != nil {
		t.Fatal(err)
	}
	db := testenv.ClickHouse(t)
	logs := runIngester(t, connect(t, natsSrv.URL, "faulttest-ingester"), streams, db)

	l := newLoad("natskill", n)
	p, failed := newPublisher(t, natsSrv.URL, streams, func(c *publisher.Config) {
		c.MaxRetries = 30
		c.AckTimeout = time.Second
	})
	pubCfg := publisher.Config{MaxRetries: 30, AckTimeout: time.Second}
	if span := pubCfg.RetrySpan(); span >= streams.DuplicateWindow {
		t.Fatalf("publisher retry span %s reaches past the duplicate window %s", span, streams.DuplicateWindow)
	}
	rate := n * 1000 / ((kills + 1) * 2500)
	published := make(chan error, 1)
	go func() { published <- publishPaced(ctx, p, l, 0, n, rate) }()

	for k := 1; k <= kills; k++ {
		time.Sleep(2 * time.Second) // paces the kills
		rows := testenv.QueryUint64(t, db.Conn, "SELECT count() FROM usage_events")
		s := p.Stats()
		pid := natsSrv.PID()
		natsSrv.Kill()
		time.Sleep(time.Second) // down time
		natsSrv.Start()
		t.Logf("kill %d of nats-server pid %d at %s: %d rows stored, publisher had %d accepted, %d acknowledged; restarted as pid %d",
			k, pid, time.Since(started).Round(time.Millisecond), rows, s.Accepted, s.Acked, natsSrv.PID())
	}
	if err := <-published; err != nil {
		t.Fatal(err)
	}
	flushPublisher(t, p, 2*time.Minute)
	st := p.Stats()
	if st.Failed != 0 || len(failed.list()) != 0 || st.Accepted != uint64(n) || st.Acked != uint64(n) {
		t.Fatalf("publisher stats %+v, failures %v; want %d accepted and acknowledged, none failed", st, failed.list(), n)
	}
	waitDrained(t, adminJS, streams, 2*time.Minute)
	got := func() totals {
		defer func() {
			if t.Failed() {
				t.Logf("ingester log (tail):\n%s", logs.Tail(40))
			}
		}()
		return waitExactlyOnce(t, db.Conn, l, 30*time.Second)
	}()
	t.Logf("fault: %d SIGKILLs of nats-server (ingester logged %d missed-delivery gaps, %d take-overs); load: %d events; took %s",
		kills, logs.Count("missed deliveries"), logs.Count("took over unacknowledged deliveries"), n, time.Since(started).Round(time.Millisecond))
	t.Logf("publisher: %+v", st)
	t.Logf("final: %v", got)
}

// connect opens a client connection that reconnects for ever, closed when the test ends.
func connect(t *testing.T, url, name string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, nats.Name(name), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// runIngester runs an ingester in this process until the test ends; its log is kept.
func runIngester(t *testing.T, nc *nats.Conn, streams broker.StreamConfig, db *testenv.Database) *testenv.SyncBuffer {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	sink, err := chsink.New(chsink.Config{Conn: db.Conn})
	if err != nil {
		t.Fatal(err)
	}
	logs := &testenv.SyncBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, nil))
	// As services/keytrail wires it: the reconciler guards the sink (no sweep here).
	rec, err := reconcile.New(reconcile.Config{Conn: db.Conn, Sink: sink, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	testenv.RunIngester(t, ingest.Config{
		JetStream: js, Streams: streams, Sink: rec.Guard(), BatchSize: 5000, FlushInterval: 200 * time.Millisecond,
		Logger: logger,
	})
	return logs
}

// Fault: the first attempt of every third ClickHouse insert is committed by the server but
// reported to the ingester as failed, as when the connection breaks after the commit and
// before the reply (simulated by wrapping the driver connection the sink writes through).
// The ingester cannot tell such a batch from a lost one and retries it.
// Load: 20,000 usage events published with the publisher package at 20,000/s, in-process
// ingester with batch size 5000 and flush interval 200 ms.
// Expect: at least one lie told, and count() == uniqExact(event_id) == 20,000, every
// rollup's requests == 20,000, errors == 800 and cost == the raw sum: the retry checks
// storage first instead of inserting the committed rows again.
func TestInsertCommittedButReportedFailedIsNotStoredTwice(t *testing.T) {
	started := time.Now()
	streams := broker.DefaultStreamConfig()
	js := testenv.NewJetStream(t, streams)
	db := testenv.ClickHouse(t)
	conn := &lostReplyConn{Conn: db.Conn}
	logs := runIngester(t, js.Conn, streams, &testenv.Database{Name: db.Name, DSN: db.DSN, Conn: conn})
	l := newLoad("lostreply", 20_000)
	p, failed := newPublisher(t, js.URL, streams, nil)
	ctx := context.Background()
	if err := publishPaced(ctx, p, l, 0, l.n, 20_000); err != nil {
		t.Fatal(err)
	}
	flushPublisher(t, p, 30*time.Second)
	if st := p.Stats(); st.Acked != uint64(l.n) || st.Failed != 0 || len(failed.list()) != 0 {
		t.Fatalf("publisher stats %+v, failures %v", st, failed.list())
	}
	waitDrained(t, js.JS, streams, time.Minute)
	if conn.lied() == 0 {
		t.Fatal("no insert was reported failed after its commit: the fault never hit")
	}
	got := waitExactlyOnce(t, db.Conn, l, 30*time.Second)
	t.Logf("fault: %d committed inserts reported as failed (%d retries logged); load: %d events; took %s",
		conn.lied(), logs.Count("storing batch failed; retrying"), l.n, time.Since(started).Round(time.Millisecond))
	t.Logf("final: %v", got)
}

// lostReplyConn is a ClickHouse connection on which the first Send of every third insert
// commits the rows and then reports an error, as when the connection breaks after the server
// committed the insert and before its reply arrived: the client cannot tell a stored batch
// from a lost one.
type lostReplyConn struct {
	driver.Conn
	mu      sync.Mutex
	inserts int
	lies    int
}

func (c *lostReplyConn) PrepareBatch(ctx context.Context, query string, opts ...driver.PrepareBatchOption) (driver.Batch, error) {
	b, err := c.Conn.PrepareBatch(ctx, query, opts...)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.inserts++
	return &lostReplyBatch{Batch: b, lie: c.inserts%3 == 1, conn: c}, nil
}

func (c *lostReplyConn) lied() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lies
}

type lostReplyBatch struct {
	driver.Batch
	lie  bool
	conn *lostReplyConn
}

func (b *lostReplyBatch) Send() error {
	if err := b.Batch.Send(); err != nil || !b.lie {
		return err
	}
	b.conn.mu.Lock()
	b.conn.lies++
	b.conn.mu.Unlock()
	return errors.New("read: connection reset by peer (the insert was committed)")
}
