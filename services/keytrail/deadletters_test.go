package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/ingest"
	"github.com/keytrail/keytrail/ingest/broker"
	"github.com/keytrail/keytrail/ingest/chsink"
	"github.com/keytrail/keytrail/internal/testenv"
)

// Fault: ClickHouse refuses the ingester's inserts (usage_events detached) while an event
// waits, with -ingest-stall-timeout 500ms; then the table is attached again.
// Expect: /readyz answers 503 naming the stall and /metrics shows keytrail_ingest_stalled 1;
// once the table is back the event is stored (rollups too), /readyz answers 200 and the
// gauge is 0.
func TestReadyzReportsAStalledIngester(t *testing.T) {
	t.Parallel()
	db := testenv.ClickHouse(t)
	m := startKeytrail(t, db, "-role", "ingest", "-ingest-stall-timeout", "500ms")
	base := "http://" + m.HTTPAddr
	if code, body := testenv.Get(t, base, "/readyz", nil, ""); code != http.StatusOK {
		t.Fatalf("/readyz before the fault: %d %s", code, body)
	}
	ctx := context.Background()
	if err := db.Conn.Exec(ctx, "DETACH TABLE usage_events"); err != nil {
		t.Fatal(err)
	}
	attached := false
	t.Cleanup(func() { // a detached table would outlive the test database's DROP
		if !attached {
			_ = db.Conn.Exec(context.Background(), "ATTACH TABLE usage_events")
		}
	})
	_, js := testenv.Connect(t, m.NATSURL)
	b, _ := proto.Marshal(&keytrailv1.UsageEvent{EventId: "st1", Time: timestamppb.New(time.Now().Add(-time.Minute)), Project: "acme",
		KeyId: "key_a", Service: "billing", StatusCode: 200})
	if _, err := js.Publish(ctx, "keytrail.usage.acme", b, jetstream.WithMsgID("st1")); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 15*time.Second, func() error {
		code, body := testenv.Get(t, base, "/readyz", nil, "")
		if code != http.StatusServiceUnavailable || !strings.Contains(string(body), "ingester stalled: 1 messages waiting") {
			return fmt.Errorf("/readyz: %d %s", code, body)
		}
		return nil
	})
	if _, body := testenv.Get(t, base, "/metrics", nil, ""); !strings.Contains(string(body), "\nkeytrail_ingest_stalled 1\n") {
		t.Errorf("/metrics while stalled lacks keytrail_ingest_stalled 1")
	}

	if err := db.Conn.Exec(ctx, "ATTACH TABLE usage_events"); err != nil {
		t.Fatal(err)
	}
	attached = true
	testenv.WaitForEvents(t, db, 1, 0, 20*time.Second)
	testenv.Eventually(t, 15*time.Second, func() error {
		code, body := testenv.Get(t, base, "/readyz", nil, "")
		if code != http.StatusOK {
			return fmt.Errorf("/readyz: %d %s", code, body)
		}
		if _, body := testenv.Get(t, base, "/metrics", nil, ""); !strings.Contains(string(body), "\nkeytrail_ingest_stalled 0\n") {
			return fmt.Errorf("keytrail_ingest_stalled is not 0")
		}
		return nil
	})
}

// runTestIngester runs an ingester whose clock is now+skew until stop is called.
func runTestIngester(t *testing.T, js *testenv.JetStream, db *testenv.Database, skew time.Duration) (stop func()) {
	t.Helper()
	sink, err := chsink.New(chsink.Config{Conn: db.Conn})
	if err != nil {
		t.Fatal(err)
	}
	_, stopIngester := testenv.RunIngester(t, ingest.Config{
		JetStream: js.JS, Streams: js.Streams, Sink: sink, BatchSize: 100, FlushInterval: 50 * time.Millisecond,
		Logger: slog.New(slog.DiscardHandler), Now: func() time.Time { return time.Now().Add(skew) },
	})
	return func() {
		if err := stopIngester(); err != nil {
			t.Errorf("ingester: %v", err)
		}
	}
}

// deadletters runs `keytrail deadletters` against the test's NATS and ClickHouse.
func deadletters(t *testing.T, js *testenv.JetStream, db *testenv.Database, args ...string) (string, error) {
	t.Helper()
	var out strings.Builder
	err := run(context.Background(), append(append([]string{"deadletters"}, args...), "--nats-url", js.URL, "--clickhouse-dsn", db.DSN), &out)
	return out.String(), err
}

