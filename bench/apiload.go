package bench

import (
	"context"
	"fmt"
	"maps"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"

	"github.com/keytrail/keytrail/query/auth"
)

// The load phase puts an open-loop load (vegeta: requests are sent at the set rate whether or
// not earlier ones were answered, as independent clients do) on separate `keytrail serve
// -role query` processes over the query phase's history, on a mix of seven GET endpoints,
// from loadPrincipals callers. It finds the sustainable rate (the highest step rate answered
// with at least 99% 200s and a median under a second), then runs three times that rate against a
// process as configured (admission on) and one with admission off, alternately, and reports
// throughput, counts by status and the latencies of admitted and shed calls.

const (
	loadPrincipals = 3
	loadStep       = 8 * time.Second  // each step of the ramp
	loadOverload   = 20 * time.Second // the run at 3x the sustainable rate
	loadRounds     = 4                // the 3x run alternates admission on and off this often
	loadTimeout    = 10 * time.Second // the client gives up on a call after this
	loadFirstRate  = 5
	loadMaxRate    = 3000
)

// UnitReqRate is requests per second.
const UnitReqRate = "req/s"

// loadMix is the seven endpoints of the mix: call i's path and parameters.
func loadMix(hs history) []func(i int) (string, string) {
	day := func(t time.Time) time.Time { return t.UTC().Truncate(24 * time.Hour) }
	spendFrom, spendTo := day(hs.End.Add(-30*24*time.Hour)), day(hs.End.Add(24*time.Hour))
	stateAt := hs.End.Add(-10 * 24 * time.Hour)
	const spread = 200
	return []func(i int) (string, string){
		func(i int) (string, string) {
			return "/v1/keys/" + keyName(spreadKey(i%spread, spread)) + "/services", ""
		},
		func(i int) (string, string) {
			return "/v1/services/" + serviceName(i%fleetServices) + "/keys", ""
		},
		func(i int) (string, string) { return "/v1/rotations/" + keyName(rotatedKey(i%rotatedKeys)), "" },
		func(i int) (string, string) {
			return "/v1/keys/" + keyName(spreadKey(i%spread, spread)), "at=" + rfc3339(stateAt)
		},
		func(int) (string, string) {
			return "/v1/spend", "group_by=SPEND_DIMENSION_KEY&granularity=GRANULARITY_DAY&start_time=" + rfc3339(spendFrom) + "&end_time=" + rfc3339(spendTo)
		},
		func(int) (string, string) { return "/v1/budgets", "" },
		func(i int) (string, string) {
			return "/v1/audit/events", "project=" + projectName(i%fleetProjects) + "&page_size=100"
		},
	}
}

// attackResult is what one constant-rate attack got back.
type attackResult struct {
	rate     int
	elapsed  time.Duration // first request sent to last answer
	byStatus map[int]int   // HTTP status; 0 for no answer (timeout, connection error)
	admitted []time.Duration
	shed     []time.Duration // 503 and 429
	errors   map[string]int  // no-answer reasons, and the bodies' messages of 5xx
	// byEndpoint is the admitted latencies per endpoint (its path with ids taken out).
	byEndpoint map[string][]time.Duration
}

// endpointOf names a call's endpoint: /v1/keys/key_00042/services -> /v1/keys/{}/services.
func endpointOf(u string) string {
	if i := strings.IndexByte(u, '?'); i >= 0 {
		u = u[:i]
	}
	if i := strings.Index(u, "/v1/"); i >= 0 {
		u = u[i:]
	}
	segs := strings.Split(u, "/")
	for i, s := range segs {
		if strings.HasPrefix(s, "key_") || strings.HasPrefix(s, "svc-") {
			segs[i] = "{}"
		}
	}
	return strings.Join(segs, "/")
}

// endpointText is each endpoint's admitted p50/p99.
func (r attackResult) endpointText() string {
	names := slices.Sorted(maps.Keys(r.byEndpoint))
	var parts []string
	for _, n := range names {
		d := r.byEndpoint[n]
		parts = append(parts, fmt.Sprintf("%s p50 %.0f ms p99 %.0f ms", n, percentile(d, 50), percentile(d, 99)))
	}
	return strings.Join(parts, ", ")
}

