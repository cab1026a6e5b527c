package main

import (
	"flag"
	"strings"
	"testing"
	"time"
)

// flagCase is one flag of `keytrail serve`: a value it takes and the field that value sets,
// a second valid value with a different result (to show which source won), and values it
// refuses. Flags are written -name=value, the one form every type (bool too) takes.
type flagCase struct {
	flag  string
	good  string
	other string
	field func(Config) any
	want  any
	// with are flags the good value needs beside it (a key file beside a certificate).
	with []string
	bad  []string
}

func flagCases() []flagCase {
	return []flagCase{
		{flag: "role", good: "ingest", other: "query", field: func(c Config) any { return c.Role }, want: "ingest", bad: []string{"both", "INGEST"}},
		{flag: "nats-url", good: "nats://n1:4222,nats://n2:4222", other: "nats://x:4222", field: func(c Config) any { return c.NATSURL }, want: "nats://n1:4222,nats://n2:4222"},
		{flag: "nats-listen", good: "0.0.0.0:4223", other: ":4224", field: func(c Config) any { return c.NATSListen }, want: "0.0.0.0:4223", bad: []string{"4222", "localhost"}},
		{flag: "nats-store-dir", good: "/var/lib/nats", other: "/tmp/nats", field: func(c Config) any { return c.NATSStoreDir }, want: "/var/lib/nats"},
		{flag: "nats-sync-interval", good: "10s", other: "always", field: func(c Config) any { return c.NATSSyncPeriod }, want: "10s", bad: []string{"sometimes", "10", "-1s"}},
		{flag: "subject-prefix", good: "kt", other: "audit", field: func(c Config) any { return c.SubjectPrefix }, want: "kt", bad: []string{"a.b", "kt>", "a b"}},
		{flag: "clickhouse-dsn", good: "clickhouse://ch:9000/audit", other: "clickhouse://ch:9000/other", field: func(c Config) any { return c.ClickHouseDSN }, want: "clickhouse://ch:9000/audit", bad: []string{"http://ch:8123/audit", "clickhouse://ch:9000/my-db"}},
		{flag: "stream-replicas", good: "3", other: "5", with: []string{"-nats-url", "nats://n1:4222,nats://n2:4222,nats://n3:4222"}, field: func(c Config) any { return c.StreamReplicas }, want: 3, bad: []string{"0", "6", "three"}},
		{flag: "clickhouse-cluster", good: "keytrail", other: "other", field: func(c Config) any { return c.ClickHouseCluster }, want: "keytrail", bad: []string{"my-cluster", "a b"}},
		{flag: "grpc-listen", good: ":9091", other: ":9092", field: func(c Config) any { return c.GRPCListen }, want: ":9091", bad: []string{"9090"}},
		{flag: "http-listen", good: ":8081", other: ":8082", field: func(c Config) any { return c.HTTPListen }, want: ":8081", bad: []string{"8080"}},
		{flag: "query-max-inflight", good: "16", other: "0", field: func(c Config) any { return c.QueryMaxInflight }, want: 16, bad: []string{"many", "-1", "1.5"}},
		{flag: "query-max-inflight-per-principal", good: "2", other: "0", field: func(c Config) any { return c.QueryMaxInflightPerPrincipal }, want: 2, bad: []string{"half", "-2"}},
		{flag: "query-queue-timeout", good: "250ms", other: "0s", field: func(c Config) any { return c.QueryQueueTimeout }, want: 250 * time.Millisecond, bad: []string{"250", "soon", "-1s"}},
		{flag: "batch-size", good: "20000", other: "5000", field: func(c Config) any { return c.BatchSize }, want: 20000, bad: []string{"lots", "1e4", "0", "-5", "130000"}},
		{flag: "flush-interval", good: "2s", other: "1s", field: func(c Config) any { return c.FlushInterval }, want: 2 * time.Second, bad: []string{"2", "soon", "0s", "-1s"}},
		{flag: "ack-wait", good: "1m", other: "10s", field: func(c Config) any { return c.AckWait }, want: time.Minute, bad: []string{"30", "0s"}},
		{flag: "max-ack-pending", good: "300000", other: "400000", field: func(c Config) any { return c.MaxAckPending }, want: 300000, bad: []string{"many", "0", "199999"}},
		{flag: "ingest-stall-timeout", good: "5m", other: "1m", field: func(c Config) any { return c.StallTimeout }, want: 5 * time.Minute, bad: []string{"300", "0s"}},
		{flag: "ingest-shared-consumer", good: "1", other: "false", field: func(c Config) any { return c.SharedConsumer }, want: true, bad: []string{"yes", "on"}},
		{flag: "reconcile-interval", good: "0s", other: "1m", field: func(c Config) any { return c.ReconcileInterval }, want: time.Duration(0), bad: []string{"10", "-1m"}},
		{flag: "reconcile-lookback", good: "72h", other: "1h", field: func(c Config) any { return c.ReconcileLookback }, want: 72 * time.Hour, bad: []string{"1d", "0s", "-1h"}},
		{flag: "ingest-partitions", good: "4", other: "2", field: func(c Config) any { return c.IngestPartitions }, want: 4, bad: []string{"0", "-1", "many"}},
		{flag: "ingest-partition", good: "2", other: "1", with: []string{"-ingest-partitions", "3"}, field: func(c Config) any { return c.IngestPartition }, want: 2, bad: []string{"3", "-1", "x"}},
		{flag: "lease-ttl", good: "30s", other: "5s", field: func(c Config) any { return c.LeaseTTL }, want: 30 * time.Second, bad: []string{"500ms", "30"}},
		{flag: "alert-interval", good: "0s", other: "5m", field: func(c Config) any { return c.AlertInterval }, want: time.Duration(0), bad: []string{"1", "-1m"}},
		{flag: "alert-window", good: "2h", other: "1h", field: func(c Config) any { return c.AlertWindow }, want: 2 * time.Hour, bad: []string{"x", "-1m"}},
		{flag: "alert-webhook-url", good: "https://hooks.example/alerts", other: "http://other.example/", field: func(c Config) any { return c.AlertWebhookURL }, want: "https://hooks.example/alerts", bad: []string{"hooks.example/alerts", "ftp://hooks.example/"}},
		{flag: "alert-webhook-format", good: "alertmanager", other: "protojson", field: func(c Config) any { return c.AlertWebhookFormat }, want: "alertmanager", bad: []string{"slack"}},
		{flag: "alert-new-callers", good: "services", other: "off", field: func(c Config) any { return c.AlertNewCallers }, want: "services", bad: []string{"some", "none"}},
		{flag: "auth-tokens-file", good: "/etc/keytrail/tokens.yaml", other: "/tmp/t.yaml", field: func(c Config) any { return c.AuthTokensFile }, want: "/etc/keytrail/tokens.yaml"},
		{flag: "dev-token-file", good: "/tmp/admin-token", other: "/tmp/other", field: func(c Config) any { return c.DevTokenFile }, want: "/tmp/admin-token"},
		{flag: "tls-cert-file", good: "cert.pem", other: "other.pem", with: []string{"-tls-key-file", "key.pem"}, field: func(c Config) any { return c.TLSCertFile }, want: "cert.pem"},
		{flag: "tls-key-file", good: "key.pem", other: "other.pem", with: []string{"-tls-cert-file", "cert.pem"}, field: func(c Config) any { return c.TLSKeyFile }, want: "key.pem"},
		{flag: "tls-client-ca-file", good: "ca.pem", other: "other.pem", with: []string{"-tls-cert-file", "cert.pem", "-tls-key-file", "key.pem"}, field: func(c Config) any { return c.TLSClientCAFile }, want: "ca.pem"},
		{flag: "log-format", good: "json", other: "text", field: func(c Config) any { return c.LogFormat }, want: "json", bad: []string{"xml"}},
		{flag: "log-level", good: "debug", other: "error", field: func(c Config) any { return c.LogLevel }, want: "debug", bad: []string{"verbose", "loud"}},
		{flag: "memory-limit", good: "512MiB", other: "off", field: func(c Config) any { return c.MemoryLimit }, want: "512MiB", bad: []string{"lots", "100MB", "1KiB"}},
	}
}

