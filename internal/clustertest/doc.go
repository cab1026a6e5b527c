// Package clustertest proves keytrail on a cluster, with real processes on loopback: ZooKeeper
// and ClickHouse 18.16 as 2 shards x 2 replicas, a 3-node NATS JetStream cluster with R3
// streams, several ingesters and query nodes (the keytrail binary), all started by
// deploy/cluster/local.sh on ports of their own. It has no code of its own, only tests, behind
// the build tag "cluster": `make test-cluster` runs them (and .ci/run runs that target).
//
// What they prove, each with exact counts: the cluster schema from the same migrations, its
// migration ledger and the lock that keeps two starting processes from both migrating; that
// an insert which failed half way (a rollup's view failed after the raw rows were stored) is
// completed by the ingester's identical retry without storing anything twice; and, in the
// multi-node test, that a known event set published while the NATS stream leader, an ingester
// and a ClickHouse replica are SIGKILLed and restarted is stored exactly once on every
// replica, with every rollup equal to the raw rows, the audit chains intact, and the query
// nodes' answers equal to a single server's on the same events.
//
// The shared ClickHouse of `make test` (127.0.0.1:19000) is never touched.
package clustertest
