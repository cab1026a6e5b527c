package api

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"buf.build/go/protovalidate"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	grpcprotovalidate "github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/protovalidate"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/encoding/protojson"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/gen/openapi"
	"github.com/keytrail/keytrail/query/auth"
	"github.com/keytrail/keytrail/query/console"
)

// OpenAPIPath is where the REST API's OpenAPI document is served.
const OpenAPIPath = "/openapi.json"

// gatewayNetwork is the network name of the in-memory connection between the REST gateway
// and the gRPC server.
const gatewayNetwork = "bufconn"

// Config configures the API server.
type Config struct {
	// Reader answers every query (a *chreader.Reader; handler tests pass fakes).
	Reader Reader
	// Auth authenticates every call but health and readiness.
	Auth *auth.Authenticator
	// Recorder keeps the query audit log: every call is recorded, with the bound on refused
	// calls below.
	Recorder QueryRecorder
	// RefusalRecordRate and RefusalRecordBurst bound the records of calls refused before
	// anything was served (failed authentication; the per-principal rate limit): per second
	// and burst, per principal and once more for all unauthenticated callers together.
	// Zero means DefaultRefusalRecordRate / DefaultRefusalRecordBurst.
	RefusalRecordRate  float64
	RefusalRecordBurst int
	// Admission bounds the calls answered at once (see Admission); the zero value admits
	// every call.
	Admission Admission
	// TLS, when set, serves both gRPC and REST over TLS. Set ClientCAs and ClientAuth
	// (tls.VerifyClientCertIfGiven) to accept client certificates as credentials.
	TLS *tls.Config
	// Ready reports whether the process can answer queries (storage reachable, ...).
	Ready func(ctx context.Context) error
	// Gatherer backs /metrics; nil leaves /metrics out.
	Gatherer prometheus.Gatherer
	// Registerer takes the API's metrics (in flight, queued, shed calls); nil keeps them
	// unexported.
	Registerer prometheus.Registerer
	// Logger receives the API's log lines, secret-shaped words redacted.
	Logger *slog.Logger
	// Console serves the web console under /ui/ (and redirects / there): static files,
	// public like /openapi.json; the API calls the page makes carry the credentials.
	Console bool
}

