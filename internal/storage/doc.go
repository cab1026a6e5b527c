// Package storage opens keytrail's ClickHouse connection: it parses the DSN, makes sure the
// database exists and hands out a native-protocol connection (the HTTP protocol of
// clickhouse-go does not work with ClickHouse 18.16).
//
// On a ClickHouse cluster (Config.Cluster) the database is created ON CLUSTER when missing,
// inserts into Distributed tables over the connection are synchronous, and OpenCluster reads
// the cluster's shards and replicas from system.clusters and connects to each server, for what
// must run on a particular one. ShardOf places a key's rows exactly as the Distributed tables'
// sharding key does.
package storage
