package api

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/genproto/googleapis/api/annotations"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/query/auditlog"
	"github.com/keytrail/keytrail/query/auth"
)

// The REST edge sits in front of grpc-gateway. The gateway parses a call's parameters before
// it calls the gRPC server, so without the edge a call with a malformed parameter
// (page_size=abc) was answered 400 before authentication (a caller without a token learned
// that the parameter was wrong rather than that it needed a token) and was never recorded.
// The edge authenticates and rate limits every /v1/ call first, with the same authenticator
// and buckets as the gRPC server, and records the calls the gRPC server never sees; calls
// that reach it are recorded there, once, with their request message.

// restRoute is one QueryService method's GET template, e.g. /v1/keys/{key_id}/services.
type restRoute struct {
	method   string   // /keytrail.v1.QueryService/GetKey
	segments []string // "v1", "keys", "{key_id}"
}

// queryServiceRoutes reads the routes from the service descriptor's HTTP annotations, so a
// method added to the proto is covered without touching the edge.
func queryServiceRoutes() []restRoute {
	sd := keytrailv1.File_keytrail_v1_query_proto.Services().ByName("QueryService")
	var routes []restRoute
	for i := range sd.Methods().Len() {
		md := sd.Methods().Get(i)
		rule, _ := proto.GetExtension(md.Options(), annotations.E_Http).(*annotations.HttpRule)
		if rule.GetGet() == "" {
			continue
		}
		routes = append(routes, restRoute{
			method:   fmt.Sprintf("/%s/%s", sd.FullName(), md.Name()),
			segments: strings.Split(strings.Trim(rule.GetGet(), "/"), "/"),
		})
	}
	return routes
}

// match finds the route of a path and its path parameters. Unknown paths get "GET <path>" as
// their method name (for the record), and no parameters.
func matchRoute(routes []restRoute, r *http.Request) (method string, params map[string][]string) {
	segs := strings.Split(strings.Trim(r.URL.EscapedPath(), "/"), "/")
	params = map[string][]string{}
	for k, v := range r.URL.Query() {
		params[k] = v
	}
next:
	for _, rt := range routes {
		if len(rt.segments) != len(segs) {
			continue
		}
		path := map[string]string{}
		for i, s := range rt.segments {
			if name, ok := strings.CutPrefix(s, "{"); ok {
				v, err := url.PathUnescape(segs[i])
				if err != nil || v == "" {
					continue next
				}
				path[strings.TrimSuffix(name, "}")] = v
				continue
			}
			if s != segs[i] {
				continue next
			}
		}
		for k, v := range path {
			params[k] = []string{v}
		}
		return rt.method, params
	}
	return r.Method + " " + auditlog.RedactPath(r.URL.EscapedPath()), params
}

// restCall follows one REST call through the gateway: whether the gateway called the gRPC
// server (which then records and logs it), and the error the gateway answered with.
type restCall struct {
	reached atomic.Bool
	err     atomic.Value // error
}

type restCallKey struct{}

func restCallOf(ctx context.Context) *restCall {
	c, _ := ctx.Value(restCallKey{}).(*restCall)
	return c
}

// markReached is the gateway connection's client interceptor: the call is the gRPC server's
// to record from here on.
func markReached(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if c := restCallOf(ctx); c != nil {
		c.reached.Store(true)
	}
	return invoker(ctx, method, req, reply, cc, opts...)
}

// gatewayErrorHandler notes the gateway's answer for the edge and turns a status's RetryInfo
// into Retry-After before writing the usual error body.
func gatewayErrorHandler(ctx context.Context, mux *runtime.ServeMux, m runtime.Marshaler, w http.ResponseWriter, r *http.Request, err error) {
	if c := restCallOf(r.Context()); c != nil {
		c.err.Store(err)
	}
	if s := retryAfterSeconds(err); s > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(s))
	}
	runtime.DefaultHTTPErrorHandler(ctx, mux, m, w, r, err)
}

// restEdge authenticates, rate limits and checks every /v1/ call before the gateway sees it.
type restEdge struct {
	gw       *runtime.ServeMux
	routes   []restRoute
	authn    *auth.Authenticator
	limiter  *rateLimiter
	refusals *refusals
	rec      QueryRecorder
	metrics  *apiMetrics
	log      *slog.Logger
}

