package main

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/keytrail/keytrail/ingest"
	"github.com/keytrail/keytrail/ingest/broker"
	"github.com/keytrail/keytrail/internal/flagenv"
	"github.com/keytrail/keytrail/internal/storage"
	"github.com/keytrail/keytrail/query/alerting"
	"github.com/keytrail/keytrail/query/api"
)

// Config is everything `keytrail serve` and `keytrail migrate` can be told. Each flag has an
// environment variable (KEYTRAIL_ + the flag name in upper case with - as _); the flag wins
// when both are given.
type Config struct {
	Role string

	NATSURL        string
	NATSListen     string
	NATSStoreDir   string
	NATSSyncPeriod string
	SubjectPrefix  string
	StreamReplicas int

	ClickHouseDSN     string
	ClickHouseCluster string

	GRPCListen string
	HTTPListen string

	QueryMaxInflight             int
	QueryMaxInflightPerPrincipal int
	QueryQueueTimeout            time.Duration

	BatchSize        int
	FlushInterval    time.Duration
	SharedConsumer   bool
	IngestPartitions int
	IngestPartition  int
	AckWait          time.Duration
	MaxAckPending    int
	StallTimeout     time.Duration

	LeaseTTL time.Duration

	ReconcileInterval time.Duration
	ReconcileLookback time.Duration

	AlertInterval      time.Duration
	AlertWindow        time.Duration
	AlertWebhookURL    string
	AlertWebhookFormat string
	AlertNewCallers    string

	AuthTokensFile  string
	DevTokenFile    string
	TLSCertFile     string
	TLSKeyFile      string
	TLSClientCAFile string

	LogFormat string
	LogLevel  string

	MemoryLimit string
}

// Roles a process can take; "all" is both in one process.
const (
	RoleAll    = "all"
	RoleIngest = "ingest"
	RoleQuery  = "query"
)

func (c Config) runsIngest() bool { return c.Role == RoleAll || c.Role == RoleIngest }
func (c Config) runsQuery() bool  { return c.Role == RoleAll || c.Role == RoleQuery }

// envPrefix starts the environment variable of every flag: -batch-size is KEYTRAIL_BATCH_SIZE.
const envPrefix = "KEYTRAIL"

// invalid is the error for a value a flag cannot take, naming the flag and its variable.
func invalid(flagName, value, want string) error {
	return flagenv.Invalid(envPrefix, flagName, value, want)
}

// ref names a flag and its variable in an error message.
func ref(flagName string) string { return flagenv.Ref(envPrefix, flagName) }

