package event

import (
	"bytes"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

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
	if first, again := Fingerprint(secret), Fingerprint(secret); first != again || len(first) != len(RedactedPrefix)+24 {
		t.Error("fingerprint must be stable and short")
	}
}

func TestRedactTextKeepsTheTextAroundEachToken(t *testing.T) {
	secret := "sk-proj-4f9XkQ2mZ8rT1vB7nL0pW3yE6uA5sD9c"
	jwt := "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0"
	got, n := RedactText(`project "` + secret + `" does not match subject "keytrail.usage.acme"; header ` + jwt)
	want := `project "` + Fingerprint(secret) + `" does not match subject "keytrail.usage.acme"; header ` + Fingerprint(jwt)
	if got != want || n != 2 {
		t.Errorf("RedactText = %q, %d\nwant       %q, 2", got, n, want)
	}
	if got, n := RedactText(`status_code 42 is not an HTTP status (100-599)`); n != 0 || got != `status_code 42 is not an HTTP status (100-599)` {
		t.Errorf("text without a secret changed: %q, %d", got, n)
	}
}

func TestRedactSubjectTokenByToken(t *testing.T) {
	secret := "sk-proj-4f9XkQ2mZ8rT1vB7nL0pW3yE6uA5sD9c"
	if got, n := RedactSubject("keytrail.usage." + secret); got != "keytrail.usage."+Fingerprint(secret) || n != 1 {
		t.Errorf("RedactSubject = %q, %d", got, n)
	}
	if got, n := RedactSubject("keytrail.usage.acme_corp_production"); got != "keytrail.usage.acme_corp_production" || n != 0 {
		t.Errorf("RedactSubject changed a plain subject: %q, %d", got, n)
	}
}

func TestMaskSecretsKeepsTheLength(t *testing.T) {
	secret := "sk-proj-4f9XkQ2mZ8rT1vB7nL0pW3yE6uA5sD9c"
	in := []byte("garbage \xff\x00 " + secret + " more \xfe garbage")
	out, n := MaskSecrets(in)
	wantMask := Fingerprint(secret)[:len(secret)]
	if n != 1 || len(out) != len(in) || strings.Contains(string(out), secret) || !strings.Contains(string(out), wantMask) {
		t.Errorf("MaskSecrets = %q, %d", out, n)
	}
	if string(in) != "garbage \xff\x00 "+secret+" more \xfe garbage" {
		t.Error("MaskSecrets changed its input")
	}
	long := strings.Repeat("Zx8Qw2Er4Ty6Ui8Op0As2Df4Gh6Jk8L", 3)
	out, _ = MaskSecrets([]byte("k: " + long))
	if want := "k: " + Fingerprint(long) + strings.Repeat("*", len(long)-len(Fingerprint(long))); string(out) != want {
		t.Errorf("MaskSecrets of a long token = %q, want %q", out, want)
	}
}

func TestRedactPayloadRedactsLikeIngestion(t *testing.T) {
	secret := "sk-proj-4f9XkQ2mZ8rT1vB7nL0pW3yE6uA5sD9c"
	u := validUsage()
	u.RequestId = "Bearer " + secret
	u.Project = secret
	for _, enc := range []Encoding{EncodingProto, EncodingJSON} {
		data, err := enc.Marshal(u)
		if err != nil {
			t.Fatal(err)
		}
		out, n := RedactPayload(KindUsage, enc.ContentType(), data)
		if n != 2 || strings.Contains(string(out), secret) {
			t.Fatalf("%s: redacted %d, payload %q", enc.ContentType(), n, out)
		}
		m, _, ok := decodeUnvalidated(KindUsage, enc.ContentType(), out)
		if !ok {
			t.Fatalf("%s: redacted payload does not decode", enc.ContentType())
		}
		// Exactly the event ingestion would store.
		want := proto.Clone(u).(*keytrailv1.UsageEvent)
		RedactUsage(want)
		if !proto.Equal(m, want) {
			t.Errorf("%s: redacted payload %v, want %v", enc.ContentType(), m, want)
		}
		if PayloadEventID(KindUsage, enc.ContentType(), out) != "ev-1" {
			t.Errorf("%s: event id lost", enc.ContentType())
		}
	}

	// A secret in a field this ingester does not know (a newer gateway's schema) is dropped
	// with the unknown fields.
	plain, _ := proto.Marshal(validUsage())
	withUnknown := protowire.AppendTag(slices.Clone(plain), 999, protowire.BytesType)
	withUnknown = protowire.AppendString(withUnknown, "Authorization: Bearer "+secret)
	out, n := RedactPayload(KindUsage, "", withUnknown)
	if n != 1 || !bytes.Equal(out, plain) {
		t.Errorf("unknown field with a secret: redacted %d, payload %q, want %q", n, out, plain)
	}

	// Nothing secret-shaped: the very same bytes.
	if out, n := RedactPayload(KindUsage, "", plain); n != 0 || &out[0] != &plain[0] {
		t.Errorf("clean payload changed: %d", n)
	}
	// Undecodable: masked in place, same length.
	garbage := []byte("not an event " + secret)
	if out, n := RedactPayload(KindUsage, "", garbage); n != 1 || len(out) != len(garbage) || strings.Contains(string(out), secret) {
		t.Errorf("undecodable payload: %q, %d", out, n)
	}
}

func TestRedactCoversEventIDAndProject(t *testing.T) {
	secret := "sk-proj-4f9XkQ2mZ8rT1vB7nL0pW3yE6uA5sD9c"
	u := validUsage()
	u.EventId, u.Project = secret, secret+"x"
	l := validLifecycle()
	l.EventId, l.Project = secret, secret+"x"
	if RedactUsage(u) != 2 || RedactLifecycle(l) != 2 {
		t.Fatal("event_id and project not both redacted")
	}
	if u.EventId != Fingerprint(secret) || u.Project != Fingerprint(secret+"x") || l.EventId != Fingerprint(secret) || l.Project != Fingerprint(secret+"x") {
		t.Errorf("usage %v lifecycle %v", u, l)
	}
}
