package auth_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keytrail/keytrail/query/auth"
)

func TestHashToken(t *testing.T) {
	// sha256("abc"), the FIPS 180-2 test vector.
	if got, want := auth.HashToken("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"; got != want {
		t.Errorf("HashToken(abc) = %s, want %s", got, want)
	}
	if got, want := auth.HashToken(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"; got != want {
		t.Errorf("HashToken(\"\") = %s, want %s", got, want)
	}
	a, b := auth.NewToken(), auth.NewToken()
	if a == b || !strings.HasPrefix(a, "ktk_") || len(a) != len("ktk_")+43 {
		t.Errorf("NewToken: %q and %q, want two different ktk_ tokens of 256 bits", a, b)
	}
}

func TestValidateReportsEveryProblemAtOnce(t *testing.T) {
	good := auth.HashToken("good")
	f := auth.File{Tokens: []auth.Entry{
		{Name: "ok-admin", SHA256: good, Role: auth.RoleAdmin},
		{Name: "bad-hash", SHA256: "ktk_the_token_itself", Role: auth.RoleAuditor},
		{Name: "both", SHA256: auth.HashToken("both"), ClientCertCN: "both.internal", Role: auth.RoleAuditor},
		{Name: "neither", Role: auth.RoleAuditor},
		{Name: "bad-role", SHA256: auth.HashToken("r"), Role: "root"},
		{Name: "reader-without-projects", SHA256: auth.HashToken("p"), Role: auth.RoleProjectReader},
		{Name: "admin-with-projects", SHA256: auth.HashToken("a"), Role: auth.RoleAdmin, Projects: []string{"acme"}},
		{Name: "dup-hash", SHA256: good, Role: auth.RoleAuditor},
		{Name: "cn", ClientCertCN: "ci.internal", Role: auth.RoleProjectReader, Projects: []string{"acme"}},
		{Name: "dup-cn", ClientCertCN: "ci.internal", Role: auth.RoleAuditor},
		{Name: "negative", SHA256: auth.HashToken("n"), Role: auth.RoleAuditor, RatePerSecond: -1},
		{SHA256: auth.HashToken("nameless"), Role: auth.RoleAuditor},
		// The same hash in upper case: NewAuthenticator lowercases hashes, so without this
		// check the later entry would silently replace the admin with a weaker role.
		{Name: "dup-hash-upper", SHA256: strings.ToUpper(good), Role: auth.RoleProjectReader, Projects: []string{"acme"}},
		// An empty project is no project filter at all: it would read every project.
		{Name: "empty-project", SHA256: auth.HashToken("e"), Role: auth.RoleProjectReader, Projects: []string{""}},
	}}
	err := f.Validate()
	if err == nil {
		t.Fatal("Validate accepted a file full of problems")
	}
	want := []string{
		"tokens[1] (bad-hash): sha256 must be 64 hex characters (the hash, never the token)",
		"tokens[2] (both): exactly one of sha256 and client_cert_cn is required",
		"tokens[3] (neither): exactly one of sha256 and client_cert_cn is required",
		`tokens[4] (bad-role): role "root" must be admin, auditor or project_reader`,
		"tokens[5] (reader-without-projects): role project_reader needs projects",
		"tokens[6] (admin-with-projects): projects apply to role project_reader only",
		"tokens[7] (dup-hash): duplicate sha256",
		"tokens[9] (dup-cn): duplicate client_cert_cn",
		"tokens[10] (negative): rate_per_second and burst must not be negative",
		"tokens[11] (): name is required",
		"tokens[12] (dup-hash-upper): duplicate sha256",
		"tokens[13] (empty-project): projects must not be empty",
	}
	if got := strings.Split(err.Error(), "\n"); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("Validate:\n%s\nwant exactly:\n%s", err, strings.Join(want, "\n"))
	}
	if _, err := auth.NewAuthenticator(f, nil); err == nil {
		t.Error("NewAuthenticator accepted an invalid file")
	}
}

