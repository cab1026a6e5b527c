package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keytrail/keytrail/ingest/broker"
	"github.com/keytrail/keytrail/internal/storage"
	"github.com/keytrail/keytrail/migrations"
)

// openClickHouse connects to ClickHouse and, with -clickhouse-cluster, reads the cluster's
// topology and connects to each of its servers.
func openClickHouse(ctx context.Context, cfg Config) (driver.Conn, *storage.Cluster, error) {
	scfg := storage.Config{DSN: cfg.ClickHouseDSN, Cluster: cfg.ClickHouseCluster}
	conn, err := storage.Open(ctx, scfg)
	if err != nil {
		return nil, nil, err
	}
	if cfg.ClickHouseCluster == "" {
		return conn, nil, nil
	}
	c, err := storage.OpenCluster(ctx, scfg, conn, cfg.ClickHouseCluster)
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	return conn, c, nil
}

// leaseConfig is the configuration of one of this deployment's leases.
func leaseConfig(cfg Config, js jetstream.JetStream, name string, log *slog.Logger) broker.LeaseConfig {
	return broker.LeaseConfig{JetStream: js, Name: name, TTL: cfg.LeaseTTL, Replicas: cfg.StreamReplicas, Logger: log}
}

func (m *Main) leaseConfig(js jetstream.JetStream, name string) broker.LeaseConfig {
	return leaseConfig(m.Config, js, name, m.log)
}

// migrateUnderLease applies the migrations holding the "migrations" lease: processes that
// start together take turns, and each after the first finds nothing left to apply. The
// lease is checked again before every statement, so a process that lost it (paused past the
// TTL) stops before the next statement instead of racing its successor.
func migrateUnderLease(ctx context.Context, log *slog.Logger, lease broker.LeaseConfig, conn driver.Conn, cluster *storage.Cluster, held *prometheus.GaugeVec) (applied []uint32, err error) {
	err = broker.WithLease(ctx, lease, func(ctx context.Context, l *broker.Lease) error {
		if held != nil {
			held.WithLabelValues(lease.Name).Set(1)
			defer held.WithLabelValues(lease.Name).Set(0)
		}
		var err error
		applied, err = migrations.Run(ctx, migrations.Config{Conn: conn, Cluster: cluster, Guard: l.Check})
		if len(applied) > 0 {
			log.Info("applied migrations", "versions", applied)
		}
		return err
	})
	return applied, err
}

// whileLeader runs fn whenever this process holds the named lease, until ctx ends: fn's
// context ends when the lease is lost, and the process then waits to hold it again. Several
// query nodes run the alert evaluator this way, one at a time.
func whileLeader(ctx context.Context, log *slog.Logger, lease broker.LeaseConfig, held *prometheus.GaugeVec, fn func(context.Context) error) error {
	for ctx.Err() == nil {
		err := broker.WithLease(ctx, lease, func(lctx context.Context, _ *broker.Lease) error {
			log.Info("holding the lease; running", "lease", lease.Name)
			held.WithLabelValues(lease.Name).Set(1)
			defer held.WithLabelValues(lease.Name).Set(0)
			err := fn(lctx)
			if ctx.Err() == nil {
				log.Warn("lost the lease; standing by", "lease", lease.Name, "error", err)
			}
			return err
		})
		if ctx.Err() != nil {
			return nil
		}
		if err != nil && !errors.Is(err, context.Canceled) {
			log.Warn("lease holder stopped with an error; waiting for the lease again", "lease", lease.Name, "error", err)
			t := time.NewTimer(time.Second)
			select {
			case <-ctx.Done():
			case <-t.C:
			}
			t.Stop()
		}
	}
	return nil
}

// runMigrate is `keytrail migrate`: apply the schema and exit. With -nats-url it takes the
// same lease as starting processes; without one there is no NATS to hold it in, so the
// operator must make sure nothing else migrates at the same time (a single-server deployment
// upgraded with keytrail stopped).
func runMigrate(ctx context.Context, cfg Config, stdout io.Writer) error {
	log := newLogger(cfg, stdout)
	conn, cluster, err := openClickHouse(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close()
	if cluster != nil {
		defer cluster.Close()
	}
	var applied []uint32
	if cfg.NATSURL == "" {
		log.Warn("no -nats-url: applying migrations without the migrations lease; no other keytrail process may be migrating")
		applied, err = migrations.Run(ctx, migrations.Config{Conn: conn, Cluster: cluster})
	} else {
		nc, cerr := nats.Connect(cfg.NATSURL, nats.Name("keytrail-migrate"))
		if cerr != nil {
			return fmt.Errorf("connect nats %s: %w", cfg.NATSURL, cerr)
		}
		defer nc.Close()
		js, jerr := jetstream.New(nc)
		if jerr != nil {
			return fmt.Errorf("jetstream: %w", jerr)
		}
		applied, err = migrateUnderLease(ctx, log, leaseConfig(cfg, js, "migrations", log), conn, cluster, nil)
	}
	fmt.Fprintf(stdout, "applied migrations %v\n", applied)
	return err
}