// TestConfigFlags covers every flag of `keytrail serve`: its value parses into the field, its
// environment variable sets it, the flag wins over the variable, and every bad value is a
// start-up error naming both the flag and the variable.
func TestConfigFlags(t *testing.T) {
	cases := flagCases()
	covered := map[string]bool{}
	for _, c := range cases {
		covered[c.flag] = true
	}
	flagSet("test", &Config{}).VisitAll(func(f *flag.Flag) {
		if !covered[f.Name] {
			t.Errorf("flag -%s has no case in flagCases", f.Name)
		}
	})
	clearEnv(t)
	for _, c := range cases {
		env := "KEYTRAIL_" + strings.ToUpper(strings.ReplaceAll(c.flag, "-", "_"))
		t.Run(c.flag, func(t *testing.T) {
			cfg, err := parseConfig("test", append([]string{"-" + c.flag + "=" + c.good}, c.with...))
			if err != nil {
				t.Fatalf("flag: %v", err)
			}
			if got := c.field(cfg); got != c.want {
				t.Errorf("-%s %s: field %v, want %v", c.flag, c.good, got, c.want)
			}

			t.Setenv(env, c.good)
			cfg, err = parseConfig("test", c.with)
			if err != nil {
				t.Fatalf("env: %v", err)
			}
			if got := c.field(cfg); got != c.want {
				t.Errorf("%s=%s: field %v, want %v", env, c.good, got, c.want)
			}

			t.Setenv(env, c.other)
			cfg, err = parseConfig("test", append([]string{"-" + c.flag + "=" + c.good}, c.with...))
			if err != nil {
				t.Fatalf("flag and env: %v", err)
			}
			if got := c.field(cfg); got != c.want {
				t.Errorf("-%s %s with %s=%s: field %v, want the flag's %v", c.flag, c.good, env, c.other, got, c.want)
			}
			t.Setenv(env, "")

			for _, bad := range c.bad {
				wantText := "-" + c.flag + " (env " + env + ")"
				if _, err := parseConfig("test", append([]string{"-" + c.flag + "=" + bad}, c.with...)); err == nil || !strings.Contains(err.Error(), wantText) {
					t.Errorf("-%s %s: error %v; want one containing %q", c.flag, bad, err, wantText)
				}
				t.Setenv(env, bad)
				if _, err := parseConfig("test", c.with); err == nil || !strings.Contains(err.Error(), wantText) {
					t.Errorf("%s=%s: error %v; want one containing %q", env, bad, err, wantText)
				}
				t.Setenv(env, "")
			}
		})
	}
}