// merge adds o's calls to r's (elapsed times add up: rounds run one after the other).
func (r attackResult) merge(o attackResult) attackResult {
	if r.byStatus == nil {
		return o
	}
	r.elapsed += o.elapsed
	for k, v := range o.byStatus {
		r.byStatus[k] += v
	}
	for k, v := range o.errors {
		r.errors[k] += v
	}
	for k, v := range o.byEndpoint {
		r.byEndpoint[k] = append(r.byEndpoint[k], v...)
	}
	r.admitted = append(r.admitted, o.admitted...)
	r.shed = append(r.shed, o.shed...)
	return r
}

func (r attackResult) total() int {
	n := 0
	for _, c := range r.byStatus {
		n += c
	}
	return n
}

// okRate is the answered-with-200 throughput.
func (r attackResult) okRate() float64 {
	return float64(r.byStatus[http.StatusOK]) / r.elapsed.Seconds()
}

// sustained: at least 99% of the calls answered 200 (a burst of the open-loop arrivals may
// find every slot taken) and the median under a second (past capacity without a bound,
// calls queue and the median grows with the run).
func (r attackResult) sustained() bool {
	return float64(r.byStatus[http.StatusOK]) >= 0.99*float64(r.total()) && percentile(r.admitted, 50) < 1000
}

func (r attackResult) statusText() string {
	codes := make([]int, 0, len(r.byStatus))
	for c := range r.byStatus {
		codes = append(codes, c)
	}
	sort.Ints(codes)
	var parts []string
	for _, c := range codes {
		name := strconv.Itoa(c)
		if c == 0 {
			name = "no answer"
		}
		parts = append(parts, fmt.Sprintf("%s: %d", name, r.byStatus[c]))
	}
	return strings.Join(parts, ", ")
}

func (r attackResult) errorText() string {
	var parts []string
	for e, n := range r.errors {
		parts = append(parts, fmt.Sprintf("%dx %q", n, e))
	}
	slices.Sort(parts)
	return strings.Join(parts, "; ")
}

// attack sends rate requests per second for d, round-robin over targets.
func attack(ctx context.Context, targets []vegeta.Target, rate int, d time.Duration) attackResult {
	atk := vegeta.NewAttacker(vegeta.Timeout(loadTimeout), vegeta.MaxWorkers(uint64(rate)*uint64(loadTimeout/time.Second)+100),
		vegeta.KeepAlive(true), vegeta.Connections(10_000), vegeta.MaxBody(4096))
	res := attackResult{rate: rate, byStatus: map[int]int{}, errors: map[string]int{}, byEndpoint: map[string][]time.Duration{}}
	var first, last time.Time
	results := atk.Attack(vegeta.NewStaticTargeter(targets...), vegeta.Rate{Freq: rate, Per: time.Second}, d, "keytrail")
	for {
		select {
		case <-ctx.Done():
			atk.Stop()
			for range results {
			}
			return res
		case r, ok := <-results:
			if !ok {
				res.elapsed = last.Sub(first)
				return res
			}
			if first.IsZero() || r.Timestamp.Before(first) {
				first = r.Timestamp
			}
			if end := r.End(); end.After(last) {
				last = end
			}
			code := int(r.Code)
			res.byStatus[code]++
			switch {
			case code == 0:
				res.errors[shortError(r.Error)]++
			case code == http.StatusServiceUnavailable || code == http.StatusTooManyRequests:
				res.shed = append(res.shed, r.Latency)
			default:
				res.admitted = append(res.admitted, r.Latency)
				e := endpointOf(r.URL)
				res.byEndpoint[e] = append(res.byEndpoint[e], r.Latency)
				if code >= 500 {
					res.errors[fmt.Sprintf("HTTP %d: %.120s", code, r.Body)]++
				}
			}
		}
	}
}

func shortError(e string) string {
	switch {
	case strings.Contains(e, "Client.Timeout"), strings.Contains(e, "deadline exceeded"):
		return fmt.Sprintf("client timeout (%s)", loadTimeout)
	case strings.Contains(e, "connection refused"):
		return "connection refused"
	case strings.Contains(e, "too many open files"):
		return "too many open files"
	}
	if len(e) > 80 {
		e = e[:80]
	}
	return e
}

// queryProcess is a `keytrail serve -role query` process started by the load phase.
type queryProcess struct {
	base   string
	stop   func() error
	logRef string
}

