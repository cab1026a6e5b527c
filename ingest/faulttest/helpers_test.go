package faulttest

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/types/known/timestamppb"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/ingest/broker"
	"github.com/keytrail/keytrail/internal/testenv"
	"github.com/keytrail/keytrail/migrations"
	"github.com/keytrail/keytrail/publisher"
)

// keytrailBin is the keytrail binary, built once by TestMain.
var keytrailBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "keytrail-faulttest-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "faulttest:", err)
		os.Exit(1)
	}
	if keytrailBin, err = testenv.BuildKeytrail(dir); err != nil {
		fmt.Fprintln(os.Stderr, "faulttest:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// load is a deterministic set of n usage events. Event i is the same every time it is built,
// so a retry or a redelivery carries the same content, and the exact totals the rollups must
// reach are known in advance.
type load struct {
	run  string
	n    int
	base time.Time
}

func newLoad(run string, n int) load {
	// In the past (not rejected as future), inside one day; 7 ms apart, so the events span
	// many minutes, five-minute buckets and at least one hour boundary of the rollups.
	base := time.Now().UTC().Add(-3 * time.Hour).Truncate(time.Hour).Add(-10 * time.Minute)
	return load{run: run, n: n, base: base}
}

var (
	loadProjects = []string{"acme", "globex", "initech"}
	loadModels   = []string{"gpt-4o", "claude-sonnet"}
)

func (l load) event(i int) *keytrailv1.UsageEvent {
	return &keytrailv1.UsageEvent{
		EventId:         fmt.Sprintf("%s-%07d", l.run, i),
		Time:            timestamppb.New(l.base.Add(time.Duration(i) * 7 * time.Millisecond)),
		Project:         loadProjects[i%len(loadProjects)],
		KeyId:           fmt.Sprintf("key_%03d", i%211),
		Service:         fmt.Sprintf("svc-%02d", i%17),
		GatewayInstance: "gw-1",
		Method:          "POST",
		Endpoint:        "/v1/chat/completions",
		Model:           loadModels[i%len(loadModels)],
		Provider:        "openai",
		StatusCode:      l.status(i),
		LatencyMs:       uint32(i % 900),
		InputTokens:     uint64(i % 1000),
		OutputTokens:    uint64(i % 300),
		CostMicros:      l.cost(i),
		ClientIp:        fmt.Sprintf("10.0.%d.%d", i%7, i%250),
		RequestId:       fmt.Sprintf("req-%d", i),
	}
}

func (l load) status(i int) uint32 {
	if i%25 == 0 {
		return 503
	}
	return 200
}

func (l load) cost(i int) int64 { return int64(i % 997) }

// want is what storage must hold once every event of the load is stored exactly once.
func (l load) want() totals {
	w := totals{Rows: int64(l.n), Distinct: int64(l.n)}
	for i := range l.n {
		e := l.event(i)
		if e.GetStatusCode() >= 400 {
			w.Errors++
		}
		w.InputTokens += int64(e.GetInputTokens())
		w.OutputTokens += int64(e.GetOutputTokens())
		w.Cost += e.GetCostMicros()
	}
	w.Rollups = map[string]int64{}
	for _, q := range rollupQueries {
		w.Rollups[q.name] = w.of(q.of)
	}
	return w
}

// totals is what storage holds: the raw table and every rollup fed by its materialized views.
type totals struct {
	Rows, Distinct, Errors, InputTokens, OutputTokens, Cost int64
	Rollups                                                 map[string]int64
}

// of is the raw total of a quantity.
func (t totals) of(q migrations.Quantity) int64 {
	return map[migrations.Quantity]int64{migrations.Requests: t.Rows, migrations.Errors: t.Errors,
		migrations.InputTokens: t.InputTokens, migrations.OutputTokens: t.OutputTokens, migrations.Cost: t.Cost}[q]
}

func (t totals) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "usage_events count()=%d uniqExact(event_id)=%d errors=%d input_tokens=%d output_tokens=%d sum(cost_micros)=%d",
		t.Rows, t.Distinct, t.Errors, t.InputTokens, t.OutputTokens, t.Cost)
	for _, q := range rollupQueries {
		fmt.Fprintf(&b, ", %s=%d", q.name, t.Rollups[q.name])
	}
	return b.String()
}

