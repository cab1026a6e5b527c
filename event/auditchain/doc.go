// Package auditchain makes the lifecycle audit trail tamper-evident. Every stored lifecycle
// row carries the hash of its own content, the chain hash of the project's previous row and
// its own chain hash, chain_hash = sha256(prev_hash || content_hash), with a per-project
// sequence number. Deleting, altering or reordering a stored row breaks the chain at that
// row, and Verify reports the first break.
//
// The chain is in ingestion order (stream order), not event-time order, because that is the
// order in which one writer can extend it without reading back. One writer per project is
// required: keytrail's ingesters partition subjects so a project's lifecycle events reach
// one ingester.
//
// What it does not protect against: someone able to rewrite the whole chain from the
// altered row onwards with recomputed hashes. Anchoring the latest chain hash outside
// ClickHouse (e.g. in a ticket or a signed log) closes that gap; see docs/security.md.
package auditchain
