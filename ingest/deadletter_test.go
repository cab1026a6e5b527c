package ingest_test

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/keytrail/keytrail/ingest"
	"github.com/keytrail/keytrail/ingest/broker"
	"github.com/keytrail/keytrail/ingest/chsink"
	"github.com/keytrail/keytrail/ingest/memsink"
	"github.com/keytrail/keytrail/internal/testenv"
)

// dlEnv is a JetStream, storage (a ClickHouse database, or memory) and an ingester with its
// metrics and log.
type dlEnv struct {
	js *testenv.JetStream
	// db is the ClickHouse database, nil when the ingester writes to mem.
	db *testenv.Database
	// mem is the memory storage; sink the memory sink of the running ingester, on which a
	// test programs faults.
	mem  *memsink.Storage
	sink *memsink.Sink
	reg  *prometheus.Registry
	logs *testenv.SyncBuffer
	ing  *ingest.Ingester
	stop func() error
}

// newDLEnv runs an ingester on a ClickHouse database; configure may change the
// configuration before New.
func newDLEnv(t *testing.T, streams broker.StreamConfig, configure func(*ingest.Config)) *dlEnv {
	t.Helper()
	e := &dlEnv{js: testenv.NewJetStream(t, streams), db: testenv.ClickHouse(t), logs: &testenv.SyncBuffer{}}
	e.start(t, configure)
	return e
}

// newMemEnv runs an ingester on a memory sink (ingest/memsink), for tests of the ingester's
// own logic; configure may change the configuration before New (and program the sink's
// faults: cfg.Sink is the *memsink.Sink).
func newMemEnv(t *testing.T, streams broker.StreamConfig, configure func(*ingest.Config)) *dlEnv {
	t.Helper()
	e := idleMemEnv(t, streams)
	e.start(t, configure)
	return e
}

// idleMemEnv is newMemEnv before its ingester starts: what a test publishes first is there
// when the ingester starts.
func idleMemEnv(t *testing.T, streams broker.StreamConfig) *dlEnv {
	t.Helper()
	e := &dlEnv{js: testenv.NewJetStream(t, streams), mem: memsink.NewStorage(), logs: &testenv.SyncBuffer{}}
	e.stop = func() error { return nil }
	return e
}

// start runs an ingester (a new one after stop: fresh memory, metrics and sink, the same
// storage).
func (e *dlEnv) start(t *testing.T, configure func(*ingest.Config)) {
	t.Helper()
	e.reg = prometheus.NewRegistry()
	var sink ingest.Sink
	if e.mem != nil {
		e.sink = memsink.New(e.mem)
		sink = e.sink
	} else {
		s, err := chsink.New(chsink.Config{Conn: e.db.Conn})
		if err != nil {
			t.Fatal(err)
		}
		sink = s
	}
	cfg := ingest.Config{
		JetStream: e.js.JS, Streams: e.js.Streams, Sink: sink, Metrics: ingest.NewMetrics(e.reg),
		BatchSize: 1000, FlushInterval: 50 * time.Millisecond, ShutdownTimeout: 5 * time.Second,
		Logger: slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if configure != nil {
		configure(&cfg)
	}
	e.ing, e.stop = testenv.RunIngester(t, cfg)
}

// waitStored waits until storage holds exactly usage usage events and lifecycle lifecycle
// events (in ClickHouse, with every rollup agreeing).
func (e *dlEnv) waitStored(t *testing.T, usage, lifecycle int) {
	t.Helper()
	if e.db != nil {
		testenv.WaitForEvents(t, e.db, uint64(usage), uint64(lifecycle), 10*time.Second)
		return
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		u, _ := e.mem.Count(memsink.UsageTable)
		l, _ := e.mem.Count(memsink.LifecycleTable)
		if u != usage || l != lifecycle {
			return fmt.Errorf("storage holds %d usage and %d lifecycle events, want %d and %d", u, l, usage, lifecycle)
		}
		return nil
	})
}

// publishMsg publishes msg as it is and fails the test unless the events stream stored it.
func (e *dlEnv) publishMsg(t *testing.T, msg *nats.Msg) {
	t.Helper()
	ack, err := e.js.JS.PublishMsg(context.Background(), msg)
	if err != nil || ack.Duplicate {
		t.Fatalf("publish to %s: %v (duplicate %v)", msg.Subject, err, ack != nil && ack.Duplicate)
	}
}

// publishValid publishes valid usage events with the given ids.
func (e *dlEnv) publishValid(t *testing.T, ids ...string) {
	t.Helper()
	for _, id := range ids {
		b, _ := proto.Marshal(usageEvent(id, "key_a", "billing", time.Now().Add(-time.Minute), 200))
		publish(t, e.js.JS, e.js.Streams.Subjects.Usage("acme"), id, "", b)
	}
}

