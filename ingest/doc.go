// Package ingest moves events from the JetStream events stream into storage.
//
// An Ingester pulls from the durable consumer in batches, decodes and validates each message
// (package event), buffers the valid ones and flushes them to a Sink when the buffer is full
// or old enough. A message that fails validation is republished to the dead-letter subject
// with its reason and never blocks the messages behind it (deadletter.go): the copy is
// redacted and always fits NATS's limits, and when the dead-letter stream refuses it after a
// bounded retry, the flush keeps it in a DeadLetterStore (ClickHouse's dead_letters table)
// before acknowledging it. Stalled reports a consumer backlog that has not moved for
// StallTimeout, for the readiness probe.
//
// A batch holds events, not messages: usage events go straight into column buffers
// (UsageRows), decoded from canonical protobuf without a message in between, so a batch of
// 100k events is about 32 MB, allocated once and reused, with nothing in it for the garbage
// collector to scan. Of each message only its reply subject is kept (for acks and lease
// extensions); lifecycle events, rare and hashed into the audit chain field by field, stay
// whole records.
//
// Guarantee (at-least-once, in stream order): a message is acknowledged only after every
// message up to it has been stored by the Sink or dead-lettered (in the dead-letter stream or
// the DeadLetterStore). The consumer uses AckAll, so
// one ack per flush covers the batch. If the process dies between the Sink write and the
// ack, JetStream redelivers the batch; stopping those redeliveries from becoming duplicate
// rows is the Sink's job (see the effectively-once notes in docs/guarantees.md).
//
// AckAll also means an ack covers deliveries this ingester never saw: those of an ingester
// that was killed, or of a pull request lost in a NATS reconnect. So before its first fetch,
// and whenever a delivery sequence number is skipped, the ingester (which must be alone on
// an AckAll durable) resets the consumer to its ack floor, which redelivers them at once.
// After a take-over every record is checked against storage until the first one storage
// does not hold: what earlier, dead ingesters stored above the ack floor is one unbroken run
// of the stream, and the consumer's own state cannot tell how long (see takeOver). A write
// reported as failed is checked the same way before it is retried: the server may have
// committed it. The ClickHouse sink's check first waits for inserts still running
// (ingest/chsink/fence.go), because the killed ingester's last insert can commit after its
// successor started.
//
// Reading overlaps writing: one goroutine fetches and decodes the next batch while another
// writes the previous one. Memory is bounded by two batches: while a write is failing the
// reader stops at the hand-over and fetches nothing, so a ClickHouse outage turns into
// consumer lag, not into growth of this process.
package ingest
