// Package faulttest holds keytrail's fault-injection tests: the ingester binary killed with
// SIGKILL again and again under load, ClickHouse stopped for tens of seconds mid-load, the
// NATS server restarted on its own store mid-load, inserts ClickHouse committed but reported
// as failed. It has no code of its own, only tests.
//
// Every test proves the same guarantee, end to end, with exact numbers: an event published
// once (or retried by the publisher under the same id) is stored exactly once, so at the end
// count() == uniqExact(event_id) == the number of events published, and every rollup
// (materialized view) total equals the raw total. Each test's comment states the fault, the
// load and the counts it expects.
//
// The tests need what `make test` provides: ClickHouse 18.16 installed (deploy/clickhouse)
// and the shared test server at KEYTRAIL_TEST_CLICKHOUSE_ADDR. The ClickHouse-outage test
// starts and stops a private server of its own and never touches the shared one.
//
// The load is set by environment variables, whose defaults are the minimums the guarantee
// is checked at:
//
//	KEYTRAIL_FAULT_KILL_EVENTS     usage events published while the ingester is killed (200000)
//	KEYTRAIL_FAULT_KILLS           SIGKILLs of the ingester process (10)
//	KEYTRAIL_FAULT_OUTAGE          how long ClickHouse stays down (25s)
//	KEYTRAIL_FAULT_OUTAGE_EVENTS   usage events published around the outage (100000)
//	KEYTRAIL_FAULT_NATS_EVENTS     usage events published across NATS restarts (100000)
//	KEYTRAIL_FAULT_NATS_RESTARTS   restarts of the NATS server (3)
package faulttest
