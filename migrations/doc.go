// Package migrations holds keytrail's ClickHouse schema as numbered SQL files and applies
// them in order, to one server or to a ClickHouse cluster.
//
// Guarantee: Apply is idempotent and safe to run from every keytrail process at start-up,
// one at a time: callers hold a lock around it (keytrail takes the "migrations" lease in NATS,
// broker.Lease, and checks it before every statement through Config.Guard). Each file is
// recorded in schema_migrations only after all its statements succeeded, and every statement
// is itself idempotent (CREATE ... IF NOT EXISTS), so a process killed mid-file simply re-runs
// that file next time.
//
// One schema text, two targets. The files are text/template templates: rendered for a single
// server (the zero Target) every template call gives back the plain name or nothing, and the
// statements are exactly those of the files before they were templates
// (testdata/single_node_schema.sql pins 0001-0009). Rendered for a cluster (Target.Cluster):
//
//   - {{create "x"}} and {{engine "x" "SummingMergeTree()"}} make x_local ON CLUSTER with the
//     Replicated engine, its ZooKeeper path /clickhouse/tables/{shard}/<database>/x_local;
//   - {{distributed "x"}} adds x itself, a Distributed table over every shard's x_local, so
//     every reader uses the single-server name unchanged; rows are placed by
//     storage.ShardingKey (cityHash64(project, key_id)) unless the call names another key;
//   - {{ingest_input "usage_events"}} adds usage_events_ingest, a Null table the ingester
//     writes, and a view copying its rows into usage_events_local; {{from "usage_events"}}
//     makes every rollup view read that Null table too. Each replicated target then
//     deduplicates a re-sent insert block on its own, so an insert that failed half way (the
//     raw rows stored, a rollup's not) is completed by sending it again; with the views on
//     the replicated raw table instead, ClickHouse skips every view for a block it drops as a
//     duplicate and the rollup stays short;
//   - {{insert_tag_column}} and {{insert_tag}} give every rollup an insert_tag column (the
//     highest stream sequence of the insert per cell). Views fed from a Null table
//     deduplicate on their own output, so without it two different inserts whose cells
//     happen to be equal (one request of a key in an hour, at the same cost) would be taken
//     for a retry and the second dropped;
//   - {{drop_table "x"}} and {{drop_view "v"}} drop ON CLUSTER; {{local "x"}} names x_local in a
//     backfill, which a cluster runs on one server of every shard (IsBackfill) with
//     deduplication off;
//   - every name a statement refers to is qualified with the database: ON CLUSTER DDL resolves
//     a bare name in each server's default database.
//
// On a cluster the ledger is one replicated table held whole by every server (one ZooKeeper
// path for all shards), written with a quorum of all of them, so a process reads it wherever
// it connects; ON CLUSTER DDL needs every server, so Run checks they all answer before it
// applies anything and otherwise fails at once naming the missing ones.
//
// Why not a migration library: golang-migrate's ClickHouse driver records versions with
// Exec("INSERT ... VALUES"), which hangs against ClickHouse 18.16 over the native protocol
// (see PLATFORM-NOTES.md); this runner records them with a column-named batch insert instead.
//
// Rules for new files: one statement per `;`-terminated line group, no semicolons inside
// string literals, every table created, dropped or read by a view through the template calls
// above (TestClusterRenderingIsReplicatedDistributedAndQualified fails otherwise), and a file
// that is safe to run again from its start. The one kind of data
// INSERT allowed is the backfill of a rollup the same file creates, from an older rollup,
// in a file that first drops what it creates (0005 does this): a re-run then starts over
// instead of counting twice. A backfill must not race with ingestion (an insert between the
// view's creation and the backfill's read would count twice), so such a file says so and the
// upgrade notes in docs/operations.md repeat it; `keytrail serve` applies migrations before its ingester
// starts.
//
// UsageRollups lists every rollup a materialized view fills from usage_events, with the
// totals that must equal the raw table's: tests, the fault suite and the benchmark wait on
// it, so a migration that adds a rollup adds it there.
package migrations
