// Package reconcile keeps the rollups equal to usage_events: it finds rollup cells that
// count fewer rows than the raw table holds and adds what they are missing.
//
// Why it is needed: on ClickHouse 18.16 an insert into usage_events is not atomic across
// its materialized views. The server writes the raw part first, then runs the views one by
// one, each committing its own part. When the server dies (SIGKILL, OOM, power) or a view
// throws after the raw part was written, the raw rows are stored and some rollups never get
// them. The ingester retries, its storage check (ingest/chsink) finds the events stored and
// drops them: correctly, for the raw table, and the rollups stay short for good. Every API
// answer reads the rollups.
//
// Where it lives: beside the sink, not inside it. It reads and writes only ClickHouse (no
// domain logic to separate from an adapter), but it is a concern of its own with its own
// schedule, metrics and lock; it borrows the sink's insert fence and query-id tags and
// wraps the sink (Guard) to run where an insert can have stopped half way.
//
// # When it runs
//
//   - After a redelivery: Guard wraps the ingester's sink. When the ingester's storage check
//     finds usage events already stored (after a take-over, or a write reported as failed,
//     the only ways an insert can have stopped half way without the ingester knowing which
//     rows got where), the cells of their days and keys are compared and repaired before the
//     check returns, that is before those events are acknowledged. If the process dies
//     meanwhile, JetStream redelivers them and the next ingester checks again.
//   - On a schedule (Run, every Config.Interval): the sweep compares requests per (hour, key)
//     of every bucketed rollup with usage_events over the UTC days overlapping
//     Config.Lookback, and checks exactly what looks short, in groups of keys bounded by
//     Config.KeysPerCheck and by their cells (Config.CellsPerCheck), each group a check of its
//     own (its memory is the group's cells; the ingester writes between groups). It catches
//     what no redelivery revealed (an insert by another program, a check deferred by another
//     writer).
//
// # What a check compares and how it repairs
//
// Cells: a rollup row after merges, identified by its time bucket and dimensions
// (migrations.Rollups describes every rollup). A cell agrees when each additive column
// (requests, errors, tokens, cost) equals the raw rows' own; it is short when the rollup
// holds less in some column and more in none. A short cell gets one correcting row with the
// differences: a SummingMergeTree adds it to the cell; for an AggregatingMergeTree the
// server builds the row's states from the differences (n rows, e of them errors, the raw
// cell's first, last and last successful time; see insertStatesSQL), and merging adds the
// counts and leaves min/max at the raw values. Nothing is deleted or rewritten, so the
// repair is exact for any ClickHouse version and never loses rows a concurrent insert
// added. A cell holding more than raw cannot come from a lost insert: it is counted
// (keytrail_reconcile_cells_excess_total) and logged, not touched.
//
// Bucketed rollups (per minute, 5 minutes, hour, day) are compared per cell over whole UTC
// days of the keys concerned. The all-time rollups (key_service_totals,
// key_client_ip_totals) have no time column, so they are compared per cell over all of the
// keys' history raw retains; a cell first seen before the oldest month usage_events still
// holds is left alone (retention dropped rows the rollup rightly keeps). Because that read
// is the costly one, after a redelivery it runs for every key only when the insert may
// have been cut (this process saw a write fail, or ClickHouse started after those events
// were stored), and otherwise for the keys whose bucketed cells were short.
//
// # Why a repair never counts an insert twice
//
// Correct = raw − rollup is right only if both reads saw the same inserts. Three things
// make sure of it:
//
//  1. The reads are ordered raw, fence, rollups, raw again (the second raw read only when
//     some cell disagrees). The fence waits until every INSERT ClickHouse is running has
//     ended, views included (system.processes). So an insert whose raw rows the first read
//     saw has finished its views before the rollups are read (or died, which is what is
//     being repaired). An insert whose raw part lands after the first read changes the raw
//     counts of its cells, which the second read sees: those cells are deferred (counted,
//     left for a later check), not judged. An insert landing after the second read is in
//     neither raw read and, its views coming after its raw part, in no rollup read either.
//  2. This process's own inserts cannot interleave: Guard holds the reconciler's lock around
//     every write and storage check of the ingester, and a check holds it throughout. With
//     one ingester per durable (the default) nothing else inserts, so nothing is deferred;
//     the lock also means a repair never races with a batch the ingester will retry, and
//     the retry's storage check waits for the repair (repairs are tagged for the fence).
//  3. Two repairs of one cell must not both add the difference: within a process the lock
//     serializes them; across processes writing one database (several ingesters), Config.Lease
//     does (a broker lease per database, LeaseName). Without a Lease, run one ingesting
//     process per database.
//
// So no margin of "old enough" hours is needed, and a check can run while ingestion goes
// on. What it costs, and the limits, are in docs/guarantees.md and docs/operations.md.
package reconcile
