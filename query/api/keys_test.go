package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/internal/apitest"
	"github.com/keytrail/keytrail/internal/testenv"
	"github.com/keytrail/keytrail/query/auditlog"
	"github.com/keytrail/keytrail/query/auth"
	"github.com/keytrail/keytrail/query/chreader"
)

// The reader's clock is fixed, so "now" answers (and TTL expiry) are exact.
var keysNow = time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)

const keysDay = 24 * time.Hour

func keysAgo(d time.Duration) time.Time { return keysNow.Add(-d) }

// Two requests of key_a by billing a minute and a half apart, the first mid-minute: the
// GetKey-at-an-instant tests cut between them at the millisecond.
var (
	keysT1 = keysAgo(keysDay).Add(30250 * time.Millisecond)
	keysT2 = keysT1.Add(90 * time.Second)
)

const (
	keyActive   = keytrailv1.KeyStatus_KEY_STATUS_ACTIVE
	keyDisabled = keytrailv1.KeyStatus_KEY_STATUS_DISABLED
	keyExpired  = keytrailv1.KeyStatus_KEY_STATUS_EXPIRED
	keyDeleted  = keytrailv1.KeyStatus_KEY_STATUS_DELETED
)

// keyFixture is the event set every test reads:
//
//	key_a  acme   created -100d (expires +3d, scopes, budget); used by billing (t1, t2) and search (-2d)
//	key_b  acme   created -120d; last used -100d
//	key_c  acme   created -60d with expires_at -10d and no ACTION_EXPIRED; never used
//	key_d  acme   created -50d, rotated to key_e -30d, disabled -20d; used -26d and -21d
//	key_e  acme   known only as key_d's replacement; used -1h
//	key_f  acme   created -40d, deleted -5d, "enabled" -4d (ignored: deletion is terminal)
//	key_g  acme   created -45d, disabled -40d, enabled -35d, budget changed -34d; never used
//	key_u  acme   no lifecycle event at all; used by cron -3d
//	key_z  other  created -10d; used -2h
func keyFixture() []any {
	l := func(id, key string, action keytrailv1.Action, when time.Time, actor string) *keytrailv1.LifecycleEvent {
		return &keytrailv1.LifecycleEvent{EventId: id, Time: timestamppb.New(when), Project: "acme", KeyId: key, Action: action, Actor: actor, ActorType: keytrailv1.ActorType_ACTOR_TYPE_USER}
	}
	u := func(id, project, key, service string, when time.Time, code uint32) *keytrailv1.UsageEvent {
		return &keytrailv1.UsageEvent{EventId: id, Time: timestamppb.New(when), Project: project, KeyId: key, Service: service, StatusCode: code}
	}
	a1 := l("la1", "key_a", keytrailv1.Action_ACTION_CREATED, keysAgo(100*keysDay), "alice")
	a1.ExpiresAt = timestamppb.New(keysNow.Add(3 * keysDay))
	a1.Scopes = []string{"chat"}
	a1.Budget = &keytrailv1.Budget{AmountMicros: 10_000_000, Period: keytrailv1.BudgetPeriod_BUDGET_PERIOD_DAY}
	c1 := l("lc1", "key_c", keytrailv1.Action_ACTION_CREATED, keysAgo(60*keysDay), "alice")
	c1.ExpiresAt = timestamppb.New(keysAgo(10 * keysDay))
	d2 := l("ld2", "key_d", keytrailv1.Action_ACTION_ROTATED, keysAgo(30*keysDay), "carol")
	d2.NewKeyId = "key_e"
	d2.Reason = "quarterly rotation"
	g4 := l("lg4", "key_g", keytrailv1.Action_ACTION_BUDGET_CHANGED, keysAgo(34*keysDay), "bob")
	g4.Budget = &keytrailv1.Budget{AmountMicros: 2_000_000, Period: keytrailv1.BudgetPeriod_BUDGET_PERIOD_MONTH}
	z1 := l("lz1", "key_z", keytrailv1.Action_ACTION_CREATED, keysAgo(10*keysDay), "zed")
	z1.Project = "other"
	return []any{
		a1,
		l("lb1", "key_b", keytrailv1.Action_ACTION_CREATED, keysAgo(120*keysDay), "bob"),
		c1,
		l("ld1", "key_d", keytrailv1.Action_ACTION_CREATED, keysAgo(50*keysDay), "alice"),
		d2,
		l("ld3", "key_d", keytrailv1.Action_ACTION_DISABLED, keysAgo(20*keysDay), "system"),
		l("lf1", "key_f", keytrailv1.Action_ACTION_CREATED, keysAgo(40*keysDay), "alice"),
		l("lf2", "key_f", keytrailv1.Action_ACTION_DELETED, keysAgo(5*keysDay), "alice"),
		l("lf3", "key_f", keytrailv1.Action_ACTION_ENABLED, keysAgo(4*keysDay), "mallory"),
		l("lg1", "key_g", keytrailv1.Action_ACTION_CREATED, keysAgo(45*keysDay), "alice"),
		l("lg2", "key_g", keytrailv1.Action_ACTION_DISABLED, keysAgo(40*keysDay), "alice"),
		l("lg3", "key_g", keytrailv1.Action_ACTION_ENABLED, keysAgo(35*keysDay), "alice"),
		g4,
		z1,
		u("ua1", "acme", "key_a", "billing", keysT1, 200),
		u("ua2", "acme", "key_a", "billing", keysT2, 500),
		u("ua3", "acme", "key_a", "search", keysAgo(2*keysDay), 200),
		u("ub1", "acme", "key_b", "billing", keysAgo(100*keysDay), 200),
		u("ud0", "acme", "key_d", "billing", keysAgo(26*keysDay), 200),
		u("ud1", "acme", "key_d", "billing", keysAgo(21*keysDay), 200),
		u("ue1", "acme", "key_e", "billing", keysAgo(time.Hour), 200),
		u("uu1", "acme", "key_u", "cron", keysAgo(3*keysDay), 200),
		u("uz1", "other", "key_z", "x", keysAgo(2*time.Hour), 200),
	}
}

