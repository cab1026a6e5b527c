package storage_test

import (
	"context"
	"testing"

	"github.com/keytrail/keytrail/internal/testenv"
)

// Regression: clickhouse-go before v2.51.0 could close a connection's socket after a batch
// Send had returned it to the pool, when the batch's context ended right after Send (every
// `defer cancel()` around an insert). The next query on that pooled connection failed with
// "use of closed network connection"; under CPU load about one test database in a hundred
// hit it. The ingester retried, but API calls failed. Each round here is the pattern: insert
// with a context cancelled as soon as Send returns, then query on the pool at once.
func TestConnectionReusedRightAfterCancelledBatchStillWorks(t *testing.T) {
	db := testenv.ClickHouse(t)
	if err := db.Conn.Exec(context.Background(), "CREATE TABLE rounds (n UInt32) ENGINE = Memory"); err != nil {
		t.Fatal(err)
	}
	const rounds = 200
	for i := range rounds {
		ctx, cancel := context.WithCancel(context.Background())
		batch, err := db.Conn.PrepareBatch(ctx, "INSERT INTO rounds (n)")
		if err != nil {
			t.Fatalf("round %d: prepare: %v", i, err)
		}
		if err := batch.Append(uint32(i)); err != nil {
			t.Fatalf("round %d: append: %v", i, err)
		}
		err = batch.Send()
		cancel()
		if err != nil {
			t.Fatalf("round %d: send: %v", i, err)
		}
		var stored uint64
		if err := db.Conn.QueryRow(context.Background(), "SELECT count() FROM rounds").Scan(&stored); err != nil {
			t.Fatalf("round %d: query after the cancelled batch: %v", i, err)
		}
		if stored != uint64(i+1) {
			t.Fatalf("round %d: %d rows stored, want %d", i, stored, i+1)
		}
	}
}
