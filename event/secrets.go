package event

import (
	"crypto/sha256"
	"encoding/hex"
	"math"
	"regexp"
	"strings"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
)

// Gateways must send a key's public id, never the secret. Mistakes happen (a gateway logs
// the Authorization header into an attribute, or sends the secret as key_id), and an audit
// store is the worst place for a leaked secret to end up. So every free-text field of an
// event is checked for secret-shaped tokens before storage; a field containing one is
// replaced by a fingerprint, which still lets two events carrying the same secret be
// matched, but cannot be reversed.

// RedactedPrefix starts every fingerprint that replaced a secret-shaped value.
const RedactedPrefix = "redacted:sha256:"

var knownSecretShapes = regexp.MustCompile(strings.Join([]string{
	`sk-[A-Za-z0-9_\-]{16,}`,                       // OpenAI, Anthropic (sk-ant-...)
	`(sk|rk)_(live|test)_[A-Za-z0-9]{16,}`,         // Stripe secret and restricted keys
	`(AKIA|ASIA)[0-9A-Z]{16}`,                      // AWS access key ids
	`gh[pousr]_[A-Za-z0-9]{30,}`,                   // GitHub tokens
	`github_pat_[A-Za-z0-9_]{30,}`,                 // GitHub fine-grained tokens
	`glpat-[A-Za-z0-9_\-]{20,}`,                    // GitLab
	`xox[abposr]-[A-Za-z0-9\-]{10,}`,               // Slack
	`AIza[0-9A-Za-z_\-]{35}`,                       // Google API keys
	`eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}`, // JWTs
	`-----BEGIN [A-Z ]*PRIVATE KEY-----`,           // PEM private keys
	`(?i)bearer\s+[A-Za-z0-9._\-+/=]{16,}`,         // Authorization header values
}, "|"))

// secretMarkers are literal fragments every known shape contains; the regular expression
// only runs on values containing one, which keeps the check cheap on the ingest hot path.
var secretMarkers = []string{"sk-", "sk_", "rk_", "AKIA", "ASIA", "gh", "github_pat_", "glpat-", "xox", "AIza", "eyJ", "-----BEGIN", "earer", "EARER"}

// LooksLikeSecret reports whether v contains a token shaped like a credential: a known
// provider format, or a long random-looking token (32+ characters mixing upper case, lower
// case and digits, with high entropy). Hex digests and UUIDs are not flagged: ids and hashes
// are exactly what keytrail is meant to store.
func LooksLikeSecret(v string) bool {
	if len(v) < 16 {
		return false
	}
	for _, m := range secretMarkers {
		if strings.Contains(v, m) {
			if knownSecretShapes.MatchString(v) {
				return true
			}
			break
		}
	}
	// Long random-looking tokens: find runs of token characters of 32 or more.
	start := -1
	for i := 0; i <= len(v); i++ {
		if i < len(v) && isTokenByte(v[i]) {
			if start < 0 {
				start = i
			}
			continue
		}
		if start >= 0 && i-start >= 32 && highEntropyToken(v[start:i]) {
			return true
		}
		start = -1
	}
	return false
}

func isTokenByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '+' || c == '/' || c == '=' || c == '.'
}

func highEntropyToken(tok string) bool {
	if len(tok) < 32 {
		return false
	}
	var upper, lower, digit bool
	var counts [256]int
	for i := 0; i < len(tok); i++ {
		c := tok[i]
		switch {
		case c >= 'A' && c <= 'Z':
			upper = true
		case c >= 'a' && c <= 'z':
			lower = true
		case c >= '0' && c <= '9':
			digit = true
		}
		counts[c]++
	}
	if !upper || !lower || !digit {
		return false
	}
	var entropy float64
	n := float64(len(tok))
	for _, c := range counts {
		if c == 0 {
			continue
		}
		p := float64(c) / n
		entropy -= p * math.Log2(p)
	}
	return entropy >= 4.0
}

// Fingerprint is the stored stand-in for a secret-shaped value.
func Fingerprint(v string) string {
	sum := sha256.Sum256([]byte(v))
	return RedactedPrefix + hex.EncodeToString(sum[:12])
}

func redact(p *string) int {
	if LooksLikeSecret(*p) {
		*p = Fingerprint(*p)
		return 1
	}
	return 0
}

// RedactUsage replaces secret-shaped values in a usage event's text fields with their
// fingerprints and returns how many it replaced.
func RedactUsage(e *keytrailv1.UsageEvent) int {
	n := 0
	for _, p := range []*string{&e.KeyId, &e.Service, &e.GatewayInstance, &e.Method, &e.Endpoint, &e.Model, &e.Provider, &e.ClientIp, &e.RequestId} {
		n += redact(p)
	}
	return n
}

// RedactLifecycle does the same for a lifecycle event, attributes and changes included.
func RedactLifecycle(e *keytrailv1.LifecycleEvent) int {
	n := 0
	for _, p := range []*string{&e.KeyId, &e.NewKeyId, &e.Actor, &e.Reason} {
		n += redact(p)
	}
	for i := range e.Scopes {
		n += redact(&e.Scopes[i])
	}
	for k, v := range e.Attributes {
		if LooksLikeSecret(k) {
			delete(e.Attributes, k)
			e.Attributes[Fingerprint(k)] = v
			k = Fingerprint(k)
			n++
		}
		if redact(&v) == 1 {
			e.Attributes[k] = v
			n++
		}
	}
	for _, c := range e.Changes {
		n += redact(&c.Field) + redact(&c.Before) + redact(&c.After)
	}
	return n
}
