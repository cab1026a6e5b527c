package api

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keytrail/keytrail/query/auth"
)

// Streaming calls. The query service has none; the streams the server carries are gRPC
// server reflection (what grpcurl lists and describes without proto files) and the health
// service's Watch. Unary interceptors never see a stream, so without these a stream would
// be served to anyone. Streams get the same treatment as unary calls: authenticated (health
// excepted), held to the caller's rate (one token per stream), recorded. Reflection tells
// no more than the OpenAPI document (served without credentials), but requiring a
// credential keeps the rule simple: every call but health needs one, and every call is in
// the query audit log. Admission (the bound on calls in flight) is left to queries: a
// reflection stream reads no storage.

func authenticateStream(authn *auth.Authenticator, refused *refusals) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if unauthenticatedMethods[info.FullMethod] {
			return handler(srv, ss)
		}
		start := time.Now()
		p, err := principalOf(ss.Context(), authn)
		if err != nil {
			err = status.Error(codes.Unauthenticated, err.Error())
			refused.record(ss.Context(), "", "unauthenticated", newRecord(ss.Context(), auth.Principal{}, info.FullMethod, "", err, start))
			return err
		}
		return handler(srv, &contextStream{ServerStream: ss, ctx: auth.WithPrincipal(ss.Context(), p)})
	}
}

// streamInterceptor takes one token of the caller's rate per stream; a refused stream is
// recorded like a refused unary call (bounded, see refusals).
func (rl *rateLimiter) streamInterceptor(refused *refusals, shed *prometheus.CounterVec) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		p, ok := auth.FromContext(ss.Context())
		if !ok {
			return handler(srv, ss)
		}
		start := time.Now()
		if err := rl.allow(p); err != nil {
			shed.WithLabelValues(shedRateLimit).Inc()
			refused.record(ss.Context(), p.Name, "rate_limited", newRecord(ss.Context(), p, info.FullMethod, "", err, start))
			return err
		}
		return handler(srv, ss)
	}
}

// recordStream writes one record per authenticated stream when it ends: its code, and the
// requests the caller sent on it (what a reflection client asked for), redacted and bounded
// like a unary request. The answers went out while the stream ran, so failing closed can
// only fail the stream's final status; for reflection that is the schema, which
// /openapi.json serves to anyone anyway.
func recordStream(rec QueryRecorder) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if unauthenticatedMethods[info.FullMethod] {
			return handler(srv, ss)
		}
		start := time.Now()
		rs := &recordingStream{ServerStream: ss}
		err := handler(srv, rs)
		if rerr := rec.Record(ss.Context(), newRecord(ss.Context(), caller(ss.Context()), info.FullMethod, rs.requests(), err, start)); rerr != nil {
			return recordFailed(rerr)
		}
		return err
	}
}

// markSeenStream is markSeen for streams: from here on the interceptors record the call.
func markSeenStream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if c, ok := ss.Context().Value(callSeenKey{}).(*callSeen); ok {
		c.seen.Store(true)
	}
	return handler(srv, ss)
}

// registeredOnly runs in on streams of the registered services only. grpc-go sends a call
// to an unknown method through the stream interceptors too (to unknownMethod, with no
// service: srv is nil); it passes by, so that undecodedCalls records it as it records every
// call that reached no method.
func registeredOnly(in grpc.StreamServerInterceptor) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if srv == nil {
			return handler(srv, ss)
		}
		return in(srv, ss, info, handler)
	}
}

// contextStream is a stream whose handler sees ctx (the caller's principal).
type contextStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *contextStream) Context() context.Context { return s.ctx }

// recordingStream keeps the requests received on a stream, as JSON lines, up to
// maxRecordedRequest bytes.
type recordingStream struct {
	grpc.ServerStream
	mu  sync.Mutex
	buf strings.Builder
}

func (s *recordingStream) RecvMsg(m any) error {
	err := s.ServerStream.RecvMsg(m)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.buf.Len() >= maxRecordedRequest {
		return nil // a long stream is kept by its first requests
	}
	if s.buf.Len() > 0 {
		s.buf.WriteByte('\n')
	}
	s.buf.WriteString(requestJSON(m))
	return nil
}

func (s *recordingStream) requests() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.buf.String()
	if len(r) > maxRecordedRequest {
		r = r[:maxRecordedRequest]
	}
	return r
}
