package chreader_test

import (
	"context"
	"errors"
	"reflect"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/internal/testenv"
	"github.com/keytrail/keytrail/query/chreader"
	"github.com/keytrail/keytrail/query/rotation"
)

// rotationEnd is the fixed "now" of the rotation tests.
var rotationEnd = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)

func ago(d time.Duration) time.Time { return rotationEnd.Add(-d) }

func use(id, key, service string, at time.Time, status uint32) *keytrailv1.UsageEvent {
	return &keytrailv1.UsageEvent{EventId: id, Time: timestamppb.New(at), Project: "acme", KeyId: key, Service: service, StatusCode: status}
}

func lifecycle(id, key string, action keytrailv1.Action, actor string, at time.Time) *keytrailv1.LifecycleEvent {
	return &keytrailv1.LifecycleEvent{EventId: id, Time: timestamppb.New(at), Project: "acme", KeyId: key, Action: action, Actor: actor, ActorType: keytrailv1.ActorType_ACTOR_TYPE_USER}
}

func rotated(at time.Time) *keytrailv1.LifecycleEvent {
	e := lifecycle("l-rot", "key_old", keytrailv1.Action_ACTION_ROTATED, "alice", at)
	e.NewKeyId = "key_new"
	return e
}

type serviceLine struct {
	Service           string
	Old, New          uint64
	OldLast, OldSucc  time.Time
	NewFirst, NewLast time.Time
	Migration         rotation.Migration
}

func lines(r chreader.RotationReport) []serviceLine {
	var out []serviceLine
	for _, s := range r.Services {
		out = append(out, serviceLine{s.Service, s.OldRequests, s.NewRequests, s.OldLastSeen, s.OldLastSuccess, s.NewFirstSeen, s.NewLastSeen, s.Migration})
	}
	return out
}

func TestRotationInProgressWithAServiceThatFlippedBack(t *testing.T) {
	db := testenv.ClickHouse(t)
	testenv.Insert(t, db,
		lifecycle("l-old", "key_old", keytrailv1.Action_ACTION_CREATED, "alice", ago(3*time.Hour)),
		lifecycle("l-new", "key_new", keytrailv1.Action_ACTION_CREATED, "alice", ago(2*time.Hour)),
		rotated(ago(2*time.Hour)),
		// billing moved: old key early, new key since.
		use("u1", "key_old", "billing", ago(110*time.Minute), 200),
		use("u2", "key_old", "billing", ago(100*time.Minute), 200),
		use("u3", "key_new", "billing", ago(90*time.Minute), 200),
		use("u4", "key_new", "billing", ago(30*time.Minute), 200),
		// search moved, then flipped back to the old key five minutes ago.
		use("u5", "key_old", "search", ago(100*time.Minute), 200),
		use("u6", "key_new", "search", ago(80*time.Minute), 200),
		use("u7", "key_old", "search", ago(5*time.Minute), 200),
		// reports never moved; its last request was an hour ago.
		use("u8", "key_old", "reports", ago(60*time.Minute), 200),
		// ingest only ever used the new key.
		use("u9", "key_new", "ingest", ago(50*time.Minute), 200),
		// Before the rotation: outside the default window.
		use("u0", "key_old", "billing", ago(150*time.Minute), 200),
	)
	rd := chreader.NewReader(db.Conn, func() time.Time { return rotationEnd })
	rep, err := rd.Rotation(context.Background(), chreader.RotationRequest{OldKey: "key_old"})
	if err != nil {
		t.Fatal(err)
	}
	if rep.NewKey != "key_new" || rep.Project != "acme" || !rep.RotatedAt.Equal(ago(2*time.Hour)) || rep.RotatedBy != "alice" || rep.OldKeyStatus != "active" {
		t.Errorf("header: %+v", rep)
	}
	if !rep.Window.Start.Equal(ago(2*time.Hour)) || !rep.Window.End.Equal(rotationEnd) || rep.Quiet != 15*time.Minute {
		t.Errorf("window %v quiet %v", rep.Window, rep.Quiet)
	}
	if rep.OldRequests != 5 || rep.NewRequests != 4 || rep.NewShare != 4.0/9.0 {
		t.Errorf("totals old %d new %d share %v", rep.OldRequests, rep.NewRequests, rep.NewShare)
	}
	want := []serviceLine{
		{"billing", 2, 2, ago(100 * time.Minute), ago(100 * time.Minute), ago(90 * time.Minute), ago(30 * time.Minute), rotation.Moved},
		{"ingest", 0, 1, time.Time{}, time.Time{}, ago(50 * time.Minute), ago(50 * time.Minute), rotation.Moved},
		{"reports", 1, 0, ago(60 * time.Minute), ago(60 * time.Minute), time.Time{}, time.Time{}, rotation.NotStarted},
		{"search", 2, 1, ago(5 * time.Minute), ago(5 * time.Minute), ago(80 * time.Minute), ago(80 * time.Minute), rotation.Mixed},
	}
	if got := lines(rep); !reflect.DeepEqual(got, want) {
		t.Errorf("services\n got %+v\nwant %+v", got, want)
	}
	if rep.Verdict != rotation.NotYet || !reflect.DeepEqual(rep.ServicesToChase, []string{"reports", "search"}) ||
		!reflect.DeepEqual(rep.ServicesNotOnNewKey, []string{"reports"}) || !rep.OldLastSuccess.Equal(ago(5*time.Minute)) {
		t.Errorf("verdict %v chase %v not-on-new %v last success %v", rep.Verdict, rep.ServicesToChase, rep.ServicesNotOnNewKey, rep.OldLastSuccess)
	}
	wantReasons := []string{
		"key_old served 1 requests to 1 services in the last 15m0s, the last success at 2026-11-01T11:55:00Z: search",
		"still using both keys within the quiet period: search",
		"never used key_new in the window: reports",
	}
	if !reflect.DeepEqual(rep.Reasons, wantReasons) {
		t.Errorf("reasons\n got %q\nwant %q", rep.Reasons, wantReasons)
	}
	// 120 minutes in at most 60 buckets: 2-minute buckets, and they add up to the totals.
	if rep.Bucket != 2*time.Minute || len(rep.Series) != 60 || !rep.Series[0].Start.Equal(ago(2*time.Hour)) {
		t.Fatalf("series: width %v, %d buckets", rep.Bucket, len(rep.Series))
	}
	var oldSum, newSum uint64
	for _, b := range rep.Series {
		oldSum += b.OldRequests
		newSum += b.NewRequests
	}
	if oldSum != 5 || newSum != 4 || rep.Series[57].OldRequests != 1 || rep.Series[5].OldRequests != 1 {
		t.Errorf("series sums old %d new %d; bucket 57 %+v bucket 5 %+v", oldSum, newSum, rep.Series[57], rep.Series[5])
	}
}

