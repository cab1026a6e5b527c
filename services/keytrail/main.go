package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/keytrail/keytrail/event"
	"github.com/keytrail/keytrail/ingest"
	"github.com/keytrail/keytrail/ingest/broker"
	"github.com/keytrail/keytrail/ingest/chsink"
	"github.com/keytrail/keytrail/ingest/reconcile"
	"github.com/keytrail/keytrail/internal/storage"
	"github.com/keytrail/keytrail/query/alerting"
	"github.com/keytrail/keytrail/query/api"
	"github.com/keytrail/keytrail/query/auditlog"
	"github.com/keytrail/keytrail/query/chreader"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "keytrail:", err)
		var coded *exitCodeError
		if errors.As(err, &coded) {
			os.Exit(coded.code)
		}
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout io.Writer) error {
	command := "serve"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		command, args = args[0], args[1:]
	}
	switch command {
	case "serve":
		cfg, err := parseConfig("keytrail serve", args)
		if err != nil {
			return err
		}
		applyMemoryLimit(cfg, newLogger(cfg, stdout))
		m := &Main{Config: cfg, Stdout: stdout}
		if err := m.Start(ctx); err != nil {
			m.Close()
			return err
		}
		<-ctx.Done()
		return m.Close()
	case "migrate":
		cfg, err := parseConfig("keytrail migrate", args)
		if err != nil {
			return err
		}
		return runMigrate(ctx, cfg, stdout)
	case "rotation":
		return runRotation(ctx, args, stdout)
	case "token":
		return runToken(args, stdout)
	case "deadletters":
		return runDeadLetters(ctx, args, stdout)
	}
	return &exitCodeError{exitUsage, fmt.Errorf("unknown command %q (want serve, migrate, rotation, token or deadletters)", command)}
}

// Main is one running keytrail process. Start brings the parts up in dependency order;
// Close stops them in reverse, so the ingester flushes before NATS and ClickHouse go away.
type Main struct {
	Config Config
	Stdout io.Writer

	// Set by Start: where the process actually listens (ports may be 0 in the config).
	NATSURL  string
	GRPCAddr string
	HTTPAddr string
	// AdminToken is the ephemeral admin token of dev mode (no tokens file), else empty.
	AdminToken string

	log      *slog.Logger
	registry *prometheus.Registry
	nats     *server.Server
	nc       *nats.Conn
	ch       driver.Conn
	// queryCH is the query API's own pool, sized for its bound on calls in flight, so an
	// admitted call never waits for a connection and API load cannot starve the ingester's
	// or the query audit log's writes.
	queryCH  driver.Conn
	cluster  *storage.Cluster
	recorder *auditlog.Recorder
	ingester *ingest.Ingester
	leases   *prometheus.GaugeVec

	cancel context.CancelFunc
	wg     sync.WaitGroup
	errMu  sync.Mutex
	errs   []error
}

