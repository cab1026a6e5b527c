package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/migrations"
	"github.com/keytrail/keytrail/storage"
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
	if _, err := migrations.Apply(ctx, conn); err != nil {
		t.Fatalf("apply migrations: %v", err)
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
