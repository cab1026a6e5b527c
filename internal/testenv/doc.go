// Package testenv gives tests the real servers keytrail runs against: a fresh ClickHouse
// database per test (schema applied, dropped when the test passes, kept for inspection when
// it fails) and an in-process JetStream server on a free port with its store in t.TempDir().
// For fault tests it runs real processes that can be SIGKILLed: nats-server built from the
// module go.mod requires (the same binary deploy/cluster/local.sh runs), a private
// clickhouse-server, and the keytrail binary (KeytrailProcess). And it holds the small
// helpers tests share: polling with a deadline (Eventually, never a fixed sleep), counts,
// metrics, REST calls, the settings of long tests (EnvInt).
//
// A pid is signalled only while it certainly is the process started here: a child whose exit
// has not been collected yet, or one whose command line says so (ProcessMatches). Pids wrap
// quickly on a busy machine.
//
// ClickHouse itself is started by `make test` (deploy/clickhouse/local.sh); tests find it at
// KEYTRAIL_TEST_CLICKHOUSE_ADDR (default 127.0.0.1:19000) and fail loudly when it is absent
// rather than skipping, so a green run always means the storage tests ran.
package testenv