// Start runs every part the role needs and returns once they are serving.
func (m *Main) Start(parent context.Context) error {
	cfg := m.Config
	m.log = newLogger(cfg, m.Stdout)
	m.registry = prometheus.NewRegistry()
	m.registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	ctx, cancel := context.WithCancel(parent)
	m.cancel = cancel

	// 1. NATS: embedded unless an external URL is configured.
	m.NATSURL = cfg.NATSURL
	if m.NATSURL == "" {
		host, port, err := splitHostPort(cfg.NATSListen)
		if err != nil {
			return fmt.Errorf("nats-listen: %w", err)
		}
		syncInterval, syncAlways, _ := cfg.natsSync()
		srv, err := broker.RunEmbedded(broker.EmbeddedConfig{Host: host, Port: port, StoreDir: cfg.NATSStoreDir, SyncInterval: syncInterval, SyncAlways: syncAlways})
		if err != nil {
			return err
		}
		m.nats = srv
		m.NATSURL = srv.ClientURL()
	}
	nc, err := nats.Connect(m.NATSURL, nats.Name("keytrail"), nats.MaxReconnects(-1), nats.ReconnectWait(500*time.Millisecond),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) { m.log.Warn("nats disconnected", "error", err) }),
		nats.ReconnectHandler(func(*nats.Conn) { m.log.Info("nats reconnected") }))
	if err != nil {
		return fmt.Errorf("connect nats %s: %w", m.NATSURL, err)
	}
	m.nc = nc
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	streams := broker.DefaultStreamConfig()
	streams.Subjects = event.Subjects{Prefix: cfg.SubjectPrefix}
	streams.SharedConsumer = cfg.SharedConsumer
	streams.AckWait, streams.MaxAckPending = cfg.AckWait, cfg.MaxAckPending
	streams.Replicas = cfg.StreamReplicas
	streams.Partitions, streams.Partition = cfg.IngestPartitions, cfg.IngestPartition
	if err := broker.EnsureStreams(ctx, js, streams); err != nil {
		return err
	}
	alerts := alerting.DefaultStreamConfig(cfg.SubjectPrefix)
	alerts.Replicas = cfg.StreamReplicas
	if err := broker.Provision(ctx, "ensure the alerts stream", func(ctx context.Context) error { return alerting.EnsureStreamConfig(ctx, js, alerts) }); err != nil {
		return err
	}
	m.leases = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "keytrail_lease_held",
		Help: "1 while this process holds the lease (migrations, alert-evaluator), else 0."}, []string{"lease"})
	m.registry.MustRegister(m.leases)

	// 2. ClickHouse, with the schema brought up to date by one process at a time.
	if m.ch, m.cluster, err = openClickHouse(ctx, cfg); err != nil {
		return err
	}
	if _, err := migrateUnderLease(ctx, m.log, m.leaseConfig(js, "migrations"), m.ch, m.cluster, m.leases); err != nil {
		return err
	}
	// On a cluster the API reads through the Distributed tables (see chreader.ClusterSQL).
	readConn := m.ch
	if m.cluster != nil {
		readConn = chreader.ClusterConn(m.ch)
	}

	// 3. The ingester, its sink guarded by the rollup reconciliation (which repairs what an
	// insert cut between its raw part and its views left out of the rollups, before the
	// ingester acknowledges it, and sweeps on a schedule).
	if cfg.runsIngest() {
		sink, err := chsink.New(chsink.Config{Conn: m.ch, Cluster: m.cluster})
		if err != nil {
			return err
		}
		var guarded ingest.Sink = sink
		var rec *reconcile.Reconciler
		if m.cluster == nil {
			if rec, err = m.reconciler(ctx, js, sink); err != nil {
				return err
			}
			guarded = rec.Guard()
		} else {
			// The reconciliation compares raw rows with rollups read back to back; on a
			// cluster the two reads can come from replicas at different points of their
			// replication, and a short-looking cell would be "repaired" twice. There the
			// ingester's identical retry completes an insert cut between its raw part and
			// its views instead (chsink/cluster.go); docs/cluster.md states what is left.
			m.log.Info("rollup reconciliation is off on a ClickHouse cluster; an insert cut half way is completed by the ingester's identical retry")
		}
		ing, err := ingest.New(ctx, ingest.Config{
			JetStream: js, Streams: streams, Sink: guarded,
			BatchSize: cfg.BatchSize, FlushInterval: cfg.FlushInterval, StallTimeout: cfg.StallTimeout,
			Metrics: ingest.NewMetrics(m.registry), Logger: m.log,
		})
		if err != nil {
			return err
		}
		m.ingester = ing
		m.goRun("ingester", func() error { return ing.Run(ctx) })
		if rec != nil {
			m.goRun("reconcile", func() error { return rec.Run(ctx) })
		}
	}

	// 4. The query API, behind authentication and the query audit log.
	if cfg.runsQuery() {
		authn, err := m.authenticator()
		if err != nil {
			return err
		}
		tlsConfig, err := serverTLS(cfg)
		if err != nil {
			return err
		}
		if m.recorder, err = auditlog.New(auditlog.Config{Conn: m.ch, Logger: m.log}); err != nil {
			return err
		}
		admission := cfg.admission()
		if m.queryCH, err = storage.Open(ctx, storage.Config{DSN: cfg.ClickHouseDSN, Cluster: cfg.ClickHouseCluster, MaxOpenConns: admission.StoragePoolSize()}); err != nil {
			return err
		}
		queryConn := m.queryCH
		if m.cluster != nil {
			queryConn = chreader.ClusterConn(m.queryCH)
		}
		srv, err := api.New(api.Config{
			Reader:     chreader.NewReader(queryConn, nil),
			Ready:      m.ready,
			Auth:       authn,
			Recorder:   m.recorder,
			Admission:  admission,
			TLS:        tlsConfig,
			Gatherer:   m.registry,
			Registerer: m.registry,
			Logger:     m.log,
			Console:    true,
		})
		if err != nil {
			return err
		}
		grpcLis, err := net.Listen("tcp", cfg.GRPCListen)
		if err != nil {
			return fmt.Errorf("grpc-listen: %w", err)
		}
		httpLis, err := net.Listen("tcp", cfg.HTTPListen)
		if err != nil {
			grpcLis.Close()
			return fmt.Errorf("http-listen: %w", err)
		}
		m.GRPCAddr, m.HTTPAddr = grpcLis.Addr().String(), httpLis.Addr().String()
		m.goRun("api", func() error { return srv.Serve(ctx, grpcLis, httpLis) })
	}

	// An ingest-only process has no API, but operators still scrape its metrics (consumer lag,
	// insert latency) and probe it: the same /metrics, /healthz and /readyz on -http-listen.
	if !cfg.runsQuery() && cfg.HTTPListen != "" {
		lis, err := net.Listen("tcp", cfg.HTTPListen)
		if err != nil {
			return fmt.Errorf("http-listen: %w", err)
		}
		m.HTTPAddr = lis.Addr().String()
		mux := http.NewServeMux()
		api.MountOps(mux, m.ready, m.registry, m.log)
		ops := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		m.goRun("ops-http", func() error {
			go func() {
				<-ctx.Done()
				shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				_ = ops.Shutdown(shutdownCtx)
			}()
			if err := ops.Serve(lis); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
	}

	// 5. The alert evaluator, beside the query API: once per deployment, in whichever query
	// process holds the alert-evaluator lease; the others stand by to take over.
	if cfg.runsQuery() && cfg.AlertInterval > 0 {
		ev, err := alerting.New(alerting.Config{
			Source: chreader.NewReader(readConn, nil), JetStream: js, Prefix: cfg.SubjectPrefix,
			Interval: cfg.AlertInterval, Window: cfg.AlertWindow,
			NewCallers: alerting.NewCallerMode(cfg.AlertNewCallers),
			WebhookURL: cfg.AlertWebhookURL, WebhookFormat: alerting.WebhookFormat(cfg.AlertWebhookFormat),
			Registerer: m.registry, Logger: m.log,
		})
		if err != nil {
			return err
		}
		m.goRun("alerting", func() error {
			return whileLeader(ctx, m.log, m.leaseConfig(js, "alert-evaluator"), m.leases, ev.Run)
		})
	}

	m.log.Info("keytrail started", "role", cfg.Role, "nats", m.NATSURL, "grpc", m.GRPCAddr, "http", m.HTTPAddr)
	return nil
}

// reconciler builds the rollup reconciliation of the ingester's database. Its repairs are
// serialized with other processes writing the same database by that database's lease.
func (m *Main) reconciler(ctx context.Context, js jetstream.JetStream, sink *chsink.Sink) (*reconcile.Reconciler, error) {
	var database string
	if err := m.ch.QueryRow(ctx, "SELECT currentDatabase()").Scan(&database); err != nil {
		return nil, fmt.Errorf("read the current database: %w", err)
	}
	lcfg := m.leaseConfig(js, reconcile.LeaseName(database))
	// A repair holds the ingester's writes while it waits: ask again soon, not every TTL/5.
	lcfg.Poll = 100 * time.Millisecond
	lease, err := broker.OpenLease(ctx, lcfg)
	if err != nil {
		return nil, err
	}
	return reconcile.New(reconcile.Config{
		Conn: m.ch, Sink: sink, Lease: lease,
		Interval: m.Config.ReconcileInterval, Lookback: m.Config.ReconcileLookback,
		Registerer: m.registry, Logger: m.log,
	})
}

// ready is the readiness probe: storage and NATS reachable, and ingestion not stalled.
func (m *Main) ready(ctx context.Context) error {
	if m.nc == nil || !m.nc.IsConnected() {
		return errors.New("nats not connected")
	}
	if err := m.ch.Ping(ctx); err != nil {
		return fmt.Errorf("clickhouse: %w", err)
	}
	if m.ingester != nil {
		return m.ingester.Stalled()
	}
	return nil
}

func (m *Main) goRun(name string, fn func() error) {
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		if err := fn(); err != nil {
			m.log.Error("stopped with error", "part", name, "error", err)
			m.errMu.Lock()
			m.errs = append(m.errs, fmt.Errorf("%s: %w", name, err))
			m.errMu.Unlock()
		}
	}()
}

