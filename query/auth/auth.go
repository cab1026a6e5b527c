package auth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Role is what a principal may do.
type Role string

const (
	RoleAdmin         Role = "admin"
	RoleAuditor       Role = "auditor"
	RoleProjectReader Role = "project_reader"
)

// Principal is an authenticated caller.
type Principal struct {
	Name     string
	Role     Role
	Projects []string // only for RoleProjectReader
	// RatePerSecond and Burst bound this principal's calls.
	RatePerSecond float64
	Burst         int
}

// ReadsAllProjects reports whether the principal may read every project.
func (p Principal) ReadsAllProjects() bool { return p.Role == RoleAdmin || p.Role == RoleAuditor }

// MayRead reports whether the principal may read a project's data.
func (p Principal) MayRead(project string) bool {
	return p.ReadsAllProjects() || slices.Contains(p.Projects, project)
}

// Entry is one credential in the tokens file.
type Entry struct {
	Name string `yaml:"name"`
	// SHA256 is the hex SHA-256 of the bearer token.
	SHA256 string `yaml:"sha256,omitempty"`
	// ClientCertCN authenticates a verified mTLS client certificate with this common name.
	ClientCertCN  string     `yaml:"client_cert_cn,omitempty"`
	Role          Role       `yaml:"role"`
	Projects      []string   `yaml:"projects,omitempty"`
	ExpiresAt     *time.Time `yaml:"expires_at,omitempty"`
	RatePerSecond float64    `yaml:"rate_per_second,omitempty"`
	Burst         int        `yaml:"burst,omitempty"`
}

// File is the tokens file.
type File struct {
	Tokens []Entry `yaml:"tokens"`
}

// Default rate limit per principal.
const (
	DefaultRatePerSecond = 50
	DefaultBurst         = 100
)

// Validate reports every problem in the file at once.
func (f File) Validate() error {
	var errs []error
	seen := map[string]bool{}
	for i, e := range f.Tokens {
		where := fmt.Sprintf("tokens[%d] (%s)", i, e.Name)
		if e.Name == "" {
			errs = append(errs, fmt.Errorf("%s: name is required", where))
		}
		if (e.SHA256 == "") == (e.ClientCertCN == "") {
			errs = append(errs, fmt.Errorf("%s: exactly one of sha256 and client_cert_cn is required", where))
		}
		if e.SHA256 != "" {
			if b, err := hex.DecodeString(e.SHA256); err != nil || len(b) != sha256.Size {
				errs = append(errs, fmt.Errorf("%s: sha256 must be 64 hex characters (the hash, never the token)", where))
			}
			// Hashes match case-insensitively (NewAuthenticator lowercases them), so an
			// upper-case copy of a hash is a duplicate too, not an entry that silently
			// replaces another one's role.
			h := strings.ToLower(e.SHA256)
			if seen["h"+h] {
				errs = append(errs, fmt.Errorf("%s: duplicate sha256", where))
			}
			seen["h"+h] = true
		}
		if e.ClientCertCN != "" {
			if seen["c"+e.ClientCertCN] {
				errs = append(errs, fmt.Errorf("%s: duplicate client_cert_cn", where))
			}
			seen["c"+e.ClientCertCN] = true
		}
		switch e.Role {
		case RoleAdmin, RoleAuditor:
			if len(e.Projects) > 0 {
				errs = append(errs, fmt.Errorf("%s: projects apply to role project_reader only", where))
			}
		case RoleProjectReader:
			if len(e.Projects) == 0 {
				errs = append(errs, fmt.Errorf("%s: role project_reader needs projects", where))
			}
			// An empty project would become "no project filter", i.e. every project.
			if slices.Contains(e.Projects, "") {
				errs = append(errs, fmt.Errorf("%s: projects must not be empty", where))
			}
		default:
			errs = append(errs, fmt.Errorf("%s: role %q must be admin, auditor or project_reader", where, e.Role))
		}
		if e.RatePerSecond < 0 || e.Burst < 0 {
			errs = append(errs, fmt.Errorf("%s: rate_per_second and burst must not be negative", where))
		}
	}
	return errors.Join(errs...)
}

// LoadFile reads and validates a tokens file.
func LoadFile(path string) (File, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return File{}, fmt.Errorf("tokens file: %w", err)
	}
	var f File
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		return File{}, fmt.Errorf("tokens file %s: %w", path, err)
	}
	if err := f.Validate(); err != nil {
		return File{}, fmt.Errorf("tokens file %s: %w", path, err)
	}
	return f, nil
}

// Authenticator resolves credentials to principals.
type Authenticator struct {
	byHash map[string]Entry
	byCN   map[string]Entry
	now    func() time.Time
}

// NewAuthenticator indexes a validated tokens file; now is the clock for expiry.
func NewAuthenticator(f File, now func() time.Time) (*Authenticator, error) {
	if err := f.Validate(); err != nil {
		return nil, err
	}
	if now == nil {
		now = time.Now
	}
	a := &Authenticator{byHash: map[string]Entry{}, byCN: map[string]Entry{}, now: now}
	for _, e := range f.Tokens {
		if e.SHA256 != "" {
			a.byHash[strings.ToLower(e.SHA256)] = e
		}
		if e.ClientCertCN != "" {
			a.byCN[e.ClientCertCN] = e
		}
	}
	return a, nil
}

// Errors the API maps to Unauthenticated. Their text is safe to show callers.
var (
	ErrMissingCredentials = errors.New("missing credentials: send Authorization: Bearer <token>")
	ErrInvalidToken       = errors.New("invalid or expired token")
	ErrUnknownCertificate = errors.New("client certificate not authorized")
)

// Token authenticates a bearer token.
func (a *Authenticator) Token(token string) (Principal, error) {
	if token == "" {
		return Principal{}, ErrMissingCredentials
	}
	e, ok := a.byHash[HashToken(token)]
	if !ok {
		return Principal{}, ErrInvalidToken
	}
	return a.principal(e, ErrInvalidToken)
}

// ClientCertificate authenticates a verified client certificate's common name.
func (a *Authenticator) ClientCertificate(cn string) (Principal, error) {
	e, ok := a.byCN[cn]
	if !ok {
		return Principal{}, ErrUnknownCertificate
	}
	return a.principal(e, ErrUnknownCertificate)
}

func (a *Authenticator) principal(e Entry, expired error) (Principal, error) {
	if e.ExpiresAt != nil && !a.now().Before(*e.ExpiresAt) {
		return Principal{}, expired
	}
	p := Principal{Name: e.Name, Role: e.Role, Projects: e.Projects, RatePerSecond: e.RatePerSecond, Burst: e.Burst}
	if p.RatePerSecond == 0 {
		p.RatePerSecond = DefaultRatePerSecond
	}
	if p.Burst == 0 {
		p.Burst = DefaultBurst
	}
	return p, nil
}

// HashToken is the hex SHA-256 stored in place of a token.
func HashToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// NewToken makes a random bearer token (256 bits) with a recognisable prefix, so a leaked
// keytrail token is easy to grep for and to tell apart from the gateway keys it audits.
func NewToken() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return "ktk_" + base64.RawURLEncoding.EncodeToString(b)
}

type principalKey struct{}

// WithPrincipal stores the caller in a context.
func WithPrincipal(ctx context.Context, p Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// FromContext returns the caller stored by WithPrincipal.
func FromContext(ctx context.Context) (Principal, bool) {
	p, ok := ctx.Value(principalKey{}).(Principal)
	return p, ok
}
