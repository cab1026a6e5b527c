package api

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/semaphore"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/keytrail/keytrail/query/auth"
)

// Overload is not an internal error. Without a bound, every call that arrives is started:
// past what ClickHouse can answer, calls queue for a pooled connection until the driver
// gives up ("acquire conn timeout", an HTTP 500) or the client does, and throughput falls
// because the server spends itself on calls nobody waits for any more. So the API admits at
// most MaxInFlight calls at once (and at most MaxInFlightPerPrincipal from one principal, so
// one caller cannot take every slot); a call that finds no slot waits up to QueueTimeout, in
// arrival order, then is shed: Unavailable / HTTP 503 when the server is full,
// ResourceExhausted / HTTP 429 when the caller holds its whole share. Both carry a RetryInfo
// (HTTP Retry-After). Admitted calls keep the latency of a server that is not overloaded.

// Admission bounds the calls the API answers at once.
type Admission struct {
	// MaxInFlight is the most calls this process answers at once; 0 means no bound.
	MaxInFlight int
	// MaxInFlightPerPrincipal is the most one principal may have in flight; 0 or more than
	// MaxInFlight means MaxInFlight.
	MaxInFlightPerPrincipal int
	// QueueTimeout is how long a call waits for a slot before it is shed.
	QueueTimeout time.Duration
	// RetryAfter is what shed calls are told to wait (whole seconds on REST); 0 means 1s.
	RetryAfter time.Duration
}

// Defaults from the load phase of the benchmarks (docs/benchmarks.md) on the reference
// machine, 2 cores shared by ClickHouse and keytrail: 8 calls in flight kept nearly the
// throughput of no bound at all, 4 lost a quarter of it; a short queue keeps what it adds to
// an admitted call's latency small. A larger ClickHouse takes more (about four per core).
const (
	DefaultMaxInFlight             = 8
	DefaultMaxInFlightPerPrincipal = 6
	DefaultQueueTimeout            = 100 * time.Millisecond
)

// QueriesPerCall bounds the ClickHouse queries one admitted call runs at once. The widest
// answer today, the rotation report of a revoked key, runs six reads at once
// (chreader.Reader.Rotation); the rest is room for the next one.
const QueriesPerCall = 8

// StoragePoolSize is the ClickHouse connection pool the API's reader needs under a bound:
// every admitted call can hold QueriesPerCall connections, so no admitted call ever waits for
// one. With no bound (MaxInFlight 0) it is 0: the driver's default.
func (a Admission) StoragePoolSize() int {
	return a.MaxInFlight * QueriesPerCall
}

// Validate reports every problem at once.
func (a Admission) Validate() error {
	var errs []error
	if a.MaxInFlight < 0 || a.MaxInFlightPerPrincipal < 0 {
		errs = append(errs, errors.New("api: max in-flight calls must not be negative"))
	}
	if a.QueueTimeout < 0 || a.RetryAfter < 0 {
		errs = append(errs, errors.New("api: queue timeout and retry-after must not be negative"))
	}
	return errors.Join(errs...)
}

// Reasons of keytrail_query_shed_total.
const (
	shedOverloaded     = "overloaded"
	shedPrincipalShare = "principal_share"
	shedRateLimit      = "rate_limit"
)

// apiMetrics are the API's Prometheus metrics.
type apiMetrics struct {
	inFlight   prometheus.Gauge
	queued     prometheus.Gauge
	queueWait  prometheus.Histogram
	shed       *prometheus.CounterVec
	unrecorded *prometheus.CounterVec
}

func newAPIMetrics(reg prometheus.Registerer) (*apiMetrics, error) {
	m := &apiMetrics{
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{Name: "keytrail_query_inflight", Help: "Query API calls being answered (admitted, holding a slot)."}),
		queued:   prometheus.NewGauge(prometheus.GaugeOpts{Name: "keytrail_query_queued", Help: "Query API calls waiting for a slot."}),
		queueWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "keytrail_query_queue_wait_seconds", Help: "How long admitted calls waited for a slot.",
			Buckets: []float64{0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1},
		}),
		shed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keytrail_query_shed_total",
			Help: "Query API calls refused for load: overloaded (503), principal_share (429), rate_limit (429).",
		}, []string{"reason"}),
		unrecorded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keytrail_query_audit_unrecorded_total",
			Help: "Refused calls left out of the query audit log by its bound: unauthenticated, rate_limited, undecodable.",
		}, []string{"reason"}),
	}
	for _, c := range []prometheus.Collector{m.inFlight, m.queued, m.queueWait, m.shed, m.unrecorded} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("api: metrics: %w", err)
		}
	}
	for _, r := range []string{shedOverloaded, shedPrincipalShare, shedRateLimit} {
		m.shed.WithLabelValues(r)
	}
	for _, r := range []string{"unauthenticated", "rate_limited", "undecodable"} {
		m.unrecorded.WithLabelValues(r)
	}
	return m, nil
}

