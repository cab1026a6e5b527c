// Package memsink is test support, not a storage backend: an in-memory ingest.Sink,
// ingest.Deduper and ingest.DeadLetterStore that keeps the ClickHouse sink's contract
// (ingest/chsink) as the ingester relies on it, with faults a test programs. With it the
// ingester's flush, retry and take-over logic is tested in milliseconds against a real
// JetStream; what needs ClickHouse (the SQL, the materialized views, the insert fence over
// system.processes, 18.16's limits) stays tested against ClickHouse.
//
// A Storage plays the database: rows by table in insert order, shared by every Sink made on
// it. A Sink plays one ingester process's chsink.Sink: its own retry memory, audit-chain head
// cache and faults. What it mirrors from chsink:
//
//   - Write stores lifecycle records, then usage records, each kind as one all-or-nothing
//     insert. (chsink hands a batch's usage rows to one INSERT in chunks, and a sender
//     killed mid-insert can leave a prefix of them committed; the ingester's check of every
//     row after a failure covers that case as it covers this one.) It never deduplicates: the same event written twice is two rows, as in a
//     plain MergeTree table, so a test counting rows sees every duplicate the ingester
//     failed to prevent. Only a retry of what the same Sink stored successfully is skipped
//     (chsink's highest-stored-sequence guard per table).
//   - Each project's audit chain continues from the Sink's cached head, read from storage on
//     first use (after the inserts in flight end), advanced after a successful insert and
//     forgotten after a failed one.
//   - Classify first waits for the inserts in flight when it is called (chsink's fence),
//     then answers per record with the narrowing of chsink's lookups: in chunks of 1000
//     records, a stored usage row counts when its event id and key are among the chunk's
//     usage ids and keys and its event second lies within the chunk's time span; a
//     lifecycle row by id and time span. Equal content is AlreadyStored, other content a
//     Conflict. Usage compares Record.ContentHash, lifecycle the audit entry's content hash,
//     as chsink stores them.
//   - WriteDeadLetters is one insert; DeadLetters shows one letter per stream position
//     however often it was written (the dead_letters table collapses them).
//
// Faults: an insert can be refused, or committed and then reported as failed (the reply
// lost); it can be held in flight until the test releases it, and then it commits even if
// its caller gave up (ClickHouse finishes an insert whose sender died); a storage check can
// fail. The conformance test runs one table of contract cases against this package and
// chsink on a real ClickHouse, so the two cannot drift apart.
package memsink
