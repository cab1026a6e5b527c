package api

import (
	"context"
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
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/gen/openapi"
	"github.com/keytrail/keytrail/query"
)

// OpenAPIPath is where the REST API's OpenAPI document is served.
const OpenAPIPath = "/openapi.json"

// Config configures the API server.
type Config struct {
	Reader *query.Reader
	// Ready reports whether the process can answer queries (storage reachable, ...).
	Ready func(ctx context.Context) error
	// Gatherer backs /metrics; nil leaves /metrics out.
	Gatherer prometheus.Gatherer
	Logger   *slog.Logger
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
	return errors.Join(errs...)
}

// Server is the gRPC server and the HTTP handler in front of it.
type Server struct {
	cfg    Config
	log    *slog.Logger
	grpc   *grpc.Server
	health *health.Server
}

// New builds the gRPC server with its interceptors.
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	log := cfg.Logger.With("component", "api")
	validator, err := protovalidate.New()
	if err != nil {
		return nil, fmt.Errorf("api: protovalidate: %w", err)
	}
	grpcServer := grpc.NewServer(
		grpc.ChainUnaryInterceptor(
			recovery.UnaryServerInterceptor(recovery.WithRecoveryHandlerContext(func(ctx context.Context, p any) error {
				log.ErrorContext(ctx, "panic in handler", "panic", p)
				return status.Error(codes.Internal, "internal error")
			})),
			logging.UnaryServerInterceptor(slogAdapter(log), logging.WithLogOnEvents(logging.FinishCall)),
			grpcprotovalidate.UnaryServerInterceptor(validator),
		),
	)
	keytrailv1.RegisterQueryServiceServer(grpcServer, &queryService{reader: cfg.Reader, log: log})
	hs := health.NewServer()
	healthpb.RegisterHealthServer(grpcServer, hs)
	return &Server{cfg: cfg, log: log, grpc: grpcServer, health: hs}, nil
}

// HTTPHandler is the REST gateway (dialing the gRPC server at grpcAddr), the OpenAPI
// document, /healthz, /readyz and /metrics.
func (s *Server) HTTPHandler(ctx context.Context, grpcAddr string) (http.Handler, error) {
	gw := runtime.NewServeMux(
		runtime.WithMarshalerOption(runtime.MIMEWildcard, &runtime.JSONPb{
			MarshalOptions:   protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true},
			UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: true},
		}),
	)
	if err := keytrailv1.RegisterQueryServiceHandlerFromEndpoint(ctx, gw, grpcAddr,
		[]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}); err != nil {
		return nil, fmt.Errorf("api: register gateway: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/v1/", gw)
	mux.HandleFunc("GET "+OpenAPIPath, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(openapi.Spec)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := s.cfg.Ready(ctx); err != nil {
			s.log.Warn("not ready", "error", err)
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	if s.cfg.Gatherer != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(s.cfg.Gatherer, promhttp.HandlerOpts{}))
	}
	return mux, nil
}

// Serve serves gRPC on grpcLis and HTTP on httpLis until ctx ends, then stops both
// gracefully (in-flight calls finish, bounded by a timeout).
func (s *Server) Serve(ctx context.Context, grpcLis, httpLis net.Listener) error {
	handler, err := s.HTTPHandler(ctx, grpcLis.Addr().String())
	if err != nil {
		return err
	}
	httpServer := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 2)
	go func() { errc <- s.grpc.Serve(grpcLis) }()
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
	go func() { s.grpc.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-shutdownCtx.Done():
		s.grpc.Stop()
	}
	return serveErr
}

// GRPC exposes the gRPC server, for tests that serve it on their own listener.
func (s *Server) GRPC() *grpc.Server { return s.grpc }

// slogAdapter lets go-grpc-middleware's logging interceptor write through slog.
func slogAdapter(l *slog.Logger) logging.Logger {
	return logging.LoggerFunc(func(ctx context.Context, lvl logging.Level, msg string, fields ...any) {
		l.Log(ctx, slog.Level(lvl), msg, fields...)
	})
}
