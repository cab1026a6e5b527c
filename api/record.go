package api

import (
	"context"
	"errors"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/keytrail/keytrail/queryaudit"
)

// QueryRecorder keeps the query audit log. Record must not lose a record it accepted.
type QueryRecorder interface {
	Record(ctx context.Context, r queryaudit.Record) error
}

// maxRecordedRequest bounds what one audit record keeps of a request.
const maxRecordedRequest = 4096

// record writes every authenticated call to the query audit log, refused ones included, and
// fails the call when the log cannot take the record (fail closed).
func record(rec QueryRecorder) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if unauthenticatedMethods[info.FullMethod] {
			return handler(ctx, req)
		}
		start := time.Now()
		resp, err := handler(ctx, req)
		p := caller(ctx)
		r := queryaudit.Record{
			Time: start, Principal: p.Name, Role: string(p.Role), Method: info.FullMethod,
			Code: status.Code(err).String(), Duration: time.Since(start),
		}
		if m, ok := req.(proto.Message); ok {
			b, _ := protojson.Marshal(m)
			if len(b) > maxRecordedRequest {
				b = b[:maxRecordedRequest]
			}
			r.Request = string(b)
		}
		if pr, ok := peer.FromContext(ctx); ok && pr.Addr != nil && !fromGateway(pr) {
			r.Peer = pr.Addr.String()
		}
		if rerr := rec.Record(ctx, r); rerr != nil {
			if errors.Is(rerr, queryaudit.ErrBacklogFull) {
				return nil, status.Error(codes.Unavailable, "the query audit log is not accepting records; refusing unrecorded queries")
			}
			return nil, status.Error(codes.Unavailable, "could not record the query")
		}
		return resp, err
	}
}
