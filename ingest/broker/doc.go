// Package broker owns keytrail's side of NATS JetStream: the embedded server used by the
// default single-process run and the tests, and the streams and durable consumer the events
// travel through.
//
// Guarantee: EnsureStreams creates the events stream and the ingester's durable consumer in
// one step. The stream keeps a message until that consumer acknowledges it (interest
// retention) and refuses new messages when full (discard new), so a backlog is never
// dropped silently: when the ingester falls too far behind, publishers see errors instead.
package broker
