package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/keytrail/keytrail/internal/storage"
)

// Config is everything the keytrail binary can be told. Each flag has an environment
// variable (KEYTRAIL_ + the flag name in upper case with - as _) that sets its default.
type Config struct {
	Role string

	NATSURL        string
	NATSListen     string
	NATSStoreDir   string
	NATSSyncPeriod string
	SubjectPrefix  string

	ClickHouseDSN string

	GRPCListen string
	HTTPListen string

	BatchSize      int
	FlushInterval  time.Duration
	SharedConsumer bool
	AckWait        time.Duration
	MaxAckPending  int

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

// Validate reports every problem at once.
func (c Config) Validate() error {
	var errs []error
	switch c.Role {
	case RoleAll, RoleIngest, RoleQuery:
	default:
		errs = append(errs, fmt.Errorf("role %q must be one of all, ingest, query", c.Role))
	}
	if c.NATSURL == "" && c.NATSStoreDir == "" {
		errs = append(errs, errors.New("nats-store-dir is required when running the embedded NATS server (no nats-url)"))
	}
	if err := (storage.Config{DSN: c.ClickHouseDSN}).Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.runsQuery() && (c.GRPCListen == "" || c.HTTPListen == "") {
		errs = append(errs, errors.New("grpc-listen and http-listen are required for the query role"))
	}
	if c.AlertInterval < 0 || c.AlertWindow < 0 {
		errs = append(errs, errors.New("alert-interval and alert-window must not be negative"))
	}
	if _, _, err := c.natsSync(); err != nil {
		errs = append(errs, err)
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		errs = append(errs, errors.New("tls-cert-file and tls-key-file go together"))
	}
	if c.TLSClientCAFile != "" && c.TLSCertFile == "" {
		errs = append(errs, errors.New("tls-client-ca-file (mTLS) needs tls-cert-file and tls-key-file"))
	}
	if c.AckWait <= 0 || c.MaxAckPending <= 0 {
		errs = append(errs, errors.New("ack-wait and max-ack-pending must be positive"))
	} else if c.MaxAckPending < 2*c.BatchSize {
		errs = append(errs, fmt.Errorf("max-ack-pending %d must be at least twice batch-size %d (the ingester holds up to two batches)", c.MaxAckPending, c.BatchSize))
	}
	if c.BatchSize <= 0 || c.FlushInterval <= 0 {
		errs = append(errs, errors.New("batch-size and flush-interval must be positive"))
	}
	if _, err := c.memoryLimit(); err != nil {
		errs = append(errs, err)
	}
	switch c.LogFormat {
	case "text", "json":
	default:
		errs = append(errs, fmt.Errorf("log-format %q must be text or json", c.LogFormat))
	}
	return errors.Join(errs...)
}

// parseConfig reads flags, with environment variables as defaults.
func parseConfig(name string, args []string) (Config, error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	var c Config
	str := func(p *string, flagName, def, usage string) {
		fs.StringVar(p, flagName, env(flagName, def), usage+" (env "+envName(flagName)+")")
	}
	dur := func(p *time.Duration, flagName string, def time.Duration, usage string) {
		v := def
		if s := os.Getenv(envName(flagName)); s != "" {
			if d, err := time.ParseDuration(s); err == nil {
				v = d
			}
		}
		fs.DurationVar(p, flagName, v, usage+" (env "+envName(flagName)+")")
	}
	str(&c.Role, "role", RoleAll, "what this process runs: all, ingest or query")
	str(&c.NATSURL, "nats-url", "", "external NATS URL; empty runs an embedded NATS server with JetStream")
	str(&c.NATSListen, "nats-listen", "127.0.0.1:4222", "address of the embedded NATS server")
	str(&c.NATSStoreDir, "nats-store-dir", ".local/nats", "JetStream storage of the embedded NATS server")
	str(&c.NATSSyncPeriod, "nats-sync-interval", "", "how often the embedded JetStream fsyncs: a duration, or \"always\" to fsync every write; empty keeps the server default (2m)")
	str(&c.SubjectPrefix, "subject-prefix", "keytrail", "first token of every keytrail subject")
	str(&c.ClickHouseDSN, "clickhouse-dsn", storage.DefaultDSN, "ClickHouse DSN (native protocol)")
	str(&c.GRPCListen, "grpc-listen", "127.0.0.1:9090", "gRPC listen address")
	str(&c.HTTPListen, "http-listen", "127.0.0.1:8080", "REST, OpenAPI, health and metrics listen address (-role ingest: health and metrics only; empty turns them off)")
	batch := env("batch-size", "10000")
	fs.Func("batch-size", "most events per ClickHouse insert (env KEYTRAIL_BATCH_SIZE, default "+batch+")", func(s string) error {
		n, err := strconv.Atoi(s)
		c.BatchSize = n
		return err
	})
	c.BatchSize, _ = strconv.Atoi(batch)
	dur(&c.FlushInterval, "flush-interval", 500*time.Millisecond, "longest an event waits before its batch is inserted")
	dur(&c.AckWait, "ack-wait", 30*time.Second, "how long JetStream waits for the ingester's ack before redelivering")
	pending := env("max-ack-pending", "50000")
	c.MaxAckPending, _ = strconv.Atoi(pending)
	fs.Func("max-ack-pending", "most messages the ingester may hold unacknowledged (env KEYTRAIL_MAX_ACK_PENDING, default "+pending+")", func(s string) error {
		n, err := strconv.Atoi(s)
		c.MaxAckPending = n
		return err
	})
	fs.BoolVar(&c.SharedConsumer, "ingest-shared-consumer", env("ingest-shared-consumer", "") == "true",
		"let several ingesters share the durable consumer (per-message acks; fixed when the consumer is first created) (env KEYTRAIL_INGEST_SHARED_CONSUMER=true)")
	dur(&c.AlertInterval, "alert-interval", time.Minute, "how often the alert evaluator scans; 0 disables it (keep it on in one process per deployment)")
	dur(&c.AlertWindow, "alert-window", 30*time.Minute, "recent range each alert scan examines (must cover ingestion delay)")
	str(&c.AlertWebhookURL, "alert-webhook-url", "", "also POST every alert to this URL")
	str(&c.AlertWebhookFormat, "alert-webhook-format", "protojson", "protojson or alertmanager")
	str(&c.AlertNewCallers, "alert-new-callers", "all", "new-caller alerts: all, services or off")
	str(&c.AuthTokensFile, "auth-tokens-file", "", "YAML file of API credentials (hashed tokens, roles); empty runs in dev mode with an ephemeral admin token")
	str(&c.DevTokenFile, "dev-token-file", "", "dev mode: also write the ephemeral admin token to this file (mode 0600)")
	str(&c.TLSCertFile, "tls-cert-file", "", "serve gRPC and REST over TLS with this certificate (PEM)")
	str(&c.TLSKeyFile, "tls-key-file", "", "private key of tls-cert-file (PEM)")
	str(&c.TLSClientCAFile, "tls-client-ca-file", "", "accept client certificates signed by these CAs as credentials (mTLS)")
	str(&c.MemoryLimit, "memory-limit", "auto", "soft limit of the Go runtime's memory (like GOMEMLIMIT, which wins when set): a size such as 100MiB, off, or auto ("+autoMemoryLimitText+")")
	str(&c.LogFormat, "log-format", "text", "text or json")
	str(&c.LogLevel, "log-level", "info", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	return c, c.Validate()
}

func envName(flagName string) string {
	return "KEYTRAIL_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

func env(flagName, def string) string {
	if v, ok := os.LookupEnv(envName(flagName)); ok {
		return v
	}
	return def
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
		return 0, false, fmt.Errorf("nats-sync-interval %q must be a positive duration or \"always\"", c.NATSSyncPeriod)
	}
	return d, false, nil
}

// AutoIngestMemoryLimit is the soft memory limit "auto" gives an ingest-only process. Its
// working set is bounded by design (two batches, one fetch, the recent-id cache: about 60 MB
// at the default batch size); without a limit the garbage collector lets the heap grow to
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
			return 0, fmt.Errorf("memory-limit %q: want auto, off, or a size of at least 16MiB such as 100MiB or 2GiB", v)
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
