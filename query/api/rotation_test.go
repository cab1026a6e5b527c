package api_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/internal/apitest"
	"github.com/keytrail/keytrail/internal/testenv"
	"github.com/keytrail/keytrail/query/auth"
)

// Tokens of the rotation tests, besides apitest's admin.
const (
	tokAlpha     = "ktk_test_alpha"      // project_reader of alpha
	tokBeta      = "ktk_test_beta"       // project_reader of beta
	tokAlphaBeta = "ktk_test_alpha_beta" // project_reader of both
)

// TestRotationKeyIsProjectAndKeyID: projects alpha and beta each have a key "default",
// rotated to different new keys; beta also has "beta_only".
func TestRotationKeyIsProjectAndKeyID(t *testing.T) {
	t.Parallel()
	db := testenv.ClickHouse(t)
	t0 := time.Now().UTC().Add(-2 * time.Hour).Truncate(time.Minute)
	rot := func(project, key, newKey string) *keytrailv1.LifecycleEvent {
		return &keytrailv1.LifecycleEvent{EventId: "rot-" + project + "-" + key, Time: timestamppb.New(t0), Project: project, KeyId: key, NewKeyId: newKey,
			Action: keytrailv1.Action_ACTION_ROTATED, Actor: "alice", ActorType: keytrailv1.ActorType_ACTOR_TYPE_USER}
	}
	use := func(id, project, key, service string, d time.Duration) *keytrailv1.UsageEvent {
		return &keytrailv1.UsageEvent{EventId: id, Time: timestamppb.New(t0.Add(d)), Project: project, KeyId: key, Service: service, StatusCode: 200}
	}
	testenv.Insert(t, db,
		rot("alpha", "default", "alpha_v2"),
		use("a1", "alpha", "default", "alpha-app", 10*time.Minute),
		use("a2", "alpha", "alpha_v2", "alpha-app", 20*time.Minute),
		rot("beta", "default", "beta_v2"),
		use("b1", "beta", "default", "beta-app", 30*time.Minute),
		use("b2", "beta", "default", "beta-app", 40*time.Minute),
		use("b3", "beta", "beta_only", "beta-app", 40*time.Minute),
	)
	srv := apitest.Start(t, db, apitest.Options{Tokens: map[string]auth.Entry{
		tokAlpha:     {Name: "alpha-bot", Role: auth.RoleProjectReader, Projects: []string{"alpha"}, RatePerSecond: 100, Burst: 100},
		tokBeta:      {Name: "beta-bot", Role: auth.RoleProjectReader, Projects: []string{"beta"}, RatePerSecond: 100, Burst: 100},
		tokAlphaBeta: {Name: "alpha-beta-bot", Role: auth.RoleProjectReader, Projects: []string{"alpha", "beta"}, RatePerSecond: 100, Burst: 100},
	}})

	type answer struct {
		Project        string `json:"project"`
		NewKeyID       string `json:"new_key_id"`
		OldKeyRequests string `json:"old_key_requests"`
		Verdict        string `json:"verdict"`
		Services       []struct {
			Service string `json:"service"`
		} `json:"services"`
	}
	for _, c := range []struct {
		name, token, key, project string
		status                    int
		code                      codes.Code
		message                   string // error message, exactly
		want                      answer
	}{
		{name: "admin without project: ambiguous", token: apitest.AdminToken, key: "default",
			status: http.StatusBadRequest, code: codes.InvalidArgument, message: `project: key "default" exists in projects alpha, beta; pass one of them`},
		{name: "admin with project", token: apitest.AdminToken, key: "default", project: "beta",
			status: http.StatusOK, want: answer{Project: "beta", NewKeyID: "beta_v2", OldKeyRequests: "2", Verdict: "ROTATION_VERDICT_NOT_YET"}},
		{name: "alpha's reader without project: its own key", token: tokAlpha, key: "default",
			status: http.StatusOK, want: answer{Project: "alpha", NewKeyID: "alpha_v2", OldKeyRequests: "1", Verdict: "ROTATION_VERDICT_SAFE_TO_REVOKE"}},
		{name: "alpha's reader naming beta", token: tokAlpha, key: "default", project: "beta",
			status: http.StatusForbidden, code: codes.PermissionDenied, message: `not allowed to read project "beta"`},
		{name: "alpha's reader, a key only beta has: not found, beta not named", token: tokAlpha, key: "beta_only",
			status: http.StatusNotFound, code: codes.NotFound, message: `key "beta_only" is not known at `},
		{name: "alpha's reader naming alpha for a key only beta has", token: tokAlpha, key: "beta_only", project: "alpha",
			status: http.StatusNotFound, code: codes.NotFound, message: `key "beta_only" is not known at `},
		{name: "beta's reader without project", token: tokBeta, key: "default",
			status: http.StatusOK, want: answer{Project: "beta", NewKeyID: "beta_v2", OldKeyRequests: "2", Verdict: "ROTATION_VERDICT_NOT_YET"}},
		{name: "reader of both without project: ambiguous", token: tokAlphaBeta, key: "default",
			status: http.StatusBadRequest, code: codes.InvalidArgument, message: `project: key "default" exists in projects alpha, beta; pass one of them`},
		{name: "reader of both with project", token: tokAlphaBeta, key: "default", project: "alpha",
			status: http.StatusOK, want: answer{Project: "alpha", NewKeyID: "alpha_v2", OldKeyRequests: "1", Verdict: "ROTATION_VERDICT_SAFE_TO_REVOKE"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			params := url.Values{}
			if c.project != "" {
				params.Set("project", c.project)
			}
			status, body := srv.Get(t, "/v1/rotations/"+c.key, params, c.token)
			if status != c.status {
				t.Fatalf("HTTP %d, want %d: %s", status, c.status, body)
			}
			if status != http.StatusOK {
				var e struct {
					Code    int    `json:"code"`
					Message string `json:"message"`
				}
				if err := json.Unmarshal(body, &e); err != nil {
					t.Fatal(err)
				}
				if codes.Code(e.Code) != c.code || !strings.HasPrefix(e.Message, c.message) || (c.code == codes.NotFound && strings.Contains(e.Message, "beta\"")) {
					t.Errorf("got %d %q, want %d %q", e.Code, e.Message, c.code, c.message)
				}
				return
			}
			var got answer
			if err := json.Unmarshal(body, &got); err != nil {
				t.Fatal(err)
			}
			wantService := c.want.Project + "-app"
			if got.Project != c.want.Project || got.NewKeyID != c.want.NewKeyID || got.OldKeyRequests != c.want.OldKeyRequests || got.Verdict != c.want.Verdict ||
				len(got.Services) != 1 || got.Services[0].Service != wantService {
				t.Errorf("got %s, want %+v with the one service %s", body, c.want, wantService)
			}
		})
	}

	t.Run("gRPC: the same answers", func(t *testing.T) {
		_, err := srv.Client.GetRotation(context.Background(), &keytrailv1.GetRotationRequest{OldKeyId: "default"})
		wantGRPC(t, "admin without project", err, codes.InvalidArgument, `project: key "default" exists in projects alpha, beta; pass one of them`)
		resp, err := srv.Client.GetRotation(apitest.WithToken(context.Background(), tokAlpha), &keytrailv1.GetRotationRequest{OldKeyId: "default"})
		if err != nil || resp.GetProject() != "alpha" || resp.GetNewKeyId() != "alpha_v2" {
			t.Errorf("alpha's reader: %v %v", resp, err)
		}
	})
}