// poison is an undecodable message with the given headers.
func (e *dlEnv) poison(id string, data []byte) *nats.Msg {
	msg := nats.NewMsg(e.js.Streams.Subjects.Usage("acme"))
	msg.Header.Set(nats.MsgIdHdr, id)
	msg.Header.Set(poisonKindHeader, id)
	msg.Data = data
	return msg
}

// waitDrained waits until every message of the events stream was acknowledged: nothing
// pending for the consumer, nothing awaiting its ack, the interest-retention stream empty.
func (e *dlEnv) waitDrained(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	testenv.Eventually(t, 20*time.Second, func() error {
		c, err := e.js.JS.Consumer(ctx, e.js.Streams.EventsStream, e.js.Streams.Durable)
		if err != nil {
			return err
		}
		info := c.CachedInfo()
		s, err := e.js.JS.Stream(ctx, e.js.Streams.EventsStream)
		if err != nil {
			return err
		}
		if info.NumPending != 0 || info.NumAckPending != 0 || s.CachedInfo().State.Msgs != 0 {
			return fmt.Errorf("consumer: %d pending, %d awaiting ack; stream holds %d", info.NumPending, info.NumAckPending, s.CachedInfo().State.Msgs)
		}
		return nil
	})
}

// deadLetters reads every message of the dead-letter stream, by its Poison-Kind header.
func (e *dlEnv) deadLetters(t *testing.T) map[string]*jetstream.RawStreamMsg {
	t.Helper()
	ctx := context.Background()
	s, err := e.js.JS.Stream(ctx, e.js.Streams.DeadLetterStream)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*jetstream.RawStreamMsg{}
	for seq := s.CachedInfo().State.FirstSeq; seq > 0 && seq <= s.CachedInfo().State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			t.Fatalf("dead letter %d: %v", seq, err)
		}
		out[m.Header.Get(poisonKindHeader)] = m
	}
	return out
}

// tableDeadLetters reads the dead letters kept in storage (the dead_letters table):
// "stream_seq reason cause" per row.
func (e *dlEnv) tableDeadLetters(t *testing.T) []string {
	t.Helper()
	var out []string
	if e.mem != nil {
		for _, d := range e.mem.DeadLetters() {
			out = append(out, fmt.Sprintf("%d %s %s", d.StreamSeq, d.Reason, d.FallbackCause))
		}
		return out
	}
	rows, err := e.db.Conn.Query(context.Background(), "SELECT stream_seq, reason, fallback_cause FROM dead_letters ORDER BY stream_seq")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var seq uint64
		var reason, cause string
		if err := rows.Scan(&seq, &reason, &cause); err != nil {
			t.Fatal(err)
		}
		out = append(out, fmt.Sprintf("%d %s %s", seq, reason, cause))
	}
	return out
}

// encodedHeaderSize is the size of a header block on the wire (NATS/1.0 line, one line per
// value, blank line): what NATS limits to 65535 bytes.
func encodedHeaderSize(h nats.Header) int {
	n := len("NATS/1.0\r\n\r\n")
	for k, vs := range h {
		for _, v := range vs {
			n += len(k) + len(": ") + len(v) + len("\r\n")
		}
	}
	return n
}

// publishRawProtocol publishes one message over a bare NATS protocol connection, as a
// client that does not check header names would: header is the block's lines after the
// NATS/1.0 line.
func publishRawProtocol(t *testing.T, serverURL, subject, header string, payload []byte) {
	t.Helper()
	u, err := url.Parse(serverURL)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.DialTimeout("tcp", u.Host, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(conn)
	if _, err := r.ReadString('\n'); err != nil { // INFO
		t.Fatal(err)
	}
	hdr := "NATS/1.0\r\n" + header + "\r\n"
	fmt.Fprintf(conn, "CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true,\"protocol\":1}\r\nHPUB %s %d %d\r\n%s%s\r\nPING\r\n",
		subject, len(hdr), len(hdr)+len(payload), hdr, payload)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("raw publish: %v", err)
		}
		if strings.HasPrefix(line, "-ERR") {
			t.Fatalf("raw publish: %s", line)
		}
		if strings.HasPrefix(line, "PONG") {
			return
		}
	}
}

