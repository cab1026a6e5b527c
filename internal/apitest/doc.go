// Package apitest serves the real query API (gRPC and REST, authentication, validation,
// query recording) over a per-test ClickHouse database, for tests of the API's answers.
//
// Guarantee: what a test talks to is api.New's server with its whole interceptor chain, on
// listeners of port 0 (tests run in parallel), with an admin token (AdminToken) and the
// test's own tokens; only the query audit log's sink is replaced by an in-memory Recorder
// unless the test brings its own. The server stops when the test ends, and an error it
// stopped with fails the test.
package apitest
