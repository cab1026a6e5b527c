// Package retry is keytrail's one way of trying an operation again after it failed: capped
// exponential backoff without jitter (cenkalti/backoff underneath), each failure reported to
// the caller before the wait so it can log it, count it, or keep leases alive.
//
// Its guarantee: the operation runs at least once, is never started again after ctx ends,
// runs at most Policy.Attempts times when that is set, and a Permanent error ends it at once.
// Without Attempts it retries for as long as ctx lasts: the write paths (the ingester's
// storage check and batch write, the query audit log) must not give up on their own.
package retry
