// Package chsink is the ClickHouse Sink of the ingester: it writes usage rows and lifecycle
// records to the raw tables with column-named batch inserts (the only INSERT form that works
// against ClickHouse 18.16 over the native protocol), appending column by column. A batch's
// usage rows go in one INSERT, handed over in 10k-row chunks that the server joins into one
// block: ClickHouse's cost per row falls about 3x from 10k-row to 100k-row blocks, and the
// client holds a copy of one chunk, not of the batch.
//
// Guarantee: within one process, a batch retried after a partial failure never writes a
// kind of event twice: the sink remembers, per table, the highest stream sequence it has
// stored, and skips a table whose part of the batch lies at or below it. Across processes,
// every insert is tagged with a query id in the database's namespace, and the storage check
// of redelivered records (Classify) and the first read of an audit chain head wait for the
// tagged inserts still running: a killed ingester's last insert commits after it died.
//
// On a ClickHouse cluster (Config.Cluster) the sink writes each shard's rows to a server of
// that shard and retries a failed write identically, which the replicated tables deduplicate
// table by table; its correctness reads first bring the server they read up to date with its
// siblings (SYSTEM SYNC REPLICA). cluster.go says why.
package chsink
