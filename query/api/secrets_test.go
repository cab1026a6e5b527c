package api_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/keytrail/keytrail/event"
	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/internal/apitest"
	"github.com/keytrail/keytrail/internal/testenv"
	"github.com/keytrail/keytrail/query/auditlog"
)

// storedAPI is an API over the security fixture whose calls are recorded by a real
// auditlog.Recorder into the test database's query_audit_log, and whose log lines (every
// level) are captured.
type storedAPI struct {
	*apitest.Server
	db   *testenv.Database
	logs *testenv.SyncBuffer
}

// mustDial is a gRPC connection that sends only the metadata each call carries.
func mustDial(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func startStoredAPI(t *testing.T, opts apitest.Options) *storedAPI {
	t.Helper()
	return startStoredAPIOn(t, testenv.ClickHouse(t), opts)
}

// startStoredAPIOn is startStoredAPI on a database the test made.
func startStoredAPIOn(t *testing.T, db *testenv.Database, opts apitest.Options) *storedAPI {
	t.Helper()
	newSecFixture().insert(t, db)
	rec, err := auditlog.New(auditlog.Config{Conn: db.Conn, FlushInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = rec.Close(ctx)
	})
	logs := &testenv.SyncBuffer{}
	opts.Recorder = rec
	opts.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if opts.Tokens == nil {
		opts.Tokens = securityTokens()
	}
	return &storedAPI{Server: apitest.Start(t, db, opts), db: db, logs: logs}
}

// waitRecords waits until query_audit_log holds exactly n rows.
func (s *storedAPI) waitRecords(t *testing.T, n uint64) {
	t.Helper()
	testenv.Eventually(t, 15*time.Second, func() error {
		if got := testenv.QueryUint64(t, s.db.Conn, "SELECT count() FROM query_audit_log"); got != n {
			return fmt.Errorf("query_audit_log holds %d rows, want %d", got, n)
		}
		return nil
	})
}

// Secrets of several shapes (event.LooksLikeSecret's known formats and a long random token),
// each typed into queries.
var typedSecrets = []string{
	"sk-proj-Q2h7pXk9LmN4vB8zR1tY6wE3uI5oA0sD",                                      // OpenAI project key
	"sk_live_51HxYzAbCdEfGhIjKlMnOpQr",                                              // Stripe
	"AKIAIOSFODNN7EXAMPLE",                                                          // AWS access key id
	"ghp_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8",                                      // GitHub
	"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJrZXl0cmFpbCJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ",      // JWT
	"Zk3Qm9Xr7Tb2Wn5Yc8Ld1Hs4Gv6Jp0Fa3Ke7Um9Rq2",                                    // high-entropy token
	"xoxb-2048-4096-AbCdEfGhIjKlMnOpQrStUvWx",                                       // Slack
	"glpat-Ab3De6Gh9Jk2Mn5Pq8St",                                                    // GitLab
	"AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q",                                       // Google
	"github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyzABCDEF0123456789abcd", // GitHub fine-grained
}

// Item 2 of issue 10: a secret typed into a query (GET /v1/keys/sk-proj-...) was stored raw
// in query_audit_log.request and printed in the "finished call" log line. Every call below
// carries a secret in a path or query parameter, over REST and gRPC, authenticated or not,
// answered or refused at every stage (unauthenticated, invalid parameter the gateway cannot
// parse, invalid by validation, permission denied, not found, unknown path, answered). After
// them, no table of the database and no log line holds any secret, and each call's record
// holds the secret's fingerprint instead.
func TestSecretsTypedIntoQueriesAreNeitherStoredNorLogged(t *testing.T) {
	t.Parallel()
	s := startStoredAPI(t, apitest.Options{})
	client := keytrailv1.NewQueryServiceClient(mustDial(t, s.GRPCAddr))
	auditor := withAuthorization(bearer(tokAuditor))
	acme := withAuthorization(bearer(tokAcme))

	calls := 0
	for _, secret := range typedSecrets {
		if !event.LooksLikeSecret(secret) {
			t.Fatalf("%s does not look like a secret to the detector", secret)
		}
		seg := url.PathEscape(secret)
		for _, c := range []struct {
			path   string
			params url.Values
			token  string
			want   int
		}{
			{"/v1/keys/" + seg, nil, tokAuditor, http.StatusNotFound},
			{"/v1/keys/" + seg + "/services", nil, tokAuditor, http.StatusOK},
			{"/v1/services/" + seg + "/keys", nil, tokAcme, http.StatusOK},
			{"/v1/rotations/" + seg, nil, tokAuditor, http.StatusNotFound},
			{"/v1/keys/" + seg, nil, "", http.StatusUnauthorized},
			{"/v1/keys", url.Values{"project": {secret}}, tokAcme, http.StatusForbidden},
			{"/v1/audit/events", url.Values{"actor": {secret}, "key_id": {secret}}, tokAuditor, http.StatusOK},
			{"/v1/spend", url.Values{"service": {secret}}, tokAuditor, http.StatusOK},
			{"/v1/keys", url.Values{"page_token": {secret}}, tokAuditor, http.StatusBadRequest},
			{"/v1/keys", url.Values{"page_size": {secret}}, tokAuditor, http.StatusBadRequest},       // the gateway cannot parse it
			{"/v1/anomalies", url.Values{"start_time": {secret}}, tokAuditor, http.StatusBadRequest}, // nor this
			{"/v1/nowhere/" + seg, nil, tokAuditor, http.StatusNotFound},                             // no such route
		} {
			authorization := ""
			if c.token != "" {
				authorization = bearer(c.token)
			}
			code, body := testenv.Get(t, "http://"+s.HTTPAddr, c.path, c.params, authorization)
			if code != c.want {
				t.Errorf("GET %s?%s: HTTP %d, want %d: %s", c.path, c.params.Encode(), code, c.want, body)
			}
			calls++
		}

		grpcCalls := []struct {
			name string
			call func() error
		}{
			{"GetKey", func() error { _, err := client.GetKey(auditor, &keytrailv1.GetKeyRequest{KeyId: secret}); return err }},
			{"GetRotation", func() error {
				_, err := client.GetRotation(auditor, &keytrailv1.GetRotationRequest{OldKeyId: secret})
				return err
			}},
			{"ListAuditEvents", func() error {
				_, err := client.ListAuditEvents(acme, &keytrailv1.ListAuditEventsRequest{Actor: secret, KeyId: secret})
				return err
			}},
			{"GetSpend", func() error {
				_, err := client.GetSpend(acme, &keytrailv1.GetSpendRequest{Project: secret})
				return err
			}},
			{"ListKeys", func() error {
				_, err := client.ListKeys(auditor, &keytrailv1.ListKeysRequest{PageToken: secret})
				return err
			}},
			{"ListKeyServices without a token", func() error {
				_, err := client.ListKeyServices(withAuthorization(""), &keytrailv1.ListKeyServicesRequest{KeyId: secret})
				return err
			}},
			{"ListServiceKeys with the secret as token", func() error {
				_, err := client.ListServiceKeys(withAuthorization(bearer(secret)), &keytrailv1.ListServiceKeysRequest{Service: secret})
				return err
			}},
		}
		for _, c := range grpcCalls {
			_ = c.call() // the outcome varies by call; what matters is what is kept of it
			calls++
		}
	}
	s.waitRecords(t, uint64(calls))

	logs := s.logs.String()
	if !strings.Contains(logs, "finished call") {
		t.Fatalf("no call was logged:\n%s", logs)
	}
	for _, secret := range typedSecrets {
		if n := testenv.CountOccurrences(t, s.db, secret); n != 0 {
			t.Errorf("%s: stored in %d cells", secret, n)
		}
		if strings.Contains(logs, secret) {
			t.Errorf("%s: in the log", secret)
		}
		// Kept as its fingerprint instead, in the record of each of the 19 calls that carried
		// it (the unknown path's in its method, the others' in their request).
		fp := event.Fingerprint(secret)
		if n := testenv.QueryUint64(t, s.db.Conn, "SELECT count() FROM query_audit_log WHERE position(request, ?) > 0 OR position(method, ?) > 0", fp, fp); n != 19 {
			t.Errorf("%s: %d records hold its fingerprint %s, want 19", secret, n, fp)
		}
	}
}
