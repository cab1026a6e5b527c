package migrations_test

import (
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/keytrail/keytrail/internal/storage"
	"github.com/keytrail/keytrail/migrations"
)

// schemaText is every statement of the migrations as one text, the format of
// testdata/single_node_schema.sql.
func schemaText(all []migrations.Migration) string {
	var b strings.Builder
	b.WriteString(goldenHeader)
	for _, m := range all {
		for i, s := range m.Statements {
			fmt.Fprintf(&b, "-- %04d_%s statement %d\n%s;\n\n", m.Version, m.Name, i+1, s)
		}
	}
	return b.String()
}

const goldenHeader = "-- Test data: every statement of migrations 0001-0009 as they were before the files became\n" +
	"-- templates, the single-server schema they must still render to (render_test.go).\n\n"

// The migration files are templates since cluster mode; for a single server they must render
// to exactly the statements they held before (testdata/single_node_schema.sql was written
// from them before the change), so an existing deployment's schema does not move.
func TestSingleServerRenderingIsTheSchemaBeforeTemplates(t *testing.T) {
	all, err := migrations.All()
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile("testdata/single_node_schema.sql")
	if err != nil {
		t.Fatal(err)
	}
	got := schemaText(all)
	if !strings.HasPrefix(got, string(want)) {
		gl, wl := strings.Split(got, "\n"), strings.Split(string(want), "\n")
		for i := range min(len(gl), len(wl)) {
			if gl[i] != wl[i] {
				t.Fatalf("single-server rendering differs from the schema before templates at line %d:\n got %q\nwant %q", i+1, gl[i], wl[i])
			}
		}
		t.Fatalf("single-server rendering is shorter than the schema before templates (%d vs %d lines)", len(gl), len(wl))
	}
}

// Every statement of the cluster rendering must be one ClickHouse runs correctly across the
// cluster: DDL ON CLUSTER with every table it names qualified by the database (ON CLUSTER
// resolves a bare name in each server's default database), stored rows only in replicated
// tables, views fed by the ingest input table, and data copied only shard-locally. A new
// migration file written without the templates fails here.
func TestClusterRenderingIsReplicatedDistributedAndQualified(t *testing.T) {
	target := migrations.Target{Cluster: "kc", Database: "kdb"}
	all, err := migrations.Load(target)
	if err != nil {
		t.Fatal(err)
	}
	var (
		createTable = regexp.MustCompile(`(?s)^CREATE TABLE IF NOT EXISTS kdb\.(\w+) ON CLUSTER kc\b.*\bENGINE = (\w+)`)
		createView  = regexp.MustCompile(`(?s)^CREATE MATERIALIZED VIEW IF NOT EXISTS kdb\.(\w+) ON CLUSTER kc TO kdb\.(\w+_local) AS\s+SELECT\s.*\sFROM kdb\.(\w+)\b`)
		dropTable   = regexp.MustCompile(`^DROP TABLE IF EXISTS kdb\.(\w+) ON CLUSTER kc$`)
		backfill    = regexp.MustCompile(`(?s)^INSERT INTO (\w+_local) \(.*\)\s+SELECT\s.*\sFROM (\w+_local)\b`)
		distributed = regexp.MustCompile(`^CREATE TABLE IF NOT EXISTS kdb\.(\w+) ON CLUSTER kc AS kdb\.(\w+)_local ENGINE = Distributed\(kc, kdb, (\w+)_local, (.+)\)$`)
		bareName    = regexp.MustCompile(`\b(FROM|TO|JOIN)\s+([A-Za-z_][A-Za-z0-9_]*)(\s|$)|\b(AS)\s+([A-Za-z_][A-Za-z0-9_]*) ENGINE`)
	)
	distributedBy := map[string]string{}
	for _, m := range all {
		for i, stmt := range m.Statements {
			where := fmt.Sprintf("%04d_%s statement %d", m.Version, m.Name, i+1)
			switch {
			case backfill.MatchString(stmt):
				if !migrations.IsBackfill(stmt) {
					t.Errorf("%s: a backfill IsBackfill does not recognise", where)
				}
				continue
			case dropTable.MatchString(stmt):
				continue
			case createView.MatchString(stmt):
				v := createView.FindStringSubmatch(stmt)
				if !strings.HasSuffix(v[3], migrations.IngestSuffix) {
					t.Errorf("%s: view %s reads %s; views read an ingest input table (x%s)", where, v[1], v[3], migrations.IngestSuffix)
				}
				if v[3] != "usage_events_ingest" && !strings.Contains(stmt, "AS "+migrations.InsertTagColumn) {
					t.Errorf("%s: view %s has no %s column", where, v[1], migrations.InsertTagColumn)
				}
			case distributed.MatchString(stmt):
				d := distributed.FindStringSubmatch(stmt)
				if d[1] != d[2] || d[2] != d[3] {
					t.Errorf("%s: Distributed %s is not over %s_local", where, d[1], d[1])
				}
				distributedBy[d[1]] = d[4]
			case createTable.MatchString(stmt):
				c := createTable.FindStringSubmatch(stmt)
				switch engine := c[2]; {
				case strings.HasPrefix(engine, "Replicated"):
					if !strings.Contains(stmt, "'/clickhouse/tables/{shard}/kdb/"+c[1]+"', '{replica}'") {
						t.Errorf("%s: %s is not replicated under its shard's ZooKeeper path", where, c[1])
					}
				case engine == "Null" && strings.HasSuffix(c[1], migrations.IngestSuffix):
				default:
					t.Errorf("%s: %s has engine %s; a cluster stores rows only in Replicated tables", where, c[1], engine)
				}
			default:
				t.Errorf("%s is not a statement a cluster can run:\n%s", where, stmt)
				continue
			}
			if !migrations.IsBackfill(stmt) {
				for _, ref := range bareName.FindAllStringSubmatch(stmt, -1) {
					t.Errorf("%s: %q names a table without the database", where, strings.TrimSpace(ref[0]))
				}
			}
		}
	}
	want := map[string]string{
		"usage_events": storage.ShardingKey, "lifecycle_events": storage.LifecycleShardingKey, "query_audit_log": "rand()",
		"usage_key_minute": storage.ShardingKey, "usage_by_service_minute": storage.ShardingKey, "key_service_totals": storage.ShardingKey,
		"key_client_ip_totals": storage.ShardingKey, "spend_hourly": storage.ShardingKey, "spend_daily": storage.ShardingKey,
		"usage_key_hourly": storage.ShardingKey, "usage_key_5min": storage.ShardingKey,
		"dead_letters": "cityHash64(stream, stream_seq)",
	}
	for table, key := range want {
		if distributedBy[table] != key {
			t.Errorf("Distributed %s is sharded by %q, want %q", table, distributedBy[table], key)
		}
	}
}
