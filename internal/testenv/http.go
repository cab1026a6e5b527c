package testenv

import (
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