// clearEnv unsets every KEYTRAIL_ variable of a flag for the test, so the developer's
// environment cannot change its outcome.
func clearEnv(t *testing.T) {
	flagSet("test", &Config{}).VisitAll(func(f *flag.Flag) {
		t.Setenv("KEYTRAIL_"+strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_")), "")
	})
}

// The defaults are those docs/operations.md lists, and they start a process.
func TestConfigDefaults(t *testing.T) {
	clearEnv(t)
	cfg, err := parseConfig("test", nil)
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		Role: "all", NATSListen: "127.0.0.1:4222", NATSStoreDir: ".local/nats", SubjectPrefix: "keytrail", StreamReplicas: 1,
		ClickHouseDSN: "clickhouse://127.0.0.1:19000/keytrail", GRPCListen: "127.0.0.1:9090", HTTPListen: "127.0.0.1:8080",
		QueryMaxInflight: 8, QueryMaxInflightPerPrincipal: 6, QueryQueueTimeout: 100 * time.Millisecond,
		BatchSize: 100000, FlushInterval: time.Second, AckWait: 30 * time.Second, MaxAckPending: 250000, IngestPartitions: 1, LeaseTTL: 10 * time.Second,
		ReconcileInterval: 10 * time.Minute, ReconcileLookback: 24 * time.Hour,
		StallTimeout: 2 * time.Minute, AlertInterval: time.Minute, AlertWindow: 30 * time.Minute, AlertWebhookFormat: "protojson", AlertNewCallers: "all",
		LogFormat: "text", LogLevel: "info", MemoryLimit: "auto",
	}
	if cfg != want {
		t.Errorf("defaults:\n%+v\nwant\n%+v", cfg, want)
	}
}

// Every problem is reported in one start-up, the three examples among them: a
// duration without a unit, a boolean written 1 (accepted), an unknown log level.
func TestConfigReportsEveryProblem(t *testing.T) {
	clearEnv(t)
	t.Setenv("KEYTRAIL_FLUSH_INTERVAL", "2")
	t.Setenv("KEYTRAIL_BATCH_SIZE", "many")
	_, err := parseConfig("test", []string{"-ack-wait", "x", "-ingest-shared-consumer=maybe"})
	want := `invalid value "x" for -ack-wait (env KEYTRAIL_ACK_WAIT): want a duration such as 500ms, 30s or 1h30m
invalid value "maybe" for -ingest-shared-consumer (env KEYTRAIL_INGEST_SHARED_CONSUMER): want true or false (or 1 or 0)
invalid value "many" for -batch-size (env KEYTRAIL_BATCH_SIZE): want a whole number
invalid value "2" for -flush-interval (env KEYTRAIL_FLUSH_INTERVAL): want a duration such as 500ms, 30s or 1h30m`
	if err == nil || err.Error() != want {
		t.Errorf("parse errors:\n%v\nwant\n%s", err, want)
	}

	clearEnv(t)
	t.Setenv("KEYTRAIL_INGEST_SHARED_CONSUMER", "1")
	_, err = parseConfig("test", []string{"-log-level", "verbose", "-role", "reader", "-batch-size", "130000", "-tls-key-file", "k.pem"})
	want = `invalid value "reader" for -role (env KEYTRAIL_ROLE): want all, ingest or query
-tls-cert-file (env KEYTRAIL_TLS_CERT_FILE) and -tls-key-file (env KEYTRAIL_TLS_KEY_FILE) go together
-max-ack-pending (env KEYTRAIL_MAX_ACK_PENDING) and -batch-size (env KEYTRAIL_BATCH_SIZE): max ack pending 250000 must be at least twice the batch size 130000 (the ingester holds up to two batches)
invalid value "verbose" for -log-level (env KEYTRAIL_LOG_LEVEL): want debug, info, warn or error`
	if err == nil || err.Error() != want {
		t.Errorf("validation errors:\n%v\nwant\n%s", err, want)
	}

	for _, args := range [][]string{{"-role", "ingest", "extra"}, {"serve"}} {
		if _, err := parseConfig("test", args); err == nil || !strings.Contains(err.Error(), `unexpected argument "`+args[len(args)-1]+`"`) {
			t.Errorf("%q: error %v, want one naming the stray argument", args, err)
		}
	}
}

