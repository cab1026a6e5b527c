package chsink

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// An insert outlives the client that sent it: once ClickHouse has the whole batch it commits
// it even if the ingester was killed a moment later. The ingester that takes over asks
// storage which redelivered events are already stored; asked before the dead one's insert
// committed, storage says "not stored" and the batch is written twice. So every insert is
// tagged with a query id in this database's namespace, and a storage check first waits for
// the tagged inserts ClickHouse is still running (the insertFence). Inserts begun after the
// check started are not waited for: they are a live ingester's own business (several
// ingesters share a database on the shared consumer).

const (
	insertQueryIDPrefix = "keytrail-insert/"
	fencePoll           = 20 * time.Millisecond
	// fenceMaxWait bounds one wait; the ingester retries a failed check with backoff and
	// keeps its messages' leases meanwhile, so a stuck insert shows as repeated warnings.
	fenceMaxWait = 30 * time.Second
)

// InsertContext tags ctx with a fresh query id in this database's insert namespace, so that
// the storage check's fence waits for an insert sent with it like for the sink's own (the
// rollup reconciliation tags its repairs this way). Like every Sink method it must not run
// concurrently with the sink's other calls.
func (s *Sink) InsertContext(ctx context.Context) (context.Context, error) {
	return s.insertContext(ctx)
}

// insertContext tags ctx with a fresh query id in this database's insert namespace.
func (s *Sink) insertContext(ctx context.Context) (context.Context, error) {
	prefix, err := s.insertNamespace(ctx)
	if err != nil {
		return nil, err
	}
	var nonce [12]byte
	_, _ = rand.Read(nonce[:])
	return clickhouse.Context(ctx, clickhouse.WithQueryID(prefix+hex.EncodeToString(nonce[:]))), nil
}

// insertNamespace is the query id prefix of inserts into this connection's database.
func (s *Sink) insertNamespace(ctx context.Context) (string, error) {
	if s.namespace != "" {
		return s.namespace, nil
	}
	var database string
	if err := s.conn.QueryRow(ctx, "SELECT currentDatabase()").Scan(&database); err != nil {
		return "", fmt.Errorf("read the current database: %w", err)
	}
	s.namespace = insertQueryIDPrefix + database + "/"
	return s.namespace, nil
}

// awaitRunningInserts returns once no insert into this database that ClickHouse was running
// when it was called is running any more (committed or failed), or with an error naming
// the inserts still running after fenceMaxWait. On a cluster it asks every server that
// answers: the inserts of a killed ingester ran on the servers it wrote to, and a server
// that does not answer runs nothing that could commit.
func (s *Sink) awaitRunningInserts(ctx context.Context) error {
	prefix, err := s.insertNamespace(ctx)
	if err != nil {
		return err
	}
	if s.cluster == nil {
		return awaitRunningInsertsOn(ctx, s.conn, prefix)
	}
	for _, r := range s.cluster.c.Replicas() {
		if r.Conn.Ping(ctx) != nil {
			continue
		}
		if err := awaitRunningInsertsOn(ctx, r.Conn, prefix); err != nil {
			return fmt.Errorf("%s: %w", r.Name(), err)
		}
	}
	return nil
}

func awaitRunningInsertsOn(ctx context.Context, conn driver.Conn, prefix string) error {
	running, err := runningInserts(ctx, conn, "substring(query_id, 1, ?) = ?", len(prefix), prefix)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(fenceMaxWait)
	for len(running) > 0 {
		if time.Now().After(deadline) {
			return fmt.Errorf("inserts begun before this storage check are still running after %s (query ids %s); a redelivered event cannot be checked until they end", fenceMaxWait, strings.Join(running, ", "))
		}
		t := time.NewTimer(fencePoll)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		if running, err = runningInserts(ctx, conn, "query_id IN (SELECT arrayJoin(?))", running); err != nil {
			return err
		}
	}
	return nil
}

func runningInserts(ctx context.Context, conn driver.Conn, where string, args ...any) ([]string, error) {
	rows, err := conn.Query(ctx, "SELECT query_id FROM system.processes WHERE "+where, args...)
	if err != nil {
		return nil, fmt.Errorf("list running inserts: %w", err)
	}
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("list running inserts: %w", err)
		}
		ids = append(ids, id)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list running inserts: %w", err)
	}
	return ids, nil
}
