package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/internal/testenv"
	"github.com/keytrail/keytrail/query/auth"
)

// testCA is a certificate authority made for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
	pool *x509.CertPool
}

// newSerial is a random certificate serial number.
func newSerial(t *testing.T) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: newSerial(t), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pool: pool}
}

// issue makes a server certificate for 127.0.0.1 (server) or a client certificate with
// common name cn, as PEM.
func (ca *testCA) issue(t *testing.T, cn string, server bool) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: newSerial(t), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
		tmpl.DNSNames = []string{"localhost"}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
}

func (ca *testCA) clientCert(t *testing.T, cn string) tls.Certificate {
	t.Helper()
	c, k := ca.issue(t, cn, false)
	pair, err := tls.X509KeyPair(c, k)
	if err != nil {
		t.Fatal(err)
	}
	return pair
}

func writeFile(t *testing.T, dir, name string, b []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

const (
	tlsAdminToken = "ktk_tls_admin"
	tlsKnownCN    = "payments-ci.internal"
)

type tlsEnv struct {
	m      *Main
	db     *testenv.Database
	ca     *testCA
	caFile string
}

func startTLSKeytrail(t *testing.T) *tlsEnv {
	t.Helper()
	db := testenv.ClickHouse(t)
	now := time.Now().UTC().Add(-time.Hour)
	use := func(id, project, key string, d time.Duration) *keytrailv1.UsageEvent {
		return &keytrailv1.UsageEvent{EventId: id, Time: timestamppb.New(now.Add(d)), Project: project, KeyId: key, Service: "billing", StatusCode: 200, CostMicros: 100}
	}
	testenv.Insert(t, db,
		use("u1", "acme", "key_acme", 0),
		use("u2", "globex", "key_globex", time.Second),
		&keytrailv1.LifecycleEvent{EventId: "rot", Time: timestamppb.New(now.Add(-time.Hour)), Project: "acme", KeyId: "key_acme", NewKeyId: "key_acme_v2",
			Action: keytrailv1.Action_ACTION_ROTATED, Actor: "alice", ActorType: keytrailv1.ActorType_ACTOR_TYPE_USER},
	)

	dir := t.TempDir()
	ca := newTestCA(t, "keytrail test CA")
	serverCert, serverKey := ca.issue(t, "keytrail", true)
	tokens := fmt.Sprintf(`tokens:
  - name: ops-admin
    sha256: %s
    role: admin
  - name: payments-ci
    client_cert_cn: %s
    role: project_reader
    projects: [acme]
`, auth.HashToken(tlsAdminToken), tlsKnownCN)
	env := &tlsEnv{db: db, ca: ca, caFile: writeFile(t, dir, "ca.pem", ca.pem)}
	env.m = startKeytrail(t, db,
		"-tls-cert-file", writeFile(t, dir, "server.pem", serverCert),
		"-tls-key-file", writeFile(t, dir, "server-key.pem", serverKey),
		"-tls-client-ca-file", env.caFile,
		"-auth-tokens-file", writeFile(t, dir, "tokens.yaml", []byte(tokens)),
	)
	if env.m.AdminToken != "" {
		t.Fatal("dev-mode token made although a tokens file was given")
	}
	return env
}

// httpsClient trusts the test CA and presents the given client certificates.
func (e *tlsEnv) httpsClient(certs ...tls.Certificate) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: e.ca.pool, Certificates: certs, MinVersion: tls.VersionTLS12},
	}}
}