func TestMemoryLimit(t *testing.T) {
	clearEnv(t)
	ingestExternal := []string{"-role", "ingest", "-nats-url", "nats://127.0.0.1:4222"}
	cases := []struct {
		name string
		args []string
		want int64
	}{
		{"auto: ingest-only with external NATS", ingestExternal, 100 << 20},
		{"auto: all roles embed NATS", nil, 0},
		{"auto: ingest with embedded NATS", []string{"-role", "ingest"}, 0},
		{"auto: query", []string{"-role", "query", "-nats-url", "nats://127.0.0.1:4222"}, 0},
		{"off", append(ingestExternal, "-memory-limit", "off"), 0},
		{"MiB", []string{"-memory-limit", "256MiB"}, 256 << 20},
		{"GiB", []string{"-memory-limit", "2GiB"}, 2 << 30},
		{"bytes", []string{"-memory-limit", "16777216"}, 16 << 20},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := parseConfig("test", c.args)
			if err != nil {
				t.Fatal(err)
			}
			got, err := cfg.memoryLimit()
			if err != nil || got != c.want {
				t.Fatalf("memoryLimit() = %d, %v; want %d", got, err, c.want)
			}
		})
	}
	for _, bad := range []string{"lots", "100MB", "-5MiB", "1KiB", "15MiB", "99999999999TiB"} {
		_, err := parseConfig("test", []string{"-memory-limit", bad})
		if err == nil || !strings.Contains(err.Error(), `invalid value "`+bad+`" for -memory-limit (env KEYTRAIL_MEMORY_LIMIT)`) {
			t.Errorf("-memory-limit %s: error %v, want one naming the flag, its variable and the value", bad, err)
		}
	}
}

// The subcommands refuse bad values with exit 2 before they connect anywhere.
func TestSubcommandFlagsAreStrict(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"rotation", "check", "--old", "k", "--quiet", "0s"}, "--quiet 0s must be positive"},
		{[]string{"rotation", "check", "--old", "k", "--quiet", "15"}, `invalid value "15" for flag -quiet`},
		{[]string{"rotation", "check", "--old", "k", "--interval", "-1s"}, "--interval and --timeout must be positive"},
		{[]string{"rotation", "check", "--old", "k", "--json=yes"}, `invalid boolean value "yes" for -json`},
		{[]string{"rotation", "check", "--old", "k", "key_new"}, `unexpected argument "key_new"`},
		{[]string{"rotation", "check"}, "--old is required"},
		{[]string{"token", "new", "--name", "bot", "--role", "admin", "--expires", "-1h"}, "--expires -1h0m0s must not be negative"},
		{[]string{"token", "new", "--name", "bot", "--role", "admin", "--expires", "30d"}, `invalid value "30d" for flag -expires`},
		{[]string{"token", "new", "--name", "bot", "--role", "admin", "extra"}, `unexpected argument "extra"`},
		{[]string{"token", "new", "--name", "bot", "--role", "owner"}, "role"},
		{[]string{"migrate", "-clickhouse-dsn", "http://ch:8123/x"}, "-clickhouse-dsn (env KEYTRAIL_CLICKHOUSE_DSN)"},
	} {
		var out strings.Builder
		err := run(t.Context(), c.args, &out)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: error %v, want one containing %q", c.args, err, c.want)
			continue
		}
		if c.args[0] != "migrate" && exitCode(err) != exitUsage {
			t.Errorf("%q: exit %d, want %d", c.args, exitCode(err), exitUsage)
		}
	}
}
