package publisher

import (
	"context"
	"errors"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keytrail/keytrail/event"
	"github.com/keytrail/keytrail/event/decode"
	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/ingest/broker"
	"github.com/keytrail/keytrail/internal/testenv"
)

// testEnv is an in-process JetStream server on a free port, its store in t.TempDir(), with
// keytrail's streams and a client connection that keeps reconnecting.
type testEnv struct {
	dir     string
	port    int
	srv     *server.Server
	nc      *nats.Conn
	js      jetstream.JetStream
	streams broker.StreamConfig
}

func newTestEnv(t testing.TB) *testEnv {
	t.Helper()
	env := &testEnv{dir: t.TempDir(), port: -1, streams: broker.DefaultStreamConfig()}
	env.start(t)
	env.port = env.srv.Addr().(*net.TCPAddr).Port
	nc, err := nats.Connect(env.srv.ClientURL(),
		nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond), nats.ReconnectJitter(0, 0))
	if err != nil {
		t.Fatalf("connect nats: %v", err)
	}
	t.Cleanup(nc.Close)
	env.nc = nc
	if env.js, err = jetstream.New(nc); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := broker.EnsureStreams(ctx, env.js, env.streams); err != nil {
		t.Fatalf("ensure streams: %v", err)
	}
	return env
}

// start runs a server on env's port and store dir: a restart recovers the stored stream.
func (env *testEnv) start(t testing.TB) {
	t.Helper()
	srv, err := broker.RunEmbedded(broker.EmbeddedConfig{Port: env.port, StoreDir: env.dir})
	if err != nil {
		t.Fatalf("start embedded nats: %v", err)
	}
	t.Cleanup(func() {
		srv.Shutdown()
		srv.WaitForShutdown()
	})
	env.srv = srv
}

func (env *testEnv) stop() {
	env.srv.Shutdown()
	env.srv.WaitForShutdown()
}

func (env *testEnv) publisher(t testing.TB, mutate func(*Config)) *Publisher {
	t.Helper()
	cfg := Config{JetStream: env.js, Subjects: env.streams.Subjects}
	if mutate != nil {
		mutate(&cfg)
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = p.Close(ctx)
	})
	return p
}

func (env *testEnv) stream(t testing.TB) jetstream.Stream {
	t.Helper()
	s, err := env.js.Stream(context.Background(), env.streams.EventsStream)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (env *testEnv) storedMsgs(t testing.TB) uint64 {
	t.Helper()
	info, err := env.stream(t).Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

// storedIDs counts the stored messages per Nats-Msg-Id.
func (env *testEnv) storedIDs(t testing.TB) map[string]int {
	t.Helper()
	s := env.stream(t)
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]int{}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(context.Background(), seq)
		if err != nil {
			t.Fatalf("get msg %d: %v", seq, err)
		}
		ids[m.Header.Get(jetstream.MsgIDHeader)]++
	}
	return ids
}

func flush(t testing.TB, p *Publisher) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := p.Flush(ctx); err != nil {
		t.Fatalf("flush: %v", err)
	}
}

var testTime = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)

func usageEvent(id string) *keytrailv1.UsageEvent {
	return &keytrailv1.UsageEvent{
		EventId: id, Time: timestamppb.New(testTime), Project: "acme", KeyId: "key_acme_0001",
		Service: "billing-api", GatewayInstance: "gw-1", Method: "POST", Endpoint: "/v1/chat/completions",
		Model: "gpt-4o", Provider: "openai", StatusCode: 200, LatencyMs: 420, InputTokens: 900,
		OutputTokens: 250, CostMicros: 4750, ClientIp: "10.1.2.3", RequestId: "req-" + id,
	}
}

func lifecycleEvent(id string) *keytrailv1.LifecycleEvent {
	return &keytrailv1.LifecycleEvent{
		EventId: id, Time: timestamppb.New(testTime), Project: "acme", KeyId: "key_acme_0001",
		Action: keytrailv1.Action_ACTION_ROTATED, NewKeyId: "key_acme_0002", Actor: "dana",
		ActorType: keytrailv1.ActorType_ACTOR_TYPE_USER, Attributes: map[string]string{"ticket": "SEC-1"},
	}
}

