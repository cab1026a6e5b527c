//go:build cluster

package clustertest

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/ingest/chsink"
	"github.com/keytrail/keytrail/internal/testenv"
)

// BenchmarkInsertPaths compares the two ways to write usage rows to the cluster that
// acknowledge only once storage holds them, with the same 10,000-row batches built the same
// way on the client:
//
//   - per-shard (what chsink does): each shard's rows straight to a server of that shard, the
//     shards in parallel, into usage_events_ingest (its views fill the replicated raw table
//     and the rollups there);
//   - distributed-sync: the whole batch into a Distributed table over usage_events_ingest with
//     insert_distributed_sync=1; the server receiving it splits it and forwards each shard's
//     rows (its own shard's locally).
//
// go test -tags cluster -run XXX -bench InsertPaths -benchtime 30x ./internal/clustertest/
func BenchmarkInsertPaths(b *testing.B) {
	const batch = 10000
	for _, path := range []string{"per-shard", "distributed-sync"} {
		b.Run(path, func(b *testing.B) {
			db := newClusterDB(b, 0)
			ctx := context.Background()
			if path == "distributed-sync" {
				if err := db.Conn.Exec(ctx, fmt.Sprintf("CREATE TABLE %[1]s.usage_events_ingest_all ON CLUSTER %[2]s AS %[1]s.usage_events_ingest ENGINE = Distributed(%[2]s, %[1]s, usage_events_ingest, cityHash64(project, key_id))", db.Name, lab.name)); err != nil {
					b.Fatal(err)
				}
			}
			set := newEventSet(1)
			syncCtx := clickhouse.Context(ctx, clickhouse.WithSettings(clickhouse.Settings{"insert_distributed_sync": 1}))
			b.ResetTimer()
			cpu0 := serversCPU(b)
			start := time.Now()
			for i := range b.N {
				events := set.burst(batch, fmt.Sprintf("bench-%d-", i))
				switch path {
				case "per-shard":
					byShard := make([][]*keytrailv1.UsageEvent, len(db.Cluster.Shards))
					for _, e := range events {
						sh := db.Cluster.ShardOf(e.Project, e.KeyId)
						byShard[sh] = append(byShard[sh], e)
					}
					var wg sync.WaitGroup
					errs := make([]error, len(byShard))
					for sh, rows := range byShard {
						wg.Add(1)
						go func() {
							defer wg.Done()
							errs[sh] = insertRows(ctx, db.Cluster.Shards[sh].Replicas[0].Conn, "usage_events_ingest", rows)
						}()
					}
					wg.Wait()
					for _, err := range errs {
						if err != nil {
							b.Fatal(err)
						}
					}
				case "distributed-sync":
					if err := insertRows(syncCtx, db.Conn, "usage_events_ingest_all", events); err != nil {
						b.Fatal(err)
					}
				}
			}
			elapsed := time.Since(start)
			b.ReportMetric((serversCPU(b)-cpu0)/float64(b.N*batch)*1e6, "server-cpu-s/Mrows")
			b.ReportMetric(float64(b.N*batch)/elapsed.Seconds(), "rows/s")
			b.ReportMetric(float64(elapsed.Milliseconds())/float64(b.N), "ms/batch")
			if n := testenv.QueryUint64(b, db.Conn, "SELECT count() FROM usage_events"); n != uint64(b.N*batch) {
				b.Errorf("%s stored %d rows of %d", path, n, b.N*batch)
			}
		})
	}
}

func insertRows(ctx context.Context, conn driver.Conn, table string, rows []*keytrailv1.UsageEvent) error {
	batch, err := conn.PrepareBatch(ctx, "INSERT INTO "+table+" ("+chsink.UsageColumns+")")
	if err != nil {
		return err
	}
	now := time.Now().UTC().Truncate(time.Second)
	for i, e := range rows {
		t := e.GetTime().AsTime()
		if err := batch.Append(e.EventId, t.Truncate(time.Second), t.UnixMilli(), e.Project, e.KeyId, e.Service, e.GatewayInstance, e.Method,
			e.Endpoint, e.Model, e.Provider, uint16(e.StatusCode), e.LatencyMs, e.InputTokens, e.OutputTokens, e.CostMicros, e.ClientIp,
			e.RequestId, uint64(i), uint64(i+1), now); err != nil {
			return err
		}
	}
	return batch.Send()
}

// serversCPU is the CPU time (user + system, seconds) the cluster's ClickHouse servers have
// used so far, from /proc/<pid>/stat.
func serversCPU(t testing.TB) float64 {
	t.Helper()
	var total float64
	for s := 1; s <= shards; s++ {
		for r := 1; r <= replicas; r++ {
			out, err := lab.run("pid", chName(s, r))
			if err != nil {
				t.Fatalf("pid of %s: %v %s", chName(s, r), err, out)
			}
			stat, err := os.ReadFile("/proc/" + strings.TrimSpace(out) + "/stat")
			if err != nil {
				t.Fatal(err)
			}
			// Fields after the command name (which ends with ')'): utime is the 12th, stime the 13th.
			f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+2:]))
			utime, _ := strconv.ParseFloat(f[11], 64)
			stime, _ := strconv.ParseFloat(f[12], 64)
			total += (utime + stime) / 100 // clock ticks (USER_HZ 100)
		}
	}
	return total
}