func (e *tlsEnv) grpcClient(t *testing.T, certs ...tls.Certificate) keytrailv1.QueryServiceClient {
	t.Helper()
	conn, err := grpc.NewClient(e.m.GRPCAddr, grpc.WithTransportCredentials(
		credentials.NewTLS(&tls.Config{RootCAs: e.ca.pool, Certificates: certs, MinVersion: tls.VersionTLS12})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return keytrailv1.NewQueryServiceClient(conn)
}

// get calls the REST API and returns status and body; header holds extra request headers.
func (e *tlsEnv) get(t *testing.T, c *http.Client, path string, params url.Values, header http.Header) (int, string) {
	t.Helper()
	u := "https://" + e.m.HTTPAddr + path
	if len(params) > 0 {
		u += "?" + params.Encode()
	}
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func bearerHeader(token string) http.Header {
	return http.Header{"Authorization": {"Bearer " + token}}
}

// serviceKeys is the project/key pairs of GET /v1/services/billing/keys.
func serviceKeysREST(t *testing.T, code int, body string) []string {
	t.Helper()
	if code != http.StatusOK {
		t.Fatalf("keys of billing: %d %s", code, body)
	}
	var got struct {
		Keys []struct {
			Project string `json:"project"`
			KeyID   string `json:"key_id"`
		} `json:"keys"`
	}
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatalf("%v: %s", err, body)
	}
	var out []string
	for _, k := range got.Keys {
		out = append(out, k.Project+"/"+k.KeyID)
	}
	return out
}

func serviceKeysGRPC(t *testing.T, resp *keytrailv1.ListServiceKeysResponse, err error) []string {
	t.Helper()
	if err != nil {
		t.Fatalf("keys of billing: %v", err)
	}
	var out []string
	for _, k := range resp.GetKeys() {
		out = append(out, k.GetProject()+"/"+k.GetKeyId())
	}
	return out
}

func wantStatus(t *testing.T, what string, err error, code codes.Code, message string) {
	t.Helper()
	if st := status.Convert(err); st.Code() != code || !strings.Contains(st.Message(), message) {
		t.Errorf("%s: %s %q, want %s containing %q", what, st.Code(), st.Message(), code, message)
	}
}

func TestTLSAndClientCertificates(t *testing.T) {
	t.Parallel()
	e := startTLSKeytrail(t)
	ctx := context.Background()
	withToken := func(token string) context.Context {
		return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}
	both := []string{"acme/key_acme", "globex/key_globex"}
	acmeOnly := []string{"acme/key_acme"}

	t.Run("REST over https with a bearer token", func(t *testing.T) {
		code, body := e.get(t, e.httpsClient(), "/v1/services/billing/keys", nil, bearerHeader(tlsAdminToken))
		if got := serviceKeysREST(t, code, body); !slices.Equal(got, both) {
			t.Errorf("admin: %v, want %v", got, both)
		}
		// Health and readiness are served over TLS too, without a token.
		if code, body := e.get(t, e.httpsClient(), "/readyz", nil, nil); code != http.StatusOK {
			t.Errorf("readyz: %d %s", code, body)
		}
		if code, _ := e.get(t, e.httpsClient(), "/v1/services/billing/keys", nil, nil); code != http.StatusUnauthorized {
			t.Errorf("no credentials over https: %d, want 401", code)
		}
	})

	t.Run("plain http and plaintext gRPC are refused", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodGet, "http://"+e.m.HTTPAddr+"/v1/services/billing/keys", nil)
		req.Header.Set("Authorization", "Bearer "+tlsAdminToken)
		resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			// Go's TLS server answers a plaintext request with a bare 400 and no data.
			if resp.StatusCode != http.StatusBadRequest || strings.Contains(string(body), "key_acme") {
				t.Errorf("plain http: %d %s, want a failure", resp.StatusCode, body)
			}
		}
		// A client that does not trust the CA does not connect either.
		if _, err := (&http.Client{Timeout: 10 * time.Second}).Get("https://" + e.m.HTTPAddr + "/healthz"); err == nil {
			t.Error("https without the CA: connected, want a certificate error")
		}
		conn, err := grpc.NewClient(e.m.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		short, cancel := context.WithTimeout(withToken(tlsAdminToken), 2*time.Second)
		defer cancel()
		_, err = keytrailv1.NewQueryServiceClient(conn).ListServiceKeys(short, &keytrailv1.ListServiceKeysRequest{Service: "billing"})
		if c := status.Code(err); c != codes.Unavailable && c != codes.DeadlineExceeded {
			t.Errorf("plaintext gRPC to the TLS port: %v, want Unavailable", err)
		}
	})

	t.Run("gRPC over TLS with a bearer token", func(t *testing.T) {
		client := e.grpcClient(t)
		resp, err := client.ListServiceKeys(withToken(tlsAdminToken), &keytrailv1.ListServiceKeysRequest{Service: "billing"})
		if got := serviceKeysGRPC(t, resp, err); !slices.Equal(got, both) {
			t.Errorf("admin: %v, want %v", got, both)
		}
		conn, err := grpc.NewClient(e.m.GRPCAddr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: e.ca.pool})))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if h, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || h.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("health over TLS: %v, %v", h, err)
		}
		// The CLI speaks TLS with -ca-file: key_acme's only caller, billing, has not moved
		// but is accepted, so the verdict is safe (exit 0; an error would be 1).
		var out bytes.Buffer
		err = run(ctx, []string{"rotation", "check", "-addr", e.m.GRPCAddr, "-token", tlsAdminToken, "-ca-file", e.caFile, "-old", "key_acme", "-accept-pending", "billing"}, &out)
		if exitCode(err) != exitSafe || !strings.Contains(out.String(), "Rotation key_acme -> key_acme_v2 (project acme)") {
			t.Errorf("rotation check over TLS: exit %d (%v), want %d\n%s", exitCode(err), err, exitSafe, out.String())
		}
		// Without the CA the CLI does not trust the server.
		err = run(ctx, []string{"rotation", "check", "-addr", e.m.GRPCAddr, "-token", tlsAdminToken, "-old", "key_acme"}, io.Discard)
		if exitCode(err) != 1 {
			t.Errorf("rotation check in plaintext against TLS: exit %d (%v), want 1", exitCode(err), err)
		}
	})

	t.Run("a client certificate with a known CN is a credential limited to its projects", func(t *testing.T) {
		cert := e.ca.clientCert(t, tlsKnownCN)
		c := e.httpsClient(cert)
		code, body := e.get(t, c, "/v1/services/billing/keys", nil, nil)
		if got := serviceKeysREST(t, code, body); !slices.Equal(got, acmeOnly) {
			t.Errorf("REST as %s: %v, want %v", tlsKnownCN, got, acmeOnly)
		}
		code, body = e.get(t, c, "/v1/keys/key_globex/services", url.Values{"project": {"globex"}}, nil)
		if code != http.StatusForbidden || !strings.Contains(body, `not allowed to read project \"globex\"`) {
			t.Errorf("REST as %s, globex key: %d %s, want 403", tlsKnownCN, code, body)
		}
		// Without the project, another project's key id is no key of the caller's.
		code, body = e.get(t, c, "/v1/keys/key_globex/services", nil, nil)
		var none struct {
			Services []json.RawMessage `json:"services"`
		}
		if code != http.StatusOK || json.Unmarshal([]byte(body), &none) != nil || len(none.Services) != 0 {
			t.Errorf("REST as %s, globex key id without a project: %d %s, want 200 and no services", tlsKnownCN, code, body)
		}
		code, body = e.get(t, c, "/v1/spend", url.Values{"project": {"globex"}}, nil)
		if code != http.StatusForbidden {
			t.Errorf("REST as %s, globex spend: %d %s, want 403", tlsKnownCN, code, body)
		}

		client := e.grpcClient(t, cert)
		resp, err := client.ListServiceKeys(ctx, &keytrailv1.ListServiceKeysRequest{Service: "billing"})
		if got := serviceKeysGRPC(t, resp, err); !slices.Equal(got, acmeOnly) {
			t.Errorf("gRPC as %s: %v, want %v", tlsKnownCN, got, acmeOnly)
		}
		_, err = client.ListKeyServices(ctx, &keytrailv1.ListKeyServicesRequest{KeyId: "key_globex", Project: "globex"})
		wantStatus(t, "gRPC as "+tlsKnownCN+", globex key", err, codes.PermissionDenied, `not allowed to read project "globex"`)
		spend, err := client.GetSpend(ctx, &keytrailv1.GetSpendRequest{})
		if err != nil || spend.GetTotalRequests() != 1 || spend.GetTotalCostMicros() != 100 {
			t.Errorf("gRPC spend as %s: %v, %v; want acme's 1 request", tlsKnownCN, spend, err)
		}
		// A bearer token, when sent, is the credential, even beside a good certificate.
		_, err = client.ListServiceKeys(withToken("ktk_wrong"), &keytrailv1.ListServiceKeysRequest{Service: "billing"})
		wantStatus(t, "bad token beside a good certificate", err, codes.Unauthenticated, "invalid or expired token")
		resp, err = client.ListServiceKeys(withToken(tlsAdminToken), &keytrailv1.ListServiceKeysRequest{Service: "billing"})
		if got := serviceKeysGRPC(t, resp, err); !slices.Equal(got, both) {
			t.Errorf("admin token beside the certificate: %v, want %v", got, both)
		}
	})

	t.Run("a client certificate with an unknown CN is refused", func(t *testing.T) {
		cert := e.ca.clientCert(t, "stranger.internal")
		code, body := e.get(t, e.httpsClient(cert), "/v1/services/billing/keys", nil, nil)
		if code != http.StatusUnauthorized || !strings.Contains(body, "client certificate not authorized") {
			t.Errorf("REST, unknown CN: %d %s, want 401", code, body)
		}
		_, err := e.grpcClient(t, cert).ListServiceKeys(ctx, &keytrailv1.ListServiceKeysRequest{Service: "billing"})
		wantStatus(t, "gRPC, unknown CN", err, codes.Unauthenticated, "client certificate not authorized")
	})

	t.Run("a certificate from another CA is no credential", func(t *testing.T) {
		other := newTestCA(t, "someone else's CA")
		cert := other.clientCert(t, tlsKnownCN) // the right name, the wrong issuer
		// A Go client offers only certificates from the CAs the server names, so this one is
		// not even sent: no credential.
		code, body := e.get(t, e.httpsClient(cert), "/v1/services/billing/keys", nil, nil)
		if code != http.StatusUnauthorized || !strings.Contains(body, "missing credentials") {
			t.Errorf("REST with a foreign certificate: %d %s, want 401", code, body)
		}
		// Sent anyway, it fails the handshake.
		force := &tls.Config{RootCAs: e.ca.pool, MinVersion: tls.VersionTLS12,
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }}
		req, _ := http.NewRequest(http.MethodGet, "https://"+e.m.HTTPAddr+"/v1/services/billing/keys", nil)
		if resp, err := (&http.Client{Transport: &http.Transport{TLSClientConfig: force}}).Do(req); err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			t.Errorf("REST with a forced foreign certificate: %d %s, want a TLS error", resp.StatusCode, body)
		}
		conn, err := grpc.NewClient(e.m.GRPCAddr, grpc.WithTransportCredentials(credentials.NewTLS(force)))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_, err = keytrailv1.NewQueryServiceClient(conn).ListServiceKeys(ctx, &keytrailv1.ListServiceKeysRequest{Service: "billing"})
		if status.Code(err) != codes.Unavailable {
			t.Errorf("gRPC with a forced foreign certificate: %v, want Unavailable (handshake failure)", err)
		}
	})

	t.Run("the certificate identity cannot be forged with a header", func(t *testing.T) {
		forged := http.Header{
			"Grpc-Metadata-X-Keytrail-Client-Cert-Cn": {tlsKnownCN},
			"X-Keytrail-Client-Cert-Cn":               {tlsKnownCN},
		}
		code, body := e.get(t, e.httpsClient(), "/v1/services/billing/keys", nil, forged)
		if code != http.StatusUnauthorized || !strings.Contains(body, "missing credentials") {
			t.Errorf("REST with a forged CN header: %d %s, want 401", code, body)
		}
		// Nor with gRPC metadata straight to the network server.
		md := metadata.AppendToOutgoingContext(ctx, "x-keytrail-client-cert-cn", tlsKnownCN)
		_, err := e.grpcClient(t).ListServiceKeys(md, &keytrailv1.ListServiceKeysRequest{Service: "billing"})
		wantStatus(t, "gRPC with forged CN metadata", err, codes.Unauthenticated, "missing credentials")
		// Nor does a forged header turn an unknown certificate into a known one.
		code, body = e.get(t, e.httpsClient(e.ca.clientCert(t, "stranger.internal")), "/v1/services/billing/keys", nil, forged)
		if code != http.StatusUnauthorized || !strings.Contains(body, "client certificate not authorized") {
			t.Errorf("REST, unknown CN with a forged header: %d %s, want 401", code, body)
		}
	})

	t.Run("calls are in the query audit log with principal and peer", func(t *testing.T) {
		type row struct{ principal, role, method, code string }
		testenv.Eventually(t, 15*time.Second, func() error {
			rows, err := e.db.Conn.Query(ctx, "SELECT principal, role, method, code, peer FROM query_audit_log ORDER BY time_ms")
			if err != nil {
				return err
			}
			defer rows.Close()
			seen := map[row]bool{}
			for rows.Next() {
				var r row
				var peer string
				if err := rows.Scan(&r.principal, &r.role, &r.method, &r.code, &peer); err != nil {
					return err
				}
				if !strings.HasPrefix(peer, "127.0.0.1:") {
					return fmt.Errorf("record %+v has peer %q, want 127.0.0.1:port", r, peer)
				}
				seen[r] = true
			}
			const svc = "/keytrail.v1.QueryService/"
			for _, want := range []row{
				{"ops-admin", "admin", svc + "ListServiceKeys", "OK"},
				{"payments-ci", "project_reader", svc + "ListServiceKeys", "OK"},
				{"payments-ci", "project_reader", svc + "ListKeyServices", "PermissionDenied"},
				{"", "", svc + "ListServiceKeys", "Unauthenticated"},
			} {
				if !seen[want] {
					return fmt.Errorf("no record %+v", want)
				}
			}
			return nil
		})
	})
}
