package storage

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/go-faster/city"
)

// Cluster is a ClickHouse cluster (one remote_servers entry) as keytrail uses it: its shards,
// and in each shard its replicas, every one with a connection of its own. Reads go through
// the Distributed tables over the DSN's connection; what must run on one particular server
// uses these: the ingester's per-shard writes, its insert fence and replica synchronisation
// before a storage check, and the per-shard backfills of migrations.
type Cluster struct {
	Name     string
	Database string
	Shards   []*Shard
	// slots maps cityHash64(project, key_id) % len(slots) to a shard index, as a Distributed
	// table does with its shards' weights.
	slots []int
}

// Shard is one shard of a Cluster.
type Shard struct {
	// Num is ClickHouse's shard_num (1-based); Index is the place in Cluster.Shards.
	Num, Index int
	Weight     int
	Replicas   []*Replica
}

// Replica is one server of a shard.
type Replica struct {
	Shard, Num int
	Addr       string
	Conn       driver.Conn
}

// Name is "shard N replica M (host:port)", for logs and errors.
func (r *Replica) Name() string {
	return fmt.Sprintf("shard %d replica %d (%s)", r.Shard, r.Num, r.Addr)
}

// ShardingKey is the sharding expression of every Distributed table over usage data: a
// key's rows, raw and rolled up, live on one shard. ShardOf computes the same choice in Go.
const ShardingKey = "cityHash64(project, key_id)"

// LifecycleShardingKey places lifecycle events by project alone: a project's audit chain
// lives on one shard, so a batch extends it with one insert (atomic for the rows of one
// month). A key's lifecycle is then on one shard too.
// ShardOfProject computes the same choice in Go.
const LifecycleShardingKey = "cityHash64(project)"

// OpenCluster reads the topology of the named cluster from system.clusters over conn (any
// server of the cluster) and opens a connection to each of its servers with cfg's
// credentials and options. The connections are lazy: a server that is down fails only the
// calls made to it.
func OpenCluster(ctx context.Context, cfg Config, conn driver.Conn, name string) (*Cluster, error) {
	if !identifier.MatchString(name) {
		return nil, fmt.Errorf("clickhouse cluster %q must be a plain identifier", name)
	}
	opts, err := clickhouse.ParseDSN(cfg.DSN)
	if err != nil {
		return nil, fmt.Errorf("clickhouse dsn: %w", err)
	}
	rows, err := conn.Query(ctx, "SELECT shard_num, shard_weight, replica_num, host_name, port FROM system.clusters WHERE cluster = ? ORDER BY shard_num, replica_num", name)
	if err != nil {
		return nil, fmt.Errorf("read cluster %s from system.clusters: %w", name, err)
	}
	defer rows.Close()
	c := &Cluster{Name: name, Database: opts.Auth.Database}
	for rows.Next() {
		var shardNum, weight, replicaNum uint32
		var host string
		var port uint16
		if err := rows.Scan(&shardNum, &weight, &replicaNum, &host, &port); err != nil {
			return nil, fmt.Errorf("read cluster %s: %w", name, err)
		}
		if len(c.Shards) == 0 || c.Shards[len(c.Shards)-1].Num != int(shardNum) {
			c.Shards = append(c.Shards, &Shard{Num: int(shardNum), Index: len(c.Shards), Weight: int(weight)})
		}
		shard := c.Shards[len(c.Shards)-1]
		shard.Replicas = append(shard.Replicas, &Replica{Shard: int(shardNum), Num: int(replicaNum), Addr: net.JoinHostPort(host, strconv.Itoa(int(port)))})
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read cluster %s: %w", name, err)
	}
	if len(c.Shards) == 0 {
		return nil, fmt.Errorf("clickhouse cluster %q is not in system.clusters of the server the DSN points at (remote_servers in its config)", name)
	}
	for _, s := range c.Shards {
		for range max(s.Weight, 0) {
			c.slots = append(c.slots, s.Index)
		}
	}
	if len(c.slots) == 0 {
		return nil, fmt.Errorf("clickhouse cluster %q: every shard has weight 0", name)
	}
	for _, s := range c.Shards {
		for _, r := range s.Replicas {
			o := *opts
			o.Addr = []string{r.Addr}
			if cfg.DialTimeout > 0 {
				o.DialTimeout = cfg.DialTimeout
			}
			if r.Conn, err = clickhouse.Open(&o); err != nil {
				c.Close()
				return nil, fmt.Errorf("open %s: %w", r.Name(), err)
			}
		}
	}
	return c, nil
}

// ShardOf is the index in Shards of the shard that holds a key's rows: the choice the
// Distributed tables make with ShardingKey, cityHash64(project, key_id) modulo the sum of
// the shard weights (ClickHouse's cityHash64 of two arguments combines the two strings'
// CityHash64 v1.0.2 with Hash128to64).
func (c *Cluster) ShardOf(project, keyID string) int {
	h := hash128to64(city.CH64([]byte(project)), city.CH64([]byte(keyID)))
	return c.slots[h%uint64(len(c.slots))]
}

// ShardOfProject is the index in Shards of the shard that holds a project's lifecycle events
// (LifecycleShardingKey).
func (c *Cluster) ShardOfProject(project string) int {
	return c.slots[city.CH64([]byte(project))%uint64(len(c.slots))]
}

// hash128to64 is CityHash's Hash128to64, which ClickHouse uses to combine the hashes of
// several arguments.
func hash128to64(lo, hi uint64) uint64 {
	const kMul = 0x9ddfea08eb382d69
	a := (lo ^ hi) * kMul
	a ^= a >> 47
	b := (hi ^ a) * kMul
	b ^= b >> 47
	return b * kMul
}

// Replicas is every server of the cluster, shard by shard.
func (c *Cluster) Replicas() []*Replica {
	var out []*Replica
	for _, s := range c.Shards {
		out = append(out, s.Replicas...)
	}
	return out
}

// Unreachable pings every server and returns an error naming those that did not answer,
// nil when all did. ON CLUSTER DDL waits for every server (distributed_ddl_task_timeout, 3
// minutes by default) before failing, so migrations check this first and fail at once.
func (c *Cluster) Unreachable(ctx context.Context) error {
	var errs []error
	for _, r := range c.Replicas() {
		if err := r.Conn.Ping(ctx); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", r.Name(), err))
		}
	}
	return errors.Join(errs...)
}

// Close closes every server's connection.
func (c *Cluster) Close() {
	for _, r := range c.Replicas() {
		if r.Conn != nil {
			r.Conn.Close()
		}
	}
}
