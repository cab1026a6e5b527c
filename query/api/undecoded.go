package api

import (
	"context"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"

	"github.com/keytrail/keytrail/query/auth"
)

// grpc-go decodes a call's request before it runs any interceptor, so a request it cannot
// decode (a string field that is not UTF-8, a truncated message) is answered with grpc's own
// Internal "failed to unmarshal" status and would pass authentication, the rate limit and
// the query audit log by. undecodedCalls, a stats handler, sees every call from the
// transport's side: one that ends without having reached the interceptors is recorded
// there, under its principal when its credential is valid (bounded like other refusals:
// nothing was served to it).
type undecodedCalls struct {
	authn    *auth.Authenticator
	refusals *refusals
}

type callSeenKey struct{}

// callSeen follows one call from the transport to the interceptors.
type callSeen struct {
	method string
	start  time.Time
	seen   atomic.Bool
}

// markSeen is the first interceptor: from here on the interceptors record the call.
func markSeen(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if c, ok := ctx.Value(callSeenKey{}).(*callSeen); ok {
		c.seen.Store(true)
	}
	return handler(ctx, req)
}

func (u undecodedCalls) TagRPC(ctx context.Context, info *stats.RPCTagInfo) context.Context {
	return context.WithValue(ctx, callSeenKey{}, &callSeen{method: info.FullMethodName, start: time.Now()})
}

func (u undecodedCalls) HandleRPC(ctx context.Context, s stats.RPCStats) {
	end, ok := s.(*stats.End)
	if !ok || end.IsClient() {
		return
	}
	c, ok := ctx.Value(callSeenKey{}).(*callSeen)
	if !ok || c.seen.Load() || unauthenticatedMethods[c.method] {
		return
	}
	p, err := principalOf(ctx, u.authn)
	key := p.Name
	if err != nil {
		p, key = auth.Principal{}, ""
	}
	reason := "undecodable"
	if status.Code(end.Error) == codes.Unimplemented {
		reason = "unknown_method"
	}
	u.refusals.record(ctx, key, reason, newRecord(ctx, p, c.method, "", end.Error, c.start))
}

// unknownMethod answers a call to a method this server does not have (a typo, a client
// built from a newer proto), as grpc-go would, but late enough that it is recorded.
func unknownMethod(_ any, stream grpc.ServerStream) error {
	method, _ := grpc.MethodFromServerStream(stream)
	return status.Errorf(codes.Unimplemented, "unknown method %s", method)
}

func (undecodedCalls) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }

func (undecodedCalls) HandleConn(context.Context, stats.ConnStats) {}
