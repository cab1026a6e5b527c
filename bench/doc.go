// Package bench is keytrail's benchmark harness behind `make bench` (the program is
// bench/cmd/keytrail-bench). It measures the figures of docs/benchmarks.md, each beside the
// baseline it is judged against, and reports them as one table and as JSON:
//
//   - ingest: the ingester's drain rate of a usage backlog against the raw JetStream
//     consume rate and the raw clickhouse-go insert rate of the same events; publishers and
//     ingester together (sustained rate, and publish-to-queryable latency at a fixed rate);
//     the peak RSS of a separate `keytrail serve -role ingest` process draining a backlog;
//   - query: p50/p99 of each REST answer over a loaded history, against a straightforward
//     query over the raw tables that computes the same answer.
//
// Every size is multiplied by Config.Scale (floors keep the small runs meaningful).
//
// Guarantee: the harness leaves nothing behind. Each phase runs its own embedded JetStream
// in a temporary directory and its own ClickHouse database (Config.Database, dropped before
// and after every phase), stops the processes it started by their pid, and removes its
// temporary files, also when a phase fails or the run is interrupted. It never stops the
// ClickHouse server it uses: other people's tests may share it.
//
// Nothing here runs under `go test`: the package has no tests, the work starts only from
// the program.
package bench
