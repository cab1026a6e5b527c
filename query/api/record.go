package api

import (
	"context"
	"errors"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/keytrail/keytrail/query/auditlog"
	"github.com/keytrail/keytrail/query/auth"
)

// QueryRecorder keeps the query audit log. Record must not lose a record it accepted.
type QueryRecorder interface {
	Record(ctx context.Context, r auditlog.Record) error
}

// maxRecordedRequest bounds what one audit record keeps of a request.
const maxRecordedRequest = 4096

// Failed authentications are recorded at most this often (per API server). Without a bound,
// callers holding no credential at all could fill the recorder's queue and so make the API
// refuse every legitimate call (it fails closed).
const (
	failedAuthRecordRate  = 20
	failedAuthRecordBurst = 200
)

// record writes every authenticated call to the query audit log, refused ones included, and
// fails the call when the log cannot take the record (fail closed).
func record(rec QueryRecorder) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if unauthenticatedMethods[info.FullMethod] {
			return handler(ctx, req)
		}
		start := time.Now()
		resp, err := handler(ctx, req)
		if rerr := rec.Record(ctx, newRecord(ctx, caller(ctx), info.FullMethod, req, err, start)); rerr != nil {
			if errors.Is(rerr, auditlog.ErrBacklogFull) {
				return nil, status.Error(codes.Unavailable, "the query audit log is not accepting records; refusing unrecorded queries")
			}
			return nil, status.Error(codes.Unavailable, "could not record the query")
		}
		return resp, err
	}
}

// recordFailedAuth returns what authenticate calls on a refused credential: it records the
// attempt with no principal and code Unauthenticated, so security sees probing with unknown,
// expired or revoked tokens and where it came from. Nothing is served to such a call, so
// failing closed does not apply: the caller gets Unauthenticated whatever the log says, and
// beyond failedAuthRecordRate attempts are not recorded (see there).
func recordFailedAuth(rec QueryRecorder) func(ctx context.Context, method string, req any, err error, start time.Time) {
	limit := rate.NewLimiter(failedAuthRecordRate, failedAuthRecordBurst)
	return func(ctx context.Context, method string, req any, err error, start time.Time) {
		if !limit.Allow() {
			return
		}
		_ = rec.Record(ctx, newRecord(ctx, auth.Principal{}, method, req, err, start))
	}
}

func newRecord(ctx context.Context, p auth.Principal, method string, req any, err error, start time.Time) auditlog.Record {
	r := auditlog.Record{
		Time: start, Principal: p.Name, Role: string(p.Role), Method: method,
		Code: status.Code(err).String(), Duration: time.Since(start), Peer: peerOf(ctx),
	}
	if m, ok := req.(proto.Message); ok {
		b, _ := protojson.Marshal(m)
		if len(b) > maxRecordedRequest {
			b = b[:maxRecordedRequest]
		}
		r.Request = string(b)
	}
	return r
}

// peerOf is the caller's address: the connection's for direct gRPC calls, the HTTP client's
// as the gateway passed it for REST calls (trusted only over the in-memory connection).
func peerOf(ctx context.Context) string {
	pr, ok := peer.FromContext(ctx)
	if !ok || pr.Addr == nil {
		return ""
	}
	if !fromGateway(pr) {
		return pr.Addr.String()
	}
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get(gatewayPeerHeader); len(v) > 0 {
		return v[0]
	}
	return ""
}
