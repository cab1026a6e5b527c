// Package chreader answers keytrail's questions from ClickHouse.
//
// Builders (functions named after the question, returning a Query) emit the SQL text and its
// bound arguments and do no I/O, so tests assert the exact SQL. Reader runs them. User input
// only ever reaches ClickHouse as a bound argument; identifiers in the SQL are constants.
//
// Time ranges are exact to the millisecond although the rollups are per minute: the whole
// minutes of a range are read from the rollups and the partial minutes at its edges from the
// raw events (see splitRange), so an answer never depends on where a range starts.
//
// On a ClickHouse cluster the same builders run through the Distributed tables, which carry
// the single-server names; ClusterConn makes their subquery IN and JOIN GLOBAL (cluster.go).
package chreader
