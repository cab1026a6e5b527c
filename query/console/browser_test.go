package console_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keytrail/keytrail/event"
	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/internal/apitest"
	"github.com/keytrail/keytrail/internal/testenv"
	"github.com/keytrail/keytrail/query/auth"
	"github.com/keytrail/keytrail/query/console"
	"github.com/keytrail/keytrail/services/simulator/simulate"
)

// The browser test feeds keytrail the demo's stories (package simulate, deterministic for a
// seed and a start), serves the real API with the console, and drives Debian's Chromium
// through every page, checking that what a person sees equals what the API answers.

const (
	// storyRate is the simulator's mean usage events per second: enough for the spike to
	// pass the anomaly scan's default 50 requests per bucket, small enough to load in
	// seconds (about 330k events).
	storyRate    = 50
	storyHistory = 90 * time.Minute
	// storyLength puts "now" two minutes after the story's last feature (+10m).
	storyLength = 12 * time.Minute

	acmeReaderToken = "ktk_test_acme_reader"
	pollTimeout     = 30 * time.Second

	// sharedKey is a key id that projects acme and globex both have: two keys (a key is
	// (project, key_id)), which the console must never mix.
	sharedKey = "default"
)

// sharedKeyEvents are the two keys of sharedKey: acme's, active and called by acme-app;
// globex's, called by globex-app and globex-report, then disabled (after its last call, so it
// is not a revoked key still called). Every caller is older than an hour: none of them is a
// new caller in the console's default range.
func sharedKeyEvents(now time.Time) []any {
	ago := func(d time.Duration) *timestamppb.Timestamp { return timestamppb.New(now.Add(-d)) }
	lifecycle := func(id, project string, action keytrailv1.Action, at time.Duration) *keytrailv1.LifecycleEvent {
		return &keytrailv1.LifecycleEvent{EventId: id, Time: ago(at), Project: project, KeyId: sharedKey, Action: action, Actor: "alice", ActorType: keytrailv1.ActorType_ACTOR_TYPE_USER}
	}
	events := []any{
		lifecycle("shared-acme-created", "acme", keytrailv1.Action_ACTION_CREATED, 88*time.Minute),
		lifecycle("shared-globex-created", "globex", keytrailv1.Action_ACTION_CREATED, 89*time.Minute),
		lifecycle("shared-globex-disabled", "globex", keytrailv1.Action_ACTION_DISABLED, 20*time.Minute),
	}
	use := func(project, service, ip string, i int, at time.Duration, status uint32) *keytrailv1.UsageEvent {
		return &keytrailv1.UsageEvent{
			EventId: fmt.Sprintf("shared-%s-%s-%d", project, service, i), Time: ago(at), Project: project, KeyId: sharedKey,
			Service: service, ClientIp: ip, StatusCode: status, CostMicros: 1500,
		}
	}
	status := func(i, every int, failed uint32) uint32 {
		if i%every == every-1 {
			return failed
		}
		return 200
	}
	for i := range 40 { // every 2 minutes from 85 minutes ago; every 10th fails
		events = append(events, use("acme", "acme-app", "10.0.0.7", i, 85*time.Minute-time.Duration(i)*2*time.Minute, status(i, 10, 503)))
	}
	for i := range 14 { // every 4 minutes from 86 minutes ago to 34 minutes ago; every 5th fails
		events = append(events, use("globex", "globex-app", "10.1.0.9", i, 86*time.Minute-time.Duration(i)*4*time.Minute, status(i, 5, 500)))
	}
	for i := range 6 {
		events = append(events, use("globex", "globex-report", "10.1.0.9", i, 70*time.Minute-time.Duration(i)*5*time.Minute, 200))
	}
	return events
}

// chromiumPath is the browser the test drives: KEYTRAIL_TEST_CHROMIUM, or Debian's.
func chromiumPath(t *testing.T) string {
	t.Helper()
	path := os.Getenv("KEYTRAIL_TEST_CHROMIUM")
	if path == "" {
		path = "/usr/bin/chromium"
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("chromium is not installed at %s (run `make test`, which installs it with deploy/browser/chromium.sh): %v", path, err)
	}
	return path
}

// feedStory stores the scenario's events from its history's start to now, with the story
// starting storyLength ago, and waits until every rollup holds them.
func feedStory(t *testing.T, db *testenv.Database) simulate.Notable {
	t.Helper()
	now := time.Now().UTC()
	start := now.Truncate(time.Minute).Add(-storyLength)
	sc, err := simulate.New(simulate.Config{Seed: 1, Start: start, Rate: storyRate, History: storyHistory})
	if err != nil {
		t.Fatal(err)
	}
	events := sc.Tick(start.Add(-storyHistory), now)
	var usage, lifecycle uint64
	shared := sharedKeyEvents(now)
	for _, e := range shared {
		if _, ok := e.(*keytrailv1.UsageEvent); ok {
			usage++
		} else {
			lifecycle++
		}
	}
	testenv.Insert(t, db, shared...)
	batch := make([]any, 0, 50_000)
	flush := func() {
		testenv.Insert(t, db, batch...)
		batch = batch[:0]
	}
	for _, e := range events {
		switch e.Kind {
		case event.KindUsage:
			usage++
			batch = append(batch, e.Usage)
		case event.KindLifecycle:
			lifecycle++
			batch = append(batch, e.Lifecycle)
		}
		if len(batch) == cap(batch) {
			flush()
		}
	}
	flush()
	testenv.WaitForEvents(t, db, usage, lifecycle, 2*time.Minute)
	t.Logf("stored %d usage and %d lifecycle events; story started %s", usage, lifecycle, start.Format(time.RFC3339))
	return sc.Notable()
}