// Fault: three messages whose dead-letter copy NATS refuses as today's ingester makes it,
// each followed by valid events: headers that nearly fill NATS's 64 KiB header limit (with a
// payload filling the rest of NATS's 1 MiB), a Nats-Expected-Stream header naming the events stream
// (the copy would carry the directive to the dead-letter stream), and a header name the Go
// client refuses to send (published over the bare protocol).
// Expect: the four valid events stored; each bad message in the dead-letter stream with its
// reason, the headers it could not keep named in Keytrail-Dropped-Headers, a header block
// under 64 KiB, the original payload's length and hash, the big payload cut to 256 KiB;
// nothing in the fallback table; nothing pending or awaiting an ack.
func TestDeadLetterCopyFitsNATSLimits(t *testing.T) {
	t.Parallel()
	e := newMemEnv(t, broker.DefaultStreamConfig(), nil)

	e.publishValid(t, "v1")
	big := e.poison("big-headers", []byte(strings.Repeat("not a protobuf \xff", 1<<20/16)))
	big.Header.Set("X-Big", strings.Repeat("b", 65_400))
	big.Data = big.Data[:1<<20-encodedHeaderSize(big.Header)-64]
	if n := encodedHeaderSize(big.Header); n < 65_400 || n > 65_535 {
		t.Fatalf("test message's header block is %d bytes", n)
	}
	e.publishMsg(t, big)
	e.publishValid(t, "v2")
	directive := e.poison("directive", []byte("not a protobuf \xff"))
	directive.Header.Set("Nats-Expected-Stream", e.js.Streams.EventsStream)
	e.publishMsg(t, directive)
	e.publishValid(t, "v3")
	publishRawProtocol(t, e.js.URL, e.js.Streams.Subjects.Usage("acme"), poisonKindHeader+": bad-name\r\nX/Trace: abc\r\n", []byte("not a protobuf \xff"))
	e.publishValid(t, "v4")

	e.waitDrained(t)
	e.waitStored(t, 4, 0)
	dl := e.deadLetters(t)
	if len(dl) != 3 {
		t.Fatalf("dead-letter stream holds %d messages, want 3", len(dl))
	}
	for kind, want := range map[string]struct{ reason, dropped string }{
		"big-headers": {"oversize", "X-Big (65409 bytes)"},
		"directive":   {"undecodable", "Nats-Expected-Stream (NATS directive)"},
		"bad-name":    {"undecodable", `"X/Trace" (not a valid header name)`},
	} {
		m := dl[kind]
		if m == nil {
			t.Errorf("%s: not in the dead-letter stream", kind)
			continue
		}
		if got := m.Header.Get("Keytrail-Reason"); got != want.reason {
			t.Errorf("%s: reason %q, want %q", kind, got, want.reason)
		}
		if got := m.Header.Get("Keytrail-Dropped-Headers"); got != want.dropped {
			t.Errorf("%s: dropped headers %q, want %q", kind, got, want.dropped)
		}
		if n := encodedHeaderSize(m.Header); n > 65_535 {
			t.Errorf("%s: header block of %d bytes", kind, n)
		}
	}
	if m := dl["big-headers"]; m != nil {
		if len(m.Data) != 256<<10 || m.Header.Get("Keytrail-Truncated") != "262144" || m.Header.Get("Keytrail-Payload-Bytes") != fmt.Sprint(len(big.Data)) ||
			m.Header.Get("Content-Type") != "" || m.Header.Get("Keytrail-Original-Msg-Id") != "big-headers" {
			t.Errorf("big-headers: kept %d payload bytes, headers %v", len(m.Data), m.Header)
		}
	}
	if rows := e.tableDeadLetters(t); len(rows) != 0 {
		t.Errorf("dead letters kept in storage: %v", rows)
	}
}

// Fault: the dead-letter stream is full (max 1 message, discard new) when two more
// rejected messages arrive between valid events.
// Expect: the valid events stored; the first rejected message in the stream, the next two
// kept in storage (the sink's DeadLetterStore) with their reason and cause stream_full; the fallback counted
// by cause and logged; all three counted as dead letters; nothing left unacknowledged.
func TestFullDeadLetterStreamFallsBackToStorage(t *testing.T) {
	t.Parallel()
	e := newMemEnv(t, broker.DefaultStreamConfig(), nil)
	ctx := context.Background()
	s, err := e.js.JS.Stream(ctx, e.js.Streams.DeadLetterStream)
	if err != nil {
		t.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	cfg.MaxMsgs, cfg.Discard = 1, jetstream.DiscardNew
	if _, err := e.js.JS.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}

	e.publishMsg(t, e.poison("p0", []byte("not a protobuf \xff"))) // seq 1: fills the stream
	e.publishValid(t, "v1")
	e.publishMsg(t, e.poison("p1", []byte("not a protobuf \xff"))) // seq 3
	e.publishValid(t, "v2")
	e.publishMsg(t, e.poison("p2", []byte("not a protobuf \xff"))) // seq 5
	e.publishValid(t, "v3")

	e.waitDrained(t)
	e.waitStored(t, 3, 0)
	if dl := e.deadLetters(t); len(dl) != 1 || dl["p0"] == nil {
		t.Errorf("dead-letter stream holds %d messages, want p0 only", len(dl))
	}
	if got, want := fmt.Sprint(e.tableDeadLetters(t)), "[3 undecodable stream_full 5 undecodable stream_full]"; got != want {
		t.Errorf("dead letters kept in storage %s, want %s", got, want)
	}
	if got := poisonCounters(t, e.reg, "keytrail_ingest_dead_letter_fallback_total", "cause"); fmt.Sprint(got) != "map[stream_full:2]" {
		t.Errorf("fallbacks by cause %v", got)
	}
	if got := poisonCounters(t, e.reg, "keytrail_ingest_events_dead_lettered_total", "reason"); fmt.Sprint(got) != "map[undecodable:3]" {
		t.Errorf("dead letters by reason %v", got)
	}
	if n := strings.Count(e.logs.String(), "the dead-letter stream refused a dead letter"); n != 2 {
		t.Errorf("%d fallback log lines, want 2:\n%s", n, e.logs.String())
	}
}

