//go:build cluster

package clustertest

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keytrail/keytrail/event"
	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/ingest"
	"github.com/keytrail/keytrail/ingest/broker"
	"github.com/keytrail/keytrail/ingest/chsink"
	"github.com/keytrail/keytrail/internal/testenv"
	"github.com/keytrail/keytrail/migrations"
	"github.com/keytrail/keytrail/query/chreader"
)

// The cluster schema comes from the same migration files: every server holds the replicated
// local tables, the Distributed tables under the single-server names and the views, and the
// ledger records each version once, on every server; a second run applies nothing.
func TestClusterSchemaFromTheSameMigrations(t *testing.T) {
	db := newClusterDB(t, 0)
	all, err := migrations.All()
	if err != nil {
		t.Fatal(err)
	}
	single := map[string]bool{}
	for _, m := range all {
		for _, stmt := range m.Statements {
			if f := strings.Fields(stmt); len(f) > 5 && f[0] == "CREATE" && f[1] == "TABLE" {
				single[f[5]] = true
			}
		}
	}
	for _, r := range db.Cluster.Replicas() {
		engines := map[string]string{}
		rows, err := r.Conn.Query(context.Background(), "SELECT name, engine FROM system.tables WHERE database = ?", db.Name)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var name, engine string
			if err := rows.Scan(&name, &engine); err != nil {
				t.Fatal(err)
			}
			engines[name] = engine
		}
		rows.Close()
		for _, table := range []string{"usage_events", "lifecycle_events", "query_audit_log", "spend_hourly", "spend_daily", "usage_key_minute",
			"usage_by_service_minute", "key_service_totals", "key_client_ip_totals", "usage_key_hourly", "usage_key_5min"} {
			if engines[table] != "Distributed" {
				t.Errorf("%s: %s is %q, want Distributed", r.Name(), table, engines[table])
			}
			if !strings.HasPrefix(engines[table+migrations.LocalSuffix], "Replicated") {
				t.Errorf("%s: %s_local is %q, want a Replicated engine", r.Name(), table, engines[table+migrations.LocalSuffix])
			}
		}
		if engines["usage_events_ingest"] != "Null" || engines["schema_migrations"] != "ReplicatedMergeTree" {
			t.Errorf("%s: usage_events_ingest %q, schema_migrations %q", r.Name(), engines["usage_events_ingest"], engines["schema_migrations"])
		}
		for _, gone := range []string{"usage_by_key_minute", "usage_5min"} {
			if _, ok := engines[gone]; ok {
				t.Errorf("%s: %s was dropped by a migration but exists", r.Name(), gone)
			}
		}
		if n := testenv.QueryUint64(t, r.Conn, "SELECT count() FROM "+db.Name+".schema_migrations"); n != uint64(len(all)) {
			t.Errorf("%s: the ledger has %d rows, want one per migration (%d)", r.Name(), n, len(all))
		}
	}
	again, err := migrations.Run(context.Background(), migrations.Config{Conn: db.Conn, Cluster: db.Cluster})
	if err != nil || len(again) != 0 {
		t.Errorf("second run applied %v (%v), want nothing", again, err)
	}
}