// admission is the limiter. Slots are semaphores, which serve waiters in arrival order.
type admission struct {
	cfg     Admission
	global  *semaphore.Weighted
	metrics *apiMetrics

	mu  sync.Mutex
	per map[string]*semaphore.Weighted
}

func newAdmission(cfg Admission, m *apiMetrics) *admission {
	if cfg.MaxInFlightPerPrincipal == 0 || cfg.MaxInFlightPerPrincipal > cfg.MaxInFlight {
		cfg.MaxInFlightPerPrincipal = cfg.MaxInFlight
	}
	if cfg.RetryAfter == 0 {
		cfg.RetryAfter = time.Second
	}
	a := &admission{cfg: cfg, metrics: m, per: map[string]*semaphore.Weighted{}}
	if cfg.MaxInFlight > 0 {
		a.global = semaphore.NewWeighted(int64(cfg.MaxInFlight))
	}
	return a
}

func (a *admission) interceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		p, ok := auth.FromContext(ctx)
		if !ok {
			return handler(ctx, req)
		}
		release, err := a.acquire(ctx, p)
		if err != nil {
			return nil, err
		}
		defer release()
		return handler(ctx, req)
	}
}

// acquire takes the principal's slot, then the process's, each waiting at most what is left
// of QueueTimeout. The principal's comes first, so a caller waiting on its own share holds
// no slot another caller could use.
func (a *admission) acquire(ctx context.Context, p auth.Principal) (release func(), err error) {
	if a.global == nil {
		return func() {}, nil
	}
	start := time.Now()
	wait, cancel := context.WithTimeout(ctx, a.cfg.QueueTimeout)
	defer cancel()
	own := a.principalSlots(p.Name)
	if err := a.take(wait, own); err != nil {
		return nil, a.refusal(ctx, err, shedPrincipalShare,
			retryable(codes.ResourceExhausted, a.cfg.RetryAfter, "%q has %d calls in flight, its share of this server; retry after %s", p.Name, a.cfg.MaxInFlightPerPrincipal, a.cfg.RetryAfter))
	}
	if err := a.take(wait, a.global); err != nil {
		own.Release(1)
		return nil, a.refusal(ctx, err, shedOverloaded,
			retryable(codes.Unavailable, a.cfg.RetryAfter, "the server is answering as many calls as it can (%d); retry after %s", a.cfg.MaxInFlight, a.cfg.RetryAfter))
	}
	a.metrics.queueWait.Observe(time.Since(start).Seconds())
	a.metrics.inFlight.Inc()
	return func() {
		a.metrics.inFlight.Dec()
		a.global.Release(1)
		own.Release(1)
	}, nil
}

func (a *admission) take(wait context.Context, s *semaphore.Weighted) error {
	if s.TryAcquire(1) {
		return nil
	}
	a.metrics.queued.Inc()
	defer a.metrics.queued.Dec()
	return s.Acquire(wait, 1)
}

// refusal is the answer to a call that found no slot: the caller's own cancellation or
// deadline as such, else the shed status.
func (a *admission) refusal(ctx context.Context, err error, reason string, shed error) error {
	if ctx.Err() != nil {
		return status.FromContextError(ctx.Err()).Err()
	}
	a.metrics.shed.WithLabelValues(reason).Inc()
	return shed
}

func (a *admission) principalSlots(name string) *semaphore.Weighted {
	a.mu.Lock()
	defer a.mu.Unlock()
	s, ok := a.per[name]
	if !ok {
		// Principals are the tokens file's entries: a bounded set.
		s = semaphore.NewWeighted(int64(a.cfg.MaxInFlightPerPrincipal))
		a.per[name] = s
	}
	return s
}

// retryable is a status carrying how long to wait before retrying (google.rpc.RetryInfo;
// the REST gateway turns it into Retry-After).
func retryable(code codes.Code, after time.Duration, format string, args ...any) error {
	st := status.New(code, fmt.Sprintf(format, args...))
	if d, err := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(after)}); err == nil {
		st = d
	}
	return st.Err()
}

// retryAfterSeconds is a status's RetryInfo as whole seconds (rounded up, at least 1), or 0
// when it has none.
func retryAfterSeconds(err error) int {
	st, ok := status.FromError(err)
	if !ok {
		return 0
	}
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok && ri.GetRetryDelay() != nil {
			return max(1, int(math.Ceil(ri.GetRetryDelay().AsDuration().Seconds())))
		}
	}
	return 0
}
