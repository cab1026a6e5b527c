// Command keytrail-bench runs keytrail's benchmarks (package bench) and prints one table,
// each figure beside its baseline and target, and writes the same as JSON. `make bench` runs
// it after starting the local ClickHouse.
//
//	keytrail-bench [-scale 0.05] [-phases drain,query] [-out bench-results.json]
//
// Settings also come from the environment: BENCH_SCALE, BENCH_PHASES, BENCH_PROFILE_DIR,
// BENCH_DATABASE, BENCH_KEEP_HISTORY, BENCH_LOAD_FLAGS, and KEYTRAIL_TEST_CLICKHOUSE_ADDR (the ClickHouse `make test` uses,
// default 127.0.0.1:19000).
//
// It only parses settings and runs package bench; what the benchmarks measure and how is in
// bench's doc.go and docs/benchmarks.md.
package main
