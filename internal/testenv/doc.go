// Package testenv gives tests the real servers keytrail runs against: a fresh ClickHouse
// database per test (schema applied, dropped when the test passes, kept for inspection when
// it fails) and an in-process JetStream server on a free port with its store in t.TempDir().
//
// ClickHouse itself is started by `make test` (deploy/clickhouse/local.sh); tests find it at
// KEYTRAIL_TEST_CLICKHOUSE_ADDR (default 127.0.0.1:19000) and fail loudly when it is absent
// rather than skipping, so a green run always means the storage tests ran.
package testenv