// Close stops the ingester and API (which flush and drain), then NATS and ClickHouse.
func (m *Main) Close() error {
	if m.cancel != nil {
		m.cancel()
	}
	m.wg.Wait()
	if m.recorder != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := m.recorder.Close(ctx); err != nil {
			m.log.Error("query audit records not flushed", "error", err)
		}
		cancel()
	}
	if m.nc != nil {
		_ = m.nc.Drain()
		m.nc.Close()
	}
	if m.nats != nil {
		m.nats.Shutdown()
		m.nats.WaitForShutdown()
	}
	if m.queryCH != nil {
		m.queryCH.Close()
	}
	if m.cluster != nil {
		m.cluster.Close()
	}
	if m.ch != nil {
		m.ch.Close()
	}
	if m.log != nil {
		m.log.Info("keytrail stopped")
	}
	m.errMu.Lock()
	defer m.errMu.Unlock()
	return errors.Join(m.errs...)
}

func newLogger(cfg Config, w io.Writer) *slog.Logger {
	level, _ := cfg.logLevel() // validated by parseConfig
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func splitHostPort(addr string) (string, int, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	var port int
	if _, err := fmt.Sscanf(portStr, "%d", &port); err != nil {
		return "", 0, fmt.Errorf("port %q: %w", portStr, err)
	}
	if port == 0 {
		port = -1 // the NATS server's "pick a free port"
	}
	return host, port, nil
}

// applyMemoryLimit sets the process-wide soft memory limit of -memory-limit, unless the
// operator set GOMEMLIMIT, which the runtime already applied. It is process-wide, so it is
// applied here and not in Start (tests run several Mains in one process).
func applyMemoryLimit(cfg Config, log *slog.Logger) {
	if os.Getenv("GOMEMLIMIT") != "" {
		return
	}
	limit, _ := cfg.memoryLimit() // validated by parseConfig
	if limit > 0 {
		debug.SetMemoryLimit(limit)
		log.Info("soft memory limit set", "bytes", limit, "from", "-memory-limit "+cfg.MemoryLimit)
	}
}
