package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
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
	t.Parallel()
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

	t.Run("a short quiet period is not enough while search has not moved", func(t *testing.T) {
		var out bytes.Buffer
		err := run(context.Background(), []string{"rotation", "check", "-addr", m.GRPCAddr, "-token", m.AdminToken, "-old", "key_old", "-quiet", "2m"}, &out)
		if exitCode(err) != exitNotYet || !strings.Contains(out.String(), "Verdict: NOT_YET") {
			t.Fatalf("exit %d (%v)\n%s", exitCode(err), err, out.String())
		}
	})

	t.Run("accepting search: exit 0", func(t *testing.T) {
		var out bytes.Buffer
		err := run(context.Background(), []string{"rotation", "check", "-addr", m.GRPCAddr, "-token", m.AdminToken, "-old", "key_old", "-quiet", "2m", "-accept-pending", "search"}, &out)
		if exitCode(err) != exitSafe || !strings.Contains(out.String(), "Verdict: SAFE_TO_REVOKE") || !strings.Contains(out.String(), "Accepted: search") {
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
		if code := exitCode(run(context.Background(), []string{"rotation", "check", "-old", "key_old", "-accept-pending", ""}, &out)); code != exitUsage {
			t.Errorf("empty --accept-pending: exit %d", code)
		}
		if code := exitCode(run(context.Background(), []string{"rotation", "check", "-old", "key_old", "-lookback", "0s"}, &out)); code != exitUsage {
			t.Errorf("--lookback 0s: exit %d", code)
		}
	})
}

// verdictBlock is the output from the verdict line on, one line each.
func verdictBlock(out string) []string {
	_, block, _ := strings.Cut(out, "\nVerdict: ")
	return strings.Split(strings.TrimRight("Verdict: "+block, "\n"), "\n")
}