type keysAPI struct {
	client   keytrailv1.QueryServiceClient
	httpAddr string
}

// startKeysAPI serves the real gRPC service and REST gateway over a fresh database holding
// the fixture, on ports picked by the OS.
func startKeysAPI(t *testing.T) keysAPI {
	t.Helper()
	db := testenv.ClickHouse(t)
	testenv.Insert(t, db, keyFixture()...)
	srv := apitest.Start(t, db, apitest.Options{
		Now: func() time.Time { return keysNow },
		Tokens: map[string]auth.Entry{
			keysAdminToken: {Name: "admin", Role: auth.RoleAdmin, RatePerSecond: 1e6, Burst: 1e6},
			keysOtherToken: {Name: "other-reader", Role: auth.RoleProjectReader, Projects: []string{"other", "beta"}, RatePerSecond: 1e6, Burst: 1e6},
		},
		ClientToken: keysAdminToken,
		Recorder:    keysNoRecorder{},
		Logger:      slog.New(slog.NewTextHandler(keysTestLog{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	return keysAPI{client: srv.Client, httpAddr: srv.HTTPAddr}
}

// Bearer tokens: the admin reads every project; the other reader only "other" and "beta".
const (
	keysAdminToken = "ktk_keys_test_admin"
	keysOtherToken = "ktk_keys_test_other_reader"
)

// keysNoRecorder accepts every query audit record (the audit log has its own tests).
type keysNoRecorder struct{}

func (keysNoRecorder) Record(context.Context, auditlog.Record) error { return nil }

type keysTestLog struct{ t *testing.T }

func (w keysTestLog) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// rest GETs path and decodes the body into out (a proto message, or JSON for errors).
func (a keysAPI) rest(t *testing.T, path string, params url.Values, wantStatus int, out proto.Message) []byte {
	t.Helper()
	u := "http://" + a.httpAddr + path
	if len(params) > 0 {
		u += "?" + params.Encode()
	}
	return a.restAs(t, keysAdminToken, u, wantStatus, out)
}

func (a keysAPI) restAs(t *testing.T, token, u string, wantStatus int, out proto.Message) []byte {
	t.Helper()
	code, body := testenv.Get(t, u, "", nil, "Bearer "+token)
	if code != wantStatus {
		t.Fatalf("GET %s: status %d, want %d: %s", u, code, wantStatus, body)
	}
	if out != nil {
		if err := protojson.Unmarshal(body, out); err != nil {
			t.Fatalf("GET %s: %v: %s", u, err, body)
		}
	}
	return body
}

func keysTS(t time.Time) *timestamppb.Timestamp { return timestamppb.New(t) }
func keysRFC(t time.Time) string                { return t.Format(time.RFC3339Nano) }

func keysUsed(service string, at time.Time) *keytrailv1.ServiceLastUsed {
	return &keytrailv1.ServiceLastUsed{Service: service, LastUsedAt: keysTS(at)}
}

// wantNow is every key's exact state at now.
func keysWantNow() map[string]*keytrailv1.KeyState {
	return map[string]*keytrailv1.KeyState{
		"key_a": {
			KeyId: "key_a", Project: "acme", Status: keyActive, CreatedAt: keysTS(keysAgo(100 * keysDay)), CreatedBy: "alice",
			ExpiresAt: keysTS(keysNow.Add(3 * keysDay)), Scopes: []string{"chat"},
			Budget:      &keytrailv1.Budget{AmountMicros: 10_000_000, Period: keytrailv1.BudgetPeriod_BUDGET_PERIOD_DAY},
			StatusSince: keysTS(keysAgo(100 * keysDay)), LastEventAt: keysTS(keysAgo(100 * keysDay)),
			LastUsedAt: keysTS(keysT2), LastUsedByService: []*keytrailv1.ServiceLastUsed{keysUsed("billing", keysT2), keysUsed("search", keysAgo(2*keysDay))},
			AsOf: keysTS(keysNow),
		},
		"key_b": {
			KeyId: "key_b", Project: "acme", Status: keyActive, CreatedAt: keysTS(keysAgo(120 * keysDay)), CreatedBy: "bob",
			StatusSince: keysTS(keysAgo(120 * keysDay)), LastEventAt: keysTS(keysAgo(120 * keysDay)),
			LastUsedAt: keysTS(keysAgo(100 * keysDay)), LastUsedByService: []*keytrailv1.ServiceLastUsed{keysUsed("billing", keysAgo(100*keysDay))},
			AsOf: keysTS(keysNow),
		},
		"key_c": {
			KeyId: "key_c", Project: "acme", Status: keyExpired, CreatedAt: keysTS(keysAgo(60 * keysDay)), CreatedBy: "alice",
			ExpiresAt: keysTS(keysAgo(10 * keysDay)), StatusSince: keysTS(keysAgo(10 * keysDay)), LastEventAt: keysTS(keysAgo(60 * keysDay)), AsOf: keysTS(keysNow),
		},
		"key_d": {
			KeyId: "key_d", Project: "acme", Status: keyDisabled, CreatedAt: keysTS(keysAgo(50 * keysDay)), CreatedBy: "alice",
			ReplacedByKeyId: "key_e", StatusSince: keysTS(keysAgo(20 * keysDay)), LastEventAt: keysTS(keysAgo(20 * keysDay)),
			LastUsedAt: keysTS(keysAgo(21 * keysDay)), LastUsedByService: []*keytrailv1.ServiceLastUsed{keysUsed("billing", keysAgo(21*keysDay))},
			AsOf: keysTS(keysNow),
		},
		"key_e": {
			KeyId: "key_e", Project: "acme", Status: keyActive, CreatedAt: keysTS(keysAgo(30 * keysDay)), CreatedBy: "carol",
			ReplacesKeyId: "key_d", StatusSince: keysTS(keysAgo(30 * keysDay)), LastEventAt: keysTS(keysAgo(30 * keysDay)),
			LastUsedAt: keysTS(keysAgo(time.Hour)), LastUsedByService: []*keytrailv1.ServiceLastUsed{keysUsed("billing", keysAgo(time.Hour))},
			AsOf: keysTS(keysNow),
		},
		"key_f": {
			KeyId: "key_f", Project: "acme", Status: keyDeleted, CreatedAt: keysTS(keysAgo(40 * keysDay)), CreatedBy: "alice",
			StatusSince: keysTS(keysAgo(5 * keysDay)), LastEventAt: keysTS(keysAgo(5 * keysDay)), AsOf: keysTS(keysNow),
		},
		"key_g": {
			KeyId: "key_g", Project: "acme", Status: keyActive, CreatedAt: keysTS(keysAgo(45 * keysDay)), CreatedBy: "alice",
			Budget:      &keytrailv1.Budget{AmountMicros: 2_000_000, Period: keytrailv1.BudgetPeriod_BUDGET_PERIOD_MONTH},
			StatusSince: keysTS(keysAgo(35 * keysDay)), LastEventAt: keysTS(keysAgo(34 * keysDay)), AsOf: keysTS(keysNow),
		},
		"key_u": {
			KeyId: "key_u", Project: "acme", Status: keytrailv1.KeyStatus_KEY_STATUS_UNSPECIFIED,
			LastUsedAt: keysTS(keysAgo(3 * keysDay)), LastUsedByService: []*keytrailv1.ServiceLastUsed{keysUsed("cron", keysAgo(3*keysDay))},
			AsOf: keysTS(keysNow),
		},
		"key_z": {
			KeyId: "key_z", Project: "other", Status: keyActive, CreatedAt: keysTS(keysAgo(10 * keysDay)), CreatedBy: "zed",
			StatusSince: keysTS(keysAgo(10 * keysDay)), LastEventAt: keysTS(keysAgo(10 * keysDay)),
			LastUsedAt: keysTS(keysAgo(2 * time.Hour)), LastUsedByService: []*keytrailv1.ServiceLastUsed{keysUsed("x", keysAgo(2*time.Hour))},
			AsOf: keysTS(keysNow),
		},
	}
}

func assertKeyState(t *testing.T, label string, got, want *keytrailv1.KeyState) {
	t.Helper()
	if !proto.Equal(got, want) {
		t.Errorf("%s:\n got %s\nwant %s", label, protojson.Format(got), protojson.Format(want))
	}
}

func TestGetKey(t *testing.T) {
	t.Parallel()
	a := startKeysAPI(t)
	ctx := context.Background()
	get := func(t *testing.T, key string, at time.Time) *keytrailv1.KeyState {
		t.Helper()
		req := &keytrailv1.GetKeyRequest{KeyId: key}
		params := url.Values{}
		if !at.IsZero() {
			req.At = keysTS(at)
			params.Set("at", keysRFC(at))
		}
		resp, err := a.client.GetKey(ctx, req)
		if err != nil {
			t.Fatalf("GetKey(%s, %v): %v", key, at, err)
		}
		var rest keytrailv1.GetKeyResponse
		a.rest(t, "/v1/keys/"+key, params, http.StatusOK, &rest)
		if !proto.Equal(resp, &rest) {
			t.Errorf("REST and gRPC differ for %s at %v:\n rest %s\n grpc %s", key, at, protojson.Format(&rest), protojson.Format(resp))
		}
		return resp.GetKey()
	}

	t.Run("now, every key", func(t *testing.T) {
		for key, want := range keysWantNow() {
			assertKeyState(t, key, get(t, key, time.Time{}), want)
		}
	})

	t.Run("expiry by TTL with no event: active before, expired from expires_at", func(t *testing.T) {
		expiry := keysAgo(10 * keysDay)
		before := get(t, "key_c", expiry.Add(-time.Millisecond))
		assertKeyState(t, "before", before, &keytrailv1.KeyState{
			KeyId: "key_c", Project: "acme", Status: keyActive, CreatedAt: keysTS(keysAgo(60 * keysDay)), CreatedBy: "alice",
			ExpiresAt: keysTS(expiry), StatusSince: keysTS(keysAgo(60 * keysDay)), LastEventAt: keysTS(keysAgo(60 * keysDay)), AsOf: keysTS(expiry.Add(-time.Millisecond)),
		})
		at := get(t, "key_c", expiry)
		assertKeyState(t, "at expires_at", at, &keytrailv1.KeyState{
			KeyId: "key_c", Project: "acme", Status: keyExpired, CreatedAt: keysTS(keysAgo(60 * keysDay)), CreatedBy: "alice",
			ExpiresAt: keysTS(expiry), StatusSince: keysTS(expiry), LastEventAt: keysTS(keysAgo(60 * keysDay)), AsOf: keysTS(expiry),
		})
	})

	t.Run("past instant: before the rotation's key was disabled, with its use as of then", func(t *testing.T) {
		at := keysAgo(25 * keysDay)
		assertKeyState(t, "key_d", get(t, "key_d", at), &keytrailv1.KeyState{
			KeyId: "key_d", Project: "acme", Status: keyActive, CreatedAt: keysTS(keysAgo(50 * keysDay)), CreatedBy: "alice",
			ReplacedByKeyId: "key_e", StatusSince: keysTS(keysAgo(50 * keysDay)), LastEventAt: keysTS(keysAgo(30 * keysDay)),
			LastUsedAt: keysTS(keysAgo(26 * keysDay)), LastUsedByService: []*keytrailv1.ServiceLastUsed{keysUsed("billing", keysAgo(26*keysDay))},
			AsOf: keysTS(at),
		})
		assertKeyState(t, "key_e", get(t, "key_e", at), &keytrailv1.KeyState{
			KeyId: "key_e", Project: "acme", Status: keyActive, CreatedAt: keysTS(keysAgo(30 * keysDay)), CreatedBy: "carol",
			ReplacesKeyId: "key_d", StatusSince: keysTS(keysAgo(30 * keysDay)), LastEventAt: keysTS(keysAgo(30 * keysDay)), AsOf: keysTS(at),
		})
	})

	t.Run("last used is exact to the millisecond at a past instant", func(t *testing.T) {
		// One millisecond before t2 the billing service last used the key at t1 ...
		k := get(t, "key_a", keysT2.Add(-time.Millisecond))
		if !proto.Equal(k.GetLastUsedAt(), keysTS(keysT1)) || len(k.GetLastUsedByService()) != 2 ||
			!proto.Equal(k.GetLastUsedByService()[0], keysUsed("billing", keysT1)) || !proto.Equal(k.GetLastUsedByService()[1], keysUsed("search", keysAgo(2*keysDay))) {
			t.Errorf("at t2-1ms: last used %v by service %v", k.GetLastUsedAt().AsTime(), k.GetLastUsedByService())
		}
		// ... and at t2 itself the request at t2 counts (the state at an instant includes it).
		k = get(t, "key_a", keysT2)
		if !proto.Equal(k.GetLastUsedAt(), keysTS(keysT2)) || !proto.Equal(k.GetLastUsedByService()[0], keysUsed("billing", keysT2)) {
			t.Errorf("at t2: last used %v by service %v", k.GetLastUsedAt().AsTime(), k.GetLastUsedByService())
		}
		// Before any request and before creation: unknown.
		k = get(t, "key_a", keysAgo(100*keysDay))
		if k.GetLastUsedAt() != nil || len(k.GetLastUsedByService()) != 0 || k.GetStatus() != keyActive {
			t.Errorf("at creation: %s", protojson.Format(k))
		}
	})

	t.Run("unknown at the instant is NotFound", func(t *testing.T) {
		for _, tc := range []struct {
			key string
			at  time.Time
		}{
			{"key_e", keysAgo(30*keysDay + time.Millisecond)}, // before the rotation that introduced it
			{"key_a", keysAgo(100*keysDay + time.Millisecond)},
			{"key_u", keysAgo(3*keysDay + time.Millisecond)}, // before its only request
			{"key_nope", time.Time{}},
		} {
			req := &keytrailv1.GetKeyRequest{KeyId: tc.key}
			params := url.Values{}
			if !tc.at.IsZero() {
				req.At = keysTS(tc.at)
				params.Set("at", keysRFC(tc.at))
			}
			_, err := a.client.GetKey(ctx, req)
			if status.Code(err) != codes.NotFound || !strings.Contains(err.Error(), tc.key) {
				t.Errorf("GetKey(%s at %v): %v, want NotFound naming the key", tc.key, tc.at, err)
			}
			var body struct {
				Code    int    `json:"code"`
				Message string `json:"message"`
			}
			raw := a.rest(t, "/v1/keys/"+tc.key, params, http.StatusNotFound, nil)
			if err := json.Unmarshal(raw, &body); err != nil || body.Code != int(codes.NotFound) {
				t.Errorf("REST %s: %s", tc.key, raw)
			}
		}
	})

	t.Run("REST shape", func(t *testing.T) {
		raw := a.rest(t, "/v1/keys/key_c", nil, http.StatusOK, nil)
		var body struct {
			Key map[string]any `json:"key"`
		}
		if err := json.Unmarshal(raw, &body); err != nil {
			t.Fatal(err)
		}
		if body.Key["status"] != "KEY_STATUS_EXPIRED" || body.Key["status_since"] != "2026-11-10T12:00:00Z" ||
			body.Key["expires_at"] != "2026-11-10T12:00:00Z" || body.Key["last_used_at"] != nil {
			t.Errorf("body %s", raw)
		}
	})
}

func TestListKeys(t *testing.T) {
	t.Parallel()
	a := startKeysAPI(t)
	ctx := context.Background()

	// list runs one ListKeys over gRPC and REST, checks both agree and returns the key ids.
	list := func(t *testing.T, req *keytrailv1.ListKeysRequest, params url.Values) (*keytrailv1.ListKeysResponse, []string) {
		t.Helper()
		resp, err := a.client.ListKeys(ctx, req)
		if err != nil {
			t.Fatalf("ListKeys(%v): %v", req, err)
		}
		var rest keytrailv1.ListKeysResponse
		a.rest(t, "/v1/keys", params, http.StatusOK, &rest)
		if !proto.Equal(resp, &rest) {
			t.Errorf("REST and gRPC differ for %v:\n rest %s\n grpc %s", params, protojson.Format(&rest), protojson.Format(resp))
		}
		var ids []string
		for _, k := range resp.GetKeys() {
			ids = append(ids, k.GetKeyId())
		}
		return resp, ids
	}

	t.Run("all keys now, exact states", func(t *testing.T) {
		resp, ids := list(t, &keytrailv1.ListKeysRequest{}, nil)
		if got, want := strings.Join(ids, " "), "key_a key_b key_c key_d key_e key_f key_g key_u key_z"; got != want {
			t.Fatalf("keys %s, want %s", got, want)
		}
		want := keysWantNow()
		for _, k := range resp.GetKeys() {
			assertKeyState(t, k.GetKeyId(), k, want[k.GetKeyId()])
		}
		if resp.GetNextPageToken() != "" {
			t.Errorf("token on the only page: %q", resp.GetNextPageToken())
		}
	})

	for _, tc := range []struct {
		name   string
		req    *keytrailv1.ListKeysRequest
		params url.Values
		want   string
	}{
		{"project", &keytrailv1.ListKeysRequest{Project: "acme"}, url.Values{"project": {"acme"}},
			"key_a key_b key_c key_d key_e key_f key_g key_u"},
		{"other project", &keytrailv1.ListKeysRequest{Project: "other"}, url.Values{"project": {"other"}}, "key_z"},
		{"status active", &keytrailv1.ListKeysRequest{Project: "acme", Status: keyActive},
			url.Values{"project": {"acme"}, "status": {"KEY_STATUS_ACTIVE"}}, "key_a key_b key_e key_g"},
		{"status disabled", &keytrailv1.ListKeysRequest{Status: keyDisabled}, url.Values{"status": {"KEY_STATUS_DISABLED"}}, "key_d"},
		{"status expired", &keytrailv1.ListKeysRequest{Status: keyExpired}, url.Values{"status": {"KEY_STATUS_EXPIRED"}}, "key_c"},
		{"status deleted", &keytrailv1.ListKeysRequest{Status: keyDeleted}, url.Values{"status": {"KEY_STATUS_DELETED"}}, "key_f"},
		{"expires before", &keytrailv1.ListKeysRequest{ExpiresBefore: keysTS(keysNow.Add(7 * keysDay))},
			url.Values{"expires_before": {keysRFC(keysNow.Add(7 * keysDay))}}, "key_a key_c"},
		{"expires before is strict", &keytrailv1.ListKeysRequest{ExpiresBefore: keysTS(keysNow.Add(3 * keysDay))},
			url.Values{"expires_before": {keysRFC(keysNow.Add(3 * keysDay))}}, "key_c"},
		{"used since", &keytrailv1.ListKeysRequest{UsedSince: keysTS(keysAgo(7 * keysDay))},
			url.Values{"used_since": {keysRFC(keysAgo(7 * keysDay))}}, "key_a key_e key_u key_z"},
		{"used since is inclusive", &keytrailv1.ListKeysRequest{UsedSince: keysTS(keysT2)},
			url.Values{"used_since": {keysRFC(keysT2)}}, "key_a key_e key_z"},
		{"unused since (never-used keys included)", &keytrailv1.ListKeysRequest{Project: "acme", UnusedSince: keysTS(keysAgo(90 * keysDay))},
			url.Values{"project": {"acme"}, "unused_since": {keysRFC(keysAgo(90 * keysDay))}}, "key_b key_c key_f key_g"},
		{"unused since is exclusive of a request at the instant", &keytrailv1.ListKeysRequest{Project: "acme", UnusedSince: keysTS(keysT2)},
			url.Values{"project": {"acme"}, "unused_since": {keysRFC(keysT2)}}, "key_b key_c key_d key_f key_g key_u"},
		{"expiring within 7 days but still used (one query)",
			&keytrailv1.ListKeysRequest{ExpiresBefore: keysTS(keysNow.Add(7 * keysDay)), UsedSince: keysTS(keysAgo(7 * keysDay)), Status: keyActive},
			url.Values{"expires_before": {keysRFC(keysNow.Add(7 * keysDay))}, "used_since": {keysRFC(keysAgo(7 * keysDay))}, "status": {"KEY_STATUS_ACTIVE"}}, "key_a"},
		{"active but unused for 90 days (one query)",
			&keytrailv1.ListKeysRequest{Status: keyActive, UnusedSince: keysTS(keysAgo(90 * keysDay))},
			url.Values{"status": {"KEY_STATUS_ACTIVE"}, "unused_since": {keysRFC(keysAgo(90 * keysDay))}}, "key_b key_g"},
		{"past instant: states and use as of then", &keytrailv1.ListKeysRequest{Status: keyActive, At: keysTS(keysAgo(25 * keysDay))},
			url.Values{"status": {"KEY_STATUS_ACTIVE"}, "at": {keysRFC(keysAgo(25 * keysDay))}}, "key_a key_b key_c key_d key_e key_f key_g"},
		{"past instant with a use filter", &keytrailv1.ListKeysRequest{At: keysTS(keysAgo(25 * keysDay)), UsedSince: keysTS(keysAgo(30 * keysDay))},
			url.Values{"at": {keysRFC(keysAgo(25 * keysDay))}, "used_since": {keysRFC(keysAgo(30 * keysDay))}}, "key_d"},
		{"TTL edge: expired from expires_at", &keytrailv1.ListKeysRequest{Status: keyExpired, At: keysTS(keysAgo(10 * keysDay))},
			url.Values{"status": {"KEY_STATUS_EXPIRED"}, "at": {keysRFC(keysAgo(10 * keysDay))}}, "key_c"},
		{"TTL edge: not yet a millisecond before", &keytrailv1.ListKeysRequest{Status: keyExpired, At: keysTS(keysAgo(10*keysDay + time.Millisecond))},
			url.Values{"status": {"KEY_STATUS_EXPIRED"}, "at": {keysRFC(keysAgo(10*keysDay + time.Millisecond))}}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, ids := list(t, tc.req, tc.params)
			if got := strings.Join(ids, " "); got != tc.want {
				t.Errorf("keys %q, want %q", got, tc.want)
			}
		})
	}

	t.Run("past instant: exact state of a key", func(t *testing.T) {
		at := keysAgo(25 * keysDay)
		resp, _ := list(t, &keytrailv1.ListKeysRequest{At: keysTS(at), UsedSince: keysTS(keysAgo(30 * keysDay))},
			url.Values{"at": {keysRFC(at)}, "used_since": {keysRFC(keysAgo(30 * keysDay))}})
		assertKeyState(t, "key_d", resp.GetKeys()[0], &keytrailv1.KeyState{
			KeyId: "key_d", Project: "acme", Status: keyActive, CreatedAt: keysTS(keysAgo(50 * keysDay)), CreatedBy: "alice",
			ReplacedByKeyId: "key_e", StatusSince: keysTS(keysAgo(50 * keysDay)), LastEventAt: keysTS(keysAgo(30 * keysDay)),
			LastUsedAt: keysTS(keysAgo(26 * keysDay)), LastUsedByService: []*keytrailv1.ServiceLastUsed{keysUsed("billing", keysAgo(26*keysDay))},
			AsOf: keysTS(at),
		})
	})

	t.Run("pagination across pages, REST", func(t *testing.T) {
		var pages [][]string
		token := ""
		for {
			params := url.Values{"project": {"acme"}, "page_size": {"3"}}
			if token != "" {
				params.Set("page_token", token)
			}
			var resp keytrailv1.ListKeysResponse
			a.rest(t, "/v1/keys", params, http.StatusOK, &resp)
			var ids []string
			for _, k := range resp.GetKeys() {
				ids = append(ids, k.GetKeyId())
				if !k.GetAsOf().AsTime().Equal(keysNow) {
					t.Errorf("%s as of %v, want the instant pinned by the first page", k.GetKeyId(), k.GetAsOf().AsTime())
				}
			}
			pages = append(pages, ids)
			if token = resp.GetNextPageToken(); token == "" {
				break
			}
			if len(pages) > 5 {
				t.Fatal("pagination does not end")
			}
		}
		if got, want := fmt.Sprint(pages), "[[key_a key_b key_c] [key_d key_e key_f] [key_g key_u]]"; got != want {
			t.Errorf("pages %s, want %s", got, want)
		}
	})

	t.Run("pagination with a filter, gRPC: the page boundary falls exactly on the last key", func(t *testing.T) {
		req := &keytrailv1.ListKeysRequest{Status: keyActive, PageSize: 2}
		p1, err := a.client.ListKeys(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		req.PageToken = p1.GetNextPageToken()
		p2, err := a.client.ListKeys(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		req.PageToken = p2.GetNextPageToken()
		p3, err := a.client.ListKeys(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		var got [][]string
		for _, p := range []*keytrailv1.ListKeysResponse{p1, p2, p3} {
			var ids []string
			for _, k := range p.GetKeys() {
				ids = append(ids, k.GetKeyId())
			}
			got = append(got, ids)
		}
		// Active keys: a b e g z. Pages of 2: [a b] [e g] [z], the last without a token.
		if g := fmt.Sprint(got); g != "[[key_a key_b] [key_e key_g] [key_z]]" || p3.GetNextPageToken() != "" {
			t.Errorf("pages %s, last token %q", g, p3.GetNextPageToken())
		}
	})
}

func TestKeysBadInput(t *testing.T) {
	t.Parallel()
	a := startKeysAPI(t)
	ctx := context.Background()
	var first keytrailv1.ListKeysResponse
	a.rest(t, "/v1/keys", url.Values{"page_size": {"1"}}, http.StatusOK, &first)
	if first.GetNextPageToken() == "" {
		t.Fatal("no token on the first page")
	}

	for _, tc := range []struct {
		path   string
		params url.Values
		field  string
	}{
		{"/v1/keys/key_a", url.Values{"at": {keysRFC(keysNow.Add(time.Hour))}}, "at"},
		{"/v1/keys/key_a", url.Values{"at": {"1999-12-31T00:00:00Z"}}, "at"},
		{"/v1/keys/key_a", url.Values{"at": {"yesterday"}}, "at"},
		{"/v1/keys/" + strings.Repeat("k", 300), nil, "key_id"},
		{"/v1/keys", url.Values{"at": {keysRFC(keysNow.Add(time.Hour))}}, "at"},
		{"/v1/keys", url.Values{"page_size": {"5000"}}, "page_size"},
		{"/v1/keys", url.Values{"page_token": {"forged"}}, "page_token"},
		{"/v1/keys", url.Values{"page_token": {first.GetNextPageToken()}, "status": {"KEY_STATUS_ACTIVE"}}, "page_token"},
		{"/v1/keys", url.Values{"status": {"KEY_STATUS_BOGUS"}}, "status"},
		{"/v1/keys", url.Values{"project": {strings.Repeat("p", 300)}}, "project"},
		{"/v1/keys", url.Values{"used_since": {"last week"}}, "used_since"},
	} {
		var body struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		}
		raw := a.rest(t, tc.path, tc.params, http.StatusBadRequest, nil)
		if err := json.Unmarshal(raw, &body); err != nil || body.Code != int(codes.InvalidArgument) || !namesField(body.Message, tc.field) {
			t.Errorf("%s %v: %s, want InvalidArgument naming %s", tc.path, tc.params, raw, tc.field)
		}
	}

	for _, tc := range []struct {
		name  string
		call  func() error
		field string
	}{
		{"GetKey at in the future", func() error {
			_, err := a.client.GetKey(ctx, &keytrailv1.GetKeyRequest{KeyId: "key_a", At: keysTS(keysNow.Add(chreader.MaxKeyAtAhead + time.Millisecond))})
			return err
		}, "at"},
		{"GetKey without a key id", func() error {
			_, err := a.client.GetKey(ctx, &keytrailv1.GetKeyRequest{})
			return err
		}, "key_id"},
		{"ListKeys with an undefined status", func() error {
			_, err := a.client.ListKeys(ctx, &keytrailv1.ListKeysRequest{Status: keytrailv1.KeyStatus(99)})
			return err
		}, "status"},
		{"ListKeys with a token for other filters", func() error {
			_, err := a.client.ListKeys(ctx, &keytrailv1.ListKeysRequest{Project: "acme", PageToken: first.GetNextPageToken()})
			return err
		}, "page_token"},
	} {
		err := tc.call()
		if status.Code(err) != codes.InvalidArgument || !namesField(status.Convert(err).Message(), tc.field) {
			t.Errorf("%s: %v, want InvalidArgument naming %s", tc.name, err, tc.field)
		}
	}

	// The allowance for a caller's clock running ahead is accepted.
	if _, err := a.client.GetKey(ctx, &keytrailv1.GetKeyRequest{KeyId: "key_a", At: keysTS(keysNow.Add(chreader.MaxKeyAtAhead))}); err != nil {
		t.Errorf("at = now + %s: %v", chreader.MaxKeyAtAhead, err)
	}
}

// namesField reports whether an error message names the field the way each layer does:
// "at: ...", "validation error: key_id: ..." or `parsing field "status": ...`.
func namesField(msg, field string) bool {
	return regexp.MustCompile(`(^|[\s"])` + regexp.QuoteMeta(field) + `("|:)`).MatchString(msg)
}

func TestKeysProjectScope(t *testing.T) {
	t.Parallel()
	a := startKeysAPI(t)
	// A reader of "other" and "beta" (key_z is the only key of either).
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+keysOtherToken)

	// Another project's key id is, for this reader, no key at all: the answer is the one for
	// a key id that does not exist, and does not name the project that has it.
	if _, err := a.client.GetKey(ctx, &keytrailv1.GetKeyRequest{KeyId: "key_a"}); status.Code(err) != codes.NotFound ||
		status.Convert(err).Message() != `key "key_a" is not known at 2026-11-20T12:00:00Z` {
		t.Errorf("GetKey of an acme key: %v, want NotFound", err)
	}
	// Naming that project is PermissionDenied.
	if _, err := a.client.GetKey(ctx, &keytrailv1.GetKeyRequest{KeyId: "key_a", Project: "acme"}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("GetKey of an acme key with project acme: %v, want PermissionDenied", err)
	}
	k, err := a.client.GetKey(ctx, &keytrailv1.GetKeyRequest{KeyId: "key_z"})
	if err != nil || !proto.Equal(k.GetKey(), keysWantNow()["key_z"]) {
		t.Errorf("GetKey of its own key: %v %v", k, err)
	}
	list, err := a.client.ListKeys(ctx, &keytrailv1.ListKeysRequest{PageSize: 1})
	if err != nil || len(list.GetKeys()) != 1 || list.GetKeys()[0].GetKeyId() != "key_z" || list.GetNextPageToken() != "" {
		t.Errorf("ListKeys without a project: %v %v, want key_z alone on a full page", list, err)
	}
	if _, err := a.client.ListKeys(ctx, &keytrailv1.ListKeysRequest{Project: "acme"}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("ListKeys of acme: %v, want PermissionDenied", err)
	}

	base := "http://" + a.httpAddr
	a.restAs(t, keysOtherToken, base+"/v1/keys/key_a", http.StatusNotFound, nil)
	a.restAs(t, keysOtherToken, base+"/v1/keys/key_a?project=acme", http.StatusForbidden, nil)
	var rest keytrailv1.ListKeysResponse
	a.restAs(t, keysOtherToken, base+"/v1/keys", http.StatusOK, &rest)
	if len(rest.GetKeys()) != 1 || rest.GetKeys()[0].GetKeyId() != "key_z" {
		t.Errorf("REST ListKeys as the other reader: %v", &rest)
	}
	a.restAs(t, "not-a-token", base+"/v1/keys", http.StatusUnauthorized, nil)
}