func TestValidateAcceptsAGoodFile(t *testing.T) {
	exp := time.Date(2027, 6, 30, 0, 0, 0, 0, time.UTC)
	f := auth.File{Tokens: []auth.Entry{
		{Name: "admin", SHA256: auth.HashToken("a"), Role: auth.RoleAdmin},
		{Name: "security-team", SHA256: strings.ToUpper(auth.HashToken("s")), Role: auth.RoleAuditor, ExpiresAt: &exp},
		{Name: "bot", SHA256: auth.HashToken("b"), Role: auth.RoleProjectReader, Projects: []string{"acme"}, RatePerSecond: 5, Burst: 10},
		{Name: "ci", ClientCertCN: "ci.internal", Role: auth.RoleProjectReader, Projects: []string{"payments"}},
	}}
	if err := f.Validate(); err != nil {
		t.Fatal(err)
	}
}

func writeFile(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tokens.yaml")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestLoadFile(t *testing.T) {
	hash := auth.HashToken("ktk_bot")
	path := writeFile(t, `tokens:
  - name: security-team
    sha256: `+auth.HashToken("ktk_sec")+`
    role: auditor
    expires_at: 2027-06-30T00:00:00Z
  - name: acme-rotation-bot
    sha256: `+hash+`
    role: project_reader
    projects: [acme]
    rate_per_second: 5
    burst: 10
  - name: payments-ci
    client_cert_cn: payments-ci.internal
    role: project_reader
    projects: [payments]
`)
	f, err := auth.LoadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Tokens) != 3 {
		t.Fatalf("%d entries, want 3", len(f.Tokens))
	}
	bot := f.Tokens[1]
	if bot.Name != "acme-rotation-bot" || bot.SHA256 != hash || bot.Role != auth.RoleProjectReader ||
		strings.Join(bot.Projects, ",") != "acme" || bot.RatePerSecond != 5 || bot.Burst != 10 {
		t.Errorf("entry 1 = %+v", bot)
	}
	if exp := f.Tokens[0].ExpiresAt; exp == nil || !exp.Equal(time.Date(2027, 6, 30, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("expires_at = %v", exp)
	}
	if f.Tokens[2].ClientCertCN != "payments-ci.internal" {
		t.Errorf("client_cert_cn = %q", f.Tokens[2].ClientCertCN)
	}
}

func TestLoadFileRejects(t *testing.T) {
	for _, tc := range []struct {
		name, body, want string
	}{
		{
			// A misspelt field must not silently drop a restriction (here: the projects list).
			name: "unknown field",
			body: "tokens:\n  - name: bot\n    sha256: " + auth.HashToken("x") + "\n    role: project_reader\n    project: [acme]\n",
			want: "field project not found",
		},
		{
			name: "invalid entry",
			body: "tokens:\n  - name: bot\n    sha256: not-a-hash\n    role: auditor\n",
			want: "tokens[0] (bot): sha256 must be 64 hex characters",
		},
		{
			name: "not yaml",
			body: "tokens: [\n",
			want: "tokens file",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := auth.LoadFile(writeFile(t, tc.body))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("LoadFile: %v, want an error containing %q", err, tc.want)
			}
		})
	}
	if _, err := auth.LoadFile(filepath.Join(t.TempDir(), "missing.yaml")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v, want ErrNotExist", err)
	}
}