// rollupQueries read the total of every additive column (requests, errors, tokens, cost) of
// every rollup the usage materialized views feed. Every fault-test event has a client IP,
// so key_client_ip_totals counts them all too.
var rollupQueries = func() []struct {
	name, sql string
	of        migrations.Quantity
} {
	var out []struct {
		name, sql string
		of        migrations.Quantity
	}
	for _, r := range migrations.Rollups {
		for _, c := range r.Columns {
			if c.Of.Additive() {
				out = append(out, struct {
					name, sql string
					of        migrations.Quantity
				}{r.Table + "." + c.Name, "SELECT toInt64(" + r.Merge(c) + ") FROM " + r.Table, c.Of})
			}
		}
	}
	return out
}()

func readTotals(ctx context.Context, conn driver.Conn) (totals, error) {
	var t totals
	if err := conn.QueryRow(ctx, `SELECT toInt64(count()), toInt64(uniqExact(event_id)), toInt64(countIf(status_code >= 400)),
    toInt64(sum(input_tokens)), toInt64(sum(output_tokens)), toInt64(sum(cost_micros)) FROM usage_events`).
		Scan(&t.Rows, &t.Distinct, &t.Errors, &t.InputTokens, &t.OutputTokens, &t.Cost); err != nil {
		return t, fmt.Errorf("read usage_events totals: %w", err)
	}
	t.Rollups = map[string]int64{}
	for _, q := range rollupQueries {
		var v int64
		if err := conn.QueryRow(ctx, q.sql).Scan(&v); err != nil {
			return t, fmt.Errorf("%s: %w", q.sql, err)
		}
		t.Rollups[q.name] = v
	}
	return t, nil
}

// waitExactlyOnce waits until storage holds exactly the load, every rollup's totals and
// then every rollup cell agreeing with the raw rows, and returns the totals. It fails at once when there are more rows than events or two rows for
// one id: rows are never deleted, so a duplicate can never go away by waiting.
func waitExactlyOnce(t *testing.T, conn driver.Conn, l load, timeout time.Duration) totals {
	t.Helper()
	want := l.want()
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		got, err := readTotals(ctx, conn)
		cancel()
		switch {
		case err != nil:
		case got.Rows > want.Rows || got.Distinct != got.Rows:
			t.Fatalf("duplicates stored: %v; want %v", got, want)
		case fmt.Sprint(got) == fmt.Sprint(want):
			// Totals agree; every cell must too (first and last seen included).
			cellsStarted := time.Now()
			if m := testenv.RollupMismatches(t, conn, 5); len(m) > 0 {
				t.Fatalf("rollup totals equal the raw ones but cells differ:\n%s", strings.Join(m, "\n"))
			}
			t.Logf("every rollup cell equals the raw rows (compared in %s)", time.Since(cellsStarted).Round(time.Millisecond))
			return got
		}
		if time.Now().After(deadline) {
			if err != nil {
				t.Fatalf("storage never held exactly the %d events after %s: %v", l.n, timeout, err)
			}
			t.Fatalf("storage never held exactly the %d events after %s:\n got %v\nwant %v\nmissing ids (first 10): %v",
				l.n, timeout, got, want, missingIDs(conn, l, 10))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// missingIDs lists up to limit event ids of the load that storage does not hold.
func missingIDs(conn driver.Conn, l load, limit int) []string {
	rows, err := conn.Query(context.Background(), "SELECT event_id FROM usage_events")
	if err != nil {
		return []string{err.Error()}
	}
	defer rows.Close()
	have := make(map[string]bool, l.n)
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return []string{err.Error()}
		}
		have[id] = true
	}
	var missing []string
	for i := 0; i < l.n && len(missing) < limit; i++ {
		if id := l.event(i).EventId; !have[id] {
			missing = append(missing, id)
		}
	}
	return missing
}