// TestRotationCheckWaitsForEachCallersRhythm runs the CLI against keytrail over events
// stored through the real schema: callers that run hourly, daily and irregularly, each
// judged from its history on the old key over the lookback before the rotation.
func TestRotationCheckWaitsForEachCallersRhythm(t *testing.T) {
	t.Parallel()
	db := testenv.ClickHouse(t)
	m := startKeytrail(t, db)
	now := time.Now().UTC().Truncate(time.Second)
	rotatedAt := now.Add(-2 * time.Hour)
	const day = 24 * time.Hour
	lookbackStart := rotatedAt.Add(-7 * day).Format(time.RFC3339)
	stamp := func(at time.Time) string { return at.Format(time.RFC3339) }
	var events []any
	rotate := func(old, new string) {
		events = append(events, &keytrailv1.LifecycleEvent{EventId: "rot-" + old, Time: timestamppb.New(rotatedAt), Project: "acme", KeyId: old, NewKeyId: new,
			Action: keytrailv1.Action_ACTION_ROTATED, Actor: "alice", ActorType: keytrailv1.ActorType_ACTOR_TYPE_USER})
	}
	call := func(key, service string, at time.Time) {
		events = append(events, &keytrailv1.UsageEvent{EventId: fmt.Sprintf("%s-%s-%d", key, service, at.Unix()), Time: timestamppb.New(at), Project: "acme", KeyId: key, Service: service, StatusCode: 200})
	}
	// Hourly, last run 20 minutes ago: 170 runs since the lookback start (170 h back).
	rotate("key_hourly", "key_hourly_v2")
	for k := range 172 {
		call("key_hourly", "hourly-sync", now.Add(-20*time.Minute-time.Duration(k)*time.Hour))
	}
	// Hourly, but it stopped 2.5 hours ago, before the rotation: only the lookback sees it.
	rotate("key_stopped", "key_stopped_v2")
	for k := range 172 {
		call("key_stopped", "hourly-export", now.Add(-150*time.Minute-time.Duration(k)*time.Hour))
	}
	// Nightly, last run 55 minutes ago (the default quiet period is 15 minutes).
	rotate("key_daily", "key_daily_v2")
	for d := range 9 {
		call("key_daily", "nightly-job", now.Add(-55*time.Minute-time.Duration(d)*day))
	}
	call("key_daily", "billing", now.Add(-3*time.Hour))
	call("key_daily_v2", "billing", now.Add(-90*time.Minute))
	// Irregular: gaps of 4 h, 2d20h and 2d2h; last call 26 hours ago.
	rotate("key_adhoc", "key_adhoc_v2")
	for _, ago := range []time.Duration{6 * day, 5*day + 20*time.Hour, 3 * day, 26 * time.Hour} {
		call("key_adhoc", "adhoc-report", now.Add(-ago))
	}
	// key_shared exists in acme and in globex.
	rotate("key_shared", "key_shared_v2")
	call("key_shared_v2", "billing", now.Add(-time.Hour))
	events = append(events, &keytrailv1.UsageEvent{EventId: "globex-shared", Time: timestamppb.New(now.Add(-time.Hour)), Project: "globex", KeyId: "key_shared", Service: "globex-app", StatusCode: 200})
	testenv.Insert(t, db, events...)

	check := func(t *testing.T, wantExit int, wantBlock []string, args ...string) string {
		t.Helper()
		var out bytes.Buffer
		err := run(context.Background(), append([]string{"rotation", "check", "-addr", m.GRPCAddr, "-token", m.AdminToken}, args...), &out)
		if code := exitCode(err); code != wantExit {
			t.Errorf("exit %d (%v), want %d", code, err, wantExit)
		}
		if got := verdictBlock(out.String()); !reflect.DeepEqual(got, wantBlock) {
			t.Errorf("verdict block\n got %q\nwant %q\n%s", got, wantBlock, out.String())
		}
		return out.String()
	}

	t.Run("hourly caller inside its next run: NOT_YET, exit 3", func(t *testing.T) {
		last := now.Add(-20 * time.Minute)
		out := check(t, exitNotYet, []string{
			"Verdict: NOT_YET",
			"  - hourly-sync has not moved to key_hourly_v2: calls key_hourly about every 1h (the largest gap over 170 runs since " + lookbackStart + "), last success " + stamp(last) + "; expected again by " + stamp(last.Add(75*time.Minute)),
			"  - never used key_hourly_v2 in the window: hourly-sync",
			"Chase: hourly-sync",
		}, "-old", "key_hourly")
		if !regexpLine(out, `^hourly-sync +pending +170 +1h +`) {
			t.Errorf("callers table:\n%s", out)
		}
	})

	t.Run("hourly caller that stopped before the rotation: named, overdue, exit 0", func(t *testing.T) {
		last := now.Add(-150 * time.Minute)
		out := check(t, exitSafe, []string{
			"Verdict: SAFE_TO_REVOKE",
			"  - no successful request on key_stopped in the 15m0s before the window end",
			"  - hourly-export has not moved to key_stopped_v2: calls key_stopped about every 1h (the largest gap over 168 runs since " + lookbackStart + "), last success " + stamp(last) + "; expected again by " + stamp(last.Add(75*time.Minute)) + " but not seen since, so taken as no longer calling",
		}, "-old", "key_stopped")
		if !regexpLine(out, `^hourly-export +overdue +168 +1h `) {
			t.Errorf("callers table:\n%s", out)
		}
	})

	dailyPending := "nightly-job has not moved to key_daily_v2: calls key_daily about every 24h (the largest gap over 8 runs since " + lookbackStart + "), last success " +
		stamp(now.Add(-55*time.Minute)) + "; expected again by " + stamp(now.Add(-55*time.Minute+day+15*time.Minute))

	t.Run("nightly job that ran 55 minutes ago: NOT_YET, exit 3", func(t *testing.T) {
		check(t, exitNotYet, []string{
			"Verdict: NOT_YET",
			"  - " + dailyPending,
			"  - never used key_daily_v2 in the window: nightly-job",
			"Chase: nightly-job",
		}, "-old", "key_daily")
	})

	t.Run("the operator accepts the nightly job: exit 0, in the answer and the query audit log", func(t *testing.T) {
		check(t, exitSafe, []string{
			"Verdict: SAFE_TO_REVOKE",
			"  - no successful request on key_daily in the 15m0s before the window end",
			"  - accepted by the caller (accept_pending): " + dailyPending,
			"  - never used key_daily_v2 in the window: nightly-job",
			"Accepted: nightly-job",
		}, "-old", "key_daily", "-accept-pending", "nightly-job")
		testenv.Eventually(t, 15*time.Second, func() error {
			n := testenv.QueryUint64(t, db.Conn, `SELECT count() FROM query_audit_log
WHERE method = '/keytrail.v1.QueryService/GetRotation' AND code = 'OK' AND position(request, 'nightly-job') > 0 AND position(request, 'key_daily') > 0`)
			if n != 1 {
				return fmt.Errorf("%d audit records name the accepted service", n)
			}
			return nil
		})
	})

	t.Run("irregular caller: the largest gap sets the rhythm, exit 3", func(t *testing.T) {
		last := now.Add(-26 * time.Hour)
		check(t, exitNotYet, []string{
			"Verdict: NOT_YET",
			"  - adhoc-report has not moved to key_adhoc_v2: calls key_adhoc about every 2d20h (the largest gap over 4 runs since " + lookbackStart + "), last success " + stamp(last) + "; expected again by " + stamp(last.Add(2*day+20*time.Hour+15*time.Minute)),
			"Chase: adhoc-report",
		}, "-old", "key_adhoc")
	})

	t.Run("a shorter lookback sees the irregular caller once: it gets the whole lookback", func(t *testing.T) {
		last := now.Add(-26 * time.Hour)
		start := rotatedAt.Add(-30 * time.Hour)
		check(t, exitNotYet, []string{
			"Verdict: NOT_YET",
			"  - adhoc-report has not moved to key_adhoc_v2: called key_adhoc in one run since " + stamp(start) + ", last success " + stamp(last) + "; no rhythm to learn, so it is given the whole lookback (30h); expected again by " + stamp(last.Add(30*time.Hour+15*time.Minute)),
			"Chase: adhoc-report",
		}, "-old", "key_adhoc", "-lookback", "30h")
	})

	t.Run("a key id in two projects needs --project", func(t *testing.T) {
		var out bytes.Buffer
		err := run(context.Background(), []string{"rotation", "check", "-addr", m.GRPCAddr, "-token", m.AdminToken, "-old", "key_shared"}, &out)
		if exitCode(err) != exitError || !strings.Contains(err.Error(), `project: key "key_shared" exists in projects acme, globex; pass one of them`) {
			t.Errorf("without --project: exit %d (%v)", exitCode(err), err)
		}
		out.Reset()
		err = run(context.Background(), []string{"rotation", "check", "-addr", m.GRPCAddr, "-token", m.AdminToken, "-old", "key_shared", "-project", "acme"}, &out)
		if exitCode(err) != exitSafe || !strings.Contains(out.String(), "Rotation key_shared -> key_shared_v2 (project acme)") || strings.Contains(out.String(), "globex-app") {
			t.Errorf("--project acme: exit %d (%v)\n%s", exitCode(err), err, out.String())
		}
	})
}
