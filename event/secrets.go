package event

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"math"
	"regexp"
	"sort"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

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
	if hasSecretMarker(v) && knownSecretShapes.MatchString(v) {
		return true
	}
	found := false
	forEachEntropyToken(v, func(int, int) bool { found = true; return false })
	return found
}

func hasSecretMarker(v string) bool {
	for _, m := range secretMarkers {
		if strings.Contains(v, m) {
			return true
		}
	}
	return false
}

// forEachEntropyToken calls fn with the bounds of each run of token characters of 32 or
// more that looks random; fn returns false to stop.
func forEachEntropyToken(v string, fn func(start, end int) bool) {
	start := -1
	for i := 0; i <= len(v); i++ {
		if i < len(v) && isTokenByte(v[i]) {
			if start < 0 {
				start = i
			}
			continue
		}
		if start >= 0 && i-start >= 32 && highEntropyToken(v[start:i]) && !fn(start, i) {
			return
		}
		start = -1
	}
}

// secretSpans returns the byte ranges of v holding secret-shaped tokens, in order and not
// overlapping. It is LooksLikeSecret's detector, located: v has a span exactly when
// LooksLikeSecret(v).
func secretSpans(v string) [][2]int {
	if len(v) < 16 {
		return nil
	}
	var spans [][2]int
	if hasSecretMarker(v) {
		for _, m := range knownSecretShapes.FindAllStringIndex(v, -1) {
			spans = append(spans, [2]int{m[0], m[1]})
		}
	}
	forEachEntropyToken(v, func(start, end int) bool {
		spans = append(spans, [2]int{start, end})
		return true
	})
	if len(spans) < 2 {
		return spans
	}
	sort.Slice(spans, func(i, j int) bool { return spans[i][0] < spans[j][0] })
	merged := spans[:1]
	for _, s := range spans[1:] {
		last := &merged[len(merged)-1]
		if s[0] < last[1] {
			last[1] = max(last[1], s[1])
			continue
		}
		merged = append(merged, s)
	}
	return merged
}

// RedactText replaces every secret-shaped token inside free text (an error detail, a header
// value, a log field) by its fingerprint and returns the result and how many it replaced.
// Unlike the field redaction of events, the text around a token is kept: it is what tells
// an operator which field was at fault.
func RedactText(v string) (string, int) {
	spans := secretSpans(v)
	if len(spans) == 0 {
		return v, 0
	}
	var b strings.Builder
	prev := 0
	for _, s := range spans {
		b.WriteString(v[prev:s[0]])
		b.WriteString(Fingerprint(v[s[0]:s[1]]))
		prev = s[1]
	}
	b.WriteString(v[prev:])
	return b.String(), len(spans)
}

// RedactSubject redacts a NATS subject token by token, so that its structure survives: a
// secret-shaped project token becomes Fingerprint(token), the value RedactUsage gives the
// event's project, and a replay to the redacted subject still matches the redacted event.
func RedactSubject(subject string) (string, int) {
	if len(subject) < 16 {
		return subject, 0
	}
	tokens := strings.Split(subject, ".")
	n := 0
	for i, t := range tokens {
		if LooksLikeSecret(t) {
			tokens[i] = Fingerprint(t)
			n++
		}
	}
	if n == 0 {
		return subject, 0
	}
	return strings.Join(tokens, "."), n
}

// MaskSecrets returns a copy of b with every secret-shaped token overwritten by a mask of
// the same length: its fingerprint, cut or padded with '*'. It is for payloads that cannot
// be decoded: lengths and offsets stay as they were, the secret does not.
func MaskSecrets(b []byte) ([]byte, int) {
	spans := secretSpans(string(b))
	if len(spans) == 0 {
		return b, 0
	}
	out := bytes.Clone(b)
	for _, s := range spans {
		mask := Fingerprint(string(b[s[0]:s[1]]))
		n := s[1] - s[0]
		if len(mask) > n {
			mask = mask[:n]
		}
		copy(out[s[0]:s[1]], mask)
		for i := s[0] + len(mask); i < s[1]; i++ {
			out[i] = '*'
		}
	}
	return out, len(spans)
}

// RedactPayload redacts the secret-shaped values of a message payload, for the dead-letter
// copy of a rejected message. A payload that decodes as an event of kind (with the encoding
// contentType names; validation aside) is redacted field by field exactly as ingestion
// redacts a valid event (RedactUsage, RedactLifecycle) and re-encoded, unknown fields
// dropped: replayed once the cause of its rejection is fixed, it yields the row the original
// would have. A payload that does not decode gets MaskSecrets. A payload with no
// secret-shaped token comes back unchanged (the same slice) with 0.
func RedactPayload(kind Kind, contentType string, data []byte) ([]byte, int) {
	if len(secretSpans(string(data))) == 0 {
		return data, 0
	}
	if m, enc, ok := decodeUnvalidated(kind, contentType, data); ok {
		var n int
		switch e := m.(type) {
		case *keytrailv1.UsageEvent:
			n = RedactUsage(e)
		case *keytrailv1.LifecycleEvent:
			n = RedactLifecycle(e)
		}
		if out, err := enc.Marshal(m); err == nil {
			// The tokens found were in unknown fields (now dropped) or spanned field
			// boundaries of the binary encoding; either way none is left in a field.
			return out, max(n, 1)
		}
	}
	return MaskSecrets(data)
}

// PayloadEventID is the event id of a payload that decodes as an event of kind (validation
// aside), or "" when it does not decode.
func PayloadEventID(kind Kind, contentType string, data []byte) string {
	m, _, ok := decodeUnvalidated(kind, contentType, data)
	if !ok {
		return ""
	}
	switch e := m.(type) {
	case *keytrailv1.UsageEvent:
		return e.GetEventId()
	case *keytrailv1.LifecycleEvent:
		return e.GetEventId()
	}
	return ""
}

// decodeUnvalidated decodes a payload without checking it against the contract, dropping
// unknown fields (whatever they hold cannot be checked for secrets field by field).
func decodeUnvalidated(kind Kind, contentType string, data []byte) (proto.Message, Encoding, bool) {
	enc, err := ParseContentType(contentType)
	if err != nil {
		return nil, 0, false
	}
	var m proto.Message
	switch kind {
	case KindUsage:
		m = &keytrailv1.UsageEvent{}
	case KindLifecycle:
		m = &keytrailv1.LifecycleEvent{}
	default:
		return nil, 0, false
	}
	if enc == EncodingJSON {
		err = protojson.UnmarshalOptions{DiscardUnknown: true}.Unmarshal(data, m)
	} else {
		err = proto.UnmarshalOptions{DiscardUnknown: true}.Unmarshal(data, m)
	}
	return m, enc, err == nil
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
// fingerprints and returns how many it replaced. The event id and project are included: a
// gateway that puts a secret there must not get it stored either, and the fingerprint is
// stable, so duplicates of the event are still recognised.
func RedactUsage(e *keytrailv1.UsageEvent) int {
	n := 0
	for _, p := range []*string{&e.EventId, &e.Project, &e.KeyId, &e.Service, &e.GatewayInstance, &e.Method, &e.Endpoint, &e.Model, &e.Provider, &e.ClientIp, &e.RequestId} {
		n += redact(p)
	}
	return n
}

// RedactLifecycle does the same for a lifecycle event, attributes and changes included.
func RedactLifecycle(e *keytrailv1.LifecycleEvent) int {
	n := 0
	for _, p := range []*string{&e.EventId, &e.Project, &e.KeyId, &e.NewKeyId, &e.Actor, &e.Reason} {
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
