package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"math"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keytrail/keytrail/ingest/broker"
	"github.com/keytrail/keytrail/internal/storage"
	"github.com/keytrail/keytrail/migrations"
)

// ClickHouseAddr is where the test ClickHouse listens (native protocol).
func ClickHouseAddr() string {
	if addr := os.Getenv("KEYTRAIL_TEST_CLICKHOUSE_ADDR"); addr != "" {
		return addr
	}
	return "127.0.0.1:19000"
}

// Database is a per-test ClickHouse database with keytrail's schema applied.
type Database struct {
	Name string
	DSN  string
	Conn driver.Conn
}

var nonIdent = regexp.MustCompile(`[^a-z0-9_]+`)

// ClickHouse creates a fresh database for this test and applies the migrations.
func ClickHouse(t testing.TB) *Database {
	t.Helper()
	return ClickHouseAt(t, math.MaxUint32)
}

// ClickHouseAt is ClickHouse with the migrations up to and including version last only: an
// older release's schema, to test what a later migration does to existing data.
func ClickHouseAt(t testing.TB, last uint32) *Database {
	t.Helper()
	return clickHouse(t, &last)
}

// EmptyClickHouse is a fresh database with no schema: what a first start finds.
func EmptyClickHouse(t testing.TB) *Database {
	t.Helper()
	return clickHouse(t, nil)
}

// clickHouse creates the database and applies the migrations up to *last (none when nil).
func clickHouse(t testing.TB, last *uint32) *Database {
	t.Helper()
	suffix := make([]byte, 4)
	_, _ = rand.Read(suffix)
	name := nonIdent.ReplaceAllString(strings.ToLower(t.Name()), "_")
	if len(name) > 40 {
		name = name[:40]
	}
	name = "kt_test_" + name + "_" + hex.EncodeToString(suffix)
	dsn := fmt.Sprintf("clickhouse://%s/%s?dial_timeout=5s", ClickHouseAddr(), name)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := storage.Open(ctx, storage.Config{DSN: dsn})
	if err != nil {
		t.Fatalf("clickhouse at %s is not reachable (run `make test`, which starts it): %v", ClickHouseAddr(), err)
	}
	if last != nil {
		if _, err := migrations.ApplyUpTo(ctx, conn, *last); err != nil {
			t.Fatalf("apply migrations: %v", err)
		}
	}
	t.Cleanup(func() {
		if !t.Failed() {
			_ = conn.Exec(context.Background(), "DROP DATABASE IF EXISTS "+name)
		} else {
			t.Logf("kept ClickHouse database %s for inspection", name)
		}
		conn.Close()
	})
	return &Database{Name: name, DSN: dsn, Conn: conn}
}

// JetStream is an in-process NATS server with JetStream and keytrail's streams.
type JetStream struct {
	Server   *server.Server
	URL      string
	StoreDir string
	Conn     *nats.Conn
	JS       jetstream.JetStream
	Streams  broker.StreamConfig
}

// NewJetStream starts a server on a free port with its store in t.TempDir() and creates the
// streams. Tests that need short redelivery pass a modified StreamConfig.
func NewJetStream(t testing.TB, streams broker.StreamConfig) *JetStream {
	t.Helper()
	dir := t.TempDir()
	srv, err := broker.RunEmbedded(broker.EmbeddedConfig{Port: -1, StoreDir: dir})
	if err != nil {
		t.Fatalf("start embedded nats: %v", err)
	}
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatalf("connect nats: %v", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := broker.EnsureStreams(ctx, js, streams); err != nil {
		t.Fatalf("ensure streams: %v", err)
	}
	t.Cleanup(func() {
		nc.Close()
		srv.Shutdown()
		srv.WaitForShutdown()
	})
	return &JetStream{Server: srv, URL: srv.ClientURL(), StoreDir: dir, Conn: nc, JS: js, Streams: streams}
}

// Connect connects a client to the NATS server at url (a comma-separated list for a cluster)
// with JetStream; the connection is closed when the test ends.
func Connect(t testing.TB, url string, opts ...nats.Option) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatalf("connect nats %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	return nc, js
}

// AwaitAcknowledged waits until the events stream holds no message: the ingester has
// acknowledged everything (the stream's interest retention drops a message once acked).
func (j *JetStream) AwaitAcknowledged(t testing.TB, timeout time.Duration) {
	t.Helper()
	AwaitStreamEmpty(t, j.JS, j.Streams.EventsStream, timeout)
}

// AwaitStreamEmpty waits until stream holds no message.
func AwaitStreamEmpty(t testing.TB, js jetstream.JetStream, stream string, timeout time.Duration) {
	t.Helper()
	Eventually(t, timeout, func() error {
		s, err := js.Stream(context.Background(), stream)
		if err != nil {
			return err
		}
		if n := s.CachedInfo().State.Msgs; n != 0 {
			return fmt.Errorf("stream %s still holds %d messages", stream, n)
		}
		return nil
	})
}

// Eventually polls cond until it returns nil or the timeout passes, then fails the test with
// the last error. Tests wait on observable conditions this way, never on fixed sleeps.
func Eventually(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	wait := 10 * time.Millisecond
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met after %s: %v", timeout, err)
		}
		time.Sleep(wait)
		if wait < 200*time.Millisecond {
			wait *= 2
		}
	}
}