// Fault: the dead-letter stream was deleted; a rejected message arrives between valid
// events; then the stream is created again and another one arrives.
// Expect: the valid events stored, the first rejected message kept in storage (cause
// no_stream), the second in the recreated stream, nothing left unacknowledged.
func TestDeletedDeadLetterStreamFallsBackToStorage(t *testing.T) {
	t.Parallel()
	e := newMemEnv(t, broker.DefaultStreamConfig(), nil)
	ctx := context.Background()
	if err := e.js.JS.DeleteStream(ctx, e.js.Streams.DeadLetterStream); err != nil {
		t.Fatal(err)
	}
	e.publishValid(t, "v1")
	e.publishMsg(t, e.poison("p1", []byte("not a protobuf \xff"))) // seq 2
	e.publishValid(t, "v2")
	e.waitDrained(t)
	e.waitStored(t, 2, 0)
	if got, want := fmt.Sprint(e.tableDeadLetters(t)), "[2 undecodable no_stream]"; got != want {
		t.Errorf("dead letters kept in storage %s, want %s", got, want)
	}

	if err := broker.EnsureStreams(ctx, e.js.JS, e.js.Streams); err != nil {
		t.Fatal(err)
	}
	e.publishMsg(t, e.poison("p2", []byte("not a protobuf \xff")))
	e.publishValid(t, "v3")
	e.waitDrained(t)
	e.waitStored(t, 3, 0)
	if dl := e.deadLetters(t); len(dl) != 1 || dl["p2"] == nil || dl["p2"].Header.Get("Keytrail-Stream-Seq") != "4" {
		t.Errorf("dead-letter stream: %v", dl)
	}
	if got := poisonCounters(t, e.reg, "keytrail_ingest_dead_letter_fallback_total", "cause"); fmt.Sprint(got) != "map[no_stream:1]" {
		t.Errorf("fallbacks by cause %v", got)
	}
}

// A dead letter replayed twice (the second time after the ingester restarted, under
// another message id, past JetStream's duplicate window and the ingester's memory of recent
// ids) must not be stored twice: a message marked Keytrail-Replay-Of is checked against
// storage like a redelivery.
// Expect: the event stored once, the replay counted as a duplicate, the events around it
// stored.
func TestReplayedMessageIsCheckedAgainstStorage(t *testing.T) {
	t.Parallel()
	e := newMemEnv(t, broker.DefaultStreamConfig(), nil)
	replayed := usageEvent("e1", "key_a", "billing", time.Now().Add(-time.Minute), 200)
	b, _ := proto.Marshal(replayed)
	replay := func(msgID string) {
		msg := nats.NewMsg(e.js.Streams.Subjects.Usage("acme"))
		msg.Header.Set(nats.MsgIdHdr, msgID)
		msg.Header.Set("Keytrail-Replay-Of", "KEYTRAIL_DEADLETTER/1")
		msg.Data = b
		e.publishMsg(t, msg)
	}
	replay("replay-e1-first")
	e.waitDrained(t)
	e.waitStored(t, 1, 0)
	if err := e.stop(); err != nil {
		t.Fatal(err)
	}

	e.start(t, nil)
	e.publishValid(t, "f1") // ends the new ingester's check of its first records
	e.waitDrained(t)
	replay("replay-e1-second")
	e.publishValid(t, "g1")
	e.waitDrained(t)
	e.waitStored(t, 3, 0)
	wantStoredOnce(t, e.mem, 3)
	if got := poisonCounters(t, e.reg, "keytrail_ingest_duplicates_dropped_total", "kind"); fmt.Sprint(got) != "map[usage:1]" {
		t.Errorf("duplicates dropped %v, want the replay", got)
	}
}
