package testenv

import (
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"testing"
)

// Get makes a GET request with an exact Authorization header ("" for none) and returns the
// status and body; transport errors fail the test.
func Get(t testing.TB, base, path string, params url.Values, authorization string) (int, []byte) {
	t.Helper()
	code, body, _ := GetWithHeader(t, base, path, params, authorization)
	return code, body
}

// GetJSON makes a GET request like Get, fails the test unless the status is wantStatus, and
// decodes the JSON body into out.
func GetJSON(t testing.TB, base, path string, params url.Values, authorization string, wantStatus int, out any) {
	t.Helper()
	code, body := Get(t, base, path, params, authorization)
	if code != wantStatus {
		t.Fatalf("GET %s?%s: status %d, want %d: %s", path, params.Encode(), code, wantStatus, body)
	}
	if err := json.Unmarshal(body, out); err != nil {
		t.Fatalf("GET %s?%s: %v: %s", path, params.Encode(), err, body)
	}
}

// GetWithHeader is Get that returns the response's header too.
func GetWithHeader(t testing.TB, base, path string, params url.Values, authorization string) (int, []byte, http.Header) {
	t.Helper()
	u := base + path
	if len(params) > 0 {
		u += "?" + params.Encode()
	}
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	if authorization != "" {
		req.Header.Set("Authorization", authorization)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, body, resp.Header
}