func (e *restEdge) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	method, params := matchRoute(e.routes, r)
	// Calls refused by authentication or the rate limit are counted in metrics, not logged
	// one by one (as on the gRPC server): a flood of them must not flood the log either.
	fail := func(p auth.Principal, err error, logged bool) {
		_, outbound := runtime.MarshalerForRequest(e.gw, r)
		runtime.HTTPError(r.Context(), e.gw, outbound, w, r, err)
		if logged {
			e.logFinished(r, method, p, err, start)
		}
	}

	// 1. Who is calling: before anything about the call itself is looked at.
	var cn string
	hasCN := r.TLS != nil && len(r.TLS.VerifiedChains) > 0
	if hasCN {
		cn = r.TLS.VerifiedChains[0][0].Subject.CommonName
	}
	p, err := resolvePrincipal(e.authn, r.Header.Values("Authorization"), cn, hasCN)
	if err != nil {
		err = status.Error(codes.Unauthenticated, err.Error())
		e.refusals.record(r.Context(), "", "unauthenticated", e.record(r, auth.Principal{}, method, params, err, start))
		fail(auth.Principal{}, err, false)
		return
	}
	// 2. The caller's rate, the same bucket its gRPC calls take from.
	if err := e.limiter.allow(p); err != nil {
		e.metrics.shed.WithLabelValues(shedRateLimit).Inc()
		e.refusals.record(r.Context(), p.Name, "rate_limited", e.record(r, p, method, params, err, start))
		fail(p, err, false)
		return
	}
	// 3. Proto strings must be UTF-8: refused here, the gateway's own gRPC client would fail
	// on it while marshalling, as an Internal error that blames the server.
	if !validUTF8(r) {
		err := status.Error(codes.InvalidArgument, "the request path and query parameters must be valid UTF-8")
		_ = e.rec.Record(r.Context(), e.record(r, p, method, params, err, start))
		fail(p, err, true)
		return
	}
	// 4. The gateway. A call it answers without calling the gRPC server (a malformed
	// parameter, an unknown path) is recorded here; nothing was served to it, so its answer
	// stands whatever the log says.
	call := &restCall{}
	sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
	e.gw.ServeHTTP(sw, r.WithContext(context.WithValue(r.Context(), restCallKey{}, call)))
	if call.reached.Load() {
		return
	}
	err, _ = call.err.Load().(error)
	if err == nil && sw.code != http.StatusOK {
		err = status.Error(codeOfHTTP(sw.code), http.StatusText(sw.code))
	}
	_ = e.rec.Record(r.Context(), e.record(r, p, method, params, err, start))
	e.logFinished(r, method, p, err, start)
}

func (e *restEdge) record(r *http.Request, p auth.Principal, method string, params map[string][]string, err error, start time.Time) auditlog.Record {
	rec := newRecord(r.Context(), p, method, paramsJSON(params), err, start)
	rec.Peer = r.RemoteAddr
	return rec
}

// logFinished writes the line the gRPC logging interceptor writes for the calls it sees.
func (e *restEdge) logFinished(r *http.Request, method string, p auth.Principal, err error, start time.Time) {
	code := status.Code(err)
	attrs := []any{
		"protocol", "http", logging.MethodFieldKey, method, "grpc.code", code.String(),
		"principal", p.Name, "peer.address", r.RemoteAddr,
		"grpc.time_ms", fmt.Sprintf("%v", float32(time.Since(start).Microseconds())/1000),
	}
	if err != nil {
		attrs = append(attrs, "grpc.error", err.Error())
	}
	e.log.Log(r.Context(), slog.Level(logging.DefaultServerCodeToLevel(code)), "finished call", attrs...)
}

func validUTF8(r *http.Request) bool {
	if !utf8.ValidString(r.URL.Path) {
		return false
	}
	for k, vs := range r.URL.Query() {
		if !utf8.ValidString(k) {
			return false
		}
		for _, v := range vs {
			if !utf8.ValidString(v) {
				return false
			}
		}
	}
	return true
}

// statusWriter remembers the status the gateway wrote.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	w.code = code
	w.ResponseWriter.WriteHeader(code)
}

// codeOfHTTP maps an HTTP status the gateway wrote without an error to a gRPC code.
func codeOfHTTP(s int) codes.Code {
	switch s {
	case http.StatusBadRequest:
		return codes.InvalidArgument
	case http.StatusNotFound:
		return codes.NotFound
	case http.StatusMethodNotAllowed, http.StatusNotImplemented:
		return codes.Unimplemented
	case http.StatusUnauthorized:
		return codes.Unauthenticated
	case http.StatusForbidden:
		return codes.PermissionDenied
	case http.StatusTooManyRequests:
		return codes.ResourceExhausted
	case http.StatusServiceUnavailable:
		return codes.Unavailable
	}
	return codes.Unknown
}