// TestRotationAcceptPendingIsRecorded: the accepted services are in the answer and in the
// query audit log's copy of the request, even when every other field is as long as allowed.
func TestRotationAcceptPendingIsRecorded(t *testing.T) {
	t.Parallel()
	db := testenv.ClickHouse(t)
	t0 := time.Now().UTC().Add(-2 * time.Hour).Truncate(time.Minute)
	long := func(prefix string) string { return prefix + strings.Repeat("x", 256-len(prefix)) }
	oldKey, newKey, project := long("old_"), long("new_"), long("proj_")
	var accepted []string
	for _, c := range "abcdefghij" {
		accepted = append(accepted, long("svc_"+string(c)+"_"))
	}
	testenv.Insert(t, db,
		&keytrailv1.LifecycleEvent{EventId: "rot", Time: timestamppb.New(t0), Project: project, KeyId: oldKey, NewKeyId: newKey,
			Action: keytrailv1.Action_ACTION_ROTATED, Actor: "alice", ActorType: keytrailv1.ActorType_ACTOR_TYPE_USER},
		&keytrailv1.UsageEvent{EventId: "u1", Time: timestamppb.New(t0.Add(time.Minute)), Project: project, KeyId: oldKey, Service: accepted[0], StatusCode: 200},
	)
	srv := apitest.Start(t, db, apitest.Options{})
	req := &keytrailv1.GetRotationRequest{
		OldKeyId: oldKey, Project: project, NewKeyId: newKey, AcceptPending: accepted,
		StartTime: timestamppb.New(t0), EndTime: timestamppb.New(t0.Add(time.Hour)),
	}
	resp, err := srv.Client.GetRotation(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetVerdict() != keytrailv1.RotationVerdict_ROTATION_VERDICT_SAFE_TO_REVOKE || len(resp.GetAcceptedPending()) != 1 || resp.GetAcceptedPending()[0] != accepted[0] ||
		len(resp.GetOldKeyCallers()) != 1 || resp.GetOldKeyCallers()[0].GetState() != keytrailv1.CallerState_CALLER_STATE_ACCEPTED {
		t.Errorf("verdict %v accepted %v callers %v", resp.GetVerdict(), resp.GetAcceptedPending(), resp.GetOldKeyCallers())
	}
	var record string
	for _, r := range srv.Records.All() {
		if r.Method == "/keytrail.v1.QueryService/GetRotation" {
			record = r.Request
		}
	}
	for _, name := range accepted {
		if !strings.Contains(record, name) {
			t.Errorf("the audit record lacks accepted service %.12s...: %d bytes recorded", name, len(record))
		}
	}

	// An eleventh is refused, naming the field.
	req.AcceptPending = append(req.AcceptPending, "one-too-many")
	_, err = srv.Client.GetRotation(context.Background(), req)
	wantGRPC(t, "11 accepted services", err, codes.InvalidArgument, "accept_pending")
}
