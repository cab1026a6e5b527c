package api

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/keytrail/keytrail/event"
	"github.com/keytrail/keytrail/query/auditlog"
	"github.com/keytrail/keytrail/query/auth"
)

// QueryRecorder keeps the query audit log. Record must not lose a record it accepted.
type QueryRecorder interface {
	Record(ctx context.Context, r auditlog.Record) error
}

// maxRecordedRequest bounds what one audit record keeps of a request.
const maxRecordedRequest = 4096

// Calls refused before anything is served to them (failed authentication, the per-principal
// rate limit) are recorded at most this often, per principal and once more for all callers
// without a valid credential together. Without a bound, a flood of such calls could fill the
// recorder's queue and so make the API refuse every legitimate call (it fails closed). Every
// other call, rejected parameters included, is recorded each time: the principal's rate limit
// already bounds those.
const (
	DefaultRefusalRecordRate  = 20
	DefaultRefusalRecordBurst = 200
)

// record writes every call that passed authentication and the rate limit to the query audit
// log, refused ones included, and fails the call when the log cannot take the record (fail
// closed).
func record(rec QueryRecorder) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if unauthenticatedMethods[info.FullMethod] {
			return handler(ctx, req)
		}
		start := time.Now()
		resp, err := handler(ctx, req)
		if rerr := rec.Record(ctx, newRecord(ctx, caller(ctx), info.FullMethod, requestJSON(req), err, start)); rerr != nil {
			return nil, recordFailed(rerr)
		}
		return resp, err
	}
}

// recordFailed is what a call whose record could not be queued is answered instead.
func recordFailed(err error) error {
	if errors.Is(err, auditlog.ErrBacklogFull) {
		return status.Error(codes.Unavailable, "the query audit log is not accepting records; refusing unrecorded queries")
	}
	return status.Error(codes.Unavailable, "could not record the query")
}

// refusals records calls refused before anything was served to them, bounded per key (a
// principal's name, or "" for callers without a valid credential). Nothing is served to such
// a call, so failing closed does not apply: the caller gets its refusal whatever the log
// says, and records beyond the bound are counted in keytrail_query_audit_unrecorded_total.
type refusals struct {
	rec        QueryRecorder
	limit      rate.Limit
	burst      int
	mu         sync.Mutex
	limiters   map[string]*rate.Limiter
	unrecorded *prometheus.CounterVec
}

func newRefusals(rec QueryRecorder, perSecond float64, burst int, unrecorded *prometheus.CounterVec) *refusals {
	return &refusals{rec: rec, limit: rate.Limit(perSecond), burst: burst, limiters: map[string]*rate.Limiter{}, unrecorded: unrecorded}
}

// record keeps r unless key's bound is spent; reason labels the ones it drops.
func (f *refusals) record(ctx context.Context, key, reason string, r auditlog.Record) {
	f.mu.Lock()
	l, ok := f.limiters[key]
	if !ok {
		// Keys are the tokens file's principals plus "": a bounded set.
		l = rate.NewLimiter(f.limit, f.burst)
		f.limiters[key] = l
	}
	f.mu.Unlock()
	if !l.Allow() {
		f.unrecorded.WithLabelValues(reason).Inc()
		return
	}
	if err := f.rec.Record(ctx, r); err != nil {
		f.unrecorded.WithLabelValues(reason).Inc()
	}
}

// requestJSON is a request message as the audit log keeps it: secret-shaped values replaced
// by their fingerprints, at most maxRecordedRequest bytes.
func requestJSON(req any) string {
	m, ok := req.(proto.Message)
	if !ok {
		return ""
	}
	m, _ = auditlog.RedactMessage(m)
	b, _ := protojson.Marshal(m)
	return boundRequest(b)
}

// paramsJSON is the same for a REST call the gateway never turned into a message: its path
// and query parameters as a JSON object, each value redacted.
func paramsJSON(params map[string][]string) string {
	obj := make(map[string]any, len(params))
	for k, vs := range params {
		red := make([]string, len(vs))
		for i, v := range vs {
			red[i], _ = event.RedactText(v)
		}
		k, _ = event.RedactText(k)
		if len(red) == 1 {
			obj[k] = red[0]
		} else {
			obj[k] = red
		}
	}
	b, _ := json.Marshal(obj)
	return boundRequest(b)
}

func boundRequest(b []byte) string {
	if len(b) > maxRecordedRequest {
		b = b[:maxRecordedRequest]
	}
	return string(b)
}

func newRecord(ctx context.Context, p auth.Principal, method, request string, err error, start time.Time) auditlog.Record {
	return auditlog.Record{
		Time: start, Principal: p.Name, Role: string(p.Role), Method: method, Request: request,
		Code: status.Code(err).String(), Duration: time.Since(start), Peer: peerOf(ctx),
	}
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