// browser is one headless Chromium tab.
type browser struct {
	t     *testing.T
	ctx   context.Context
	shots string
}

func newBrowser(t *testing.T, execPath string) *browser {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(execPath),
		chromedp.NoSandbox, // the tests run as root
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true),
		// This machine has no network but loopback: without these Chromium keeps trying
		// Google's hosts.
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-domain-reliability", true),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(allocCtx)
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
	})
	// The first action starts the browser; it must not run under a timeout (that would end
	// the browser with it).
	if err := chromedp.Do(ctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	shots := os.Getenv("KEYTRAIL_CONSOLE_SCREENSHOTS")
	if shots == "" {
		shots = t.TempDir()
	}
	if err := os.MkdirAll(shots, 0o755); err != nil {
		t.Fatal(err)
	}
	return &browser{t: t, ctx: ctx, shots: shots}
}

// on is the browser reporting to a subtest.
func (b *browser) on(t *testing.T) *browser {
	c := *b
	c.t = t
	return &c
}

func (b *browser) do(steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, pollTimeout)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		b.t.Fatalf("browser: %v", err)
	}
}

// poll waits until the JavaScript expression is truthy and decodes its value. A page that
// replaces its document meanwhile (a redirect, a reload) ends the evaluation's JavaScript
// context; the poll then starts again in the new one.
func poll[T any](b *browser, what, expr string) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, pollTimeout)
	defer cancel()
	for {
		v, err := chromedp.Run(ctx, chromedp.Poll[T](expr, chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(pollTimeout)))
		if err == nil {
			return v
		}
		if ctx.Err() == nil && (strings.Contains(err.Error(), "Cannot find context") || strings.Contains(err.Error(), "context was destroyed")) {
			continue
		}
		page, _ := chromedp.Run(b.ctx, chromedp.Evaluate[string](`document.body.innerText.slice(0, 2000)`))
		busy, _ := chromedp.Run(b.ctx, chromedp.Evaluate[string](`[...document.querySelectorAll('[data-test=loading], .boot, .stale')].map(e => e.outerHTML.slice(0, 200)).join("\n")`))
		b.t.Fatalf("waiting for %s: %v\npage text:\n%s\nstill loading: %s", what, err, page, busy)
	}
}

// open loads the console at a route (the part after #) and waits until nothing is loading.
// It loads the page afresh: a change of the hash alone re-renders after the navigation has
// returned, so a wait could see the previous route's settled page.
func (b *browser) open(base, route string) {
	b.t.Helper()
	b.do(chromedp.Navigate("about:blank"), chromedp.Navigate(base+"/ui/#"+route))
	b.settle(route)
}

// settle waits until the page shows no loading indicator for two animation frames in a row.
func (b *browser) settle(what string) {
	b.t.Helper()
	poll[bool](b, what+" to finish loading", `(() => {
		const busy = document.querySelector('[data-test=loading], .boot, .stale') !== null;
		window.__ktQuiet = busy ? 0 : (window.__ktQuiet || 0) + 1;
		return window.__ktQuiet >= 3;
	})()`)
}

// shot saves a full-page PNG screenshot as <name>.png.
func (b *browser) shot(name string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, pollTimeout)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Fatalf("screenshot %s: %v", name, err)
	}
	if err := os.WriteFile(filepath.Join(b.shots, name+".png"), png, 0o644); err != nil {
		b.t.Fatal(err)
	}
}

func (b *browser) signIn(token string) {
	b.t.Helper()
	poll[bool](b, "the sign-in form", `document.querySelector('[data-test=token]') !== null`)
	b.do(
		chromedp.SendKeys(chromedp.CSS(`[data-test=token]`), token),
		chromedp.Click(chromedp.CSS(`[data-test=signin] button[type=submit]`)),
	)
}

// getJSON calls the REST API as the test's admin.
func getJSON(t *testing.T, srv *apitest.Server, path string, params url.Values, token string, out any) {
	t.Helper()
	testenv.GetJSON(t, "http://"+srv.HTTPAddr, path, params, "Bearer "+token, http.StatusOK, out)
}

// projectsAsked lists the project each recorded call of the method (GetKeyUsage, ...) about
// the key id was made with ("" for none), in call order: what the console sent the API.
func projectsAsked(srv *apitest.Server, method, keyID string) []string {
	var out []string
	for _, r := range srv.Records.All() {
		if !strings.HasSuffix(r.Method, "/"+method) {
			continue
		}
		var req struct {
			KeyID   string `json:"keyId"`
			Project string `json:"project"`
		}
		if json.Unmarshal([]byte(r.Request), &req) == nil && req.KeyID == keyID {
			out = append(out, req.Project)
		}
	}
	return out
}