// freePort asks the kernel for a free loopback port (the process is then told to use it).
func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func startQueryProcess(ctx context.Context, bin, dir, natsURL, dsn, tokensFile, name string, extra ...string) (*queryProcess, error) {
	grpcAddr, err := freePort()
	if err != nil {
		return nil, err
	}
	httpAddr, err := freePort()
	if err != nil {
		return nil, err
	}
	logPath := filepath.Join(dir, name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	args := append([]string{"serve", "-role", "query", "-nats-url", natsURL, "-clickhouse-dsn", dsn,
		"-grpc-listen", grpcAddr, "-http-listen", httpAddr, "-auth-tokens-file", tokensFile,
		"-alert-interval", "0", "-log-level", "warn"}, extra...)
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Env = withoutKeytrailEnv(os.Environ())
	cmd.Stdout, cmd.Stderr = logFile, logFile
	proc, err := startChild(cmd, "keytrail", func() { logFile.Close() })
	if err != nil {
		logFile.Close()
		return nil, err
	}
	stop := proc.stop
	p := &queryProcess{base: "http://" + httpAddr, stop: stop, logRef: logPath}
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(p.base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p, nil
			}
		}
		select {
		case <-proc.exited:
			return nil, fmt.Errorf("keytrail exited before it was ready (%v):\n%s", proc.err, tail(logPath, 20))
		case <-ctx.Done():
			stop()
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			stop()
			return nil, fmt.Errorf("keytrail not ready after 60 s:\n%s", tail(logPath, 20))
		}
	}
}

