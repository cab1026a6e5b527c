package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// runRSS builds the keytrail binary, fills a backlog, starts `keytrail serve -role ingest`
// as a separate process against this process's NATS and the benchmark database, and samples
// its /proc/<pid>/status (VmRSS, and VmHWM, the kernel's own peak) until the backlog is
// queryable.
func (h *harness) runRSS(ctx context.Context) error {
	n := h.sizes.RSSBacklog
	dir, err := os.MkdirTemp("", "keytrail-bench-rss-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin, err := h.buildKeytrail(ctx, dir)
	if err != nil {
		return err
	}

	js, err := h.startJetStream(ctx)
	if err != nil {
		return err
	}
	defer js.close()
	conn, err := h.ch.fresh(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	h.logf("rss: publishing a backlog of %s usage events", count(n))
	if _, err := js.fill(ctx, newGenerator(h.names, 3), n, time.Now()); err != nil {
		return err
	}

	// The process's log is kept with the profiles when there is a profile directory (run with
	// GODEBUG=gctrace=1 to see its heap after every GC), else it goes with the temporary files.
	logPath := filepath.Join(dir, "keytrail.log")
	if h.cfg.ProfileDir != "" {
		logPath = filepath.Join(h.cfg.ProfileDir, "rss-keytrail.log")
	}
	logFile, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logFile.Close()
	args := []string{"serve", "-role", "ingest", "-nats-url", js.url(), "-clickhouse-dsn", h.ch.dsn(), "-log-level", "warn", "-http-listen", "127.0.0.1:0"}
	if h.cfg.IngestBatch > 0 {
		args = append(args, "-batch-size", strconv.Itoa(h.cfg.IngestBatch), "-max-ack-pending", strconv.Itoa(max(250_000, 2*h.cfg.IngestBatch)))
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Env = withoutKeytrailEnv(os.Environ())
	cmd.Stdout, cmd.Stderr = logFile, logFile
	h.logf("rss: keytrail serve -role ingest draining %s events", count(n))
	start := time.Now()
	proc, err := startChild(cmd, "keytrail", nil)
	if err != nil {
		return err
	}
	defer proc.stop()

	var (
		mu      sync.Mutex
		peakRSS int64 // kB, from VmRSS samples
		hwm     int64 // kB, VmHWM at the last sample
		samples int
	)
	sampleCtx, stopSampling := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			rss, high, err := alive(proc.exited, proc.pid())
			if err == nil {
				mu.Lock()
				peakRSS, hwm, samples = max(peakRSS, rss), max(hwm, high), samples+1
				mu.Unlock()
			}
			select {
			case <-sampleCtx.Done():
				return
			case <-t.C:
			}
		}
	})
	// A dead ingester drains nothing: stop waiting when it exits.
	waitCtx, cancelWait := context.WithCancel(ctx)
	go func() {
		select {
		case <-proc.exited:
			cancelWait()
		case <-waitCtx.Done():
		}
	}()
	done, err := waitQueryable(waitCtx, conn, uint64(n), 200*time.Millisecond, 60*time.Minute)
	cancelWait()
	if err != nil {
		select {
		case <-proc.exited:
			if ctx.Err() == nil {
				err = fmt.Errorf("keytrail exited during the drain (%v)", proc.err)
			}
		default:
		}
	}
	// Read the high-water mark once more before the process starts shutting down.
	if _, high, perr := alive(proc.exited, proc.pid()); perr == nil {
		mu.Lock()
		hwm = max(hwm, high)
		mu.Unlock()
	}
	stopSampling()
	wg.Wait()
	if err != nil {
		return fmt.Errorf("%w\nlast lines of %s:\n%s", err, logPath, tail(logPath, 20))
	}
	if serr := proc.stop(); serr != nil {
		h.logf("rss: keytrail stop: %v", serr)
	}
	mb := float64(hwm) / 1024
	drain := float64(n) / done.Sub(start).Seconds()
	h.report.add(Row{Figure: fmt.Sprintf("ingester peak RSS, %s backlog", count(n)), Value: mb, Unit: UnitMB,
		Target: "< 150 MB", Met: met(mb < 150), Samples: samples,
		Note: fmt.Sprintf("VmHWM of `keytrail serve -role ingest`; highest sampled VmRSS %.0f MB; drained at %.0f events/s (process start included)", float64(peakRSS)/1024, drain)})
	h.report.note("rss: keytrail serve -role ingest drained %s events at %s/s (process start, migrations and take-over included); VmHWM %.0f MB, highest VmRSS sample %.0f MB",
		count(n), count(int(drain)), mb, float64(peakRSS)/1024)
	return nil
}

// buildKeytrail builds the keytrail binary into dir.
func (h *harness) buildKeytrail(ctx context.Context, dir string) (string, error) {
	bin := filepath.Join(dir, "keytrail")
	h.logf("go build ./services/keytrail")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./services/keytrail")
	build.Dir = h.cfg.RepoDir
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./services/keytrail: %w\n%s", err, out)
	}
	return bin, nil
}

// alive reads procStatus only while the process has not been reaped: after that its pid may
// already belong to another process (pids wrap quickly here).
func alive(exited <-chan struct{}, pid int) (rss, hwm int64, err error) {
	select {
	case <-exited:
		return 0, 0, errors.New("exited")
	default:
	}
	return procStatus(pid)
}

// procStatus reads VmRSS and VmHWM (kB) of a process.
func procStatus(pid int) (rss, hwm int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		field, value, ok := strings.Cut(sc.Text(), ":")
		if !ok || (field != "VmRSS" && field != "VmHWM") {
			continue
		}
		kb, perr := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(value), " kB"), 10, 64)
		if perr != nil {
			return 0, 0, fmt.Errorf("%s: %q", field, value)
		}
		if field == "VmRSS" {
			rss = kb
		} else {
			hwm = kb
		}
	}
	return rss, hwm, nil
}

// withoutKeytrailEnv drops KEYTRAIL_* variables: keytrail reads its flags from them, and the
// child must run with exactly the flags given.
func withoutKeytrailEnv(env []string) []string {
	out := env[:0:0]
	for _, e := range env {
		if !strings.HasPrefix(e, "KEYTRAIL_") {
			out = append(out, e)
		}
	}
	return out
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