// Validate reports every problem at once, each naming the flag and its variable.
func (c Config) Validate() error {
	var errs []error
	switch c.Role {
	case RoleAll, RoleIngest, RoleQuery:
	default:
		errs = append(errs, invalid("role", c.Role, "all, ingest or query"))
	}
	if c.NATSURL == "" && c.NATSStoreDir == "" {
		errs = append(errs, fmt.Errorf("%s is required when running the embedded NATS server (no %s)", ref("nats-store-dir"), ref("nats-url")))
	}
	if err := (storage.Config{DSN: c.ClickHouseDSN}).Validate(); err != nil {
		errs = append(errs, fmt.Errorf("%s: %w", ref("clickhouse-dsn"), err))
	}
	if c.ClickHouseCluster != "" && (storage.Config{DSN: storage.DefaultDSN, Cluster: c.ClickHouseCluster}).Validate() != nil {
		errs = append(errs, invalid("clickhouse-cluster", c.ClickHouseCluster, "a plain identifier, the cluster's name in remote_servers"))
	}
	if c.StreamReplicas < 1 || c.StreamReplicas > 5 {
		errs = append(errs, invalid("stream-replicas", strconv.Itoa(c.StreamReplicas), "1 to 5"))
	} else if c.StreamReplicas > 1 && c.NATSURL == "" {
		errs = append(errs, fmt.Errorf("%s above 1 needs a NATS cluster (%s); the embedded server is a single node", ref("stream-replicas"), ref("nats-url")))
	}
	if c.IngestPartitions < 1 {
		errs = append(errs, invalid("ingest-partitions", strconv.Itoa(c.IngestPartitions), "a positive number"))
	} else if c.IngestPartition < 0 || c.IngestPartition >= c.IngestPartitions {
		errs = append(errs, invalid("ingest-partition", strconv.Itoa(c.IngestPartition), fmt.Sprintf("one of the %d partitions, 0 to %d", c.IngestPartitions, c.IngestPartitions-1)))
	}
	if c.IngestPartitions > 1 && c.SharedConsumer {
		errs = append(errs, fmt.Errorf("%s and %s exclude each other: a partition keeps one writer per audit chain", ref("ingest-partitions"), ref("ingest-shared-consumer")))
	}
	if c.LeaseTTL < time.Second {
		errs = append(errs, invalid("lease-ttl", c.LeaseTTL.String(), "at least 1s"))
	}
	if c.runsQuery() && (c.GRPCListen == "" || c.HTTPListen == "") {
		errs = append(errs, fmt.Errorf("%s and %s are required for the query role", ref("grpc-listen"), ref("http-listen")))
	}
	for _, l := range []struct{ flag, addr string }{{"nats-listen", c.NATSListen}, {"grpc-listen", c.GRPCListen}, {"http-listen", c.HTTPListen}} {
		if _, _, err := net.SplitHostPort(l.addr); l.addr != "" && err != nil {
			errs = append(errs, invalid(l.flag, l.addr, "host:port, such as 127.0.0.1:8080 or :0"))
		}
	}
	if c.SubjectPrefix == "" || strings.ContainsAny(c.SubjectPrefix, ".*> \t") {
		errs = append(errs, invalid("subject-prefix", c.SubjectPrefix, "one NATS subject token (no dots, wildcards or spaces)"))
	}
	if c.AlertWebhookURL != "" {
		if u, err := url.Parse(c.AlertWebhookURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			// The URL is not repeated: it may carry a token.
			errs = append(errs, fmt.Errorf("%s must be an absolute http(s) URL", ref("alert-webhook-url")))
		}
	}
	if c.ReconcileInterval < 0 {
		errs = append(errs, invalid("reconcile-interval", c.ReconcileInterval.String(), "0 (no sweep) or a positive duration"))
	}
	if c.ReconcileLookback <= 0 {
		errs = append(errs, invalid("reconcile-lookback", c.ReconcileLookback.String(), "a positive duration"))
	}
	if c.QueryMaxInflight < 0 {
		errs = append(errs, invalid("query-max-inflight", strconv.Itoa(c.QueryMaxInflight), "0 (no bound) or a positive number"))
	}
	if c.QueryMaxInflightPerPrincipal < 0 {
		errs = append(errs, invalid("query-max-inflight-per-principal", strconv.Itoa(c.QueryMaxInflightPerPrincipal), "0 (query-max-inflight) or a positive number"))
	}
	if c.QueryQueueTimeout < 0 {
		errs = append(errs, invalid("query-queue-timeout", c.QueryQueueTimeout.String(), "0 (shed at once) or a positive duration"))
	}
	if c.AlertInterval < 0 {
		errs = append(errs, invalid("alert-interval", c.AlertInterval.String(), "0 (off) or a positive duration"))
	}
	if c.AlertWindow < 0 {
		errs = append(errs, invalid("alert-window", c.AlertWindow.String(), "a positive duration"))
	}
	switch alerting.NewCallerMode(c.AlertNewCallers) {
	case alerting.NewCallersAll, alerting.NewCallersServices, alerting.NewCallersOff:
	default:
		errs = append(errs, invalid("alert-new-callers", c.AlertNewCallers, "all, services or off"))
	}
	switch alerting.WebhookFormat(c.AlertWebhookFormat) {
	case alerting.WebhookProtoJSON, alerting.WebhookAlertmanager:
	default:
		errs = append(errs, invalid("alert-webhook-format", c.AlertWebhookFormat, "protojson or alertmanager"))
	}
	if _, _, err := c.natsSync(); err != nil {
		errs = append(errs, err)
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		errs = append(errs, fmt.Errorf("%s and %s go together", ref("tls-cert-file"), ref("tls-key-file")))
	}
	if c.TLSClientCAFile != "" && c.TLSCertFile == "" {
		errs = append(errs, fmt.Errorf("%s (mTLS) needs %s and %s", ref("tls-client-ca-file"), ref("tls-cert-file"), ref("tls-key-file")))
	}
	if c.BatchSize <= 0 {
		errs = append(errs, invalid("batch-size", strconv.Itoa(c.BatchSize), "a positive number"))
	}
	if c.FlushInterval <= 0 {
		errs = append(errs, invalid("flush-interval", c.FlushInterval.String(), "a positive duration"))
	}
	if c.AckWait <= 0 {
		errs = append(errs, invalid("ack-wait", c.AckWait.String(), "a positive duration"))
	}
	if c.StallTimeout <= 0 {
		errs = append(errs, invalid("ingest-stall-timeout", c.StallTimeout.String(), "a positive duration"))
	}
	if c.MaxAckPending <= 0 {
		errs = append(errs, invalid("max-ack-pending", strconv.Itoa(c.MaxAckPending), "a positive number"))
	} else if c.BatchSize > 0 {
		if err := ingest.CheckAckPending(c.BatchSize, c.MaxAckPending); err != nil {
			errs = append(errs, fmt.Errorf("%s and %s: %w", ref("max-ack-pending"), ref("batch-size"), err))
		}
	}
	if _, err := c.memoryLimit(); err != nil {
		errs = append(errs, err)
	}
	switch c.LogFormat {
	case "text", "json":
	default:
		errs = append(errs, invalid("log-format", c.LogFormat, "text or json"))
	}
	if _, err := c.logLevel(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// parseConfig reads flags, and the environment variables of those not given (see flagenv).
func parseConfig(name string, args []string) (Config, error) {
	var c Config
	if err := flagenv.Parse(flagSet(name, &c), args, envPrefix); err != nil {
		return Config{}, err
	}
	return c, c.Validate()
}

// flagSet defines every flag, with its default, on c.
func flagSet(name string, c *Config) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.StringVar(&c.Role, "role", RoleAll, "what this process runs: all, ingest or query")
	fs.StringVar(&c.NATSURL, "nats-url", "", "external NATS URL, or several separated by commas (a cluster); empty runs an embedded NATS server with JetStream")
	fs.StringVar(&c.NATSListen, "nats-listen", "127.0.0.1:4222", "address of the embedded NATS server")
	fs.StringVar(&c.NATSStoreDir, "nats-store-dir", ".local/nats", "JetStream storage of the embedded NATS server")
	fs.StringVar(&c.NATSSyncPeriod, "nats-sync-interval", "", "how often the embedded JetStream fsyncs: a duration, or \"always\" to fsync every write; empty keeps the server default (2m)")
	fs.StringVar(&c.SubjectPrefix, "subject-prefix", "keytrail", "first token of every keytrail subject")
	fs.IntVar(&c.StreamReplicas, "stream-replicas", 1, "replicas of keytrail's JetStream streams and leases (3 on a NATS cluster)")
	fs.StringVar(&c.ClickHouseDSN, "clickhouse-dsn", storage.DefaultDSN, "ClickHouse DSN (native protocol); several hosts (h1:9000,h2:9000) fail over in order")
	fs.StringVar(&c.ClickHouseCluster, "clickhouse-cluster", "", "ClickHouse cluster name (remote_servers): the replicated, sharded schema with Distributed tables; empty for one server (docs/cluster.md)")
	fs.StringVar(&c.GRPCListen, "grpc-listen", "127.0.0.1:9090", "gRPC listen address")
	fs.StringVar(&c.HTTPListen, "http-listen", "127.0.0.1:8080", "REST, OpenAPI, health and metrics listen address (-role ingest: health and metrics only; empty turns them off)")
	fs.IntVar(&c.QueryMaxInflight, "query-max-inflight", api.DefaultMaxInFlight, "most API calls answered at once; beyond it calls wait up to query-queue-timeout, then get 503 (0: no bound)")
	fs.IntVar(&c.QueryMaxInflightPerPrincipal, "query-max-inflight-per-principal", api.DefaultMaxInFlightPerPrincipal, "most API calls one principal may have in flight; beyond it 429 (0: query-max-inflight)")
	fs.DurationVar(&c.QueryQueueTimeout, "query-queue-timeout", api.DefaultQueueTimeout, "how long an API call waits for a slot before it is shed")
	fs.IntVar(&c.BatchSize, "batch-size", ingest.DefaultBatchSize, "most events per ClickHouse insert")
	fs.DurationVar(&c.FlushInterval, "flush-interval", ingest.DefaultFlushInterval, "longest an event waits before its batch is inserted")
	fs.DurationVar(&c.AckWait, "ack-wait", 30*time.Second, "how long JetStream waits for the ingester's ack before redelivering")
	fs.IntVar(&c.MaxAckPending, "max-ack-pending", broker.DefaultStreamConfig().MaxAckPending, "most messages the ingester may hold unacknowledged (at least two batches)")
	fs.DurationVar(&c.StallTimeout, "ingest-stall-timeout", 2*time.Minute, "readiness fails while the ingester has a backlog and has acknowledged nothing for this long")
	fs.BoolVar(&c.SharedConsumer, "ingest-shared-consumer", false, "let several ingesters share the durable consumer (per-message acks; fixed when the consumer is first created)")
	fs.DurationVar(&c.ReconcileInterval, "reconcile-interval", 10*time.Minute, "how often an ingesting process sweeps the rollups for cells short of usage_events and repairs them; 0 turns the sweep off (the check after a redelivery always runs)")
	fs.DurationVar(&c.ReconcileLookback, "reconcile-lookback", 24*time.Hour, "what each rollup sweep compares: the UTC days overlapping this span back from now")
	fs.IntVar(&c.IngestPartitions, "ingest-partitions", 1, "split the events by project into this many partitions, one ingester each (the same on every process; fixed when the events stream is created)")
	fs.IntVar(&c.IngestPartition, "ingest-partition", 0, "the partition this process ingests (0 to ingest-partitions-1)")
	fs.DurationVar(&c.LeaseTTL, "lease-ttl", 10*time.Second, "how long the migrations, alert-evaluator and rollup-repair leases outlive a dead holder (the same on every process)")
	fs.DurationVar(&c.AlertInterval, "alert-interval", time.Minute, "how often the alert evaluator scans; 0 disables it (keep it on in one process per deployment)")
	fs.DurationVar(&c.AlertWindow, "alert-window", 30*time.Minute, "recent range each alert scan examines (must cover ingestion delay)")
	fs.StringVar(&c.AlertWebhookURL, "alert-webhook-url", "", "also POST every alert to this URL")
	fs.StringVar(&c.AlertWebhookFormat, "alert-webhook-format", string(alerting.WebhookProtoJSON), "protojson or alertmanager")
	fs.StringVar(&c.AlertNewCallers, "alert-new-callers", string(alerting.NewCallersAll), "new-caller alerts: all, services or off")
	fs.StringVar(&c.AuthTokensFile, "auth-tokens-file", "", "YAML file of API credentials (hashed tokens, roles); empty runs in dev mode with an ephemeral admin token")
	fs.StringVar(&c.DevTokenFile, "dev-token-file", "", "dev mode: also write the ephemeral admin token to this file (mode 0600)")
	fs.StringVar(&c.TLSCertFile, "tls-cert-file", "", "serve gRPC and REST over TLS with this certificate (PEM)")
	fs.StringVar(&c.TLSKeyFile, "tls-key-file", "", "private key of tls-cert-file (PEM)")
	fs.StringVar(&c.TLSClientCAFile, "tls-client-ca-file", "", "accept client certificates signed by these CAs as credentials (mTLS)")
	fs.StringVar(&c.MemoryLimit, "memory-limit", "auto", "soft limit of the Go runtime's memory (like GOMEMLIMIT, which wins when set): a size such as 100MiB, off, or auto ("+autoMemoryLimitText+")")
	fs.StringVar(&c.LogFormat, "log-format", "text", "text or json")
	fs.StringVar(&c.LogLevel, "log-level", "info", "debug, info, warn or error")
	return fs
}

// logLevel reads -log-level: a slog level name (debug, info, warn, error; an offset such as
// warn+2 is accepted too).
func (c Config) logLevel() (slog.Level, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.LogLevel)); err != nil {
		return 0, invalid("log-level", c.LogLevel, "debug, info, warn or error")
	}
	return level, nil
}

