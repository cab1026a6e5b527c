package api_test

import (
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/internal/apitest"
	"github.com/keytrail/keytrail/internal/testenv"
	"github.com/keytrail/keytrail/query/auth"
)

// auditCounts is query_audit_log as principal/method/code -> rows.
func auditCounts(t *testing.T, s *storedAPI) map[string]uint64 {
	t.Helper()
	rows, err := s.db.Conn.Query(t.Context(), "SELECT principal, method, code, count() FROM query_audit_log GROUP BY principal, method, code")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]uint64{}
	for rows.Next() {
		var principal, method, code string
		var n uint64
		if err := rows.Scan(&principal, &method, &code, &n); err != nil {
			t.Fatal(err)
		}
		out[principal+" "+strings.TrimPrefix(method, "/keytrail.v1.QueryService/")+" "+code] = n
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// Item 3 of issue 10: calls the REST gateway rejected while parsing parameters were answered
// 400 before authentication (so 400 rather than 401 without a token) and never recorded, and
// calls answered 429 were not recorded either.
//
// Load: a burst of malformed calls within a principal's rate, then a burst beyond its rate
// (REST and gRPC, malformed and well-formed), then a burst without credentials. The rate
// limit refills one token per 10,000 s and the refused calls' record bound (10 per key) as
// slowly, so which calls are refused and which refusals are recorded is exact. Expected:
// every call within the rate recorded with its real code, a malformed one without a token is
// 401, the first 10 refusals of each kind recorded and the rest counted as unrecorded.
func TestEveryCallIsRecordedMalformedAndRateLimitedIncluded(t *testing.T) {
	t.Parallel()
	const tokBurst = "ktk_test_burst"
	tokens := securityTokens()
	tokens[tokBurst] = auth.Entry{Name: "burst-bot", Role: auth.RoleAuditor, RatePerSecond: 0.0001, Burst: 5}
	reg := prometheus.NewRegistry()
	s := startStoredAPI(t, apitest.Options{Tokens: tokens, Registerer: reg, RefusalRecordRate: 0.0001, RefusalRecordBurst: 10})
	client := keytrailv1.NewQueryServiceClient(mustDial(t, s.GRPCAddr))
	burst := withAuthorization(bearer(tokBurst))
	get := func(path string, params url.Values, authorization string) (int, []byte, http.Header) {
		t.Helper()
		return testenv.GetWithHeader(t, "http://"+s.HTTPAddr, path, params, authorization)
	}
	malformed := url.Values{"page_size": {"abc"}}

	// 1. Without a valid credential, a malformed call is refused for the credential: 401.
	code, body, _ := get("/v1/keys", malformed, "")
	wantREST(t, "malformed, no token", code, body, http.StatusUnauthorized, codes.Unauthenticated, "missing credentials")
	code, body, _ = get("/v1/keys", malformed, bearer("ktk_nobody"))
	wantREST(t, "malformed, unknown token", code, body, http.StatusUnauthorized, codes.Unauthenticated, "invalid or expired token")
	_, err := client.ListKeys(withAuthorization(""), &keytrailv1.ListKeysRequest{})
	wantGRPC(t, "gRPC, no token", err, codes.Unauthenticated, "missing credentials")

	// 2. Five malformed calls within burst-bot's rate (its burst is 5): each answered 400.
	for _, c := range []struct {
		path   string
		params url.Values
		want   string
	}{
		{"/v1/keys", malformed, `parsing field "page_size"`},                                     // the gateway cannot parse it
		{"/v1/anomalies", url.Values{"start_time": {"yesterday"}}, `parsing field "start_time"`}, // nor this
		{"/v1/spend", url.Values{"group_by": {"SPEND_DIMENSION_NOPE"}}, `parsing list "group_by"`},
		{"/v1/keys", url.Values{"page_size": {"5000"}}, "page_size"},                       // refused by validation
		{"/v1/keys/%FF", nil, "the request path and query parameters must be valid UTF-8"}, // refused by the edge
	} {
		code, body, _ := get(c.path, c.params, bearer(tokBurst))
		wantREST(t, "GET "+c.path+"?"+c.params.Encode(), code, body, http.StatusBadRequest, codes.InvalidArgument, c.want)
	}

	// 3. Twelve calls beyond its rate: all 429 / ResourceExhausted, malformed or not.
	const limited = `rate limit exceeded for "burst-bot"`
	for i := range 6 {
		params := malformed
		if i%2 == 1 {
			params = nil
		}
		code, body, header := get("/v1/keys", params, bearer(tokBurst))
		wantREST(t, fmt.Sprintf("REST call %d over the rate", i), code, body, http.StatusTooManyRequests, codes.ResourceExhausted, limited)
		if ra := header.Get("Retry-After"); ra == "" {
			t.Errorf("REST call %d over the rate: no Retry-After", i)
		}
		_, err := client.GetKey(burst, &keytrailv1.GetKeyRequest{KeyId: "key_acme_1"})
		wantGRPC(t, fmt.Sprintf("gRPC call %d over the rate", i), err, codes.ResourceExhausted, limited)
	}

	// 4. Another principal is not affected by burst-bot's bounds.
	if code, _, _ := get("/v1/keys", nil, bearer(tokAuditor)); code != http.StatusOK {
		t.Errorf("auditor: HTTP %d", code)
	}

	// 5. Fifteen more calls without a credential.
	for range 15 {
		code, body, _ := get("/v1/spend", malformed, "")
		wantREST(t, "spend without a token", code, body, http.StatusUnauthorized, codes.Unauthenticated, "")
	}

	// Within the rate: every call, with its real code. Beyond the rate and without a
	// credential: the first 10 of each (3 + 7 of the unauthenticated ones), in order.
	want := map[string]uint64{
		" ListKeys Unauthenticated":               3,
		" GetSpend Unauthenticated":               7,
		"burst-bot ListKeys InvalidArgument":      2,
		"burst-bot ListAnomalies InvalidArgument": 1,
		"burst-bot GetSpend InvalidArgument":      1,
		"burst-bot GetKey InvalidArgument":        1,
		"burst-bot ListKeys ResourceExhausted":    5, // REST and gRPC alternate: 5 + 5 of the first 10
		"burst-bot GetKey ResourceExhausted":      5,
		"security-team ListKeys OK":               1,
	}
	var total uint64
	for _, n := range want {
		total += n
	}
	s.waitRecords(t, total)
	if got := auditCounts(t, s); !maps.Equal(got, want) {
		keys := slices.Sorted(maps.Keys(got))
		var lines []string
		for _, k := range keys {
			lines = append(lines, fmt.Sprintf("%q: %d", k, got[k]))
		}
		t.Errorf("query_audit_log:\n%s\nwant %v", strings.Join(lines, "\n"), want)
	}
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"keytrail_query_shed_total", []string{"reason", "rate_limit"}, 12},
		{"keytrail_query_audit_unrecorded_total", []string{"reason", "rate_limited"}, 2},
		{"keytrail_query_audit_unrecorded_total", []string{"reason", "unauthenticated"}, 8},
	} {
		if got := testenv.Metric(t, reg, c.name, c.labels...); got != c.want {
			t.Errorf("%s%q = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	// The records of calls the gateway never passed on keep their parameters (redacted).
	if n := testenv.QueryUint64(t, s.db.Conn, `SELECT count() FROM query_audit_log WHERE principal = 'burst-bot' AND code = 'InvalidArgument' AND request = '{"page_size":"abc"}'`); n != 1 {
		t.Errorf("%d records of page_size=abc with its parameters, want 1", n)
	}
}

// rawCodec sends request bytes as they are, so a test can send what no protobuf library
// would encode.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error)      { return v.([]byte), nil }
func (rawCodec) Unmarshal(data []byte, v any) error { return nil }
func (rawCodec) Name() string                       { return "proto" }

// grpc-go decodes a request before any interceptor runs, so a request it cannot decode was
// answered without authentication and never recorded. Sent: GetKey whose key_id (field 1)
// is not UTF-8, with a valid token and without one. Expected: grpc's own answer (Internal,
// "failed to unmarshal"), and one record each, under the principal when the token is valid.
func TestUndecodableGRPCRequestsAreRecorded(t *testing.T) {
	t.Parallel()
	s := startSecServer(t)
	notUTF8 := []byte{0x0a, 0x02, 0xff, 0xfe}
	for _, authorization := range []string{bearer(tokAuditor), ""} {
		err := s.conn.Invoke(withAuthorization(authorization), "/keytrail.v1.QueryService/GetKey", notUTF8, new([]byte), grpc.ForceCodec(rawCodec{}))
		wantGRPC(t, "GetKey with key_id not UTF-8", err, codes.Internal, "unmarshal")
	}
	got := recordedCalls(t, s, 2)
	want := []string{" /keytrail.v1.QueryService/GetKey Internal", "security-team /keytrail.v1.QueryService/GetKey Internal"}
	if !slices.Equal(got, want) {
		t.Errorf("records %q, want %q", got, want)
	}
}

// A call to a method the server does not have is answered Unimplemented and recorded too,
// under its principal when the credential is valid.
func TestUnknownGRPCMethodsAreRecorded(t *testing.T) {
	t.Parallel()
	s := startSecServer(t)
	for _, authorization := range []string{bearer(tokAuditor), ""} {
		err := s.conn.Invoke(withAuthorization(authorization), "/keytrail.v1.QueryService/NoSuchMethod", []byte{}, new([]byte), grpc.ForceCodec(rawCodec{}))
		wantGRPC(t, "NoSuchMethod", err, codes.Unimplemented, "unknown method /keytrail.v1.QueryService/NoSuchMethod")
	}
	got := recordedCalls(t, s, 2)
	want := []string{" /keytrail.v1.QueryService/NoSuchMethod Unimplemented", "security-team /keytrail.v1.QueryService/NoSuchMethod Unimplemented"}
	if !slices.Equal(got, want) {
		t.Errorf("records %q, want %q", got, want)
	}
}

// recordedCalls waits until the server has recorded n calls and returns them as "principal
// method code", sorted: the stats handler records a call after its answer is sent, so the
// record of a call can come before the previous call's.
func recordedCalls(t *testing.T, s *secServer, n int) []string {
	t.Helper()
	var got []string
	testenv.Eventually(t, 5*time.Second, func() error {
		got = got[:0]
		for _, r := range s.Records.All() {
			got = append(got, r.Principal+" "+r.Method+" "+r.Code)
		}
		if len(got) != n {
			return fmt.Errorf("%d records, want %d: %v", len(got), n, got)
		}
		return nil
	})
	slices.Sort(got)
	return got
}
