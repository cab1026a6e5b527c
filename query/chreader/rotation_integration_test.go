package chreader_test

import (
	"context"
	"errors"
	"fmt"
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

type callerLine struct {
	Service        string
	State          rotation.CallerState
	Requests       uint64
	LastSuccess    time.Time
	Runs           int
	Rhythm         time.Duration
	ExpectedBy     time.Time
	NewLastSuccess time.Time
}

func callerLines(r chreader.RotationReport) []callerLine {
	var out []callerLine
	for _, c := range r.Callers {
		out = append(out, callerLine{c.Service, c.State, c.Requests, c.LastSuccess, c.Runs, c.Rhythm, c.ExpectedBy, c.NewLastSuccess})
	}
	return out
}

func TestRotationInProgressWithAServiceThatFlippedBack(t *testing.T) {
	t.Parallel()
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
		"key_old served successful requests to 1 services in the 15m0s before the window end, the last at 2026-11-01T11:55:00Z: search",
		"reports has not moved to key_new: called key_old in one run since 2026-10-25T10:00:00Z, last success 2026-11-01T11:00:00Z; no rhythm to learn, so it is given the whole lookback (7d); expected again by 2026-11-08T11:15:00Z",
		"search has not moved to key_new: calls key_old about every 1h35m (the largest gap over 2 runs since 2026-10-25T10:00:00Z), last success 2026-11-01T11:55:00Z; expected again by 2026-11-01T13:45:00Z",
		"still using both keys within the quiet period: search",
		"never used key_new in the window: reports",
	}
	if !reflect.DeepEqual(rep.Reasons, wantReasons) {
		t.Errorf("reasons\n got %q\nwant %q", rep.Reasons, wantReasons)
	}
	// The history reaches the lookback before the rotation: billing's use at -150m counts.
	wantCallers := []callerLine{
		{"billing", rotation.CallerMoved, 3, ago(100 * time.Minute), 2, 0, time.Time{}, ago(30 * time.Minute)},
		{"reports", rotation.CallerPending, 1, ago(60 * time.Minute), 1, 0, ago(60*time.Minute - 7*24*time.Hour - 15*time.Minute), time.Time{}},
		{"search", rotation.CallerPending, 2, ago(5 * time.Minute), 2, 95 * time.Minute, ago(-105 * time.Minute), ago(80 * time.Minute)},
	}
	if got := callerLines(rep); !reflect.DeepEqual(got, wantCallers) || !rep.HistoryStart.Equal(ago(2*time.Hour+7*24*time.Hour)) {
		t.Errorf("callers since %v\n got %+v\nwant %+v", rep.HistoryStart, got, wantCallers)
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
	t.Parallel()
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
	// The cron job succeeded before the key was disabled and failed since: the key already
	// does not work for it, so it does not block, but it is to chase.
	wantReasons := []string{
		"no successful request on key_old in the 15m0s before the window end",
		"nightly-report-cron: its requests on key_old since it was disabled at 2026-11-01T11:30:00Z failed (the last at 2026-11-01T11:50:00Z, the last success at 2026-11-01T11:00:00Z); revoking changes nothing for it",
		"never used key_new in the window: nightly-report-cron",
		"2 requests reached key_old in the window after it was disabled at 2026-11-01T11:30:00Z (see requests_after_revocation)",
	}
	if !reflect.DeepEqual(rep.Reasons, wantReasons) || !reflect.DeepEqual(rep.ServicesToChase, []string{"nightly-report-cron"}) {
		t.Errorf("reasons %q chase %v", rep.Reasons, rep.ServicesToChase)
	}
	wantCallers := []callerLine{
		{"billing", rotation.CallerMoved, 1, ago(100 * time.Minute), 1, 0, time.Time{}, ago(20 * time.Minute)},
		{"nightly-report-cron", rotation.CallerFailing, 3, ago(60 * time.Minute), 1, 0, time.Time{}, time.Time{}},
	}
	if got := callerLines(rep); !reflect.DeepEqual(got, wantCallers) {
		t.Errorf("callers\n got %+v\nwant %+v", got, wantCallers)
	}
	// A 70-minute quiet period reaches the cron job's last success: not yet.
	rep, err = rd.Rotation(context.Background(), chreader.RotationRequest{OldKey: "key_old", Quiet: 70 * time.Minute})
	if err != nil || rep.Verdict != rotation.NotYet {
		t.Errorf("70m quiet: %v %v", rep.Verdict, err)
	}
}

func TestRotationWithoutRotationEventNeedsTheNewKey(t *testing.T) {
	t.Parallel()
	db := testenv.ClickHouse(t)
	testenv.Insert(t, db, use("u1", "key_lonely", "billing", ago(time.Hour), 200))
	rd := chreader.NewReader(db.Conn, func() time.Time { return rotationEnd })
	_, err := rd.Rotation(context.Background(), chreader.RotationRequest{OldKey: "key_lonely"})
	var inv *chreader.InvalidError
	if !errors.As(err, &inv) || inv.Field != "new_key_id" {
		t.Fatalf("got %v, want an InvalidError naming new_key_id", err)
	}
	// A key id nothing is known about is not found, even with a new key: a typo in a
	// rotation script must not come back SAFE_TO_REVOKE.
	_, err = rd.Rotation(context.Background(), chreader.RotationRequest{OldKey: "key_typo", NewKey: "key_lonely"})
	var nf *chreader.KeyNotFoundError
	if !errors.As(err, &nf) || nf.KeyID != "key_typo" {
		t.Fatalf("got %v, want a KeyNotFoundError for key_typo", err)
	}
}

func TestRotationListsHonourTheWindow(t *testing.T) {
	t.Parallel()
	db := testenv.ClickHouse(t)
	testenv.Insert(t, db,
		rotated(ago(2*time.Hour)),
		lifecycle("l-dis", "key_old", keytrailv1.Action_ACTION_DISABLED, "bob", ago(60*time.Minute)),
		// early still succeeded after the disable (a gateway's cache), before start_time.
		use("u1", "key_old", "early", ago(20*time.Minute), 200),
		use("u2", "key_new", "billing", ago(5*time.Minute), 200),
		use("u3", "key_old", "cron", ago(50*time.Minute), 401),
		use("u4", "key_old", "cron", ago(5*time.Minute), 401),
	)
	rd := chreader.NewReader(db.Conn, func() time.Time { return rotationEnd })

	t.Run("a quiet period reaching before start_time lists nothing from before it, but the verdict sees it", func(t *testing.T) {
		rep, err := rd.Rotation(context.Background(), chreader.RotationRequest{OldKey: "key_old", Start: ago(10 * time.Minute), Quiet: 30 * time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		want := []serviceLine{
			{"billing", 0, 1, time.Time{}, time.Time{}, ago(5 * time.Minute), ago(5 * time.Minute), rotation.Moved},
			{"cron", 1, 0, ago(5 * time.Minute), time.Time{}, time.Time{}, time.Time{}, rotation.NotStarted},
		}
		if got := lines(rep); !reflect.DeepEqual(got, want) {
			t.Errorf("services\n got %+v\nwant %+v", got, want)
		}
		if rep.OldRequests != 1 || rep.NewRequests != 1 || !rep.OldLastSuccess.IsZero() || !reflect.DeepEqual(rep.ServicesNotOnNewKey, []string{"cron"}) {
			t.Errorf("totals old %d new %d, last success %v, not on new %v", rep.OldRequests, rep.NewRequests, rep.OldLastSuccess, rep.ServicesNotOnNewKey)
		}
		if rep.Verdict != rotation.NotYet || len(rep.Reasons) == 0 ||
			rep.Reasons[0] != "key_old served successful requests to 1 services in the 30m0s before the window end, the last at 2026-11-01T11:40:00Z: early" {
			t.Errorf("verdict %v reasons %q", rep.Verdict, rep.Reasons)
		}
		wantAfter := []chreader.AfterRevocation{{Service: "cron", StatusCode: 401, Requests: 1, FirstSeen: ago(5 * time.Minute), LastSeen: ago(5 * time.Minute)}}
		if !reflect.DeepEqual(rep.AfterRevocation, wantAfter) {
			t.Errorf("after revocation %+v", rep.AfterRevocation)
		}
	})

	t.Run("requests after revocation start at start_time when it is later", func(t *testing.T) {
		rep, err := rd.Rotation(context.Background(), chreader.RotationRequest{OldKey: "key_old", Start: ago(30 * time.Minute)})
		if err != nil {
			t.Fatal(err)
		}
		wantAfter := []chreader.AfterRevocation{
			{Service: "cron", StatusCode: 401, Requests: 1, FirstSeen: ago(5 * time.Minute), LastSeen: ago(5 * time.Minute)},
			{Service: "early", StatusCode: 200, Requests: 1, FirstSeen: ago(20 * time.Minute), LastSeen: ago(20 * time.Minute)},
		}
		if !reflect.DeepEqual(rep.AfterRevocation, wantAfter) {
			t.Errorf("after revocation %+v", rep.AfterRevocation)
		}
		if n := len(rep.Reasons); n == 0 || rep.Reasons[n-1] != "2 requests reached key_old in the window after it was disabled at 2026-11-01T11:00:00Z (see requests_after_revocation)" {
			t.Errorf("reasons %q", rep.Reasons)
		}
		// Without start_time the window starts at the rotation, before the revocation.
		rep, err = rd.Rotation(context.Background(), chreader.RotationRequest{OldKey: "key_old"})
		if err != nil || len(rep.AfterRevocation) != 2 || rep.AfterRevocation[0].Requests != 2 || !rep.AfterRevocation[0].FirstSeen.Equal(ago(50*time.Minute)) {
			t.Errorf("default window: %+v %v", rep.AfterRevocation, err)
		}
	})
}

func TestRotationLearnsEachCallersRhythm(t *testing.T) {
	t.Parallel()
	db := testenv.ClickHouse(t)
	events := []any{rotated(ago(2 * time.Hour))}
	n := 0
	add := func(service string, at time.Time, status uint32) {
		n++
		events = append(events, use(fmt.Sprint("u", n), "key_old", service, at, status))
	}
	// hourly: on the hour for eight days, each run a success and a failure 20 s later; the
	// last run at 12:00:10, in the partial minute the window ends in (read from the raw rows).
	for k := 1; k <= 8*24; k++ {
		add("hourly", ago(time.Duration(k)*time.Hour), 200)
		add("hourly", ago(time.Duration(k)*time.Hour-20*time.Second), 500)
	}
	add("hourly", rotationEnd.Add(10*time.Second), 200)
	// burst: five consecutive minutes three days ago, one run.
	for m := range 5 {
		add("burst", ago(72*time.Hour-time.Duration(m)*time.Minute), 200)
	}
	// daily: 03:00 every day until two days ago; missed its last two runs. The history
	// starts 7 days before the rotation (2026-10-25T10:00:00Z): five of its runs are in it.
	for d := 2; d <= 8; d++ {
		add("daily", ago(time.Duration(d)*24*time.Hour+9*time.Hour), 200)
	}
	// broken: only failures.
	add("broken", ago(3*time.Hour), 401)
	add("broken", ago(time.Hour), 401)
	testenv.Insert(t, db, events...)
	// A second insert: daily's last minute now has a cell in another part (unmerged), which
	// must not add a run or change its rhythm.
	testenv.Insert(t, db, use("u-again", "key_old", "daily", ago(57*time.Hour-20*time.Second), 200))

	rd := chreader.NewReader(db.Conn, func() time.Time { return rotationEnd })
	end := rotationEnd.Add(30 * time.Second)
	rep, err := rd.Rotation(context.Background(), chreader.RotationRequest{OldKey: "key_old", End: end})
	if err != nil {
		t.Fatal(err)
	}
	// hourly: 170 runs from 2026-10-25T10:00:00Z on and the one at 12:00:10, whose gap to
	// the one before is 1h0m10s.
	want := []callerLine{
		{"broken", rotation.CallerFailing, 2, time.Time{}, 0, 0, time.Time{}, time.Time{}},
		{"burst", rotation.CallerPending, 5, ago(72*time.Hour - 4*time.Minute), 1, 0, ago(72*time.Hour - 4*time.Minute - 7*24*time.Hour - 15*time.Minute), time.Time{}},
		{"daily", rotation.CallerOverdue, 6, ago(57*time.Hour - 20*time.Second), 5, 24 * time.Hour, ago(57*time.Hour - 20*time.Second - 24*time.Hour - 15*time.Minute), time.Time{}},
		{"hourly", rotation.CallerPending, 341, rotationEnd.Add(10 * time.Second), 171, time.Hour + 10*time.Second, rotationEnd.Add(10*time.Second + time.Hour + 10*time.Second + 15*time.Minute), time.Time{}},
	}
	if got := callerLines(rep); !reflect.DeepEqual(got, want) {
		t.Errorf("callers\n got %+v\nwant %+v", got, want)
	}
	if rep.Verdict != rotation.NotYet || !reflect.DeepEqual(rep.ServicesToChase, []string{"broken", "burst", "hourly"}) {
		t.Errorf("verdict %v chase %v", rep.Verdict, rep.ServicesToChase)
	}
}

func TestRotationKeyIsProjectAndKeyID(t *testing.T) {
	t.Parallel()
	db := testenv.ClickHouse(t)
	in := func(project string, e interface{ GetProject() string }) any {
		switch e := e.(type) {
		case *keytrailv1.UsageEvent:
			e.Project = project
		case *keytrailv1.LifecycleEvent:
			e.Project = project
		}
		return e
	}
	rotTo := func(id, project, newKey string) any {
		e := lifecycle(id, "default", keytrailv1.Action_ACTION_ROTATED, "alice", ago(2*time.Hour))
		e.NewKeyId = newKey
		return in(project, e)
	}
	testenv.Insert(t, db,
		rotTo("r-alpha", "alpha", "alpha_v2"),
		in("alpha", use("a1", "default", "alpha-app", ago(100*time.Minute), 200)),
		in("alpha", use("a2", "alpha_v2", "alpha-app", ago(90*time.Minute), 200)),
		rotTo("r-beta", "beta", "beta_v2"),
		in("beta", use("b1", "default", "beta-app", ago(10*time.Minute), 200)),
		in("beta", use("b2", "default", "beta-app", ago(5*time.Minute), 200)),
		// gamma knows the key only from a request.
		in("gamma", use("g1", "default", "gamma-app", ago(3*time.Hour), 200)),
	)
	rd := chreader.NewReader(db.Conn, func() time.Time { return rotationEnd })
	ctx := context.Background()

	_, err := rd.Rotation(ctx, chreader.RotationRequest{OldKey: "default"})
	var inv *chreader.InvalidError
	if !errors.As(err, &inv) || inv.Error() != `project: key "default" exists in projects alpha, beta, gamma; pass one of them` {
		t.Errorf("no project: %v", err)
	}
	_, err = rd.Rotation(ctx, chreader.RotationRequest{OldKey: "default", Projects: []string{"alpha", "beta"}})
	if !errors.As(err, &inv) || inv.Error() != `project: key "default" exists in projects alpha, beta; pass one of them` {
		t.Errorf("readable alpha and beta: %v", err)
	}
	for _, req := range []chreader.RotationRequest{
		{OldKey: "default", Project: "alpha"},
		{OldKey: "default", Projects: []string{"alpha", "delta"}},
	} {
		rep, err := rd.Rotation(ctx, req)
		if err != nil {
			t.Fatalf("%+v: %v", req, err)
		}
		want := []serviceLine{{"alpha-app", 1, 1, ago(100 * time.Minute), ago(100 * time.Minute), ago(90 * time.Minute), ago(90 * time.Minute), rotation.Moved}}
		if rep.Project != "alpha" || rep.NewKey != "alpha_v2" || rep.Verdict != rotation.SafeToRevoke || !reflect.DeepEqual(lines(rep), want) ||
			len(rep.Callers) != 1 || rep.Callers[0].State != rotation.CallerMoved {
			t.Errorf("%+v: project %s new %s verdict %v services %+v callers %+v", req, rep.Project, rep.NewKey, rep.Verdict, lines(rep), rep.Callers)
		}
	}
	rep, err := rd.Rotation(ctx, chreader.RotationRequest{OldKey: "default", Project: "beta"})
	if err != nil || rep.Project != "beta" || rep.NewKey != "beta_v2" || rep.OldRequests != 2 || rep.Verdict != rotation.NotYet ||
		!reflect.DeepEqual(rep.ServicesToChase, []string{"beta-app"}) {
		t.Errorf("beta: %v project %s new %s old requests %d verdict %v chase %v", err, rep.Project, rep.NewKey, rep.OldRequests, rep.Verdict, rep.ServicesToChase)
	}
	// A project where the key is not known, or no readable project with it: not found.
	for _, req := range []chreader.RotationRequest{
		{OldKey: "default", Project: "delta"},
		{OldKey: "default", Projects: []string{"delta"}},
		{OldKey: "default", Projects: []string{}},
	} {
		var nf *chreader.KeyNotFoundError
		if _, err := rd.Rotation(ctx, req); !errors.As(err, &nf) {
			t.Errorf("%+v: %v, want KeyNotFoundError", req, err)
		}
	}
}
