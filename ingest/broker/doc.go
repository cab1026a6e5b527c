// Package broker owns keytrail's side of NATS JetStream: the embedded server used by the
// default single-process run and the tests, the streams and durable consumers the events
// travel through, and the leases that let one process of a deployment at a time do something.
//
// Guarantee: EnsureStreams creates the events stream and the ingester's durable consumers in
// one step. The stream keeps a message until its consumer acknowledges it (interest
// retention) and refuses new messages when full (discard new), so a backlog is never
// dropped silently: when the ingester falls too far behind, publishers see errors instead.
//
// With Partitions the stream splits the events by project (a subject transform inserts the
// partition, a hash of the project token, into the subject) and each partition has its own
// durable, drained by one ingester: a project's audit chain keeps one writer with several
// ingesters. Every durable exists before anything is published to it, and every process must
// agree on the count.
//
// A Lease (lease.go) is held in a JetStream key-value bucket by one process at a time: it
// expires a TTL after its holder's last renewal, and a holder that cannot renew it gives it up
// before it can expire. keytrail's leases: migrations, the alert evaluator, and each
// database's rollup repairs (ingest/reconcile). Provision retries stream, consumer and bucket
// creation that a NATS cluster leaves unanswered.
package broker
