// Package api serves keytrail's query API: the gRPC QueryService, the same service as
// REST/JSON through grpc-gateway, the OpenAPI document, health and readiness probes, and
// Prometheus metrics.
//
// Every REST call passes the REST edge (edge.go) and then the gRPC server (the gateway dials
// it in memory), so authentication, the per-principal rate limit, validation, admission,
// logging and the query audit log apply to both transports identically. Errors are split by
// audience: the caller gets a status code and a safe message naming the bad field; the
// operator's log gets the underlying cause (SQL errors never reach callers).
//
// Guarantees:
//   - A call is authenticated before anything else about it is looked at (on REST, before the
//     gateway parses a parameter).
//   - Every call is recorded in the query audit log with the status it was answered with.
//     Calls refused before anything was served (no valid credential, over the rate limit, a
//     gRPC request that cannot be decoded) are recorded up to a bound per principal (see
//     refusals); any other call is answered only once its record is queued (fail closed).
//   - No secret-shaped value a caller typed reaches the audit log or a log line raw: both
//     keep its fingerprint (auditlog.RedactMessage, event.RedactText).
//   - Overload is answered, not suffered: at most Admission.MaxInFlight calls run at once;
//     the rest wait briefly and are shed with Unavailable / 503 (or ResourceExhausted / 429
//     beyond the caller's share) and a retry delay, never an internal error or a hang.
package api
