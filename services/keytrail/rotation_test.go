package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/internal/testenv"
)

func exitCode(err error) int {
	if err == nil {
		return exitSafe
	}
	var coded *exitCodeError
	if errors.As(err, &coded) {
		return coded.code
	}
	return -1
}

func TestRotationCheckCLI(t *testing.T) {
	db := testenv.ClickHouse(t)
	m := startKeytrail(t, db)
	now := time.Now().UTC()
	at := func(d time.Duration) *timestamppb.Timestamp { return timestamppb.New(now.Add(-d)) }
	use := func(id, key, service string, d time.Duration, status uint32) *keytrailv1.UsageEvent {
		return &keytrailv1.UsageEvent{EventId: id, Time: at(d), Project: "acme", KeyId: key, Service: service, StatusCode: status}
	}
	testenv.Insert(t, db,
		&keytrailv1.LifecycleEvent{EventId: "rot", Time: at(2 * time.Hour), Project: "acme", KeyId: "key_old", NewKeyId: "key_new",
			Action: keytrailv1.Action_ACTION_ROTATED, Actor: "alice", ActorType: keytrailv1.ActorType_ACTOR_TYPE_USER},
		use("u1", "key_old", "billing", 100*time.Minute, 200),
		use("u2", "key_new", "billing", 90*time.Minute, 200),
		use("u3", "key_old", "search", 5*time.Minute, 200),
	)

	t.Run("not yet: table and exit 3", func(t *testing.T) {
		var out bytes.Buffer
		err := run(context.Background(), []string{"rotation", "check", "-addr", m.GRPCAddr, "-token", m.AdminToken, "-old", "key_old"}, &out)
		if exitCode(err) != exitNotYet {
			t.Fatalf("exit %d (%v), want %d\n%s", exitCode(err), err, exitNotYet, out.String())
		}
		text := out.String()
		t.Log("\n" + text)
		for _, want := range []string{
			"Rotation key_old -> key_new (project acme)",
			"New key:     33.3% of requests (1 new, 2 old)",
			"Verdict: NOT_YET",
			"Chase: search",
		} {
			if !strings.Contains(text, want) {
				t.Errorf("output lacks %q:\n%s", want, text)
			}
		}
		if !regexpLine(text, `^billing +1 +1 .* moved$`) || !regexpLine(text, `^search +1 +0 .* not started$`) {
			t.Errorf("service lines wrong:\n%s", text)
		}
	})

	t.Run("json for scripts", func(t *testing.T) {
		var out bytes.Buffer
		err := run(context.Background(), []string{"rotation", "check", "-addr", m.GRPCAddr, "-token", m.AdminToken, "-old", "key_old", "-json"}, &out)
		if exitCode(err) != exitNotYet {
			t.Fatalf("exit %d: %v", exitCode(err), err)
		}
		var resp struct {
			Verdict         string   `json:"verdict"`
			ServicesToChase []string `json:"services_to_chase"`
			NewKeyID        string   `json:"new_key_id"`
		}
		if err := json.Unmarshal(out.Bytes(), &resp); err != nil {
			t.Fatalf("%v: %s", err, out.String())
		}
		if resp.Verdict != "ROTATION_VERDICT_NOT_YET" || resp.NewKeyID != "key_new" || strings.Join(resp.ServicesToChase, ",") != "search" {
			t.Errorf("json %+v", resp)
		}
	})

	t.Run("safe with a short quiet period: exit 0", func(t *testing.T) {
		var out bytes.Buffer
		err := run(context.Background(), []string{"rotation", "check", "-addr", m.GRPCAddr, "-token", m.AdminToken, "-old", "key_old", "-quiet", "2m"}, &out)
		if exitCode(err) != exitSafe || !strings.Contains(out.String(), "Verdict: SAFE_TO_REVOKE") {
			t.Fatalf("exit %d (%v)\n%s", exitCode(err), err, out.String())
		}
	})

	t.Run("wait gives up after its timeout with exit 3", func(t *testing.T) {
		// The timeout leaves room for several checks even when one takes a second on a
		// loaded CI machine (350 ms did not).
		var out bytes.Buffer
		err := run(context.Background(), []string{"rotation", "check", "-addr", m.GRPCAddr, "-token", m.AdminToken, "-old", "key_old", "-wait", "-interval", "200ms", "-timeout", "2s"}, &out)
		if exitCode(err) != exitNotYet {
			t.Fatalf("exit %d (%v)", exitCode(err), err)
		}
		if n := strings.Count(out.String(), "% on the new key, NOT_YET; chase: search"); n < 2 {
			t.Errorf("want at least 2 progress lines, got %d:\n%s", n, out.String())
		}
	})

	t.Run("errors and usage", func(t *testing.T) {
		var out bytes.Buffer
		if code := exitCode(run(context.Background(), []string{"rotation", "check"}, &out)); code != exitUsage {
			t.Errorf("missing --old: exit %d", code)
		}
		if code := exitCode(run(context.Background(), []string{"rotation", "check", "-addr", m.GRPCAddr, "-token", m.AdminToken, "-old", "key_without_rotation"}, &out)); code != exitError {
			t.Errorf("unknown rotation: exit %d", code)
		}
	})
}
