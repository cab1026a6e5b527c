// Package api serves keytrail's query API: the gRPC QueryService, the same service as
// REST/JSON through grpc-gateway, the OpenAPI document, health and readiness probes, and
// Prometheus metrics.
//
// Every REST call goes through the gRPC server (the gateway dials it), so validation,
// logging and, later, authentication interceptors apply to both transports identically.
// Errors are split by audience: the caller gets a status code and a safe message naming the
// bad field; the operator's log gets the underlying cause (SQL errors never reach callers).
package api