// QueryUint64 runs a query returning a single UInt64 (count() and friends).
func QueryUint64(t testing.TB, conn driver.Conn, query string, args ...any) uint64 {
	t.Helper()
	var v uint64
	if err := conn.QueryRow(context.Background(), query, args...).Scan(&v); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return v
}

// CountOccurrences counts the cells of every String and Array(String) column of every table
// in the database that contain needle. Tests use it to prove a value is nowhere in storage.
func CountOccurrences(t testing.TB, db *Database, needle string) uint64 {
	t.Helper()
	return CountEachOccurrence(t, db, map[string]string{"needle": needle})["needle"]
}

// CountEachOccurrence is CountOccurrences for several needles at once, by name (one query per
// column rather than per column and needle).
func CountEachOccurrence(t testing.TB, db *Database, needles map[string]string) map[string]uint64 {
	t.Helper()
	ctx := context.Background()
	rows, err := db.Conn.Query(ctx, "SELECT table, name, type FROM system.columns WHERE database = ? AND type IN ('String', 'Array(String)', 'Nullable(String)')", db.Name)
	if err != nil {
		t.Fatal(err)
	}
	type column struct{ table, name, typ string }
	var cols []column
	for rows.Next() {
		var c column
		if err := rows.Scan(&c.table, &c.name, &c.typ); err != nil {
			t.Fatal(err)
		}
		cols = append(cols, c)
	}
	rows.Close()
	names := make([]string, 0, len(needles))
	args := make([]any, 0, len(needles))
	for name, needle := range needles {
		names, args = append(names, name), append(args, needle)
	}
	out := map[string]uint64{}
	for _, c := range cols {
		var exprs []string
		for range names {
			cond := "position(`" + c.name + "`, ?) > 0"
			if c.typ == "Array(String)" {
				cond = "arrayExists(x -> position(x, ?) > 0, `" + c.name + "`)"
			}
			exprs = append(exprs, "countIf("+cond+")")
		}
		counts := make([]uint64, len(names))
		dest := make([]any, len(names))
		for i := range counts {
			dest[i] = &counts[i]
		}
		// Table and column names come from system.columns of our own test database.
		if err := db.Conn.QueryRow(ctx, "SELECT "+strings.Join(exprs, ", ")+" FROM `"+db.Name+"`.`"+c.table+"`", args...).Scan(dest...); err != nil {
			t.Fatalf("%s.%s: %v", c.table, c.name, err)
		}
		for i, name := range names {
			out[name] += counts[i]
		}
	}
	return out
}

// WaitForEvents waits until the database holds exactly usage usage events and lifecycle
// lifecycle events, and every usage rollup agrees with the raw rows. ClickHouse makes an
// insert's rows visible in the raw table before its materialized views have written theirs,
// so waiting on the raw count alone races with the rollup-backed answers.
func WaitForEvents(t testing.TB, db *Database, usage, lifecycle uint64, timeout time.Duration) {
	t.Helper()
	Eventually(t, timeout, func() error {
		counts := map[string]string{
			"usage_events":     "SELECT count() FROM usage_events",
			"lifecycle_events": "SELECT count() FROM lifecycle_events",
		}
		for _, r := range migrations.UsageRollups {
			counts[r.Table] = "SELECT " + r.Requests + " FROM " + r.Table
		}
		for table, q := range counts {
			want := usage
			if table == "lifecycle_events" {
				want = lifecycle
			}
			if got := QueryUint64(t, db.Conn, q); got != want {
				return fmt.Errorf("%s has %d, want %d", table, got, want)
			}
		}
		return nil
	})
}
