// Package auditlog records every call to the query API (who, what, when, outcome) in
// ClickHouse table query_audit_log.
//
// Guarantee: the API fails closed. A call is answered only once its record is queued; when
// the queue is full because ClickHouse has been unreachable for a while, calls are refused
// with Unavailable instead of going unrecorded. Queued records are written in batches and
// retried until stored; Close flushes what is queued.
//
// Guarantee: no secret-shaped value is stored. A secret typed into a query (a key's secret
// as key_id) is kept as its fingerprint, found with the ingester's detector (RedactMessage,
// event.RedactText); the API's log lines go through the same redaction.
package auditlog