// A backfill runs on one server of each shard from that shard's rows: history stored before
// 0005 (spend_hourly only) is in spend_daily and usage_key_hourly afterwards, on every replica,
// counted once.
func TestClusterBackfillCopiesEachShardOnce(t *testing.T) {
	db := newClusterDB(t, 4)
	sink, err := chsink.New(chsink.Config{Conn: db.Conn, Cluster: db.Cluster})
	if err != nil {
		t.Fatal(err)
	}
	base := time.Now().UTC().Add(-30 * time.Hour).Truncate(time.Hour)
	var records []ingest.Record
	for i := range 400 {
		e := usage(fmt.Sprintf("bf-%d", i), fmt.Sprintf("proj-%d", i%3), fmt.Sprintf("key_%d", i%37), base.Add(time.Duration(i)*5*time.Minute), 7)
		records = append(records, ingest.Record{Event: event.Event{Kind: event.KindUsage, Usage: e}, StreamSeq: uint64(i + 1)})
	}
	if err := sink.Write(context.Background(), ingest.RowsOf(records)); err != nil {
		t.Fatal(err)
	}
	applied, err := migrations.Run(context.Background(), migrations.Config{Conn: db.Conn, Cluster: db.Cluster})
	if err != nil {
		t.Fatal(err)
	}
	all, err := migrations.All()
	if err != nil {
		t.Fatal(err)
	}
	var want []uint32
	for _, m := range all[4:] {
		want = append(want, m.Version)
	}
	if !reflect.DeepEqual(applied, want) {
		t.Fatalf("applied %v, want %v", applied, want)
	}
	syncAll(t, db, "spend_daily_local", "usage_key_hourly_local", "usage_key_minute_local", "usage_key_5min_local")
	for _, r := range db.Cluster.Replicas() {
		for _, table := range []string{"spend_daily", "usage_key_hourly", "usage_key_5min"} {
			local := testenv.QueryUint64(t, r.Conn, "SELECT sum(requests) FROM "+db.Name+"."+table+"_local")
			raw := testenv.QueryUint64(t, r.Conn, "SELECT count() FROM "+db.Name+".usage_events_local")
			if local != raw || raw == 0 {
				t.Errorf("%s: %s_local counts %d requests, its shard's raw rows are %d", r.Name(), table, local, raw)
			}
		}
	}
	for _, table := range []string{"spend_daily", "usage_key_hourly", "usage_key_5min"} {
		if n := testenv.QueryUint64(t, db.Conn, "SELECT sum(requests) FROM "+table); n != 400 {
			t.Errorf("%s through the Distributed table: %d requests, want 400", table, n)
		}
	}
	if n := testenv.QueryUint64(t, db.Conn, "SELECT countMerge(requests) FROM usage_key_minute"); n != 400 {
		t.Errorf("usage_key_minute: %d requests, want 400", n)
	}
}

// syncAll waits until every replica holds every part of the tables.
func syncAll(t testing.TB, db *clusterDB, tables ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, r := range db.Cluster.Replicas() {
		for _, table := range tables {
			if err := r.Conn.Exec(ctx, "SYSTEM SYNC REPLICA "+db.Name+"."+table); err != nil {
				t.Fatalf("%s: sync %s: %v", r.Name(), table, err)
			}
		}
	}
}

func usage(id, project, key string, at time.Time, cost int64) *keytrailv1.UsageEvent {
	return &keytrailv1.UsageEvent{
		EventId: id, Time: timestamppb.New(at), Project: project, KeyId: key, Service: "billing",
		GatewayInstance: "gw-1", Method: "POST", Endpoint: "/v1/chat/completions", Model: "gpt-4o", Provider: "openai",
		StatusCode: 200, LatencyMs: 80, InputTokens: 10, OutputTokens: 5, CostMicros: cost, ClientIp: "10.0.0.9",
	}
}

// withoutRetryDedup hides the sink's RetryDeduplicator: the ingester then treats a failed write
// as a single server's, checking the records against storage and writing what it lacks.
type withoutRetryDedup struct{ s *chsink.Sink }

func (w withoutRetryDedup) Write(ctx context.Context, r *ingest.Rows) error {
	return w.s.Write(ctx, r)
}
func (w withoutRetryDedup) Classify(ctx context.Context, r []ingest.Record) ([]ingest.Presence, error) {
	return w.s.Classify(ctx, r)
}
func (w withoutRetryDedup) WriteDeadLetters(ctx context.Context, l []*ingest.DeadLetter) error {
	return w.s.WriteDeadLetters(ctx, l)
}

