package event

import (
	"strings"
	"testing"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
)

func TestLooksLikeSecret(t *testing.T) {
	secrets := []string{
		"sk-proj-4f9XkQ2mZ8rT1vB7nL0pW3yE6uA5sD9c",
		"sk_live_51HxYz2KqLmNoPqRsTuVwXyZ",
		"AKIAIOSFODNN7EXAMPLE",
		"ghp_abcdefghijklmnopqrstuvwxyz0123456789",
		"xoxb-123456789012-abcdefABCDEF",
		"AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q",
		"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.sig",
		"Authorization: Bearer abcdefghijklmnop1234",
		"token=Zx8Qw2Er4Ty6Ui8Op0As2Df4Gh6Jk8Lz1Xc3Vb5Nm7",
		"-----BEGIN RSA PRIVATE KEY-----",
	}
	for _, s := range secrets {
		if !LooksLikeSecret(s) {
			t.Errorf("%q not flagged", s)
		}
	}
	ids := []string{
		"key_acme_0042", "key_acme_0042_v2", "billing-api", "nightly-report-cron",
		"3f2b8c1e-9a4d-4e6f-b1c2-7d8e9f0a1b2c",                             // UUID
		"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", // sha256 hex
		"/v1/chat/completions", "gpt-4o-2024-08-06", "quarterly rotation per policy SEC-1234",
		"01JD5X7Q2W8ZKCM4YV6TNB3R9H", // ULID: upper case and digits only
	}
	for _, s := range ids {
		if LooksLikeSecret(s) {
			t.Errorf("%q flagged as a secret", s)
		}
	}
}

func TestRedactReplacesEverySecretShapedField(t *testing.T) {
	secret := "sk-proj-4f9XkQ2mZ8rT1vB7nL0pW3yE6uA5sD9c"
	u := validUsage()
	u.KeyId = secret
	u.Endpoint = "/v1/x?api_key=" + secret
	if n := RedactUsage(u); n != 2 {
		t.Errorf("redacted %d usage fields, want 2", n)
	}
	if u.KeyId != Fingerprint(secret) || !strings.HasPrefix(u.Endpoint, RedactedPrefix) || u.Service != "billing-api" {
		t.Errorf("usage after redaction: %v", u)
	}
	l := validLifecycle()
	l.Attributes = map[string]string{"header": "Bearer " + secret, "ticket": "SEC-1"}
	l.Changes = []*keytrailv1.FieldChange{{Field: "secret", Before: "", After: secret}}
	if n := RedactLifecycle(l); n != 2 {
		t.Errorf("redacted %d lifecycle fields, want 2", n)
	}
	if strings.Contains(l.String(), secret) {
		t.Errorf("secret survived: %v", l)
	}
	if l.Attributes["ticket"] != "SEC-1" || l.Changes[0].After != Fingerprint(secret) {
		t.Errorf("lifecycle after redaction: %v", l)
	}
	if Fingerprint(secret) != Fingerprint(secret) || len(Fingerprint(secret)) != len(RedactedPrefix)+24 {
		t.Error("fingerprint must be stable and short")
	}
}