func wantStats(t testing.TB, p *Publisher, want Stats) {
	t.Helper()
	if got := p.Stats(); got != want {
		t.Errorf("stats %+v, want %+v", got, want)
	}
}

func TestPublishStoresEachEventOnce(t *testing.T) {
	env := newTestEnv(t)
	p := env.publisher(t, nil)
	ctx := context.Background()
	const usage, lifecycle = 900, 100
	for i := range usage {
		if err := p.PublishUsage(ctx, usageEvent(fmt.Sprintf("u-%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	for i := range lifecycle {
		if err := p.PublishLifecycle(ctx, lifecycleEvent(fmt.Sprintf("l-%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	flush(t, p)
	wantStats(t, p, Stats{Accepted: 1000, Acked: 1000})
	if n := env.storedMsgs(t); n != 1000 {
		t.Errorf("stream holds %d messages, want 1000", n)
	}
	ids := env.storedIDs(t)
	if len(ids) != 1000 || ids["u-0"] != 1 || ids["l-99"] != 1 {
		t.Errorf("%d distinct message ids, u-0 %d, l-99 %d", len(ids), ids["u-0"], ids["l-99"])
	}

	// The stored message is exactly what the ingester expects: subject, headers, payload.
	raw, err := env.stream(t).GetLastMsgForSubject(ctx, "keytrail.lifecycle.acme")
	if err != nil {
		t.Fatal(err)
	}
	if raw.Header.Get(jetstream.MsgIDHeader) != "l-99" || raw.Header.Get(event.ContentTypeHeader) != event.ContentTypeProto {
		t.Errorf("headers %v", raw.Header)
	}
	ev, err := decode.Event(env.streams.Subjects, raw.Subject, raw.Header.Get(event.ContentTypeHeader), raw.Data, testTime)
	if err != nil {
		t.Fatalf("decode stored message: %v", err)
	}
	if !proto.Equal(ev.Lifecycle, lifecycleEvent("l-99")) {
		t.Errorf("stored %v", ev.Lifecycle)
	}
}

func TestSameEventIDTwiceIsStoredOnce(t *testing.T) {
	env := newTestEnv(t)
	p := env.publisher(t, nil)
	ctx := context.Background()
	for range 2 {
		if err := p.PublishUsage(ctx, usageEvent("same-id")); err != nil {
			t.Fatal(err)
		}
	}
	flush(t, p)
	wantStats(t, p, Stats{Accepted: 2, Acked: 2, Duplicates: 1})
	if n := env.storedMsgs(t); n != 1 {
		t.Errorf("stream holds %d messages, want 1", n)
	}
}

func TestJSONEncoding(t *testing.T) {
	env := newTestEnv(t)
	p := env.publisher(t, func(c *Config) { c.Encoding = event.EncodingJSON })
	ctx := context.Background()
	if err := p.PublishUsage(ctx, usageEvent("json-u")); err != nil {
		t.Fatal(err)
	}
	if err := p.PublishLifecycle(ctx, lifecycleEvent("json-l")); err != nil {
		t.Fatal(err)
	}
	flush(t, p)
	wantStats(t, p, Stats{Accepted: 2, Acked: 2})

	raw, err := env.stream(t).GetMsg(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if raw.Subject != "keytrail.usage.acme" || raw.Header.Get(event.ContentTypeHeader) != "application/json" ||
		raw.Header.Get(jetstream.MsgIDHeader) != "json-u" {
		t.Errorf("subject %s headers %v", raw.Subject, raw.Header)
	}
	var got keytrailv1.UsageEvent
	if err := protojson.Unmarshal(raw.Data, &got); err != nil {
		t.Fatalf("payload is not protojson: %v\n%s", err, raw.Data)
	}
	if !proto.Equal(&got, usageEvent("json-u")) {
		t.Errorf("decoded %v", &got)
	}
	raw, err = env.stream(t).GetMsg(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	var lc keytrailv1.LifecycleEvent
	if err := protojson.Unmarshal(raw.Data, &lc); err != nil || !proto.Equal(&lc, lifecycleEvent("json-l")) {
		t.Errorf("lifecycle %v (%v)", &lc, err)
	}
}

// Fault: the server is shut down and started again on the same port and store.
// Load: 10 events before the outage, 50 published during it.
// Expect: every event of the outage retried while the server is away, then stored exactly
// once after the restart: 60 messages, 60 distinct ids, Acked 60 (50 of them duplicates),
// Failed 0.
func TestRetriesAcrossServerRestart(t *testing.T) {
	env := newTestEnv(t)
	p := env.publisher(t, func(c *Config) {
		c.AckTimeout = 200 * time.Millisecond
		c.RetryBackoff = 20 * time.Millisecond
		c.MaxRetries = 1000 // outlive the outage; the give-up path has its own test
	})
	ctx := context.Background()
	for i := range 10 {
		if err := p.PublishUsage(ctx, usageEvent(fmt.Sprintf("before-%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	flush(t, p)

	env.stop()
	// Publish only once the client knows the server is gone, so the attempts queue in its
	// reconnect buffer and time out: the path where an ack, not the message, is lost.
	testenv.Eventually(t, 5*time.Second, func() error {
		if st := env.nc.Status(); st != nats.RECONNECTING {
			return fmt.Errorf("connection %s", st)
		}
		return nil
	})
	for i := range 50 {
		if err := p.PublishUsage(ctx, usageEvent(fmt.Sprintf("during-%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		if s := p.Stats(); s.Retried < 50 || s.InFlight != 50 {
			return fmt.Errorf("retried %d, in flight %d while the server is down", s.Retried, s.InFlight)
		}
		return nil
	})

	env.start(t)
	flush(t, p)
	s := p.Stats()
	// Each outage event's first attempt waited in the reconnect buffer and reached the new
	// server ahead of its retry, so the acknowledged attempt of every one of them is a
	// duplicate. How often each was retried depends on timing, hence only a lower bound.
	if s.Accepted != 60 || s.Acked != 60 || s.Duplicates != 50 || s.Failed != 0 || s.InFlight != 0 || s.Retried < 50 {
		t.Errorf("stats %+v", s)
	}
	if n := env.storedMsgs(t); n != 60 {
		t.Errorf("stream holds %d messages, want 60", n)
	}
	ids := env.storedIDs(t)
	for i := range 50 {
		if n := ids[fmt.Sprintf("during-%d", i)]; n != 1 {
			t.Errorf("during-%d stored %d times", i, n)
		}
	}
}

// Fault: no stream listens on the subjects, so every attempt gets "no responders".
// Load: MaxInFlight (4) events, then one more.
// Expect: the fifth publish blocks until its ctx ends; 4 in flight, never more; Close with
// a short ctx gives up on exactly those 4 and reports each to OnFailure once.
func TestMaxInFlightBlocksAndCloseGivesUp(t *testing.T) {
	env := newTestEnv(t)
	var mu sync.Mutex
	failures := map[string]int{}
	p := env.publisher(t, func(c *Config) {
		c.Subjects = event.Subjects{Prefix: "nostream"}
		c.MaxInFlight = 4
		c.RetryBackoff = 10 * time.Millisecond
		c.MaxRetries = 1_000_000
		c.OnFailure = func(id string, err error) {
			mu.Lock()
			failures[id]++
			mu.Unlock()
		}
	})
	ctx := context.Background()
	for i := range 4 {
		if err := p.PublishUsage(ctx, usageEvent(fmt.Sprintf("e-%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	blocked, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if err := p.PublishUsage(blocked, usageEvent("e-4")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("fifth publish: %v, want deadline exceeded", err)
	}
	testenv.Eventually(t, 5*time.Second, func() error {
		if s := p.Stats(); s.Retried < 8 {
			return fmt.Errorf("retried %d", s.Retried)
		}
		return nil
	})
	s := p.Stats()
	if s.Accepted != 4 || s.InFlight != 4 || s.Acked != 0 || s.Failed != 0 {
		t.Errorf("stats %+v", s)
	}
	if n := p.js.PublishAsyncPending(); n > 4 {
		t.Errorf("%d async publishes pending in the library, want at most 4", n)
	}

	closeCtx, cancelClose := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancelClose()
	if err := p.Close(closeCtx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("close: %v, want deadline exceeded", err)
	}
	s = p.Stats()
	if s.Accepted != 4 || s.Failed != 4 || s.InFlight != 0 || s.Acked != 0 {
		t.Errorf("stats after close %+v", s)
	}
	mu.Lock()
	if fmt.Sprint(failures) != "map[e-0:1 e-1:1 e-2:1 e-3:1]" {
		t.Errorf("OnFailure calls %v", failures)
	}
	mu.Unlock()
	if err := p.PublishUsage(ctx, usageEvent("late")); !errors.Is(err, ErrClosed) {
		t.Errorf("publish after close: %v", err)
	}
}

// Load: 4 goroutines publish 2000 events each through MaxInFlight 16.
// Expect: neither our count nor the library's pending acks ever exceed 16; all 8000 stored.
func TestMaxInFlightHoldsUnderLoad(t *testing.T) {
	env := newTestEnv(t)
	const limit = 16
	p := env.publisher(t, func(c *Config) { c.MaxInFlight = limit })
	var maxSeen, maxLibrary atomic.Int64
	done := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-done:
				return
			default:
			}
			if n := int64(p.Stats().InFlight); n > maxSeen.Load() {
				maxSeen.Store(n)
			}
			if n := int64(p.js.PublishAsyncPending()); n > maxLibrary.Load() {
				maxLibrary.Store(n)
			}
		}
	}()
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 2000 {
				if err := p.PublishUsage(context.Background(), usageEvent(fmt.Sprintf("g%d-%d", g, i))); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	flush(t, p)
	close(done)
	<-sampled
	if maxSeen.Load() > limit || maxLibrary.Load() > limit || maxSeen.Load() == 0 {
		t.Errorf("max in flight seen %d (library %d), limit %d", maxSeen.Load(), maxLibrary.Load(), limit)
	}
	wantStats(t, p, Stats{Accepted: 8000, Acked: 8000})
	if n := env.storedMsgs(t); n != 8000 {
		t.Errorf("stream holds %d messages, want 8000", n)
	}
}

func TestCloseFlushes(t *testing.T) {
	env := newTestEnv(t)
	p := env.publisher(t, nil)
	ctx := context.Background()
	for i := range 500 {
		if err := p.PublishUsage(ctx, usageEvent(strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	closeCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := p.Close(closeCtx); err != nil {
		t.Fatalf("close: %v", err)
	}
	wantStats(t, p, Stats{Accepted: 500, Acked: 500})
	if n := env.storedMsgs(t); n != 500 {
		t.Errorf("stream holds %d messages, want 500", n)
	}
	if err := p.PublishUsage(ctx, usageEvent("late")); !errors.Is(err, ErrClosed) {
		t.Errorf("publish after close: %v", err)
	}
	if err := p.Close(closeCtx); err != nil {
		t.Errorf("second close: %v", err)
	}
}

func TestFlushReportsGiveUpOnce(t *testing.T) {
	env := newTestEnv(t)
	p := env.publisher(t, func(c *Config) {
		c.Subjects = event.Subjects{Prefix: "nostream"}
		c.MaxRetries = 2
		c.RetryBackoff = time.Millisecond
	})
	if err := p.PublishUsage(context.Background(), usageEvent("lost")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := p.Flush(ctx)
	if !errors.Is(err, jetstream.ErrNoStreamResponse) {
		t.Fatalf("flush: %v, want no stream response", err)
	}
	if want := "publisher: 1 events given up on since the last flush, last: event lost: nats: no response from stream"; err.Error() != want {
		t.Errorf("flush error %q, want %q", err, want)
	}
	wantStats(t, p, Stats{Accepted: 1, Retried: 2, Failed: 1})
	if err := p.Flush(ctx); err != nil {
		t.Errorf("second flush: %v, want nil (already reported)", err)
	}
}

func TestPublishRejectsUnusableEvents(t *testing.T) {
	env := newTestEnv(t)
	p := env.publisher(t, nil)
	ctx := context.Background()
	noID := usageEvent("")
	noProject := usageEvent("x")
	noProject.Project = ""
	neither := lifecycleEvent("")
	neither.Project = ""
	for name, err := range map[string]error{
		"nil usage":     p.PublishUsage(ctx, nil),
		"nil lifecycle": p.PublishLifecycle(ctx, nil),
		"no id":         p.PublishUsage(ctx, noID),
		"no project":    p.PublishUsage(ctx, noProject),
		"neither":       p.PublishLifecycle(ctx, neither),
	} {
		if !errors.Is(err, ErrInvalidEvent) {
			t.Errorf("%s: %v, want ErrInvalidEvent", name, err)
		}
	}
	if err := p.PublishLifecycle(ctx, neither); err.Error() != "publisher: invalid event: event_id is required\npublisher: invalid event: project is required" {
		t.Errorf("both problems reported: %q", err)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if err := p.PublishUsage(cancelled, usageEvent("c")); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled ctx: %v", err)
	}
	wantStats(t, p, Stats{})
}

func TestConfigValidate(t *testing.T) {
	err := Config{Encoding: 7, MaxInFlight: -1, MaxRetries: -1, RetryBackoff: -1, AckTimeout: -1}.Validate()
	want := `publisher: jetstream is required
publisher: subject prefix is required
publisher: unknown encoding 7
publisher: max in flight -1 is negative
publisher: max retries -1 is negative
publisher: retry backoff -1ns is negative
publisher: ack timeout -1ns is negative`
	if err == nil || err.Error() != want {
		t.Errorf("Validate:\n%v\nwant:\n%s", err, want)
	}
	if _, err := New(Config{}); err == nil {
		t.Error("New accepted an empty config")
	}
}

func TestBackoffAndRetrySpan(t *testing.T) {
	c := Config{}.withDefaults()
	var got []time.Duration
	for n := 1; n <= 9; n++ {
		got = append(got, c.backoff(n))
	}
	if fmt.Sprint(got) != "[50ms 100ms 200ms 400ms 800ms 1.6s 2s 2s 2s]" {
		t.Errorf("backoffs %v", got)
	}
	// 8 attempts timing out after 5s each plus 7.15s of backoff: inside the 2m window.
	if span := (Config{}).RetrySpan(); span != 47150*time.Millisecond {
		t.Errorf("default retry span %s", span)
	}
	if span := (Config{MaxRetries: 2, AckTimeout: time.Second, RetryBackoff: 3 * time.Second}).RetrySpan(); span != 8*time.Second {
		t.Errorf("retry span with a long first backoff %s, want 8s (the backoff never shrinks)", span)
	}
}

func TestNewEventID(t *testing.T) {
	format := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	seen := map[string]bool{}
	for range 1000 {
		id := NewEventID()
		if !format.MatchString(id) {
			t.Fatalf("id %q is not a version 4 UUID", id)
		}
		if seen[id] {
			t.Fatalf("id %q repeated", id)
		}
		seen[id] = true
	}
}

func BenchmarkPublishUsage(b *testing.B) {
	env := newTestEnv(b)
	p := env.publisher(b, nil)
	ctx := context.Background()
	e := usageEvent("")
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		e.EventId = "bench-" + strconv.Itoa(i)
		if err := p.PublishUsage(ctx, e); err != nil {
			b.Fatal(err)
		}
	}
	flush(b, p)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
	if s := p.Stats(); s.Acked != uint64(b.N) || s.Failed != 0 {
		b.Fatalf("stats %+v", s)
	}
}