// An insert that fails half way is completed by the identical retry. Fault: on the first
// replica of both shards an extra view of usage_events_ingest throws for every row; ClickHouse
// runs a table's views in name order, so an insert there stores the raw rows and the key_*,
// spend_* and usage_by_service_minute rollups, then fails before the usage_key_* ones. Load:
// 2,000 usage events. The ingester retries the same blocks on each shard's second replica,
// where every replicated table deduplicates what the first attempt stored and the usage_key_*
// rollups get their rows: raw, distinct ids and every rollup count exactly 2,000. The same
// fault with the single-server recovery (check the records against storage, write what is
// missing) leaves usage_key_minute short: it finds the raw rows stored and drops the batch.
func TestIdenticalRetryCompletesAnInsertThatFailedHalfWay(t *testing.T) {
	for _, tc := range []struct {
		name      string
		identical bool
	}{{"identical retry", true}, {"single-server recovery", false}} {
		t.Run(tc.name, func(t *testing.T) {
			db := newClusterDB(t, 0)
			for s := 1; s <= shards; s++ {
				r := db.Cluster.Shards[s-1].Replicas[0]
				for _, stmt := range []string{
					"CREATE TABLE " + db.Name + ".boom (x UInt8) ENGINE = Null",
					"CREATE MATERIALIZED VIEW " + db.Name + ".usage_events_ingest_zz_mv TO " + db.Name + ".boom AS SELECT throwIf(stream_seq > 0) AS x FROM " + db.Name + ".usage_events_ingest",
				} {
					if err := r.Conn.Exec(context.Background(), stmt); err != nil {
						t.Fatal(err)
					}
				}
			}
			streams := broker.DefaultStreamConfig()
			streams.AckWait = 5 * time.Second
			js := testenv.NewJetStream(t, streams)
			s, err := chsink.New(chsink.Config{Conn: db.Conn, Cluster: db.Cluster})
			if err != nil {
				t.Fatal(err)
			}
			var sink ingest.Sink = s
			if !tc.identical {
				sink = withoutRetryDedup{s}
			}
			metrics := ingest.NewMetrics(nil)
			_, stop := testenv.RunIngester(t, ingest.Config{JetStream: js.JS, Streams: streams, Sink: sink, BatchSize: 1000,
				FlushInterval: 100 * time.Millisecond, MaxBackoff: 200 * time.Millisecond, Metrics: metrics})
			defer func() { _ = stop() }() // judged by the stored counts, as before

			const n = 2000
			base := time.Now().UTC().Add(-2 * time.Hour)
			for i := range n {
				e := usage(fmt.Sprintf("half-%d", i), fmt.Sprintf("proj-%d", i%4), fmt.Sprintf("key_%d", i%53), base.Add(time.Duration(i)*time.Second), int64(i%9))
				b, _ := proto.Marshal(e)
				if _, err := js.JS.Publish(context.Background(), js.Streams.Subjects.Usage(e.Project), b); err != nil {
					t.Fatal(err)
				}
			}
			testenv.Eventually(t, time.Minute, func() error {
				if got := testenv.QueryUint64(t, db.Conn, "SELECT count() FROM usage_events"); got != n {
					return fmt.Errorf("usage_events holds %d rows, want %d", got, n)
				}
				return nil
			})
			testenv.AwaitStreamEmpty(t, js.JS, streams.EventsStream, 30*time.Second)
			// Every replica of each shard holds the same rows, the first replicas included.
			syncAll(t, db, "usage_events_local", "usage_key_minute_local")
			for _, r := range db.Cluster.Replicas() {
				if got := testenv.QueryUint64(t, r.Conn, "SELECT count() FROM "+db.Name+".usage_events_local"); got != testenv.QueryUint64(t, db.Cluster.Shards[r.Shard-1].Replicas[0].Conn, "SELECT count() FROM "+db.Name+".usage_events_local") {
					t.Errorf("%s holds %d raw rows, its shard's first replica another number", r.Name(), got)
				}
			}
			got := map[string]uint64{
				"usage_events":        testenv.QueryUint64(t, db.Conn, "SELECT count() FROM usage_events"),
				"uniqExact(event_id)": testenv.QueryUint64(t, db.Conn, "SELECT uniqExact(event_id) FROM usage_events"),
			}
			for _, r := range migrations.UsageRollups {
				got[r.Table+".requests"] = testenv.QueryUint64(t, db.Conn, "SELECT toUInt64("+r.Requests+") FROM "+r.Table)
			}
			if tc.identical {
				for what, v := range got {
					if v != n {
						t.Errorf("%s = %d, want %d (all: %v)", what, v, n, got)
					}
				}
			} else if got["usage_events"] != n || got["usage_key_minute.requests"] >= n {
				t.Errorf("single-server recovery: %v; want every raw row and usage_key_minute short (the pitfall the identical retry avoids)", got)
			}
			t.Logf("%s: %v", tc.name, got)
		})
	}
}