// keyServices is GET /v1/keys/{key_id}/services as the tests compare it.
type keyServices struct {
	Services []struct {
		Service string `json:"service"`
		Req     int64s `json:"request_count"`
		Err     int64s `json:"error_count"`
	} `json:"services"`
}

// rows is the answer as the console shows it: service, requests, errors.
func (k keyServices) rows() [][3]string {
	out := [][3]string{}
	for _, s := range k.Services {
		out = append(out, [3]string{s.Service, shown(s.Req.Int()), shown(s.Err.Int())})
	}
	return out
}

// keyPageServices waits for the key page of project to show its services, settled, and
// returns them as rows.
func keyPageServices(b *browser, project string) [][3]string {
	b.t.Helper()
	return poll[[][3]string](b, "the services of the key in "+project, fmt.Sprintf(`(() => {
		const p = document.querySelector('[data-test=key-project]');
		const rows = [...document.querySelectorAll('[data-test=key-services] tbody tr')];
		if (!p || p.innerText !== %q || rows.length === 0 || document.querySelector('[data-test=loading], .stale')) return false;
		return rows.map(r => [r.dataset.service, r.querySelector('[data-test=requests]').innerText, r.querySelector('[data-test=errors]').innerText]);
	})()`, project))
}

// chooser waits for the choice of projects a bare, ambiguous key id gets, and returns the
// projects offered and where each leads.
func chooser(b *browser) [][2]string {
	b.t.Helper()
	return poll[[][2]string](b, "the choice of projects", `(() => {
		const rows = [...document.querySelectorAll('[data-test=key-chooser] tbody tr')];
		return rows.length > 0 && rows.map(r => [r.dataset.project, r.querySelector('[data-test=key-choice]').getAttribute('href')]);
	})()`)
}

// int64s parse protojson's int64-as-string numbers.
type int64s string

func (n int64s) Int() int64 {
	v, _ := strconv.ParseInt(string(n), 10, 64)
	return v
}

// shown is a number as the console prints it ("1,234").
func shown(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var out []string
	for len(s) > 3 {
		out = append([]string{s[len(s)-3:]}, out...)
		s = s[:len(s)-3]
	}
	out = append([]string{s}, out...)
	if neg {
		return "-" + strings.Join(out, ",")
	}
	return strings.Join(out, ",")
}