// runLoad is the load phase.
func (h *harness) runLoad(ctx context.Context) error {
	conn, hs, err := h.loadedHistory(ctx)
	if err != nil {
		return err
	}
	conn.Close()
	dir, err := os.MkdirTemp("", "keytrail-bench-load-")
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

	// Callers: loadPrincipals admins with a rate limit no step reaches.
	tokens := make([]string, loadPrincipals)
	var file strings.Builder
	file.WriteString("tokens:\n")
	for i := range tokens {
		tokens[i] = auth.NewToken()
		fmt.Fprintf(&file, "  - name: load-%d\n    sha256: %s\n    role: admin\n    rate_per_second: 1000000\n    burst: 1000000\n", i, auth.HashToken(tokens[i]))
	}
	tokensFile := filepath.Join(dir, "tokens.yaml")
	if err := os.WriteFile(tokensFile, []byte(file.String()), 0o600); err != nil {
		return err
	}
	dsn := h.historyCH().dsn()

	targetsFor := func(base string) []vegeta.Target {
		mix := loadMix(hs)
		var targets []vegeta.Target
		// 7 endpoints x 60 inputs x the callers, interleaved so each second mixes them all.
		for i := range 60 * len(mix) {
			path, query := mix[i%len(mix)](i / len(mix))
			u := base + path
			if query != "" {
				u += "?" + query
			}
			targets = append(targets, vegeta.Target{Method: http.MethodGet, URL: u,
				Header: http.Header{"Authorization": {"Bearer " + tokens[i%len(tokens)]}}})
		}
		return targets
	}

	admitted, err := startQueryProcess(ctx, bin, dir, js.url(), dsn, tokensFile, "keytrail-admission", h.cfg.LoadFlags...)
	if err != nil {
		return err
	}
	defer admitted.stop()
	unbounded, err := startQueryProcess(ctx, bin, dir, js.url(), dsn, tokensFile, "keytrail-unbounded", "-query-max-inflight", "0")
	if err != nil {
		return err
	}
	defer unbounded.stop()
	targets, unboundedTargets := targetsFor(admitted.base), targetsFor(unbounded.base)
	// Warm up (caches, connections), then ramp.
	attack(ctx, targets, loadFirstRate, 2*time.Second)
	attack(ctx, unboundedTargets, loadFirstRate, 2*time.Second)
	var steps []attackResult
	sustainable, peak := 0, 0.0
	for rate := loadFirstRate; rate <= loadMaxRate && ctx.Err() == nil; rate = int(math.Ceil(float64(rate) * 1.4)) {
		r := attack(ctx, targets, rate, loadStep)
		steps = append(steps, r)
		peak = max(peak, r.okRate())
		h.logf("load: %d req/s for %s: %.0f OK/s, admitted p50 %.0f ms p99 %.0f ms; %s; %s", rate, loadStep, r.okRate(),
			percentile(r.admitted, 50), percentile(r.admitted, 99), r.statusText(), r.endpointText())
		if !r.sustained() {
			break
		}
		sustainable = rate
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if sustainable == 0 {
		return fmt.Errorf("not even %d req/s was sustained: %s %s", loadFirstRate, steps[0].statusText(), steps[0].errorText())
	}
	// 3x the sustainable rate, alternately with and without admission in rounds, so that both
	// see the same machine (other work on a shared machine comes and goes by the minute). A
	// round ends when its last call is answered or timed out, so rounds never overlap.
	over := 3 * sustainable
	h.logf("load: sustainable %d req/s; %d req/s for %s with and without admission (-query-max-inflight 0), in %d alternating rounds",
		sustainable, over, loadOverload, loadRounds)
	var withAdm, without attackResult
	for range loadRounds {
		withAdm = withAdm.merge(attack(ctx, targets, over, loadOverload/loadRounds))
		without = without.merge(attack(ctx, unboundedTargets, over, loadOverload/loadRounds))
	}
	peak = max(peak, withAdm.okRate(), without.okRate())
	for _, p := range []*queryProcess{admitted, unbounded} {
		if err := p.stop(); err != nil {
			h.logf("load: keytrail stop: %v", err)
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}

	mix := "7-endpoint GET mix"
	h.report.add(
		Row{Figure: "load: sustainable rate, " + mix, Value: float64(sustainable), Unit: UnitReqRate,
			Note: fmt.Sprintf("highest step of a x1.4 ramp from %d req/s (%s each) with >= 99%% answered 200 and p50 < 1 s", loadFirstRate, loadStep)},
		Row{Figure: "load: peak throughput (200s), " + mix, Value: peak, Unit: UnitReqRate,
			Note: "highest 200s/s of any step or run, with admission or without"},
		Row{Figure: fmt.Sprintf("load at 3x (%d req/s): throughput (200s)", over), Value: withAdm.okRate(), Unit: UnitReqRate,
			Baseline: "without admission", BaselineValue: without.okRate(), Ratio: withAdm.okRate() / max(without.okRate(), 1e-9),
			Target: ">= 90% of peak", Met: met(withAdm.okRate() >= 0.9*peak),
			Note: "with admission: " + withAdm.statusText() + "; without: " + without.statusText()},
		Row{Figure: "load at 3x: admitted p50", Value: percentile(withAdm.admitted, 50), Unit: UnitMs,
			Baseline: "without admission", BaselineValue: percentile(without.admitted, 50), Samples: len(withAdm.admitted)},
		Row{Figure: "load at 3x: admitted p99", Value: percentile(withAdm.admitted, 99), Unit: UnitMs,
			Baseline: "without admission", BaselineValue: percentile(without.admitted, 99), Target: "< 1 s",
			Met: met(percentile(withAdm.admitted, 99) < 1000), Samples: len(withAdm.admitted)},
		Row{Figure: "load at 3x: shed (503/429) p99", Value: percentile(withAdm.shed, 99), Unit: UnitMs, Samples: len(withAdm.shed),
			Target: "no 500, no timeout", Met: met(withAdm.byStatus[0] == 0 && withAdm.byStatus[http.StatusInternalServerError] == 0)},
	)
	var ramp []string
	for _, s := range steps {
		ramp = append(ramp, fmt.Sprintf("%d: %.0f OK/s p99 %.0f ms", s.rate, s.okRate(), percentile(s.admitted, 99)))
	}
	flags := "default admission flags"
	if len(h.cfg.LoadFlags) > 0 {
		flags = strings.Join(h.cfg.LoadFlags, " ")
	}
	h.report.note("load: vegeta, open loop, %d callers, %s client timeout, against `keytrail serve -role query` (%s) over %s events; ramp (req/s: OK/s, admitted p99): %s",
		loadPrincipals, loadTimeout, flags, count(hs.Events), strings.Join(ramp, "; "))
	if sustainable > 0 {
		for _, s := range steps {
			if s.rate == sustainable {
				h.report.note("load: at the sustainable %d req/s, by endpoint: %s", sustainable, s.endpointText())
			}
		}
	}
	h.report.note("load: at %d req/s with admission: %s; admitted p50 %.0f ms, p99 %.0f ms; shed p50 %.0f ms, p99 %.0f ms; %s; by endpoint: %s",
		over, withAdm.statusText(), percentile(withAdm.admitted, 50), percentile(withAdm.admitted, 99), percentile(withAdm.shed, 50), percentile(withAdm.shed, 99), withAdm.errorText(), withAdm.endpointText())
	h.report.note("load: at %d req/s without admission (-query-max-inflight 0): %s; answered p50 %.0f ms, p99 %.0f ms; %s",
		over, without.statusText(), percentile(without.admitted, 50), percentile(without.admitted, 99), without.errorText())
	return nil
}
