package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/keytrail/keytrail/bench"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "keytrail-bench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("keytrail-bench", flag.ContinueOnError)
	env := func(name, def string) string {
		if v := os.Getenv(name); v != "" {
			return v
		}
		return def
	}
	scale := fs.String("scale", env("BENCH_SCALE", "1"), "multiplies every size; 1 is full scale (env BENCH_SCALE)")
	phases := fs.String("phases", env("BENCH_PHASES", ""), "comma-separated phases to run, default all: "+strings.Join(bench.AllPhases, ",")+" (env BENCH_PHASES)")
	addr := fs.String("clickhouse-addr", env("KEYTRAIL_TEST_CLICKHOUSE_ADDR", "127.0.0.1:19000"), "ClickHouse native address (env KEYTRAIL_TEST_CLICKHOUSE_ADDR)")
	database := fs.String("database", env("BENCH_DATABASE", "keytrail_bench"), "dedicated database, dropped before and after each phase (env BENCH_DATABASE)")
	profiles := fs.String("profile-dir", env("BENCH_PROFILE_DIR", ""), "write CPU profiles of the in-process ingest phases here (env BENCH_PROFILE_DIR)")
	ingestBatch := fs.Int("ingest-batch", 0, "the ingester's batch size in the ingest phases; 0 keeps the binary's default (env BENCH_INGEST_BATCH)")
	if v := env("BENCH_INGEST_BATCH", ""); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			return fmt.Errorf("BENCH_INGEST_BATCH %q: %w", v, err)
		}
		*ingestBatch = n
	}
	keep := fs.Bool("keep-history", env("BENCH_KEEP_HISTORY", "") != "", "keep the query phase's history in <database>_history and reuse it when it has the same size (env BENCH_KEEP_HISTORY=1)")
	loadFlags := fs.String("load-flags", env("BENCH_LOAD_FLAGS", ""), "extra flags for the load phase's keytrail process with admission, e.g. \"-query-max-inflight 4\" (env BENCH_LOAD_FLAGS)")
	out := fs.String("out", "bench-results.json", "JSON results file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	s, err := strconv.ParseFloat(*scale, 64)
	if err != nil {
		return fmt.Errorf("scale %q: %w", *scale, err)
	}
	cfg := bench.Config{
		Scale: s, ClickHouseAddr: *addr, Database: *database, RepoDir: ".",
		ProfileDir: *profiles, Log: os.Stderr, IngestBatch: *ingestBatch, KeepHistory: *keep,
	}
	cfg.LoadFlags = strings.Fields(*loadFlags)
	if *phases != "" {
		cfg.Phases = strings.Split(*phases, ",")
	}
	report, runErr := bench.Run(ctx, cfg)
	// An interrupted run's partial figures must not replace a previous run's file.
	if report == nil || ctx.Err() != nil {
		return runErr
	}
	report.WriteTable(os.Stdout)
	if err := report.WriteJSON(*out); err != nil {
		return errors.Join(runErr, fmt.Errorf("write %s: %w", *out, err))
	}
	fmt.Printf("\nwrote %s\n", *out)
	return runErr
}
