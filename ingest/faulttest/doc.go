// Package faulttest holds keytrail's fault-injection tests, with real processes killed for
// real: the ingester binary SIGKILLed again and again under load; a ClickHouse server
// SIGKILLed in the middle of an insert, between its raw part and its materialized views,
// and kept down for tens of seconds; a nats-server process SIGKILLed mid-load and started
// again on its store; inserts ClickHouse committed but reported as failed. Nothing is asked
// to stop: no test sends SIGTERM or calls a shutdown. It has no code of its own, only tests.
//
// Every test proves the same guarantee, end to end, with exact numbers: an event published
// once (or retried by the publisher under the same id) is stored exactly once, so at the end
// count() == uniqExact(event_id) == the number of events published, every rollup
// (materialized view) total (requests, errors, tokens, cost) equals the raw total, and every
// rollup cell equals what its raw rows add up to (testenv.RollupMismatches). Each test's
// comment states the fault, the load and the counts it expects.
//
// The tests need what `make test` provides: ClickHouse 18.16 installed (deploy/clickhouse)
// and the shared test server at KEYTRAIL_TEST_CLICKHOUSE_ADDR. The ClickHouse kill test
// starts a private server of its own (testenv.StartClickHouseServer: its own ports and
// KEYTRAIL_CH_DIR) and never touches the shared one; the NATS test runs a nats-server binary
// built from the module keytrail embeds (testenv.NATSServerBinary, cached in .local/bin).
//
// The load is set by environment variables, whose defaults are the minimums the guarantee
// is checked at:
//
//	KEYTRAIL_FAULT_KILL_EVENTS     usage events published while the ingester is killed (200000)
//	KEYTRAIL_FAULT_KILLS           SIGKILLs of the ingester process (10)
//	KEYTRAIL_FAULT_OUTAGE          how long ClickHouse stays down after its SIGKILL (25s)
//	KEYTRAIL_FAULT_OUTAGE_EVENTS   usage events published around the ClickHouse kill (100000)
//	KEYTRAIL_FAULT_NATS_EVENTS     usage events published across nats-server kills (100000)
//	KEYTRAIL_FAULT_NATS_KILLS      SIGKILLs of the nats-server process (3)
package faulttest
