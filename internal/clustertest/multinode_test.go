//go:build cluster

package clustertest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keytrail/keytrail/event"
	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/ingest/broker"
	"github.com/keytrail/keytrail/internal/apitest"
	"github.com/keytrail/keytrail/internal/storage"
	"github.com/keytrail/keytrail/internal/testenv"
	"github.com/keytrail/keytrail/migrations"
	"github.com/keytrail/keytrail/publisher"
)

// The multi-node test. Topology, all separate processes on loopback: 3 nats-server processes
// clustered, keytrail's streams R3; ZooKeeper and 4 ClickHouse 18.16 servers as 2 shards x 2
// replicas; 2 ingesters (-ingest-partitions 2, one partition each); 2 query nodes
// (-role query). The four keytrail processes start at the same moment against a new database:
// the migrations lease lets one of them apply the cluster schema.
//
// Load: the event set of events_test.go (60,000 usage events of 4 projects, about 190 lifecycle
// events including a rotation), published in order by one gateway-side publisher at about
// 1,500 events/s. Faults, one after the other while the publishing goes on: the NATS server leading the
// events stream is SIGKILLed and restarted, ingester 0 is SIGKILLed and restarted, the
// ClickHouse server every ingester writes shard 1 to first (ch-s1r1) is SIGKILLed and
// restarted; at the end, the query node running the alert evaluator is SIGKILLed.
//
// Expected, exactly: the publisher gives up on nothing; usage_events through the Distributed
// table has count() == uniqExact(event_id) == 60,000 and lifecycle_events every lifecycle
// event; on every server the replicated tables of its shard hold the same rows as its
// sibling's, and the shards add up to the totals; every rollup's total equals the raw total,
// through the Distributed table and on every server; /v1/audit/verify finds every project's
// chain intact with one row per lifecycle event; the answers of both query nodes (services of
// a key, keys of a service, the rotation verdict, spend per key per day, key state at an
// instant) equal a single server's answers on the same events; exactly one query node holds
// the alert-evaluator lease, and the other takes it over when that one dies.
//
// The test logs what it measured: events/s through the cluster, the publish stall around the
// NATS leader change, the storage stall around the ClickHouse replica loss, and recovery times;
// last, a burst without faults measures throughput.
func TestMultiNodeClusterUnderFaults(t *testing.T) {
	set := newEventSet(testenv.EnvInt(t, "KEYTRAIL_CLUSTER_EVENTS", 60000))
	rate := testenv.EnvInt(t, "KEYTRAIL_CLUSTER_RATE", 1500)
	dbName := fmt.Sprintf("kt_multinode_%d", os.Getpid()%100000)
	dsn := lab.dsn(dbName)
	dir := t.TempDir()

	common := []string{"serve", "-nats-url", lab.natsURLs(), "-clickhouse-dsn", dsn, "-clickhouse-cluster", lab.name,
		"-stream-replicas", "3", "-ingest-partitions", "2", "-lease-ttl", "3s", "-ack-wait", "15s", "-log-level", "info"}
	var ingesters, queries [2]*testenv.KeytrailProcess
	for i := range 2 {
		ingesters[i] = testenv.NewKeytrailProcess(t, keytrailBin, fmt.Sprintf("ingester-%d", i), append(slices.Clone(common), "-role", "ingest",
			"-ingest-partition", strconv.Itoa(i), "-http-listen", "127.0.0.1:0", "-batch-size", "5000", "-flush-interval", "250ms")...)
		queries[i] = testenv.NewKeytrailProcess(t, keytrailBin, fmt.Sprintf("query-%d", i), append(slices.Clone(common), "-role", "query",
			"-grpc-listen", "127.0.0.1:0", "-http-listen", "127.0.0.1:0", "-dev-token-file", filepath.Join(dir, fmt.Sprintf("token-%d", i)),
			"-alert-interval", "2s")...)
	}
	all := append(ingesters[:], queries[:]...)
	began := time.Now()
	for _, p := range all {
		p.Launch()
	}
	for _, p := range all {
		p.AwaitStarted(3 * time.Minute)
	}
	t.Logf("four keytrail processes started together and up in %s (one applied the cluster schema under the migrations lease)", time.Since(began).Round(time.Millisecond))

	ctx := context.Background()
	scfg := storage.Config{DSN: dsn, Cluster: lab.name}
	conn, err := storage.Open(ctx, scfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cl, err := storage.OpenCluster(ctx, scfg, conn, lab.name)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("kept database %s on the cluster in %s", dbName, lab.dir)
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_ = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+dbName+" ON CLUSTER "+lab.name)
	})
	versions, err := migrations.All()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range cl.Replicas() {
		if n := testenv.QueryUint64(t, r.Conn, "SELECT count() FROM "+dbName+".schema_migrations"); n != uint64(len(versions)) {
			t.Errorf("%s: the ledger has %d rows, want each of the %d migrations once", r.Name(), n, len(versions))
		}
	}

	// The gateway side: one publisher over all three NATS servers.
	_, js := testenv.Connect(t, lab.natsURLs(), nats.Name("clustertest-gateway"), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	var failedMu sync.Mutex
	var failed []string
	pub, err := publisher.New(publisher.Config{JetStream: js, Subjects: event.Subjects{Prefix: event.DefaultSubjectPrefix},
		AckTimeout: 2 * time.Second, MaxRetries: 25, OnFailure: func(id string, err error) {
			failedMu.Lock()
			failed = append(failed, id+": "+err.Error())
			failedMu.Unlock()
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close(context.Background())

	// Progress samples: what the publisher has had acknowledged, what storage holds.
	acked := newSampler(50*time.Millisecond, func() (uint64, error) { return pub.Stats().Acked, nil })
	defer acked.stop()
	stored := newSampler(300*time.Millisecond, func() (uint64, error) {
		var n uint64
		err := conn.QueryRow(ctx, "SELECT count() FROM usage_events").Scan(&n)
		return n, err
	})
	defer stored.stop()
	// Partition 0's projects, whose rows only ingester-0 writes.
	partitions := broker.StreamConfig{Partitions: 2}
	var p0 []string
	for _, p := range setProjects {
		if partitions.PartitionOf(p) == 0 {
			p0 = append(p0, p)
		}
	}
	if len(p0) == 0 || len(p0) == len(setProjects) {
		t.Fatalf("partition 0 holds projects %v of %v: the test needs both partitions busy", p0, setProjects)
	}
	storedP0 := newSampler(300*time.Millisecond, func() (uint64, error) {
		var n uint64
		err := conn.QueryRow(ctx, "SELECT count() FROM usage_events WHERE has(?, project)", p0).Scan(&n)
		return n, err
	})
	defer storedP0.stop()

	var published atomic.Int64
	publishDone := make(chan error, 1)
	pubStart := time.Now()
	go func() { publishDone <- publishPaced(pub, set.events, rate, &published) }()
	waitFor := func(fraction float64) {
		for published.Load() < int64(fraction*float64(len(set.events))) {
			time.Sleep(20 * time.Millisecond)
		}
	}
	var report []string
	logf := func(format string, args ...any) {
		line := fmt.Sprintf(format, args...)
		report = append(report, line)
		t.Log(line)
	}

	// The faults come one after the other, each once the cluster has recovered from the one
	// before, so that each cost is measured alone: about 40 s of publishing at 1,500/s.
	// Fault 1: the NATS server leading the events stream dies.
	waitFor(0.10)
	leader := streamLeader(t, js, "KEYTRAIL_EVENTS")
	natsKill := time.Now()
	lab.must(t, "kill", leader)
	var newLeader string
	testenv.Eventually(t, time.Minute, func() error {
		newLeader = streamLeader(t, js, "KEYTRAIL_EVENTS")
		if newLeader == "" || newLeader == leader {
			return fmt.Errorf("no new stream leader yet")
		}
		return nil
	})
	elected := time.Since(natsKill)
	time.Sleep(2 * time.Second)
	natsRestart := time.Now()
	lab.must(t, "start", leader) // returns once the server's /healthz is ok: caught up with its streams
	natsBack := time.Now()
	testenv.Eventually(t, 2*time.Minute, func() error { return streamCurrent(js, "KEYTRAIL_EVENTS") })
	logf("NATS: stream leader %s SIGKILLed; %s elected in %s; %s restarted 2s after the kill, healthy (caught up) %s after its restart, a current replica of the events stream %s later",
		leader, newLeader, elected.Round(time.Millisecond), leader, natsBack.Sub(natsRestart).Round(time.Millisecond), time.Since(natsBack).Round(time.Millisecond))

	// Fault 2: an ingester dies.
	waitFor(0.50)
	ingKill := time.Now()
	ingesters[0].Kill()
	time.Sleep(time.Second)
	ingesters[0].Start()
	logf("ingester-0 SIGKILLed, restarted after 1s, serving again %s after the kill", time.Since(ingKill).Round(time.Millisecond))

	// Fault 3: a ClickHouse replica dies: the server both ingesters write shard 1 to first.
	waitFor(0.75)
	chKill := time.Now()
	lab.must(t, "kill", chName(1, 1))
	time.Sleep(3 * time.Second)
	lab.must(t, "start", chName(1, 1))
	chBack := time.Now()
	restarted := cl.Shards[0].Replicas[0]
	syncCtx, cancelSync := context.WithTimeout(ctx, 2*time.Minute)
	if err := restarted.Conn.Exec(syncCtx, "SYSTEM SYNC REPLICA "+dbName+".usage_events_local"); err != nil {
		t.Fatalf("%s did not catch up after its restart: %v", restarted.Name(), err)
	}
	cancelSync()
	caughtUp := time.Since(chBack)
	logf("ClickHouse: %s SIGKILLed, restarted after 3s; it had fetched what it missed (SYSTEM SYNC REPLICA returned) %s after the restart", restarted.Name(), caughtUp.Round(time.Millisecond))

	if err := <-publishDone; err != nil {
		t.Fatal(err)
	}
	flushCtx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	if err := pub.Flush(flushCtx); err != nil {
		t.Fatalf("publisher flush: %v (stats %+v)", err, pub.Stats())
	}
	cancel()
	pubEnd := time.Now()
	if st := pub.Stats(); st.Failed != 0 || len(failed) != 0 {
		t.Fatalf("the publisher gave up on %d events: %v", st.Failed, failed)
	}

	wantUsage, wantLifecycle := uint64(set.usage), uint64(set.lifecycleTotal())
	var storedAll time.Time
	testenv.Eventually(t, 3*time.Minute, func() error {
		var u, l uint64
		if err := conn.QueryRow(ctx, "SELECT (SELECT count() FROM usage_events), (SELECT count() FROM lifecycle_events)").Scan(&u, &l); err != nil {
			return err
		}
		if u > wantUsage || l > wantLifecycle {
			t.Fatalf("more rows than events: usage %d > %d or lifecycle %d > %d", u, wantUsage, l, wantLifecycle)
		}
		if u != wantUsage || l != wantLifecycle {
			return fmt.Errorf("stored %d usage and %d lifecycle events of %d and %d", u, l, wantUsage, wantLifecycle)
		}
		storedAll = time.Now()
		return nil
	})
	total := float64(wantUsage + wantLifecycle)
	logf("throughput: %d events published in %s (%.0f/s, paced at %d/s, with the faults); all stored %s after the first publish: %.0f events/s end to end through the cluster",
		int(total), pubEnd.Sub(pubStart).Round(time.Millisecond), total/pubEnd.Sub(pubStart).Seconds(), rate,
		storedAll.Sub(pubStart).Round(time.Millisecond), total/storedAll.Sub(pubStart).Seconds())
	logf("publish stall around the NATS leader change: longest time without an acknowledgement %s", acked.longestStall(natsKill.Add(-time.Second), natsBack.Add(5*time.Second)).Round(time.Millisecond))
	logf("storage stall of partition 0 around its ingester's kill: longest time without new rows %s", storedP0.longestStall(ingKill.Add(-time.Second), ingKill.Add(10*time.Second)).Round(time.Millisecond))
	logf("storage stall around the ClickHouse replica loss: longest time without new rows %s", stored.longestStall(chKill.Add(-time.Second), chBack.Add(caughtUp).Add(5*time.Second)).Round(time.Millisecond))

	// Exactly once, through the Distributed tables and on every server.
	syncAll(t, &clusterDB{Name: dbName, Cluster: cl}, "usage_events_local", "lifecycle_events_local", "usage_key_minute_local", "usage_by_service_minute_local",
		"key_service_totals_local", "key_client_ip_totals_local", "spend_hourly_local", "spend_daily_local", "usage_key_hourly_local", "usage_key_5min_local")
	if n := testenv.QueryUint64(t, conn, "SELECT uniqExact(event_id) FROM usage_events"); n != wantUsage {
		t.Errorf("uniqExact(event_id) %d, want %d", n, wantUsage)
	}
	totals := map[string]string{
		"usage_events": "SELECT count() FROM %s", "usage_events.distinct": "SELECT uniqExact(event_id) FROM %s",
		"lifecycle_events": "SELECT count() FROM %s", "lifecycle_events.distinct": "SELECT uniqExact(event_id) FROM %s",
		"key_client_ip_totals": "SELECT toUInt64(countMerge(requests)) FROM %s",
	}
	for _, r := range migrations.UsageRollups {
		totals[r.Table] = "SELECT toUInt64(" + r.Requests + ") FROM %s"
	}
	shardSum := map[string]uint64{}
	for _, shard := range cl.Shards {
		first := map[string]uint64{}
		for i, r := range shard.Replicas {
			for what, q := range totals {
				table, _, _ := strings.Cut(what, ".")
				n := testenv.QueryUint64(t, r.Conn, fmt.Sprintf(q, dbName+"."+table+migrations.LocalSuffix))
				if i == 0 {
					first[what] = n
					shardSum[what] += n
				} else if n != first[what] {
					t.Errorf("%s: %s %d, but %d on its shard's first replica", r.Name(), what, n, first[what])
				}
			}
			if first["usage_events"] != first["usage_events.distinct"] {
				t.Errorf("%s: %d raw rows for %d distinct ids", r.Name(), first["usage_events"], first["usage_events.distinct"])
			}
		}
	}
	for what, n := range shardSum {
		want := wantUsage
		if strings.HasPrefix(what, "lifecycle") {
			want = wantLifecycle
		}
		if n != want {
			t.Errorf("the shards hold %d for %s, want %d", n, what, want)
		}
		if d := testenv.QueryUint64(t, conn, fmt.Sprintf(totals[what], strings.SplitN(what, ".", 2)[0])); d != want {
			t.Errorf("through the Distributed table %s is %d, want %d", what, d, want)
		}
	}
	logf("stored exactly once: usage_events %d rows = %d distinct ids, lifecycle_events %d; shard 1 holds %d usage rows and shard 2 %d, on both replicas each; every rollup = %d",
		wantUsage, wantUsage, wantLifecycle, testenv.QueryUint64(t, cl.Shards[0].Replicas[0].Conn, "SELECT count() FROM "+dbName+".usage_events_local"),
		testenv.QueryUint64(t, cl.Shards[1].Replicas[0].Conn, "SELECT count() FROM "+dbName+".usage_events_local"), wantUsage)

	// The API: the audit chains, and the answers against a single server's on the same events.
	cluster0 := apiClient{base: "http://" + queries[0].HTTPAddr, token: readToken(t, filepath.Join(dir, "token-0"))}
	cluster1 := apiClient{base: "http://" + queries[1].HTTPAddr, token: readToken(t, filepath.Join(dir, "token-1"))}
	var verify struct {
		Intact   bool `json:"intact"`
		Projects []struct {
			Project     string          `json:"project"`
			RowsChecked string          `json:"rows_checked"`
			Intact      bool            `json:"intact"`
			FirstBreak  json.RawMessage `json:"first_break"`
		} `json:"projects"`
	}
	if err := json.Unmarshal(cluster0.get(t, "/v1/audit/verify"), &verify); err != nil {
		t.Fatal(err)
	}
	if !verify.Intact || len(verify.Projects) != len(setProjects) {
		t.Errorf("audit verify: intact %v over %d projects: %+v", verify.Intact, len(verify.Projects), verify.Projects)
	}
	for _, p := range verify.Projects {
		if !p.Intact || p.RowsChecked != strconv.Itoa(set.lifecycle[p.Project]) {
			t.Errorf("audit chain of %s: intact %v, %s rows checked, want %d (break %s)", p.Project, p.Intact, p.RowsChecked, set.lifecycle[p.Project], p.FirstBreak)
		}
	}

	single := testenv.ClickHouse(t)
	for chunk := range slices.Chunk(set.events, 10000) {
		testenv.Insert(t, single, chunk...)
	}
	ref := apiClient{base: "http://" + apitest.Start(t, single, apitest.Options{}).HTTPAddr, token: apitest.AdminToken}
	ts := func(d time.Duration) string { return url.QueryEscape(set.base.Add(d).Format(time.RFC3339)) }
	questions := map[string]string{
		"services of a key":          "/v1/keys/" + key("acme", 3) + "/services?start_time=" + ts(-2*time.Hour) + "&end_time=" + ts(30*time.Hour),
		"services of the new key":    "/v1/keys/" + key("acme", 16) + "/services?start_time=" + ts(19*time.Hour) + "&end_time=" + ts(29*time.Hour),
		"keys of a service":          "/v1/services/svc-2/keys?start_time=" + ts(-2*time.Hour) + "&end_time=" + ts(30*time.Hour) + "&page_size=100",
		"rotation verdict":           "/v1/rotations/" + key("acme", 3) + "?project=acme&end_time=" + ts(27*time.Hour+30*time.Minute),
		"spend per key per day":      "/v1/spend?group_by=SPEND_DIMENSION_KEY&granularity=GRANULARITY_DAY&start_time=" + ts(-24*time.Hour) + "&end_time=" + ts(48*time.Hour) + "&page_size=1000",
		"state of a disabled key":    "/v1/keys/" + key("globex", 5) + "?at=" + ts(12*time.Hour),
		"state of the rotated key":   "/v1/keys/" + key("acme", 3) + "?at=" + ts(21*time.Hour),
		"state of the replacing key": "/v1/keys/" + key("acme", 16) + "?at=" + ts(21*time.Hour),
	}
	answers := map[string]any{}
	for what, q := range questions {
		want := ref.getJSON(t, q)
		answers[what] = want
		for i, c := range []apiClient{cluster0, cluster1} {
			if got := c.getJSON(t, q); !reflect.DeepEqual(got, want) {
				t.Errorf("%s: query node %d answers %s differently from a single server:\n got %s\nwant %s", what, i, q, compact(got), compact(want))
			}
		}
	}
	checkAnswers(t, set, answers)
	logf("answers: %d questions (services of a key, keys of a service, the rotation verdict, spend per key per day, key state at an instant) answered alike by both query nodes and a single server", len(questions))

	// The alert evaluator runs in exactly one query node, and moves when that node dies.
	holder := awaitOneLeaseHolder(t, queries, -1)
	leaseKill := time.Now()
	queries[holder].Kill()
	other := awaitOneLeaseHolder(t, queries, holder)
	logf("alert evaluator: runs on query-%d only; query-%d took it over %s after query-%d was SIGKILLed (lease TTL 3s)", holder, other, time.Since(leaseKill).Round(time.Millisecond), holder)
	queries[holder].Start()
	if h := awaitOneLeaseHolder(t, queries, -1); h != other {
		t.Errorf("after query-%d returned, query-%d holds the alert-evaluator lease, want it to stay with query-%d", holder, h, other)
	}

	// Throughput without faults: a burst of usage events published as fast as one publisher
	// goes, drained by the two ingesters into the two shards.
	burst := testenv.EnvInt(t, "KEYTRAIL_CLUSTER_BURST", 40000)
	var burstEvents []any
	for _, e := range set.burst(burst, "b-") {
		burstEvents = append(burstEvents, e)
	}
	var burstPublished atomic.Int64
	burstStart := time.Now()
	if err := publishPaced(pub, burstEvents, 1<<30, &burstPublished); err != nil {
		t.Fatal(err)
	}
	flushCtx, cancel = context.WithTimeout(ctx, 3*time.Minute)
	if err := pub.Flush(flushCtx); err != nil {
		t.Fatalf("publisher flush: %v (stats %+v)", err, pub.Stats())
	}
	cancel()
	burstAcked := time.Since(burstStart)
	testenv.Eventually(t, 3*time.Minute, func() error {
		if n := testenv.QueryUint64(t, conn, "SELECT count() FROM usage_events"); n != wantUsage+uint64(burst) {
			return fmt.Errorf("%d usage rows, want %d", n, wantUsage+uint64(burst))
		}
		return nil
	})
	burstStored := time.Since(burstStart)
	syncAll(t, &clusterDB{Name: dbName, Cluster: cl}, "usage_events_local")
	for _, r := range cl.Replicas() {
		local := fmt.Sprintf("SELECT %%s FROM %s.usage_events_local", dbName)
		if n, d := testenv.QueryUint64(t, r.Conn, fmt.Sprintf(local, "count()")), testenv.QueryUint64(t, r.Conn, fmt.Sprintf(local, "uniqExact(event_id)")); n != d {
			t.Errorf("after the burst %s holds %d rows for %d distinct ids", r.Name(), n, d)
		}
	}
	if n := testenv.QueryUint64(t, conn, "SELECT uniqExact(event_id) FROM usage_events"); n != wantUsage+uint64(burst) {
		t.Errorf("after the burst: %d distinct ids, want %d", n, wantUsage+uint64(burst))
	}
	logf("throughput without faults: a burst of %d usage events acknowledged to the publisher in %s (%.0f/s) and all stored %s after its first publish: %.0f events/s through the cluster",
		burst, burstAcked.Round(time.Millisecond), float64(burst)/burstAcked.Seconds(), burstStored.Round(time.Millisecond), float64(burst)/burstStored.Seconds())

	if out := os.Getenv("KEYTRAIL_CLUSTER_REPORT"); out != "" {
		_ = os.WriteFile(out, []byte(strings.Join(report, "\n")+"\n"), 0o644)
	}
}

// checkAnswers checks the single server's answers against the event set, so that the
// comparison above compares answers with substance: the expected figures are counted from the
// events, not written down.
func checkAnswers(t *testing.T, set *eventSet, answers map[string]any) {
	t.Helper()
	field := func(v any, path ...string) any {
		for _, p := range path {
			m, ok := v.(map[string]any)
			if !ok {
				return nil
			}
			v = m[p]
		}
		return v
	}
	list := func(v any, path ...string) []any { l, _ := field(v, path...).([]any); return l }
	sumField := func(rows []any, name string) int {
		n := 0
		for _, r := range rows {
			v, _ := strconv.Atoi(fmt.Sprint(field(r, name)))
			n += v
		}
		return n
	}
	var oldKey, svc2Keys, window, windowOld, windowNew int
	keysOfSvc2 := map[string]bool{}
	windowEnd := set.base.Add(27*time.Hour + 30*time.Minute)
	for _, e := range set.events {
		u, ok := e.(*keytrailv1.UsageEvent)
		if !ok {
			continue
		}
		at := u.GetTime().AsTime()
		if u.KeyId == key("acme", 3) {
			oldKey++
		}
		if u.Service == "svc-2" {
			keysOfSvc2[u.Project+"/"+u.KeyId] = true
		}
		if !at.Before(set.rotation) && at.Before(windowEnd) && u.Project == "acme" {
			switch u.KeyId {
			case key("acme", 3):
				windowOld++
			case key("acme", 16):
				windowNew++
			}
		}
	}
	svc2Keys, window = len(keysOfSvc2), windowOld+windowNew
	services := list(answers["services of a key"], "services")
	if len(services) != setServices || sumField(services, "request_count") != oldKey {
		t.Errorf("services of %s: %d services with %d requests, want %d with %d", key("acme", 3), len(services), sumField(services, "request_count"), setServices, oldKey)
	}
	if n := len(list(answers["services of the new key"], "services")); n != 5 {
		t.Errorf("services of %s: %d, want the 5 that moved", key("acme", 16), n)
	}
	if n := len(list(answers["keys of a service"], "keys")); n != svc2Keys {
		t.Errorf("keys of svc-2: %d, want %d", n, svc2Keys)
	}
	rot := answers["rotation verdict"]
	if field(rot, "new_key_id") != key("acme", 16) || fmt.Sprint(field(rot, "old_key_requests")) != strconv.Itoa(windowOld) ||
		fmt.Sprint(field(rot, "new_key_requests")) != strconv.Itoa(windowNew) || field(rot, "verdict") != "ROTATION_VERDICT_NOT_YET" {
		t.Errorf("rotation: new key %v, %v old and %v new requests, verdict %v; want %s, %d, %d (of %d), NOT_YET",
			field(rot, "new_key_id"), field(rot, "old_key_requests"), field(rot, "new_key_requests"), field(rot, "verdict"), key("acme", 16), windowOld, windowNew, window)
	}
	chase := fmt.Sprint(field(rot, "services_to_chase"))
	for _, s := range []string{"svc-5", "svc-6", "svc-7"} {
		if !strings.Contains(chase, s) {
			t.Errorf("rotation: services to chase %s lack %s, which never moved", chase, s)
		}
	}
	if rows := list(answers["spend per key per day"], "rows"); sumField(rows, "requests") != set.usage || len(rows) < len(setProjects)*setKeys {
		t.Errorf("spend per key per day: %d rows, %d requests; want at least %d rows and %d requests", len(rows), sumField(rows, "requests"), len(setProjects)*setKeys, set.usage)
	}
	for what, want := range map[string][2]string{
		"state of a disabled key":    {"KEY_STATUS_DISABLED", ""},
		"state of the rotated key":   {"KEY_STATUS_ACTIVE", key("acme", 16)},
		"state of the replacing key": {"KEY_STATUS_ACTIVE", ""},
	} {
		k := field(answers[what], "key")
		if field(k, "status") != want[0] || fmt.Sprint(field(k, "replaced_by_key_id")) != want[1] {
			t.Errorf("%s: status %v, replaced by %v; want %s, %q", what, field(k, "status"), field(k, "replaced_by_key_id"), want[0], want[1])
		}
	}
}

// publishPaced publishes the events in order at about perSecond a second.
func publishPaced(p *publisher.Publisher, events []any, perSecond int, published *atomic.Int64) error {
	ctx := context.Background()
	return testenv.Paced(ctx, len(events), perSecond, func(i int) error {
		var err error
		switch e := events[i].(type) {
		case *keytrailv1.UsageEvent:
			err = p.PublishUsage(ctx, e)
		case *keytrailv1.LifecycleEvent:
			err = p.PublishLifecycle(ctx, e)
		}
		if err != nil {
			return fmt.Errorf("publish event %d: %w", i, err)
		}
		published.Add(1)
		return nil
	})
}

func streamLeader(t *testing.T, js jetstream.JetStream, stream string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return ""
	}
	info, err := s.Info(ctx)
	if err != nil || info.Cluster == nil {
		return ""
	}
	return info.Cluster.Leader
}

// streamCurrent reports an error until every replica of the stream is current.
func streamCurrent(js jetstream.JetStream, stream string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return err
	}
	if info.Cluster == nil || info.Cluster.Leader == "" || len(info.Cluster.Replicas) != 2 {
		return fmt.Errorf("stream %s: no leader with two followers yet: %+v", stream, info.Cluster)
	}
	for _, r := range info.Cluster.Replicas {
		if !r.Current || r.Offline {
			return fmt.Errorf("stream %s: follower %s not current (lag %d)", stream, r.Name, r.Lag)
		}
	}
	return nil
}

// sampler records a counter over time.
type sampler struct {
	mu      sync.Mutex
	at      []time.Time
	values  []uint64
	done    chan struct{}
	stopped sync.WaitGroup
}

func newSampler(every time.Duration, read func() (uint64, error)) *sampler {
	s := &sampler{done: make(chan struct{})}
	s.stopped.Add(1)
	go func() {
		defer s.stopped.Done()
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			if v, err := read(); err == nil {
				s.mu.Lock()
				s.at, s.values = append(s.at, time.Now()), append(s.values, v)
				s.mu.Unlock()
			}
			select {
			case <-s.done:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

func (s *sampler) stop() {
	select {
	case <-s.done:
	default:
		close(s.done)
	}
	s.stopped.Wait()
}

// longestStall is the longest time within [from, to] that the counter did not grow.
func (s *sampler) longestStall(from, to time.Time) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	var longest time.Duration
	var since time.Time
	for i := range s.at {
		if s.at[i].Before(from) || s.at[i].After(to) {
			continue
		}
		if since.IsZero() || (i > 0 && s.values[i] > s.values[i-1]) {
			since = s.at[i]
			continue
		}
		longest = max(longest, s.at[i].Sub(since))
	}
	return longest
}

type apiClient struct{ base, token string }

func (c apiClient) get(t *testing.T, path string) []byte {
	t.Helper()
	code, body := testenv.Get(t, c.base, path, nil, "Bearer "+c.token)
	if code != http.StatusOK {
		t.Fatalf("GET %s%s: %d %s", c.base, path, code, body)
	}
	return body
}

func (c apiClient) getJSON(t *testing.T, path string) any {
	t.Helper()
	var v any
	if err := json.Unmarshal(c.get(t, path), &v); err != nil {
		t.Fatal(err)
	}
	return v
}

func compact(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func readToken(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// awaitOneLeaseHolder waits until exactly one running query node (not the one excluded)
// reports holding the alert-evaluator lease, and returns its index.
func awaitOneLeaseHolder(t *testing.T, queries [2]*testenv.KeytrailProcess, excluded int) int {
	t.Helper()
	holder := -1
	testenv.Eventually(t, 30*time.Second, func() error {
		holders := []int{}
		for i, q := range queries {
			if i == excluded || !q.Running() {
				continue
			}
			resp, err := http.Get("http://" + q.HTTPAddr + "/metrics")
			if err != nil {
				return err
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if strings.Contains(string(body), `keytrail_lease_held{lease="alert-evaluator"} 1`) {
				holders = append(holders, i)
			}
		}
		if len(holders) != 1 {
			return fmt.Errorf("query nodes holding the alert-evaluator lease: %v", holders)
		}
		holder = holders[0]
		return nil
	})
	return holder
}