// Validate reports every problem with the configuration at once.
func (c Config) Validate() error {
	var errs []error
	if c.Reader == nil {
		errs = append(errs, errors.New("api: reader is required"))
	}
	if c.Ready == nil {
		errs = append(errs, errors.New("api: readiness check is required"))
	}
	if c.Auth == nil {
		errs = append(errs, errors.New("api: authenticator is required"))
	}
	if c.Recorder == nil {
		errs = append(errs, errors.New("api: query recorder is required"))
	}
	if c.RefusalRecordRate < 0 || c.RefusalRecordBurst < 0 {
		errs = append(errs, errors.New("api: refusal record rate and burst must not be negative"))
	}
	if err := c.Admission.Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Server is the gRPC server and the HTTP handler in front of it.
type Server struct {
	cfg    Config
	log    *slog.Logger
	grpc   *grpc.Server
	health *health.Server
	// gatewayGRPC serves gatewayLis, which carries the REST gateway's calls to the gRPC server in memory: no port, no
	// TLS hop, and a peer no network client can impersonate (see fromGateway).
	gatewayGRPC *grpc.Server
	gatewayLis  *bufconn.Listener
	// limiter, refusals and metrics are shared by the gRPC servers and the REST edge.
	limiter  *rateLimiter
	refusals *refusals
	metrics  *apiMetrics
}

// New builds the gRPC server with its interceptors.
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	log := newRedactingLogger(cfg.Logger).With("component", "api")
	validator, err := protovalidate.New()
	if err != nil {
		return nil, fmt.Errorf("api: protovalidate: %w", err)
	}
	if cfg.Registerer == nil {
		cfg.Registerer = prometheus.NewRegistry()
	}
	metrics, err := newAPIMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	if cfg.RefusalRecordRate == 0 {
		cfg.RefusalRecordRate = DefaultRefusalRecordRate
	}
	if cfg.RefusalRecordBurst == 0 {
		cfg.RefusalRecordBurst = DefaultRefusalRecordBurst
	}
	limiter := newRateLimiter()
	refused := newRefusals(cfg.Recorder, cfg.RefusalRecordRate, cfg.RefusalRecordBurst, metrics.unrecorded)
	admit := newAdmission(cfg.Admission, metrics)
	svc := &queryService{reader: cfg.Reader, log: log}
	hs := health.NewServer()
	onPanic := recovery.WithRecoveryHandlerContext(func(ctx context.Context, p any) error {
		log.ErrorContext(ctx, "panic in handler", "panic", p)
		return status.Error(codes.Internal, "internal error")
	})
	// Two gRPC servers share one service, one rate limiter and one admission limiter: the
	// network one (TLS when configured, so the handshake's client certificate reaches the
	// interceptors) and the in-memory one the REST gateway calls, behind the REST edge.
	newServer := func(rateLimited bool, opts ...grpc.ServerOption) *grpc.Server {
		// Order matters: a caller is identified, then held to its rate, then recorded whatever
		// happens next (invalid requests from a token are what security wants to see; so are
		// calls shed for load). Calls refused by authentication or the rate limit are recorded
		// by those interceptors, bounded (see refusals). Validation comes before admission, so
		// a malformed call never takes a slot. The REST edge applies the rate limit to REST
		// calls before the gateway parses them, so the gateway's server does not apply it again.
		chain := []grpc.UnaryServerInterceptor{
			markSeen, // calls that end before this are recorded by undecodedCalls
			recovery.UnaryServerInterceptor(onPanic),
			authenticate(cfg.Auth, refused),
		}
		if rateLimited {
			chain = append(chain, limiter.interceptor(refused, metrics.shed))
		}
		chain = append(chain,
			record(cfg.Recorder),
			logging.UnaryServerInterceptor(slogAdapter(log), logging.WithLogOnEvents(logging.FinishCall)),
			grpcprotovalidate.UnaryServerInterceptor(validator),
			admit.interceptor(),
		)
		// Streams (server reflection, health's Watch) the same way; see stream.go.
		streamChain := []grpc.StreamServerInterceptor{
			markSeenStream,
			recovery.StreamServerInterceptor(onPanic),
			authenticateStream(cfg.Auth, refused),
		}
		if rateLimited {
			streamChain = append(streamChain, limiter.streamInterceptor(refused, metrics.shed))
		}
		streamChain = append(streamChain,
			recordStream(cfg.Recorder),
			logging.StreamServerInterceptor(slogAdapter(log), logging.WithLogOnEvents(logging.FinishCall)),
		)
		for i, in := range streamChain {
			streamChain[i] = registeredOnly(in)
		}
		opts = append(opts, grpc.ChainUnaryInterceptor(chain...), grpc.ChainStreamInterceptor(streamChain...),
			grpc.StatsHandler(undecodedCalls{authn: cfg.Auth, refusals: refused}),
			// Without a handler of its own grpc-go answers an unknown method before any stats
			// handler sees the call end, so it would go unrecorded; with one, undecodedCalls
			// records it like any call that never reached the interceptors.
			grpc.UnknownServiceHandler(unknownMethod))
		srv := grpc.NewServer(opts...)
		keytrailv1.RegisterQueryServiceServer(srv, svc)
		healthpb.RegisterHealthServer(srv, hs)
		// Server reflection: grpcurl and similar clients list and describe the API without
		// proto files (with a credential, like every call but health).
		reflection.Register(srv)
		return srv
	}
	var netOpts []grpc.ServerOption
	if cfg.TLS != nil {
		netOpts = append(netOpts, grpc.Creds(credentials.NewTLS(cfg.TLS)))
	}
	return &Server{
		cfg: cfg, log: log, health: hs,
		grpc:        newServer(true, netOpts...),
		gatewayGRPC: newServer(false),
		gatewayLis:  bufconn.Listen(1 << 20),
		limiter:     limiter, refusals: refused, metrics: metrics,
	}, nil
}

