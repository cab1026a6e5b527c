package api_test

import (
	"encoding/json"
	"net/http"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/internal/apitest"
	"github.com/keytrail/keytrail/internal/testenv"
	"github.com/keytrail/keytrail/query/auth"
)

var usageNow = time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)

// usageFixture: key_k (acme) used by billing at 10:01 (200, 100 µ), 10:02 (500, 50 µ) and
// 10:12 (200, 25 µ), by search at 10:07 (200, 10 µ) and 10:31 (429); key_z (other) at 10:05.
func startUsageAPI(t *testing.T) *apitest.Server {
	t.Helper()
	at := func(hhmm string) *timestamppb.Timestamp {
		ts, err := time.Parse("2006-01-02 15:04", "2026-11-20 "+hhmm)
		if err != nil {
			t.Fatal(err)
		}
		return timestamppb.New(ts)
	}
	u := func(id, project, key, service, hhmm string, code uint32, cost int64) *keytrailv1.UsageEvent {
		return &keytrailv1.UsageEvent{EventId: id, Time: at(hhmm), Project: project, KeyId: key, Service: service, StatusCode: code, CostMicros: cost}
	}
	db := testenv.ClickHouse(t)
	testenv.Insert(t, db,
		u("u1", "acme", "key_k", "billing", "10:01", 200, 100),
		u("u2", "acme", "key_k", "billing", "10:02", 500, 50),
		u("u3", "acme", "key_k", "billing", "10:12", 200, 25),
		u("u4", "acme", "key_k", "search", "10:07", 200, 10),
		u("u5", "acme", "key_k", "search", "10:31", 429, 0),
		u("u6", "other", "key_z", "x", "10:05", 200, 1),
	)
	return apitest.Start(t, db, apitest.Options{
		Now:    func() time.Time { return usageNow },
		Tokens: map[string]auth.Entry{"ktk_other_reader": {Name: "other-reader", Role: auth.RoleProjectReader, Projects: []string{"other"}}},
	})
}

type usageAnswer struct {
	KeyID        string   `json:"key_id"`
	Project      string   `json:"project"`
	Bucket       string   `json:"bucket"`
	BucketStarts []string `json:"bucket_starts"`
	Series       []struct {
		Service    string   `json:"service"`
		Requests   []string `json:"requests"`
		Errors     []string `json:"errors"`
		CostMicros []string `json:"cost_micros"`
	} `json:"series"`
}

