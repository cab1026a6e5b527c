package chreader

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"strings"
)

// A page token carries the sort key of the last row returned (keyset pagination: stable and
// cheap however deep the page) and a fingerprint of the filters it was issued for, so a token
// replayed against different filters is rejected instead of silently skipping rows.
type pageToken struct {
	After       []string `json:"a"`
	Fingerprint string   `json:"f"`
}

func fingerprint(filters ...string) string {
	sum := sha256.Sum256([]byte(strings.Join(filters, "\x00")))
	return hex.EncodeToString(sum[:8])
}

func encodePageToken(after []string, filters ...string) string {
	b, _ := json.Marshal(pageToken{After: after, Fingerprint: fingerprint(filters...)})
	return base64.RawURLEncoding.EncodeToString(b)
}

// decodePageToken returns the cursor of a token, nil for an empty token.
func decodePageToken(token string, fields int, filters ...string) ([]string, error) {
	if token == "" {
		return nil, nil
	}
	bad := &InvalidError{Field: "page_token", Reason: "is not a token this query issued"}
	raw, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil {
		return nil, bad
	}
	var t pageToken
	if err := json.Unmarshal(raw, &t); err != nil || len(t.After) != fields {
		return nil, bad
	}
	if t.Fingerprint != fingerprint(filters...) {
		return nil, &InvalidError{Field: "page_token", Reason: "was issued for different filters"}
	}
	return t.After, nil
}