// HTTPHandler is the REST gateway (calling the gRPC server in memory), the OpenAPI
// document, /healthz, /readyz and /metrics. Serve serves it; tests may mount it themselves
// after starting ServeGateway.
func (s *Server) HTTPHandler(ctx context.Context) (http.Handler, error) {
	gw := runtime.NewServeMux(
		runtime.WithErrorHandler(gatewayErrorHandler),
		runtime.WithMarshalerOption(runtime.MIMEWildcard, &runtime.JSONPb{
			MarshalOptions:   protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true},
			UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: true},
		}),
		// Forward no caller-chosen headers as metadata: Authorization is passed by the
		// gateway itself, and the client-certificate identity is set below from the TLS
		// handshake, so a Grpc-Metadata- header cannot forge it.
		runtime.WithIncomingHeaderMatcher(func(string) (string, bool) { return "", false }),
		runtime.WithMetadata(func(_ context.Context, r *http.Request) metadata.MD {
			md := metadata.Pairs(gatewayPeerHeader, r.RemoteAddr)
			if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 {
				md.Set(gatewayCNHeader, r.TLS.VerifiedChains[0][0].Subject.CommonName)
			}
			return md
		}),
	)
	conn, err := grpc.NewClient("passthrough:///keytrail-gateway",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return s.gatewayLis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithUnaryInterceptor(markReached))
	if err != nil {
		return nil, fmt.Errorf("api: gateway connection: %w", err)
	}
	go func() {
		<-ctx.Done()
		conn.Close()
	}()
	if err := keytrailv1.RegisterQueryServiceHandler(ctx, gw, conn); err != nil {
		return nil, fmt.Errorf("api: register gateway: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/v1/", &restEdge{
		gw: gw, routes: queryServiceRoutes(), authn: s.cfg.Auth, limiter: s.limiter,
		refusals: s.refusals, rec: s.cfg.Recorder, metrics: s.metrics, log: s.log,
	})
	mux.HandleFunc("GET "+OpenAPIPath, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(openapi.Spec)
	})
	MountOps(mux, s.cfg.Ready, s.cfg.Gatherer, s.log)
	if s.cfg.Console {
		console.Mount(mux)
	}
	return mux, nil
}

// MountOps adds the operational endpoints every keytrail process serves: /healthz (the
// process runs), /readyz (ready reports its dependencies reachable) and, when gatherer is not
// nil, /metrics. The query API mounts them beside /v1/; an ingest-only process serves them
// alone.
func MountOps(mux *http.ServeMux, ready func(context.Context) error, gatherer prometheus.Gatherer, log *slog.Logger) {
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := ready(ctx); err != nil {
			log.Warn("not ready", "error", err)
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	if gatherer != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{}))
	}
}

// Serve serves gRPC on grpcLis and HTTP on httpLis (TLS on both when configured) until ctx
// ends, then stops both gracefully (in-flight calls finish, bounded by a timeout).
func (s *Server) Serve(ctx context.Context, grpcLis, httpLis net.Listener) error {
	handler, err := s.HTTPHandler(ctx)
	if err != nil {
		return err
	}
	httpServer := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second, TLSConfig: s.cfg.TLS}
	if s.cfg.TLS != nil {
		httpLis = tls.NewListener(httpLis, httpServer.TLSConfig)
	}
	errc := make(chan error, 3)
	go func() { errc <- s.grpc.Serve(grpcLis) }()
	go func() { errc <- s.gatewayGRPC.Serve(s.gatewayLis) }()
	go func() {
		if err := httpServer.Serve(httpLis); !errors.Is(err, http.ErrServerClosed) {
			errc <- err
			return
		}
		errc <- nil
	}()
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
	}
	s.health.Shutdown()
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = httpServer.Shutdown(shutdownCtx)
	stopped := make(chan struct{})
	go func() { s.grpc.GracefulStop(); s.gatewayGRPC.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-shutdownCtx.Done():
		s.grpc.Stop()
		s.gatewayGRPC.Stop()
	}
	return serveErr
}

// GRPC exposes the gRPC server, for tests that serve it on their own listener.
func (s *Server) GRPC() *grpc.Server { return s.grpc }

// TransportCredentials turns a TLS config into gRPC client credentials (for the CLI).
func TransportCredentials(cfg *tls.Config) credentials.TransportCredentials {
	return credentials.NewTLS(cfg)
}

// slogAdapter lets go-grpc-middleware's logging interceptor write through slog.
func slogAdapter(l *slog.Logger) logging.Logger {
	return logging.LoggerFunc(func(ctx context.Context, lvl logging.Level, msg string, fields ...any) {
		l.Log(ctx, slog.Level(lvl), msg, fields...)
	})
}