// A single-server deployment's history moves to a cluster as docs/cluster.md says: each
// shard's usage rows through its usage_events_ingest (the views fill every rollup), each
// shard's lifecycle rows into lifecycle_events_local, read from the old server with remote().
// Afterwards the cluster holds every event once, its rollups equal the raw rows, the copied
// audit chains verify, and new lifecycle events written by the cluster's sink continue them.
func TestSingleServerHistoryMovesToTheCluster(t *testing.T) {
	set := newEventSet(4000)
	single := testenv.ClickHouse(t)
	for chunk := range slices.Chunk(set.events, 2000) {
		testenv.Insert(t, single, chunk...)
	}
	db := newClusterDB(t, 0)
	ctx := clickhouse.Context(context.Background(), clickhouse.WithSettings(clickhouse.Settings{"insert_deduplicate": 0}))
	old := "remote('" + testenv.ClickHouseAddr() + "', " + single.Name + ", %s)"
	for i, shard := range db.Cluster.Shards {
		for _, stmt := range []string{
			fmt.Sprintf("INSERT INTO %s.usage_events_ingest SELECT * FROM "+old+" WHERE cityHash64(project, key_id) %% %d = %d", db.Name, "usage_events", len(db.Cluster.Shards), i),
			fmt.Sprintf("INSERT INTO %s.lifecycle_events_local SELECT * FROM "+old+" WHERE cityHash64(project) %% %d = %d", db.Name, "lifecycle_events", len(db.Cluster.Shards), i),
		} {
			if err := shard.Replicas[0].Conn.Exec(ctx, stmt); err != nil {
				t.Fatalf("%s: %v", stmt, err)
			}
		}
	}
	syncAll(t, db, "usage_events_local", "lifecycle_events_local", "usage_key_minute_local")
	wantUsage, wantLifecycle := uint64(set.usage), uint64(set.lifecycleTotal())
	if u, l := testenv.QueryUint64(t, db.Conn, "SELECT count() FROM usage_events"), testenv.QueryUint64(t, db.Conn, "SELECT count() FROM lifecycle_events"); u != wantUsage || l != wantLifecycle {
		t.Fatalf("the cluster holds %d usage and %d lifecycle events, want %d and %d", u, l, wantUsage, wantLifecycle)
	}
	for _, r := range migrations.UsageRollups {
		if n := testenv.QueryUint64(t, db.Conn, "SELECT toUInt64("+r.Requests+") FROM "+r.Table); n != wantUsage {
			t.Errorf("%s counts %d requests after the move, want %d", r.Table, n, wantUsage)
		}
	}
	for i, shard := range db.Cluster.Shards {
		for _, r := range shard.Replicas {
			for _, q := range []string{
				"SELECT count() FROM %s.usage_events_local WHERE cityHash64(project, key_id) %% 2 != %d",
				"SELECT count() FROM %s.lifecycle_events_local WHERE cityHash64(project) %% 2 != %d",
			} {
				if n := testenv.QueryUint64(t, r.Conn, fmt.Sprintf(q, db.Name, i)); n != 0 {
					t.Errorf("%s holds %d rows of another shard", r.Name(), n)
				}
			}
			if i != r.Shard-1 {
				t.Fatalf("shard order: %s is not shard %d", r.Name(), i+1)
			}
		}
	}
	// New lifecycle events, written as the cluster's ingester writes them, continue the
	// copied chains; then every chain verifies through the Distributed table.
	sink, err := chsink.New(chsink.Config{Conn: db.Conn, Cluster: db.Cluster})
	if err != nil {
		t.Fatal(err)
	}
	var records []ingest.Record
	for i, p := range setProjects {
		e := &keytrailv1.LifecycleEvent{EventId: "after-move-" + p, Time: timestamppb.New(set.base.Add(29 * time.Hour)), Project: p,
			KeyId: key(p, 1), Action: keytrailv1.Action_ACTION_DISABLED, Actor: "ops", ActorType: keytrailv1.ActorType_ACTOR_TYPE_USER}
		records = append(records, ingest.Record{Event: event.Event{Kind: event.KindLifecycle, Lifecycle: e}, StreamSeq: uint64(i + 1)})
	}
	if err := sink.Write(context.Background(), ingest.RowsOf(records)); err != nil {
		t.Fatal(err)
	}
	// Reads through the Distributed table may go to either replica of a shard: wait until both
	// have the new rows (replication takes about 0.1 s).
	syncAll(t, db, "lifecycle_events_local")
	chains, err := chreader.NewReader(chreader.ClusterConn(db.Conn), nil).VerifyAuditTrail(context.Background(), "", time.Time{}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if len(chains) != len(setProjects) {
		t.Fatalf("%d chains after the move, want %d", len(chains), len(setProjects))
	}
	for _, c := range chains {
		if want := set.lifecycle[c.Project] + 1; c.Break != nil || c.Rows != want || c.LastSeq != uint64(want) {
			t.Errorf("chain of %s after the move: %d rows through seq %d, break %+v; want %d intact rows", c.Project, c.Rows, c.LastSeq, c.Break, want)
		}
	}
}