// The cause: an ingester whose clock ran three hours behind rejected four events as more
// than an hour in the future (time_out_of_range); one of them while the dead-letter stream
// was deleted, so it is in the dead_letters table. One event carries a secret in request_id,
// one is JSON. An undecodable message is dead-lettered beside them.
// Expect: list shows all five, from both places, with reason, detail, subject, stream
// sequence and time, no secret; --reason and --since filter; replay --dry-run publishes
// nothing; once the clock is right, replay stores the four events exactly once, the secret
// as the fingerprint ingestion gives it, and leaves the undecodable one listed; replaying
// again (after --keep) and then once more stores nothing twice.
func TestDeadLettersListAndReplay(t *testing.T) {
	t.Parallel()
	js := testenv.NewJetStream(t, broker.DefaultStreamConfig())
	db := testenv.ClickHouse(t)
	ctx := context.Background()
	secret := "sk-proj-Zx8Qw2Er4Ty6Ui8Op0As2Df4Gh6Jk8L"
	at := time.Now().UTC().Add(-time.Minute).Truncate(time.Millisecond)
	event := func(id string) *keytrailv1.UsageEvent {
		return &keytrailv1.UsageEvent{EventId: id, Time: timestamppb.New(at), Project: "acme", KeyId: "key_a", Service: "billing",
			StatusCode: 200, CostMicros: 1000, RequestId: "req-" + id}
	}
	publish := func(id, contentType string, data []byte) {
		t.Helper()
		msg := nats.NewMsg(js.Streams.Subjects.Usage("acme"))
		msg.Header.Set(nats.MsgIdHdr, id)
		if contentType != "" {
			msg.Header.Set("Content-Type", contentType)
		}
		msg.Data = data
		if _, err := js.JS.PublishMsg(ctx, msg); err != nil {
			t.Fatal(err)
		}
	}
	pb := func(e *keytrailv1.UsageEvent) []byte { b, _ := proto.Marshal(e); return b }

	stop := runTestIngester(t, js, db, -3*time.Hour)
	if err := js.JS.DeleteStream(ctx, js.Streams.DeadLetterStream); err != nil {
		t.Fatal(err)
	}
	publish("e4", "", pb(event("e4"))) // into the dead_letters table
	js.AwaitAcknowledged(t, 20*time.Second)
	out, err := deadletters(t, js, db, "list")
	if err != nil || !strings.HasPrefix(out, "note: the dead-letter stream KEYTRAIL_DEADLETTER does not exist") || !strings.Contains(out, "dead_letters/KEYTRAIL_EVENTS/1") {
		t.Errorf("list without the stream (%v):\n%s", err, out)
	}
	if err := broker.EnsureStreams(ctx, js.JS, js.Streams); err != nil {
		t.Fatal(err)
	}
	publish("e1", "", pb(event("e1")))
	withSecret := event("e2")
	withSecret.RequestId = "Bearer " + secret
	publish("e2", "", pb(withSecret))
	asJSON, _ := protojson.Marshal(event("e3"))
	publish("e3", "application/json", asJSON)
	publish("garbage", "", []byte("not an event \xff"))
	js.AwaitAcknowledged(t, 20*time.Second)
	stop()
	if n := testenv.QueryUint64(t, db.Conn, "SELECT count() FROM usage_events"); n != 0 {
		t.Fatalf("%d events stored by the skewed ingester", n)
	}

	// list: all five, oldest first, from both places.
	out, err = deadletters(t, js, db, "list", "--json")
	if err != nil {
		t.Fatalf("list: %v\n%s", err, out)
	}
	if strings.Contains(out, secret) {
		t.Errorf("list --json prints the secret:\n%s", out)
	}
	var listed []deadLetterJSON
	if err := json.Unmarshal([]byte(out), &listed); err != nil {
		t.Fatalf("list --json: %v\n%s", err, out)
	}
	var got []string
	for _, l := range listed {
		got = append(got, fmt.Sprintf("%s %s %s %d", l.KeptIn, l.Reason, l.Subject, l.StreamSeq))
		if l.Time.IsZero() || l.Detail == "" {
			t.Errorf("%s: time %v, detail %q", l.KeptIn, l.Time, l.Detail)
		}
	}
	want := []string{
		"dead_letters/KEYTRAIL_EVENTS/1 time_out_of_range keytrail.usage.acme 1",
		"KEYTRAIL_DEADLETTER/1 time_out_of_range keytrail.usage.acme 2",
		"KEYTRAIL_DEADLETTER/2 time_out_of_range keytrail.usage.acme 3",
		"KEYTRAIL_DEADLETTER/3 time_out_of_range keytrail.usage.acme 4",
		"KEYTRAIL_DEADLETTER/4 undecodable keytrail.usage.acme 5",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("list:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if listed[0].FallbackCause != "no_stream" || listed[3].Payload != string(asJSON) || !strings.Contains(listed[1].Detail, "after the ingester's clock") {
		t.Errorf("list details: %+v", listed)
	}

	out, err = deadletters(t, js, db, "list", "--reason", "undecodable")
	if err != nil || strings.Count(out, "\n") != 2 || !strings.Contains(out, "KEYTRAIL_DEADLETTER/4") {
		t.Errorf("list --reason undecodable (%v):\n%s", err, out)
	}
	out, err = deadletters(t, js, db, "list", "--since", time.Now().Add(time.Hour).Format(time.RFC3339))
	if err != nil || out != "no dead letters\n" {
		t.Errorf("list --since an hour ahead (%v):\n%s", err, out)
	}
	out, err = deadletters(t, js, db, "list", "--since", "1h")
	if err != nil || strings.Count(out, "\n") != 6 {
		t.Errorf("list --since 1h (%v):\n%s", err, out)
	}

	// The cause is fixed: an ingester with the right clock.
	runTestIngester(t, js, db, 0)
	events, err := js.JS.Stream(ctx, js.Streams.EventsStream)
	if err != nil {
		t.Fatal(err)
	}
	lastSeq := events.CachedInfo().State.LastSeq
	out, err = deadletters(t, js, db, "replay", "--reason", "time_out_of_range", "--dry-run")
	if err != nil || strings.Count(out, "would replay") != 4 {
		t.Errorf("replay --dry-run (%v):\n%s", err, out)
	}
	if info, _ := events.Info(ctx); info.State.LastSeq != lastSeq {
		t.Errorf("dry run published: events stream at %d, was %d", info.State.LastSeq, lastSeq)
	}

	out, err = deadletters(t, js, db, "replay", "--reason", "time_out_of_range", "--keep")
	if err != nil || !strings.Contains(out, "4 replayed (0 already in the events stream), 0 failed") {
		t.Fatalf("replay --keep (%v):\n%s", err, out)
	}
	testenv.WaitForEvents(t, db, 4, 0, 20*time.Second)
	// Replayed again (as after a crash before the dead letters were removed): removed now.
	out, err = deadletters(t, js, db, "replay", "--reason", "time_out_of_range")
	if err != nil || !strings.Contains(out, "4 replayed (4 already in the events stream), 0 failed") {
		t.Fatalf("second replay (%v):\n%s", err, out)
	}
	out, err = deadletters(t, js, db, "replay", "--reason", "time_out_of_range")
	if err != nil || out != "no dead letters to replay\n" {
		t.Errorf("third replay (%v):\n%s", err, out)
	}
	js.AwaitAcknowledged(t, 20*time.Second)

	for _, q := range []string{"SELECT count() FROM usage_events", "SELECT uniqExact(event_id) FROM usage_events", "SELECT countMerge(requests) FROM usage_key_minute"} {
		if n := testenv.QueryUint64(t, db.Conn, q); n != 4 {
			t.Errorf("%s = %d, want 4", q, n)
		}
	}
	var requestID string
	var ms int64
	if err := db.Conn.QueryRow(ctx, "SELECT request_id, event_time_ms FROM usage_events WHERE event_id = 'e2'").Scan(&requestID, &ms); err != nil {
		t.Fatal(err)
	}
	if requestID != "redacted:sha256:"+fingerprintHex("Bearer "+secret) || ms != at.UnixMilli() {
		t.Errorf("replayed e2 stored with request_id %q at %d, want the fingerprint at %d", requestID, ms, at.UnixMilli())
	}
	if n := testenv.CountOccurrences(t, db, secret); n != 0 {
		t.Errorf("the secret is in %d ClickHouse cells", n)
	}
	out, err = deadletters(t, js, db, "list")
	if err != nil || strings.Count(out, "\n") != 2 || !strings.Contains(out, "undecodable") {
		t.Errorf("list after the replay (%v):\n%s", err, out)
	}
}

func fingerprintHex(v string) string {
	sum := sha256.Sum256([]byte(v))
	return hex.EncodeToString(sum[:12])
}

func TestDeadLettersUsageErrors(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"deadletters"},
		{"deadletters", "purge"},
		{"deadletters", "list", "--since", "yesterday"},
		{"deadletters", "replay", "extra"},
	} {
		var out strings.Builder
		err := run(context.Background(), args, &out)
		var coded *exitCodeError
		if !errors.As(err, &coded) || coded.code != exitUsage {
			t.Errorf("%v: %v, want a usage error (exit %d)", args, err, exitUsage)
		}
	}
	if got, err := parseSince("2026-12-01T00:00:00Z", time.Now()); err != nil || !got.Equal(time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("parseSince(RFC 3339) = %v, %v", got, err)
	}
	now := time.Now()
	if got, err := parseSince("90m", now); err != nil || !got.Equal(now.Add(-90*time.Minute)) {
		t.Errorf("parseSince(90m) = %v, %v", got, err)
	}
}