func TestAuthenticator(t *testing.T) {
	exp := time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)
	f := auth.File{Tokens: []auth.Entry{
		{Name: "admin", SHA256: auth.HashToken("ktk_admin"), Role: auth.RoleAdmin},
		{Name: "expiring", SHA256: strings.ToUpper(auth.HashToken("ktk_exp")), Role: auth.RoleAuditor, ExpiresAt: &exp},
		{Name: "bot", SHA256: auth.HashToken("ktk_bot"), Role: auth.RoleProjectReader, Projects: []string{"acme", "globex"}, RatePerSecond: 1, Burst: 2},
		{Name: "ci", ClientCertCN: "ci.internal", Role: auth.RoleProjectReader, Projects: []string{"acme"}, ExpiresAt: &exp},
	}}
	now := exp.Add(-time.Second)
	a, err := auth.NewAuthenticator(f, func() time.Time { return now })
	if err != nil {
		t.Fatal(err)
	}

	p, err := a.Token("ktk_admin")
	if err != nil || p.Name != "admin" || p.Role != auth.RoleAdmin ||
		p.RatePerSecond != auth.DefaultRatePerSecond || p.Burst != auth.DefaultBurst {
		t.Errorf("admin: %+v, %v (want default rate 50/s burst 100)", p, err)
	}
	p, err = a.Token("ktk_bot")
	if err != nil || p.Name != "bot" || p.RatePerSecond != 1 || p.Burst != 2 || strings.Join(p.Projects, ",") != "acme,globex" {
		t.Errorf("bot: %+v, %v", p, err)
	}
	// The file may hold an upper-case hash; tokens still match.
	if p, err := a.Token("ktk_exp"); err != nil || p.Name != "expiring" {
		t.Errorf("expiring before expiry: %+v, %v", p, err)
	}
	if p, err := a.ClientCertificate("ci.internal"); err != nil || p.Name != "ci" || p.Role != auth.RoleProjectReader {
		t.Errorf("client certificate: %+v, %v", p, err)
	}

	if _, err := a.Token(""); !errors.Is(err, auth.ErrMissingCredentials) {
		t.Errorf("empty token: %v", err)
	}
	if _, err := a.Token("ktk_unknown"); !errors.Is(err, auth.ErrInvalidToken) {
		t.Errorf("unknown token: %v", err)
	}
	// The hash itself is not a credential.
	if _, err := a.Token(auth.HashToken("ktk_admin")); !errors.Is(err, auth.ErrInvalidToken) {
		t.Errorf("hash as token: %v", err)
	}
	if _, err := a.ClientCertificate("other.internal"); !errors.Is(err, auth.ErrUnknownCertificate) {
		t.Errorf("unknown CN: %v", err)
	}

	// Expiry is exclusive: at expires_at the credential no longer works.
	now = exp
	if _, err := a.Token("ktk_exp"); !errors.Is(err, auth.ErrInvalidToken) {
		t.Errorf("token at expiry: %v, want ErrInvalidToken", err)
	}
	if _, err := a.ClientCertificate("ci.internal"); !errors.Is(err, auth.ErrUnknownCertificate) {
		t.Errorf("certificate at expiry: %v, want ErrUnknownCertificate", err)
	}
	if _, err := a.Token("ktk_admin"); err != nil {
		t.Errorf("non-expiring token: %v", err)
	}
}

func TestPrincipalMayRead(t *testing.T) {
	for _, tc := range []struct {
		p       auth.Principal
		project string
		want    bool
	}{
		{auth.Principal{Role: auth.RoleAdmin}, "acme", true},
		{auth.Principal{Role: auth.RoleAuditor}, "globex", true},
		{auth.Principal{Role: auth.RoleProjectReader, Projects: []string{"acme"}}, "acme", true},
		{auth.Principal{Role: auth.RoleProjectReader, Projects: []string{"acme"}}, "globex", false},
		{auth.Principal{Role: auth.RoleProjectReader, Projects: []string{"acme"}}, "ACME", false},
		{auth.Principal{Role: auth.RoleProjectReader, Projects: []string{"acme"}}, "", false},
		{auth.Principal{Role: auth.RoleProjectReader, Projects: []string{"acme", "globex"}}, "globex", true},
		// The zero Principal (no caller in the context) reads nothing.
		{auth.Principal{}, "acme", false},
	} {
		if got := tc.p.MayRead(tc.project); got != tc.want {
			t.Errorf("%+v MayRead(%q) = %v, want %v", tc.p, tc.project, got, tc.want)
		}
	}
	if !(auth.Principal{Role: auth.RoleAuditor}).ReadsAllProjects() || (auth.Principal{Role: auth.RoleProjectReader, Projects: []string{"a"}}).ReadsAllProjects() {
		t.Error("ReadsAllProjects: auditor must, project_reader must not")
	}
}
