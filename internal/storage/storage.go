package storage

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// DefaultDSN points at the ClickHouse that `make run` and `make test` start locally.
const DefaultDSN = "clickhouse://127.0.0.1:19000/keytrail"

// Config configures the ClickHouse connection.
type Config struct {
	// DSN as clickhouse-go parses it: clickhouse://user:password@host:port/database?opts.
	// Several hosts (host1:9000,host2:9000) fail over to the next on error.
	DSN string
	// MaxOpenConns bounds concurrent queries and inserts; 0 keeps the driver default.
	MaxOpenConns int
	// DialTimeout bounds connecting; 0 means 5s.
	DialTimeout time.Duration
	// Cluster names the ClickHouse cluster (remote_servers) the database lives on; empty for
	// a single server. Open then creates the database on every server of the cluster.
	Cluster string
}

var identifier = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,63}$`)

// Validate reports every problem with the configuration at once.
func (c Config) Validate() error {
	var errs []error
	opts, err := clickhouse.ParseDSN(c.DSN)
	if err != nil {
		errs = append(errs, fmt.Errorf("clickhouse dsn: %w", err))
	} else {
		if opts.Protocol != clickhouse.Native {
			errs = append(errs, errors.New("clickhouse dsn: only the native protocol (clickhouse://) is supported"))
		}
		if !identifier.MatchString(opts.Auth.Database) {
			errs = append(errs, fmt.Errorf("clickhouse dsn: database %q must be a plain identifier", opts.Auth.Database))
		}
	}
	if c.Cluster != "" && !identifier.MatchString(c.Cluster) {
		errs = append(errs, fmt.Errorf("clickhouse cluster %q must be a plain identifier", c.Cluster))
	}
	if c.MaxOpenConns < 0 {
		errs = append(errs, errors.New("clickhouse: max open conns must not be negative"))
	}
	return errors.Join(errs...)
}

// Open connects, creating the DSN's database if it does not exist yet.
func Open(ctx context.Context, cfg Config) (driver.Conn, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	opts, _ := clickhouse.ParseDSN(cfg.DSN)
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	opts.DialTimeout = cfg.DialTimeout
	if cfg.MaxOpenConns > 0 {
		opts.MaxOpenConns = cfg.MaxOpenConns
		opts.MaxIdleConns = cfg.MaxOpenConns
	}
	database := opts.Auth.Database
	if cfg.Cluster != "" {
		// Inserts into Distributed tables (the query audit log, dead letters) return only once
		// a replica of every shard holds their rows; by default they are queued on the local
		// disk of the server that received them and acknowledged before the shards have them.
		if opts.Settings == nil {
			opts.Settings = clickhouse.Settings{}
		}
		opts.Settings["insert_distributed_sync"] = 1
	}

	// The server rejects a handshake naming a database that does not exist, so the
	// database is created over a connection to "default" first.
	bootstrap := *opts
	bootstrap.Auth.Database = "default"
	if err := createDatabase(ctx, &bootstrap, database, cfg.Cluster); err != nil {
		return nil, err
	}
	conn, err := clickhouse.Open(opts)
	if err != nil {
		return nil, fmt.Errorf("open clickhouse: %w", err)
	}
	if err := conn.Ping(ctx); err != nil {
		conn.Close()
		return nil, fmt.Errorf("ping clickhouse: %w", err)
	}
	return conn, nil
}

func createDatabase(ctx context.Context, opts *clickhouse.Options, database, cluster string) error {
	conn, err := clickhouse.Open(opts)
	if err != nil {
		return fmt.Errorf("open clickhouse: %w", err)
	}
	defer conn.Close()
	// database and cluster matched the identifier pattern in Validate; identifiers cannot be
	// bound.
	create := "CREATE DATABASE IF NOT EXISTS " + database
	if cluster != "" {
		// ON CLUSTER waits for every server of the cluster, so it runs only when the
		// database is missing here: a process restarting while a server is down must not
		// wait for it.
		var n uint64
		if err := conn.QueryRow(ctx, "SELECT count() FROM system.databases WHERE name = ?", database).Scan(&n); err != nil {
			return fmt.Errorf("look for database %s: %w", database, err)
		}
		if n > 0 {
			return nil
		}
		create += " ON CLUSTER " + cluster
	}
	if err := conn.Exec(ctx, create); err != nil {
		return fmt.Errorf("create database %s: %w", database, err)
	}
	return nil
}
