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
// string literals, no data INSERTs, and only statements that are safe to repeat.
package migrations
