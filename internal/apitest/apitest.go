package apitest

import (
	"cmp"
	"context"
	"io"
	"log/slog"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/internal/testenv"
	"github.com/keytrail/keytrail/query/api"
	"github.com/keytrail/keytrail/query/auditlog"
	"github.com/keytrail/keytrail/query/auth"
	"github.com/keytrail/keytrail/query/chreader"
)

// Options tune a test server.
type Options struct {
	// Now is the query clock (defaults of time ranges); time.Now when nil.
	Now func() time.Time
	// Tokens adds credentials: token value -> entry (SHA256 is filled in).
	Tokens map[string]auth.Entry
	// Console serves the web console under /ui/ too.
	Console bool
	// ClientToken is the bearer token Server.Client sends when a call carries none
	// (AdminToken when empty).
	ClientToken string
	// Recorder receives the query audit records; when nil, Server.Records keeps them.
	Recorder api.QueryRecorder
	// Reader, when set, answers instead of a ClickHouse reader over the database (which may
	// then be nil): handler tests with fakes.
	Reader api.Reader
	// Logger is the server's log; discarded when nil.
	Logger *slog.Logger
	// Conn, when set, is what the reader queries instead of the database's connection (a
	// test wraps the real one, e.g. to hold queries).
	Conn driver.Conn
	// Registerer, when set, takes the API's metrics.
	Registerer prometheus.Registerer
	// Admission, RefusalRecordRate and RefusalRecordBurst are passed to api.Config.
	Admission          api.Admission
	RefusalRecordRate  float64
	RefusalRecordBurst int
}

// Server is a running API.
type Server struct {
	GRPCAddr   string
	HTTPAddr   string
	AdminToken string
	// Client calls gRPC as the admin (or Options.ClientToken); Conn is its connection.
	Client keytrailv1.QueryServiceClient
	Conn   *grpc.ClientConn
	// Records are the query audit records, unless Options.Recorder took them.
	Records *Recorder
}

// AdminToken is the bearer token of the admin every test server accepts.
const AdminToken = "ktk_test_admin"

// Start serves the API until the test ends.
func Start(t testing.TB, db *testenv.Database, opts Options) *Server {
	t.Helper()
	file := auth.File{Tokens: []auth.Entry{{Name: "test-admin", SHA256: auth.HashToken(AdminToken), Role: auth.RoleAdmin}}}
	for token, e := range opts.Tokens {
		e.SHA256 = auth.HashToken(token)
		file.Tokens = append(file.Tokens, e)
	}
	authn, err := auth.NewAuthenticator(file, nil)
	if err != nil {
		t.Fatal(err)
	}
	rec := &Recorder{}
	var recorder api.QueryRecorder = rec
	if opts.Recorder != nil {
		recorder = opts.Recorder
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	clientToken := cmp.Or(opts.ClientToken, AdminToken)
	reader := opts.Reader
	if reader == nil {
		conn := opts.Conn
		if conn == nil {
			conn = db.Conn
		}
		reader = chreader.NewReader(conn, opts.Now)
	}
	srv, err := api.New(api.Config{
		Reader:             reader,
		Ready:              func(context.Context) error { return nil },
		Auth:               authn,
		Recorder:           recorder,
		Logger:             opts.Logger,
		Registerer:         opts.Registerer,
		Admission:          opts.Admission,
		RefusalRecordRate:  opts.RefusalRecordRate,
		RefusalRecordBurst: opts.RefusalRecordBurst,
		Console:            opts.Console,
	})
	if err != nil {
		t.Fatal(err)
	}
	grpcLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	httpLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, grpcLis, httpLis) }()
	conn, err := grpc.NewClient(grpcLis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			if _, ok := metadata.FromOutgoingContext(ctx); !ok {
				ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+clientToken)
			}
			return invoker(ctx, method, req, reply, cc, opts...)
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("api server: %v", err)
		}
	})
	return &Server{
		GRPCAddr: grpcLis.Addr().String(), HTTPAddr: httpLis.Addr().String(), AdminToken: AdminToken,
		Client: keytrailv1.NewQueryServiceClient(conn), Conn: conn, Records: rec,
	}
}

// WithToken makes a gRPC context carrying another bearer token ("" for none).
func WithToken(ctx context.Context, token string) context.Context {
	if token == "" {
		return metadata.NewOutgoingContext(ctx, metadata.MD{})
	}
	return metadata.NewOutgoingContext(ctx, metadata.Pairs("authorization", "Bearer "+token))
}

// Get calls the REST API with a bearer token ("" for none) and returns status and body.
func (s *Server) Get(t testing.TB, path string, params url.Values, token string) (int, []byte) {
	t.Helper()
	authorization := ""
	if token != "" {
		authorization = "Bearer " + token
	}
	return testenv.Get(t, "http://"+s.HTTPAddr, path, params, authorization)
}

// Recorder keeps query audit records in memory.
type Recorder struct {
	mu      sync.Mutex
	records []auditlog.Record
}

// Record implements api.QueryRecorder.
func (r *Recorder) Record(_ context.Context, rec auditlog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.records = append(r.records, rec)
	return nil
}

// All returns the records so far.
func (r *Recorder) All() []auditlog.Record {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]auditlog.Record(nil), r.records...)
}