// publishPaced publishes events [from, to) of the load at about perSecond events a second,
// so the load overlaps the fault instead of landing before it.
func publishPaced(ctx context.Context, p *publisher.Publisher, l load, from, to, perSecond int) error {
	return testenv.Paced(ctx, to-from, perSecond, func(i int) error {
		if err := p.PublishUsage(ctx, l.event(from+i)); err != nil {
			return fmt.Errorf("publish event %d: %w", from+i, err)
		}
		return nil
	})
}

// failures records the ids the publisher gave up on (Config.OnFailure).
type failures struct {
	mu  sync.Mutex
	ids []string
}

func (f *failures) record(id string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ids = append(f.ids, id+": "+err.Error())
}

func (f *failures) list() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.ids...)
}

// newPublisher makes a gateway-side publisher on its own NATS connection, which reconnects
// for ever. It is closed when the test ends.
func newPublisher(t *testing.T, url string, streams broker.StreamConfig, tune func(*publisher.Config)) (*publisher.Publisher, *failures) {
	t.Helper()
	_, js := testenv.Connect(t, url, nats.Name("faulttest-gateway"), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	f := &failures{}
	cfg := publisher.Config{JetStream: js, Subjects: streams.Subjects, OnFailure: f.record}
	if tune != nil {
		tune(&cfg)
	}
	p, err := publisher.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = p.Close(ctx) // before the connection closes: cleanups run last registered first
	})
	return p, f
}

// flushPublisher waits until every accepted event is acknowledged or given up on.
func flushPublisher(t *testing.T, p *publisher.Publisher, timeout time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := p.Flush(ctx); err != nil {
		t.Fatalf("publisher flush: %v (stats %+v)", err, p.Stats())
	}
}

// consumerInfo reads the ingester's durable consumer.
func consumerInfo(ctx context.Context, js jetstream.JetStream, streams broker.StreamConfig) (*jetstream.ConsumerInfo, error) {
	c, err := js.Consumer(ctx, streams.EventsStream, streams.Durable)
	if err != nil {
		return nil, err
	}
	return c.Info(ctx)
}

// waitDrained waits until the ingester has acknowledged every message of the events stream:
// nothing left to deliver, nothing delivered and unacknowledged, nothing kept by the stream
// (interest retention drops a message once it is acknowledged).
func waitDrained(t *testing.T, js jetstream.JetStream, streams broker.StreamConfig, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		last = func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			info, err := consumerInfo(ctx, js, streams)
			if err != nil {
				return err
			}
			if info.NumPending != 0 || info.NumAckPending != 0 {
				return fmt.Errorf("consumer: %d pending, %d awaiting ack", info.NumPending, info.NumAckPending)
			}
			s, err := js.Stream(ctx, streams.EventsStream)
			if err != nil {
				return err
			}
			if n := s.CachedInfo().State.Msgs; n != 0 {
				return fmt.Errorf("events stream still holds %d messages", n)
			}
			return nil
		}()
		if last == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("events not all acknowledged after %s: %v", timeout, last)
}

// newIngesterProcess prepares `keytrail serve -role ingest` as a child process, so it can be
// killed for real.
func newIngesterProcess(t *testing.T, natsURL, dsn string) *testenv.KeytrailProcess {
	t.Helper()
	return testenv.NewKeytrailProcess(t, keytrailBin, "ingester",
		"serve", "-role", "ingest", "-nats-url", natsURL, "-clickhouse-dsn", dsn,
		"-batch-size", "5000", "-flush-interval", "200ms", "-http-listen", "127.0.0.1:0")
}
