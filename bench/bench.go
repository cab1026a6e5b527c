package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// harness is one run: configuration, sizes, shared fleet strings and the report so far.
type harness struct {
	cfg    Config
	sizes  Sizes
	names  *names
	ch     clickHouse
	report *Report
	// chPID is the ClickHouse server's process id when it runs on this machine and can be
	// seen (0 otherwise: its CPU figures are n/a).
	chPID int
}

func (h *harness) logf(format string, args ...any) {
	fmt.Fprintf(h.cfg.Log, "%s bench: %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// Run runs the configured phases in order and returns the report. A failed phase is
// recorded in Report.Errors and the next phase still runs; the error returned is the
// phases' errors joined (nil when all passed) or the context's.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	h := &harness{
		cfg: cfg, sizes: SizesFor(cfg.Scale), names: newNames(),
		ch: clickHouse{addr: cfg.ClickHouseAddr, database: cfg.Database},
	}
	if cfg.IngestBatch > 0 {
		h.sizes.IngestBatch = cfg.IngestBatch
	}
	h.report = &Report{Date: time.Now().UTC(), Scale: cfg.Scale, Sizes: h.sizes, Machine: machine()}
	if cfg.ProfileDir != "" {
		if err := os.MkdirAll(cfg.ProfileDir, 0o755); err != nil {
			return nil, err
		}
	}
	version, err := h.ch.serverVersion(ctx)
	if err != nil {
		return nil, err
	}
	if h.chPID = listenerPID(cfg.ClickHouseAddr); h.chPID == 0 {
		h.logf("no local process listens on %s: ClickHouse CPU figures will be n/a", cfg.ClickHouseAddr)
	}
	h.report.Machine.ClickHouse = version
	h.report.Machine.Description += ", ClickHouse " + version
	// Whatever happens, the benchmark database does not outlive the run.
	defer func() {
		dctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := h.ch.drop(dctx); err != nil {
			h.logf("dropping database %s: %v", cfg.Database, err)
		}
	}()

	phases := []struct {
		name string
		run  func(context.Context) error
	}{
		{PhasePublish, h.runPublish},
		{PhaseDrain, h.runDrain},
		{PhaseBlocks, h.runBlocks},
		{PhaseE2E, h.runE2E},
		{PhaseLatency, h.runLatency},
		{PhaseRSS, h.runRSS},
		{PhaseQuery, h.runQueries},
		{PhaseLoad, h.runLoad},
	}
	var errs []error
	for _, p := range phases {
		if !cfg.runs(p.name) {
			continue
		}
		if ctx.Err() != nil {
			return h.report, ctx.Err()
		}
		start := time.Now()
		h.logf("phase %s", p.name)
		stopWatching := h.watch(ctx, p.name)
		err := p.run(ctx)
		stopWatching()
		if err != nil {
			if ctx.Err() != nil {
				return h.report, ctx.Err()
			}
			h.logf("phase %s failed: %v", p.name, err)
			h.report.Errors = append(h.report.Errors, fmt.Sprintf("%s: %v", p.name, err))
			errs = append(errs, fmt.Errorf("%s: %w", p.name, err))
			continue
		}
		h.logf("phase %s done in %.0f s", p.name, time.Since(start).Seconds())
	}
	h.report.addCeilings()
	return h.report, errors.Join(errs...)
}

// watch records the contention during a phase in the report's notes; call the returned
// function when the phase ends.
func (h *harness) watch(ctx context.Context, phase string) func() {
	conn, err := h.ch.openDefault(ctx)
	if err != nil {
		h.logf("contention monitor: %v", err)
		return func() {}
	}
	wctx, cancel := context.WithCancel(ctx)
	var c contention
	done := make(chan struct{})
	go func() {
		defer close(done)
		watchContention(wctx, conn, h.cfg.Database, &c)
	}()
	return func() {
		cancel()
		<-done
		conn.Close()
		h.report.note("%s phase: %s", phase, c.String())
	}
}

func (c clickHouse) serverVersion(ctx context.Context) (string, error) {
	conn, err := c.open(ctx, false)
	if err != nil {
		return "", fmt.Errorf("clickhouse at %s (start it with `deploy/clickhouse/local.sh start`): %w", c.addr, err)
	}
	defer conn.Close()
	var v string
	if err := conn.QueryRow(ctx, "SELECT version()").Scan(&v); err != nil {
		return "", err
	}
	return v, nil
}

// machine describes this host: CPUs, memory and Go version.
func machine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), GoVersion: runtime.Version()}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				kb, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")))
				m.MemoryMB = kb / 1024
			}
		}
	}
	m.Description = fmt.Sprintf("%d CPUs, %.1f GiB RAM, %s", m.CPUs, float64(m.MemoryMB)/1024, m.GoVersion)
	return m
}
