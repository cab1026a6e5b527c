// Package query is keytrail's read path. It holds no code of its own; its subpackages are
// laid out so that each REST answer can be traced from the API to the SQL:
//
//   - api: the gRPC service, the REST gateway and OpenAPI document, health; maps requests
//     and proto enums to the domain packages below and their answers back to protos (the only
//     place that does). It reads through one small interface per kind of answer (sources.go),
//     which chreader.Reader implements.
//   - auth: credentials (bearer tokens, client certificates), roles and project scopes.
//   - auditlog: the query audit log; every API call is recorded before it is answered.
//   - chreader: the ClickHouse reader. SQL builders (exact SQL asserted by tests) and the
//     Reader that runs them; every answer's facts come from here.
//   - rotation, keystate, budget, anomaly: the domain logic of the answers (no I/O): the
//     rotation verdict, a key's state at an instant, budget periods and money, anomaly
//     scoring (the scan's series, baselines and scores) and alert episodes.
//   - alerting: the scheduled anomaly and new-caller evaluator that publishes alerts.
//
// The write path lives in package ingest, the event contract in package event.
package query