// admission is the query API's bound on calls in flight.
func (c Config) admission() api.Admission {
	return api.Admission{
		MaxInFlight: c.QueryMaxInflight, MaxInFlightPerPrincipal: c.QueryMaxInflightPerPrincipal,
		QueueTimeout: c.QueryQueueTimeout,
	}
}

// natsSync reads -nats-sync-interval.
func (c Config) natsSync() (interval time.Duration, always bool, err error) {
	switch c.NATSSyncPeriod {
	case "":
		return 0, false, nil
	case "always":
		return 0, true, nil
	}
	d, err := time.ParseDuration(c.NATSSyncPeriod)
	if err != nil || d <= 0 {
		return 0, false, invalid("nats-sync-interval", c.NATSSyncPeriod, `a positive duration, "always", or empty (the server's default)`)
	}
	return d, false, nil
}

// AutoIngestMemoryLimit is the soft memory limit "auto" gives an ingest-only process. Its
// working set is bounded by design (two batches of about 32 MB at the default 100k events,
// see ingest.UsageRows, one 10k-row insert chunk, one fetch, the recent-id cache: a live
// heap of about 85 MB measured by `make bench`); without a limit the garbage collector lets the heap grow to
// twice that before collecting. The limit makes it collect earlier instead. Processes that
// embed NATS or serve queries hold data whose size depends on traffic, so "auto" leaves
// them unlimited.
const AutoIngestMemoryLimit = 100 << 20