func TestGetKeyUsage(t *testing.T) {
	t.Parallel()
	srv := startUsageAPI(t)
	window := url.Values{"start_time": {"2026-11-20T10:00:00Z"}, "end_time": {"2026-11-20T10:30:00Z"}, "bucket": {"600s"}}
	get := func(t *testing.T, key string, params url.Values, token string) (int, usageAnswer, string) {
		t.Helper()
		code, body := srv.Get(t, "/v1/keys/"+key+"/usage", params, token)
		var a usageAnswer
		if code == http.StatusOK {
			if err := json.Unmarshal(body, &a); err != nil {
				t.Fatal(err)
			}
		}
		return code, a, string(body)
	}
	starts := []string{"2026-11-20T10:00:00Z", "2026-11-20T10:10:00Z", "2026-11-20T10:20:00Z"}

	t.Run("every service, dense", func(t *testing.T) {
		code, a, body := get(t, "key_k", window, srv.AdminToken)
		if code != http.StatusOK {
			t.Fatalf("%d %s", code, body)
		}
		if a.KeyID != "key_k" || a.Project != "acme" || a.Bucket != "600s" || !reflect.DeepEqual(a.BucketStarts, starts) {
			t.Fatalf("header %+v", a)
		}
		type row struct{ Service, Requests, Errors, Cost string }
		var got []row
		for _, s := range a.Series {
			got = append(got, row{s.Service, strings.Join(s.Requests, ","), strings.Join(s.Errors, ","), strings.Join(s.CostMicros, ",")})
		}
		// search's 10:31 request is past end_time.
		want := []row{{"billing", "2,1,0", "1,0,0", "150,25,0"}, {"search", "1,0,0", "0,0,0", "10,0,0"}}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("series %+v, want %+v", got, want)
		}
	})

	t.Run("one service", func(t *testing.T) {
		params := url.Values{"service": {"search"}, "start_time": {"2026-11-20T10:00:00Z"}, "end_time": {"2026-11-20T10:35:00Z"}, "bucket": {"900s"}}
		code, a, body := get(t, "key_k", params, srv.AdminToken)
		if code != http.StatusOK {
			t.Fatalf("%d %s", code, body)
		}
		if len(a.Series) != 1 || a.Series[0].Service != "search" || strings.Join(a.Series[0].Requests, ",") != "1,0,1" || strings.Join(a.Series[0].Errors, ",") != "0,0,1" {
			t.Errorf("search series %+v", a.Series)
		}
		if !reflect.DeepEqual(a.BucketStarts, []string{"2026-11-20T10:00:00Z", "2026-11-20T10:15:00Z", "2026-11-20T10:30:00Z"}) {
			t.Errorf("buckets %v", a.BucketStarts)
		}
	})

	t.Run("default range and width", func(t *testing.T) {
		// The 24 hours before the clock, in 5-minute buckets: 288 of them.
		code, a, body := get(t, "key_k", nil, srv.AdminToken)
		if code != http.StatusOK {
			t.Fatalf("%d %s", code, body)
		}
		if a.Bucket != "300s" || len(a.BucketStarts) != 288 || a.BucketStarts[0] != "2026-11-19T12:00:00Z" {
			t.Errorf("default: bucket %s, %d buckets from %v", a.Bucket, len(a.BucketStarts), a.BucketStarts[:1])
		}
	})

	t.Run("unknown key", func(t *testing.T) {
		code, a, body := get(t, "key_none", window, srv.AdminToken)
		if code != http.StatusOK || a.Project != "" || len(a.Series) != 0 || len(a.BucketStarts) != 3 {
			t.Errorf("unknown key: %d %s", code, body)
		}
	})

	t.Run("other project's reader", func(t *testing.T) {
		// Naming the key's project is refused; without it, acme's key id is no key of the
		// reader's (an unknown key's answer, naming no project).
		inAcme := url.Values{"project": {"acme"}}
		for k, v := range window {
			inAcme[k] = v
		}
		code, _, body := get(t, "key_k", inAcme, "ktk_other_reader")
		if code != http.StatusForbidden || !strings.Contains(body, `not allowed to read project \"acme\"`) {
			t.Errorf("reader of other on an acme key: %d %s", code, body)
		}
		if code, a, body := get(t, "key_k", window, "ktk_other_reader"); code != http.StatusOK || a.Project != "" || len(a.Series) != 0 {
			t.Errorf("reader of other on an acme key id without a project: %d %s", code, body)
		}
		if code, a, body := get(t, "key_z", window, "ktk_other_reader"); code != http.StatusOK || len(a.Series) != 1 {
			t.Errorf("reader of other on its own key: %d %s", code, body)
		}
	})

	t.Run("bad input names the field", func(t *testing.T) {
		for _, tc := range []struct {
			params url.Values
			field  string
		}{
			{url.Values{"bucket": {"420s"}}, "bucket"},
			{url.Values{"bucket": {"172800s"}}, "bucket"},
			{url.Values{"bucket": {"300s"}, "start_time": {"2026-11-01T00:00:00Z"}}, "start_time"},
			{url.Values{"start_time": {"2026-11-20T10:00:00Z"}, "end_time": {"2026-11-20T09:00:00Z"}}, "end_time"},
		} {
			code, _, body := get(t, "key_k", tc.params, srv.AdminToken)
			if code != http.StatusBadRequest || !strings.Contains(body, tc.field) {
				t.Errorf("%v: %d %s, want 400 naming %s", tc.params, code, body, tc.field)
			}
		}
	})
}