func TestConsoleInBrowser(t *testing.T) {
	execPath := chromiumPath(t)
	db := testenv.ClickHouse(t)
	story := feedStory(t, db)
	srv := apitest.Start(t, db, apitest.Options{
		Console: true,
		Tokens: map[string]auth.Entry{
			acmeReaderToken: {Name: "acme-reader", Role: auth.RoleProjectReader, Projects: []string{"acme"}},
		},
	})
	base := "http://" + srv.HTTPAddr
	b := newBrowser(t, execPath)
	admin := srv.AdminToken

	// / sends the browser to the console, which asks for a token (no client certificate
	// here). A wrong token is refused by the API and the console says so.
	b.do(chromedp.Navigate(base + "/"))
	if loc, err := chromedp.Run(b.ctx, chromedp.Location()); err != nil || !strings.HasPrefix(loc, base+"/ui/") {
		t.Fatalf("/ led to %q (%v), want the console under /ui/", loc, err)
	}
	b.signIn("ktk_not_a_token")
	refused := poll[string](b, "the 401 error", `(() => { const e = document.querySelector('[data-test=error][data-kind=auth]'); return e && e.innerText; })()`)
	if !strings.Contains(refused, "401") {
		t.Errorf("wrong token: error shows %q, want the 401 named", refused)
	}
	b.shot("signin-error")
	b.signIn(admin)
	b.settle("search")

	t.Run("search", func(t *testing.T) {
		b := b.on(t)
		var keys struct {
			Keys []struct {
				KeyID string `json:"key_id"`
			} `json:"keys"`
		}
		getJSON(t, srv, "/v1/keys", url.Values{"page_size": {"1000"}}, admin, &keys)
		counts := poll[string](b, "the suggestion counts", `(() => { const e = document.querySelector('[data-test=search-counts]'); return e && e.innerText; })()`)
		if want := shown(int64(len(keys.Keys))) + " keys"; !strings.HasPrefix(counts, want) {
			t.Errorf("search counts %q, want %q first", counts, want)
		}
		// With nothing typed, the page lists what the key states reveal: the disabled and the
		// expired key still called, and the rotation in progress.
		attention := poll[map[string]string](b, "the keys that need a look", `(() => {
			const rows = [...document.querySelectorAll('[data-test=attention] tbody tr')];
			return rows.length > 0 && Object.fromEntries(rows.map(r => [r.dataset.key, r.dataset.what]));
		})()`)
		want := map[string]string{story.DisabledKey: "revoked-used", story.ExpiringKey: "revoked-used", story.RotationOldKey: "rotating"}
		if !reflect.DeepEqual(attention, want) {
			t.Errorf("keys that need a look: %v, want %v", attention, want)
		}
		b.shot("search")
		b.do(chromedp.SendKeys(chromedp.CSS(`[data-test=search-input]`), "key_acme_00"))
		matched := poll[[]string](b, "matches for key_acme_00", `(() => {
			const rows = [...document.querySelectorAll('[data-test=matches] tbody tr')];
			return rows.length > 0 && rows.every(r => (r.dataset.key || '').startsWith('key_acme_00')) && rows.map(r => r.dataset.key);
		})()`)
		if len(matched) == 0 || matched[0] != "key_acme_0001" {
			t.Errorf("matches for key_acme_00 start %v, want key_acme_0001 first", matched)
		}
	})

	t.Run("key", func(t *testing.T) {
		b := b.on(t)
		key := story.RotationOldKey
		var api keyServices
		// All history: the console's 6-hour range holds all of it.
		getJSON(t, srv, "/v1/keys/"+key+"/services", nil, admin, &api)
		b.open(base, "/key/"+key+"?range=6h")
		rows := poll[[][3]string](b, "the key's services", `(() => {
			const rows = [...document.querySelectorAll('[data-test=key-services] tbody tr')];
			return rows.length > 0 && rows.map(r => [r.dataset.service, r.querySelector('[data-test=requests]').innerText, r.querySelector('[data-test=errors]').innerText]);
		})()`)
		if len(rows) != len(api.Services) {
			t.Fatalf("console shows %d services of %s, the API %d: %v", len(rows), key, len(api.Services), rows)
		}
		for i, s := range api.Services {
			if want := [3]string{s.Service, shown(s.Req.Int()), shown(s.Err.Int())}; rows[i] != want {
				t.Errorf("service row %d: console %v, API %v", i, rows[i], want)
			}
		}
		status := poll[string](b, "the key's status", `(() => { const e = document.querySelector('[data-test=key-status]'); return e && e.innerText; })()`)
		if !strings.HasPrefix(status, "active") {
			t.Errorf("%s status %q, want active (it is being rotated, not revoked)", key, status)
		}
		// The usage chart draws one series per service from GET /v1/keys/{key}/usage.
		series := poll[int](b, "the usage chart", `(() => { const c = document.querySelector('[data-test=usage-chart] .u-legend'); return c && c.querySelectorAll('.u-series').length; })()`)
		if series != len(api.Services)+1 { // uPlot's legend lists the time axis too
			t.Errorf("usage chart has %d legend entries, want %d services + time", series, len(api.Services))
		}
		b.shot("key")

		// The disabled key a forgotten cron job still calls: refused since it was disabled.
		var cronAPI keyServices
		getJSON(t, srv, "/v1/keys/"+story.DisabledKey+"/services", nil, admin, &cronAPI)
		b.open(base, "/key/"+story.DisabledKey+"?range=6h")
		cron := poll[[]string](b, "the disabled key's cron job", fmt.Sprintf(`(() => {
			const status = document.querySelector('[data-test=key-status]');
			const row = document.querySelector('[data-test=key-services] tr[data-service=%q]');
			return status && row && [status.innerText, row.querySelector('[data-test=requests]').innerText, row.querySelector('[data-test=errors]').innerText];
		})()`, story.ForgottenJobService))
		if !strings.HasPrefix(cron[0], "disabled") {
			t.Errorf("%s: status %q, want disabled", story.DisabledKey, cron[0])
		}
		for _, s := range cronAPI.Services {
			if s.Service != story.ForgottenJobService {
				continue
			}
			if s.Err.Int() == 0 {
				t.Errorf("the API counts no refused call of %s", s.Service)
			}
			if cron[1] != shown(s.Req.Int()) || cron[2] != shown(s.Err.Int()) {
				t.Errorf("%s on %s: console %s requests, %s errors; API %d, %d", s.Service, story.DisabledKey, cron[1], cron[2], s.Req.Int(), s.Err.Int())
			}
		}
		b.shot("key-disabled")
	})

	t.Run("rotation", func(t *testing.T) {
		b := b.on(t)
		var api struct {
			Verdict  string  `json:"verdict"`
			Share    float64 `json:"new_key_share"`
			Old      int64s  `json:"old_key_requests"`
			New      int64s  `json:"new_key_requests"`
			Services []struct {
				Service   string `json:"service"`
				Migration string `json:"migration"`
			} `json:"services"`
			Project string `json:"project"`
			Callers []struct {
				Service string `json:"service"`
				State   string `json:"state"`
			} `json:"old_key_callers"`
		}
		getJSON(t, srv, "/v1/rotations/"+story.RotationOldKey, nil, admin, &api)
		if api.Verdict != "ROTATION_VERDICT_NOT_YET" {
			t.Fatalf("the story's rotation is %s, want NOT_YET (services still on the old key)", api.Verdict)
		}
		b.open(base, "/rotation/"+story.RotationOldKey)
		got := poll[[]string](b, "the rotation verdict", `(() => {
			const v = document.querySelector('[data-test=rotation-verdict]');
			return v && [v.innerText, document.querySelector('[data-test=rotation-share]').innerText,
				document.querySelector('[data-test=rotation-old-requests]').innerText, document.querySelector('[data-test=rotation-new-requests]').innerText,
				document.querySelector('[data-test=rotation-command]').innerText];
		})()`)
		want := []string{"NOT YET", fmt.Sprintf("%.1f%%", api.Share*100), shown(api.Old.Int()), shown(api.New.Int()), "keytrail rotation check --old " + story.RotationOldKey + " --project " + api.Project}
		for i := range want {
			if got[i] != want[i] {
				t.Errorf("rotation field %d: console %q, API %q", i, got[i], want[i])
			}
		}
		labels := poll[map[string]string](b, "the migration labels", `(() => {
			const rows = [...document.querySelectorAll('[data-test=rotation-services] tbody tr')];
			return rows.length > 0 && Object.fromEntries(rows.map(r => [r.dataset.service, r.querySelector('[data-test=migration]').innerText]));
		})()`)
		for _, s := range api.Services {
			if want := strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(s.Migration, "SERVICE_MIGRATION_")), "_", " "); labels[s.Service] != want {
				t.Errorf("%s: console label %q, API %q", s.Service, labels[s.Service], s.Migration)
			}
		}
		for _, svc := range story.RotationPendingServices {
			if labels[svc] != "not started" {
				t.Errorf("pending service %s labelled %q, want not started", svc, labels[svc])
			}
		}
		states := poll[map[string]string](b, "the old key's callers", `(() => {
			const rows = [...document.querySelectorAll('[data-test=rotation-callers] tbody tr')];
			return rows.length > 0 && Object.fromEntries(rows.map(r => [r.dataset.service, r.querySelector('[data-test=caller-state]').innerText]));
		})()`)
		if len(states) != len(api.Callers) {
			t.Errorf("console shows %d callers of the old key, the API %d", len(states), len(api.Callers))
		}
		for _, c := range api.Callers {
			if want := strings.ToLower(strings.TrimPrefix(c.State, "CALLER_STATE_")); states[c.Service] != want {
				t.Errorf("caller %s: console state %q, API %s", c.Service, states[c.Service], c.State)
			}
		}
		b.shot("rotation")
	})

	t.Run("same key id in two projects", func(t *testing.T) {
		b := b.on(t)
		// The API: without a project the bare id is two keys, and it says which.
		code, body := srv.Get(t, "/v1/keys/"+sharedKey, nil, admin)
		if want := `project: key \"default\" exists in projects acme, globex; pass one of them`; code != http.StatusBadRequest || !strings.Contains(string(body), want) {
			t.Fatalf("GET /v1/keys/%s: %d %s, want 400 naming acme and globex", sharedKey, code, body)
		}
		api := map[string]keyServices{}
		status := map[string]string{}
		for _, p := range []string{"acme", "globex"} {
			var services keyServices
			getJSON(t, srv, "/v1/keys/"+sharedKey+"/services", url.Values{"project": {p}}, admin, &services)
			api[p] = services
			var key struct {
				Key struct {
					Status string `json:"status"`
				} `json:"key"`
			}
			getJSON(t, srv, "/v1/keys/"+sharedKey, url.Values{"project": {p}}, admin, &key)
			status[p] = strings.ToLower(strings.TrimPrefix(key.Key.Status, "KEY_STATUS_"))
		}
		if reflect.DeepEqual(api["acme"].rows(), api["globex"].rows()) || status["acme"] == status["globex"] {
			t.Fatalf("the two keys must differ for this test to tell them apart: %v %v, %v", api["acme"].rows(), api["globex"].rows(), status)
		}
		// showsKey checks the key page against the API's answer for that project's key.
		showsKey := func(project string) {
			t.Helper()
			if got, want := keyPageServices(b, project), api[project].rows(); !reflect.DeepEqual(got, want) {
				t.Errorf("key %s of %s: console shows services %v, the API %v", sharedKey, project, got, want)
			}
			if got := poll[string](b, "the key's status", `(() => { const e = document.querySelector('[data-test=key-status]'); return e && e.innerText; })()`); !strings.HasPrefix(got, status[project]) {
				t.Errorf("key %s of %s: console status %q, the API %s", sharedKey, project, got, status[project])
			}
			series := poll[int](b, "the usage chart", `(() => { const c = document.querySelector('[data-test=usage-chart] .u-legend'); return c && c.querySelectorAll('.u-series').length; })()`)
			if series != len(api[project].Services)+1 {
				t.Errorf("key %s of %s: usage chart has %d legend entries, want %d services + time", sharedKey, project, series, len(api[project].Services))
			}
		}

		// Typed bare into the search box, the id opens a choice of the two projects.
		b.open(base, "/search")
		b.do(
			chromedp.SendKeys(chromedp.CSS(`[data-test=search-input]`), sharedKey),
			chromedp.Click(chromedp.CSS(`form.search button[type=submit]`)),
		)
		want := [][2]string{{"acme", "#/key/default?project=acme"}, {"globex", "#/key/default?project=globex"}}
		if got := chooser(b); !reflect.DeepEqual(got, want) {
			t.Errorf("the bare id offers %v, want %v", got, want)
		}
		b.settle("the choice of projects")
		b.shot("key-chooser")
		b.do(chromedp.Click(chromedp.CSS(`[data-test=key-chooser] tr[data-project=globex] [data-test=key-choice]`)))
		showsKey("globex")

		// A row of a table names its project: the matches for the id hold one row per
		// project, and acme's row opens acme's key.
		b.open(base, "/search?q="+sharedKey)
		b.do(chromedp.Click(chromedp.CSS(`[data-test=matches] tr[data-key=default][data-project=acme] a`)))
		showsKey("acme")

		// The key page read every list of the key within its project: the usage chart and the
		// services were never asked for without one.
		for _, method := range []string{"GetKeyUsage", "ListKeyServices"} {
			asked := projectsAsked(srv, method, sharedKey)
			if !slices.Contains(asked, "acme") || !slices.Contains(asked, "globex") || slices.Contains(asked, "") {
				t.Errorf("%s of %s asked with projects %q, want acme and globex and never none", method, sharedKey, asked)
			}
		}

		// The rotation page and a spend filter on the bare id offer the same choice.
		b.open(base, "/rotation/"+sharedKey)
		if got, want := chooser(b), [][2]string{{"acme", "#/rotation/default?project=acme"}, {"globex", "#/rotation/default?project=globex"}}; !reflect.DeepEqual(got, want) {
			t.Errorf("rotation of the bare id offers %v, want %v", got, want)
		}
		b.open(base, "/spend?key="+sharedKey)
		if got, want := chooser(b), [][2]string{{"acme", "#/spend?key=default&project=acme"}, {"globex", "#/spend?key=default&project=globex"}}; !reflect.DeepEqual(got, want) {
			t.Errorf("spend of the bare id offers %v, want %v", got, want)
		}
	})

	t.Run("spend", func(t *testing.T) {
		b := b.on(t)
		from := time.Now().UTC().Add(-7 * 24 * time.Hour).Format(time.RFC3339)
		params := url.Values{"group_by": {"SPEND_DIMENSION_KEY"}, "granularity": {"GRANULARITY_DAY"}, "project": {"umbrella"}, "start_time": {from}, "page_size": {"1000"}}
		var api struct {
			Rows []struct {
				Bucket string `json:"bucket_start"`
				KeyID  string `json:"key_id"`
				Cost   string `json:"cost"`
			} `json:"rows"`
			TotalCostMicros int64s `json:"total_cost_micros"`
		}
		getJSON(t, srv, "/v1/spend", params, admin, &api)
		var day, cost string
		for _, r := range api.Rows {
			if r.KeyID == story.OverBudgetKey {
				day, cost = r.Bucket, r.Cost // the last day with its spend: today
			}
		}
		if cost == "" {
			t.Fatalf("no spend row for %s in %v", story.OverBudgetKey, api.Rows)
		}
		b.open(base, "/spend?group=key&gran=day&project=umbrella&from="+url.QueryEscape(from))
		shownCost := poll[string](b, "the over-budget key's day", fmt.Sprintf(`(() => {
			const r = document.querySelector('[data-test=spend-table] tr[data-group=%q][data-bucket=%q]');
			return r && r.querySelector('[data-test=cost]').innerText;
		})()`, story.OverBudgetKey, day))
		if shownCost != cost {
			t.Errorf("%s on %s: console %s, API %s", story.OverBudgetKey, day, shownCost, cost)
		}

		var budgets struct {
			Budgets []struct {
				KeyID   string `json:"key_id"`
				Status  string `json:"status"`
				Current struct {
					Percent float64 `json:"percent_used"`
				} `json:"current"`
			} `json:"budgets"`
		}
		getJSON(t, srv, "/v1/budgets", url.Values{"project": {"umbrella"}}, admin, &budgets)
		for _, bu := range budgets.Budgets {
			if bu.KeyID != story.OverBudgetKey {
				continue
			}
			got := poll[[]string](b, "the budget bar", fmt.Sprintf(`(() => {
				const r = document.querySelector('[data-test=budgets] [data-key=%q]');
				return r && [r.querySelector('[data-test=budget-status]').innerText, r.querySelector('[data-test=budget-percent]').innerText];
			})()`, bu.KeyID))
			want := []string{strings.TrimPrefix(bu.Status, "BUDGET_STATUS_"), fmt.Sprintf("%.1f%%", bu.Current.Percent)}
			if got[0] != want[0] || got[1] != want[1] {
				t.Errorf("budget of %s: console %v, API %v", bu.KeyID, got, want)
			}
		}
		// The picture: the same project by hour, where the demo's 102 minutes show.
		b.open(base, "/spend?group=key&gran=hour&range=24h&project=umbrella")
		b.shot("spend")
	})

	t.Run("anomalies", func(t *testing.T) {
		b := b.on(t)
		to := time.Now().UTC()
		from := to.Add(-30 * time.Minute)
		params := url.Values{"start_time": {from.Format(time.RFC3339Nano)}, "end_time": {to.Format(time.RFC3339Nano)}}
		var api struct {
			Anomalies []struct {
				Project  string  `json:"project"`
				KeyID    string  `json:"key_id"`
				Service  string  `json:"service"`
				Metric   string  `json:"metric"`
				Bucket   string  `json:"bucket_start"`
				Observed float64 `json:"observed"`
				Score    float64 `json:"score"`
			} `json:"anomalies"`
		}
		getJSON(t, srv, "/v1/anomalies", params, admin, &api)
		idx := -1
		for i, a := range api.Anomalies {
			if a.KeyID == story.SpikeKey && a.Service == "" && a.Metric == "ANOMALY_METRIC_REQUESTS" {
				idx = i
				break
			}
		}
		if idx < 0 {
			t.Fatalf("the spike of %s is not flagged by the API: %+v", story.SpikeKey, api.Anomalies)
		}
		a := api.Anomalies[idx]
		b.open(base, "/anomalies?from="+url.QueryEscape(params.Get("start_time"))+"&to="+url.QueryEscape(params.Get("end_time")))
		flagged := fmt.Sprintf(`[data-test=anomaly][data-key=%q][data-service=""][data-metric=ANOMALY_METRIC_REQUESTS][data-bucket=%q]`, a.KeyID, a.Bucket)
		// The three highest scores open with their series; open this one if it is not among them.
		if closed := poll[string](b, "the flagged spike's row", fmt.Sprintf(`(() => { const c = document.querySelector(%q); return c && (c.querySelector('.anomaly-detail') ? "open" : "closed"); })()`, flagged)); closed == "closed" {
			b.do(chromedp.Click(chromedp.CSS(flagged + ` [data-test=anomaly-toggle]`)))
		}
		got := poll[[]string](b, "the flagged spike", fmt.Sprintf(`(() => {
			const c = document.querySelector(%q);
			const v = c && c.querySelector('[data-test=anomaly-series-value]');
			return v && [c.querySelector('[data-test=anomaly-observed]').innerText, c.querySelector('[data-test=anomaly-score]').innerText, v.innerText];
		})()`, flagged))
		observed := shown(int64(math.Round(a.Observed)))
		// The series is the flagged key's, in the flagged key's project.
		if asked := projectsAsked(srv, "GetKeyUsage", a.KeyID); len(asked) == 0 || slices.ContainsFunc(asked, func(p string) bool { return p != a.Project }) {
			t.Errorf("the series of %s was asked for with projects %q, want %s each time", a.KeyID, asked, a.Project)
		}
		// The series around the bucket (GET /v1/keys/{key}/usage) holds the same count the
		// scan flagged.
		want := []string{observed, fmt.Sprintf("%.1f", a.Score), observed}
		for i := range want {
			if got[i] != want[i] {
				t.Errorf("anomaly field %d: console %q, API %q", i, got[i], want[i])
			}
		}
		var callers struct {
			Callers []struct {
				KeyID  string `json:"key_id"`
				Caller string `json:"caller"`
			} `json:"callers"`
		}
		// The console's default: the last hour (the story's history began 102 minutes ago, so
		// every caller of the fleet is new over 24 hours).
		getJSON(t, srv, "/v1/new-callers", url.Values{"start_time": {time.Now().UTC().Add(-time.Hour).Format(time.RFC3339Nano)}}, admin, &callers)
		shownCallers := poll[[]string](b, "the new callers", `(() => {
			const rows = [...document.querySelectorAll('[data-test=new-callers] tbody tr')];
			return rows.length > 0 && rows.map(r => r.dataset.key + " " + r.dataset.caller);
		})()`)
		var apiCallers []string
		for _, c := range callers.Callers {
			apiCallers = append(apiCallers, c.KeyID+" "+c.Caller)
		}
		if strings.Join(shownCallers, "|") != strings.Join(apiCallers, "|") {
			t.Errorf("new callers: console %v, API %v", shownCallers, apiCallers)
		}
		if !strings.Contains(strings.Join(apiCallers, "|"), story.NewCallerKey+" "+story.NewCallerService) {
			t.Errorf("the story's new caller %s on %s is not in %v", story.NewCallerService, story.NewCallerKey, apiCallers)
		}
		b.shot("anomalies")
	})

	t.Run("audit", func(t *testing.T) {
		b := b.on(t)
		var verify struct {
			Projects []struct {
				Project  string `json:"project"`
				HeadHash string `json:"head_hash"`
			} `json:"projects"`
		}
		getJSON(t, srv, "/v1/audit/verify", nil, admin, &verify)
		var events struct {
			Events []struct {
				EventID string `json:"event_id"`
			} `json:"events"`
		}
		getJSON(t, srv, "/v1/audit/events", url.Values{"project": {"acme"}, "action": {"ACTION_ROTATED"}, "page_size": {"100"}}, admin, &events)
		b.open(base, "/audit?project=acme&action=ACTION_ROTATED")
		heads := poll[map[string]string](b, "the chain heads", `(() => {
			const rows = [...document.querySelectorAll('[data-test=chains] tbody tr')];
			return rows.length > 0 && Object.fromEntries(rows.map(r => [r.dataset.project, r.querySelector('[data-test=head-hash]').innerText]));
		})()`)
		if len(heads) != 1 {
			t.Errorf("chains shown for project=acme: %v, want acme only", heads)
		}
		for _, p := range verify.Projects {
			if p.Project == "acme" && heads["acme"] != p.HeadHash {
				t.Errorf("acme head hash: console %q, API %q", heads["acme"], p.HeadHash)
			}
		}
		ids := poll[[]string](b, "the rotated events", `(() => {
			const rows = [...document.querySelectorAll('[data-test=audit-events] tbody tr')];
			return rows.length > 0 && rows.map(r => r.dataset.event);
		})()`)
		var apiIDs []string
		for _, e := range events.Events {
			apiIDs = append(apiIDs, e.EventID)
		}
		if strings.Join(ids, ",") != strings.Join(apiIDs, ",") {
			t.Errorf("audit events: console %v, API %v", ids, apiIDs)
		}
		b.shot("audit")
	})

	t.Run("narrow screen", func(t *testing.T) {
		b := b.on(t)
		b.do(chromedp.EmulateViewport(390, 844, chromedp.EmulateMobile))
		defer b.do(chromedp.EmulateViewport(1280, 900))
		b.open(base, "/rotation/"+story.RotationOldKey)
		// Wide tables scroll inside their own box; the page itself never does sideways.
		overflow := poll[[]int](b, "the narrow page", `(() => document.querySelector('[data-test=rotation-verdict]') && [document.documentElement.scrollWidth, window.innerWidth])()`)
		if overflow[0] > overflow[1] {
			t.Errorf("at 390 px the page is %d px wide: it scrolls sideways", overflow[0])
		}
		b.shot("rotation-390px")
	})

	t.Run("project reader", func(t *testing.T) {
		b := b.on(t)
		b.do(chromedp.Click(chromedp.CSS(`[data-test=signout]`)))
		b.signIn(acmeReaderToken)
		b.settle("the page as the acme reader")
		b.open(base, "/search")
		var keys struct {
			Keys []struct {
				Project string `json:"project"`
			} `json:"keys"`
		}
		getJSON(t, srv, "/v1/keys", url.Values{"page_size": {"1000"}}, acmeReaderToken, &keys)
		for _, k := range keys.Keys {
			if k.Project != "acme" {
				t.Fatalf("the API gave the acme reader a key of %s", k.Project)
			}
		}
		projects := poll[[]string](b, "the reader's keys", `(() => {
			const rows = [...document.querySelectorAll('[data-test=matches] tbody tr[data-key]')];
			return rows.length > 0 && [...new Set(rows.map(r => r.cells[2].innerText))];
		})()`)
		if len(projects) != 1 || projects[0] != "acme" {
			t.Errorf("the acme reader's search shows keys of %v, want acme only", projects)
		}
		counts := poll[string](b, "the reader's counts", `(() => { const e = document.querySelector('[data-test=search-counts]'); return e && e.innerText; })()`)
		if want := shown(int64(len(keys.Keys))) + " keys"; !strings.HasPrefix(counts, want) {
			t.Errorf("reader's search counts %q, want %q first", counts, want)
		}
		// A key is (project, key_id): for this reader the shared id is acme's key alone, no
		// choice to make, and the page's address comes to name the project.
		b.open(base, "/key/"+sharedKey)
		var acme keyServices
		getJSON(t, srv, "/v1/keys/"+sharedKey+"/services", nil, acmeReaderToken, &acme)
		if got := keyPageServices(b, "acme"); !reflect.DeepEqual(got, acme.rows()) {
			t.Errorf("the acme reader's %s: console shows services %v, the API %v", sharedKey, got, acme.rows())
		}
		if loc := poll[string](b, "the pinned address", `location.hash.includes('project=') && location.hash`); loc != "#/key/default?project=acme" {
			t.Errorf("the acme reader's %s: address %q, want the project named", sharedKey, loc)
		}
		// Another project's key id is, for this reader, no key at
		// all. The API answers as for a key id that does not exist, naming no project.
		b.open(base, "/key/"+story.SpikeKey)
		unknown := poll[string](b, "the 404", `(() => { const e = document.querySelector('[data-test=error][data-kind=notfound]'); return e && e.innerText; })()`)
		if !strings.Contains(unknown, "404") || strings.Contains(unknown, `"globex"`) {
			t.Errorf("another project's key: error %q, want the 404 named and no other project", unknown)
		}
		// Nothing else of the key is drawn: its lists would read as empty, not as unknown.
		if sections := poll[int](b, "the key page's sections", `document.querySelectorAll('main section').length`); sections != 1 {
			t.Errorf("another project's key shows %d sections, want only the unknown key", sections)
		}
		b.shot("not-found")
	})

	t.Run("server down", func(t *testing.T) {
		b := b.on(t)
		// A second front for the same API, which this subtest takes down under the open page.
		target, _ := url.Parse(base)
		mux := http.NewServeMux()
		console.Mount(mux)
		mux.Handle("/v1/", httputil.NewSingleHostReverseProxy(target))
		front := httptest.NewServer(mux)
		defer front.Close()
		b.do(chromedp.Navigate(front.URL + "/ui/"))
		b.signIn(admin)
		b.settle("search through the second front")
		front.CloseClientConnections()
		front.Close()
		b.do(chromedp.Click(chromedp.CSS(`[data-test=nav-audit]`)))
		down := poll[string](b, "the unreachable error", `(() => { const e = document.querySelector('[data-test=error][data-kind=unreachable]'); return e && e.innerText; })()`)
		if !strings.Contains(down, "cannot be reached") {
			t.Errorf("server down: error %q", down)
		}
		b.shot("server-down")
	})

	// Every page view went through the API and was recorded like any other call.
	var consoleCalls int
	for _, r := range srv.Records.All() {
		if r.Principal == "acme-reader" {
			consoleCalls++
		}
	}
	if consoleCalls == 0 {
		t.Errorf("no query audit record of the acme reader's console calls")
	}
}