const autoMemoryLimitText = "100MiB for -role ingest with -nats-url, else off"

// memoryLimit is the soft memory limit in bytes; 0 means none.
func (c Config) memoryLimit() (int64, error) {
	switch v := strings.TrimSpace(c.MemoryLimit); v {
	case "auto", "":
		if c.Role == RoleIngest && c.NATSURL != "" {
			return AutoIngestMemoryLimit, nil
		}
		return 0, nil
	case "off", "0":
		return 0, nil
	default:
		n, err := parseByteSize(v)
		if err != nil || n < 16<<20 {
			return 0, invalid("memory-limit", v, "auto, off, or a size of at least 16MiB such as 100MiB or 2GiB")
		}
		return n, nil
	}
}

// parseByteSize reads the sizes GOMEMLIMIT accepts: a number with an optional B, KiB, MiB,
// GiB or TiB suffix.
func parseByteSize(s string) (int64, error) {
	units := []struct {
		suffix string
		shift  uint
	}{{"TiB", 40}, {"GiB", 30}, {"MiB", 20}, {"KiB", 10}, {"B", 0}}
	shift := uint(0)
	for _, u := range units {
		if strings.HasSuffix(s, u.suffix) {
			s, shift = strings.TrimSuffix(s, u.suffix), u.shift
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > (1<<62)>>shift {
		return 0, fmt.Errorf("size %q", s)
	}
	return n << shift, nil
}
