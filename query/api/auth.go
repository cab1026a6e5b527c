package api

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/keytrail/keytrail/query/auth"
)

// gatewayCNHeader carries the common name of a REST caller's verified client certificate
// from the gateway to the gRPC server. It is trusted only on the in-memory gateway
// connection, never from the network (see fromGateway).
const gatewayCNHeader = "x-keytrail-client-cert-cn"

// gatewayPeerHeader carries a REST caller's address (the HTTP connection's remote address)
// from the gateway to the gRPC server, for the query audit log; trusted like gatewayCNHeader.
const gatewayPeerHeader = "x-keytrail-peer"

// unauthenticatedMethods are the calls allowed without credentials.
var unauthenticatedMethods = map[string]bool{
	"/grpc.health.v1.Health/Check": true,
	"/grpc.health.v1.Health/Watch": true,
	"/grpc.health.v1.Health/List":  true,
}

// authenticate resolves the caller and puts the Principal in the context. A refused
// credential is recorded (bounded, see refusals) before the call fails.
func authenticate(authn *auth.Authenticator, refused *refusals) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if unauthenticatedMethods[info.FullMethod] {
			return handler(ctx, req)
		}
		start := time.Now()
		p, err := principalOf(ctx, authn)
		if err != nil {
			err = status.Error(codes.Unauthenticated, err.Error())
			refused.record(ctx, "", "unauthenticated", newRecord(ctx, auth.Principal{}, info.FullMethod, requestJSON(req), err, start))
			return nil, err
		}
		return handler(auth.WithPrincipal(ctx, p), req)
	}
}

func principalOf(ctx context.Context, authn *auth.Authenticator) (auth.Principal, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	var authorization []string
	if v := md.Get("authorization"); len(v) > 0 {
		authorization = v[:1]
	}
	cn, hasCN := clientCertCN(ctx, md)
	return resolvePrincipal(authn, authorization, cn, hasCN)
}

// resolvePrincipal is authentication for both transports: an Authorization value when one
// was sent (it wins over a client certificate), else a verified client certificate's common
// name.
func resolvePrincipal(authn *auth.Authenticator, authorization []string, cn string, hasCN bool) (auth.Principal, error) {
	if len(authorization) > 0 {
		scheme, token, ok := strings.Cut(authorization[0], " ")
		if !ok || !strings.EqualFold(scheme, "bearer") {
			return auth.Principal{}, errors.New("authorization must be: Bearer <token>")
		}
		return authn.Token(strings.TrimSpace(token))
	}
	if hasCN {
		return authn.ClientCertificate(cn)
	}
	return auth.Principal{}, auth.ErrMissingCredentials
}

// clientCertCN finds a verified client certificate: on a direct gRPC TLS connection from the
// handshake itself, on the gateway's in-memory connection from the header the gateway set.
func clientCertCN(ctx context.Context, md metadata.MD) (string, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return "", false
	}
	if fromGateway(p) {
		if v := md.Get(gatewayCNHeader); len(v) > 0 && v[0] != "" {
			return v[0], true
		}
		return "", false
	}
	if tlsInfo, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(tlsInfo.State.VerifiedChains) > 0 {
		return tlsInfo.State.VerifiedChains[0][0].Subject.CommonName, true
	}
	return "", false
}

// fromGateway reports whether a call came over the in-memory gateway connection, which no
// network client can reach.
func fromGateway(p *peer.Peer) bool {
	return p.Addr != nil && p.Addr.Network() == gatewayNetwork
}

// rateLimiter gives each principal a token bucket. One limiter serves both transports: the
// network gRPC server applies it, and the REST edge applies it before the gateway (so the
// gateway's in-memory gRPC server does not apply it again).
type rateLimiter struct {
	mu       sync.Mutex
	limiters map[string]*rate.Limiter
}

func newRateLimiter() *rateLimiter { return &rateLimiter{limiters: map[string]*rate.Limiter{}} }

// allow takes a token from p's bucket, or says how long until one is there in a
// ResourceExhausted status with RetryInfo.
func (rl *rateLimiter) allow(p auth.Principal) error {
	rl.mu.Lock()
	l, found := rl.limiters[p.Name]
	if !found {
		l = rate.NewLimiter(rate.Limit(p.RatePerSecond), p.Burst)
		rl.limiters[p.Name] = l
	}
	rl.mu.Unlock()
	r := l.Reserve()
	if !r.OK() {
		return retryable(codes.ResourceExhausted, time.Second, "rate limit exceeded for %q: %g requests/s with bursts of %d; retry shortly", p.Name, p.RatePerSecond, p.Burst)
	}
	if d := r.Delay(); d > 0 {
		r.Cancel()
		return retryable(codes.ResourceExhausted, d, "rate limit exceeded for %q: %g requests/s with bursts of %d; retry shortly", p.Name, p.RatePerSecond, p.Burst)
	}
	return nil
}

// interceptor refuses calls beyond the caller's rate and records them (bounded per
// principal, see refusals): a caller over its limit cannot flood the log.
func (rl *rateLimiter) interceptor(refused *refusals, shed *prometheus.CounterVec) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		p, ok := auth.FromContext(ctx)
		if !ok {
			return handler(ctx, req)
		}
		start := time.Now()
		if err := rl.allow(p); err != nil {
			shed.WithLabelValues(shedRateLimit).Inc()
			refused.record(ctx, p.Name, "rate_limited", newRecord(ctx, p, info.FullMethod, requestJSON(req), err, start))
			return nil, err
		}
		return handler(ctx, req)
	}
}

// Authorization helpers used by the handlers.

func caller(ctx context.Context) auth.Principal {
	p, _ := auth.FromContext(ctx)
	return p
}

// mayRead refuses a project the caller may not read.
func mayRead(ctx context.Context, project string) error {
	if project == "" || caller(ctx).MayRead(project) {
		return nil
	}
	return status.Error(codes.PermissionDenied, fmt.Sprintf("not allowed to read project %q", project))
}

// scopedProject resolves the project filter of a list call. An allowed project passes; a
// forbidden one is refused; none means everything the caller may read, which for a caller
// limited to one project is that project. A caller limited to several projects must name one
// on calls whose totals would otherwise mix projects (must is set).
func scopedProject(ctx context.Context, requested string, must bool) (project string, filter func(string) bool, err error) {
	p := caller(ctx)
	if requested != "" {
		return requested, nil, mayRead(ctx, requested)
	}
	if p.ReadsAllProjects() {
		return "", nil, nil
	}
	if len(p.Projects) == 1 {
		return p.Projects[0], nil, nil
	}
	if must {
		return "", nil, status.Error(codes.PermissionDenied, fmt.Sprintf("this token reads projects %s: pass project", strings.Join(p.Projects, ", ")))
	}
	return "", p.MayRead, nil
}