func TestRotationSafeWhileAForgottenJobFailsOnTheDisabledKey(t *testing.T) {
	db := testenv.ClickHouse(t)
	testenv.Insert(t, db,
		rotated(ago(2*time.Hour)),
		lifecycle("l-dis", "key_old", keytrailv1.Action_ACTION_DISABLED, "bob", ago(30*time.Minute)),
		use("u1", "key_old", "billing", ago(100*time.Minute), 200),
		use("u2", "key_new", "billing", ago(90*time.Minute), 200),
		use("u3", "key_new", "billing", ago(20*time.Minute), 200),
		use("u4", "key_old", "nightly-report-cron", ago(60*time.Minute), 200),
		use("u5", "key_old", "nightly-report-cron", ago(25*time.Minute), 401),
		use("u6", "key_old", "nightly-report-cron", ago(10*time.Minute), 401),
	)
	rd := chreader.NewReader(db.Conn, func() time.Time { return rotationEnd })
	rep, err := rd.Rotation(context.Background(), chreader.RotationRequest{OldKey: "key_old", NewKey: "key_new"})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Verdict != rotation.SafeToRevoke || rep.OldKeyStatus != "disabled" || !rep.OldKeyRevokedAt.Equal(ago(30*time.Minute)) {
		t.Errorf("verdict %v status %s revoked %v", rep.Verdict, rep.OldKeyStatus, rep.OldKeyRevokedAt)
	}
	wantAfter := []chreader.AfterRevocation{{Service: "nightly-report-cron", StatusCode: 401, Requests: 2, FirstSeen: ago(25 * time.Minute), LastSeen: ago(10 * time.Minute)}}
	if !reflect.DeepEqual(rep.AfterRevocation, wantAfter) {
		t.Errorf("after revocation %+v", rep.AfterRevocation)
	}
	wantReasons := []string{
		"no successful request on key_old since 2026-11-01T11:45:00Z (quiet period 15m0s)",
		"never used key_new in the window: nightly-report-cron",
		"2 requests reached key_old after it was disabled at 2026-11-01T11:30:00Z (see requests_after_revocation)",
	}
	if !reflect.DeepEqual(rep.Reasons, wantReasons) || !reflect.DeepEqual(rep.ServicesToChase, []string{"nightly-report-cron"}) {
		t.Errorf("reasons %q chase %v", rep.Reasons, rep.ServicesToChase)
	}
	// A 70-minute quiet period reaches the cron job's last success: not yet.
	rep, err = rd.Rotation(context.Background(), chreader.RotationRequest{OldKey: "key_old", Quiet: 70 * time.Minute})
	if err != nil || rep.Verdict != rotation.NotYet {
		t.Errorf("70m quiet: %v %v", rep.Verdict, err)
	}
}

func TestRotationWithoutRotationEventNeedsTheNewKey(t *testing.T) {
	db := testenv.ClickHouse(t)
	rd := chreader.NewReader(db.Conn, func() time.Time { return rotationEnd })
	_, err := rd.Rotation(context.Background(), chreader.RotationRequest{OldKey: "key_lonely"})
	var inv *chreader.InvalidError
	if !errors.As(err, &inv) || inv.Field != "new_key_id" {
		t.Fatalf("got %v, want an InvalidError naming new_key_id", err)
	}
}
