// Package migrations holds keytrail's ClickHouse schema as numbered SQL files and applies
// them in order.
//
// Guarantee: Apply is idempotent and safe to run from every keytrail process at start-up.
// Each file is recorded in schema_migrations only after all its statements succeeded, and
// every statement is itself idempotent (CREATE ... IF NOT EXISTS), so a process killed
// mid-file simply re-runs that file next time.
//
// Why not a migration library: golang-migrate's ClickHouse driver records versions with
// Exec("INSERT ... VALUES"), which hangs against ClickHouse 18.16 over the native protocol
// (see PLATFORM-NOTES.md); this runner records them with a column-named batch insert instead.
//
// Rules for new files: one statement per `;`-terminated line group, no semicolons inside
// string literals, and a file that is safe to run again from its start. The one kind of data
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
