package ingest_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/ingest/broker"
	"github.com/keytrail/keytrail/ingest/chsink"
	"github.com/keytrail/keytrail/internal/testenv"
	"github.com/keytrail/keytrail/query/chreader"
)

// Three ingesters, each draining one partition of the events (-ingest-partitions 3), store
// every event once, and every project's audit chain verifies: a project's events all reach
// one partition, so its chain has one writer. Each durable is delivered exactly the events of
// the projects the stream's subject transform hashes to it, which is what PartitionOf says.
// A subject the transform cannot place (four tokens) is refused at publish, not dropped.
func TestPartitionedIngestersKeepOneChainWriterPerProject(t *testing.T) {
	t.Parallel()
	streams := broker.DefaultStreamConfig()
	streams.Partitions = 3
	js := testenv.NewJetStream(t, streams)
	db := testenv.ClickHouse(t)
	var logs testenv.SyncBuffer
	for p := range streams.Partitions {
		own := streams
		own.Partition = p
		sink, err := chsink.New(chsink.Config{Conn: db.Conn})
		if err != nil {
			t.Fatal(err)
		}
		runIngester(t, &testenv.JetStream{JS: js.JS, Streams: own}, sink, &logs)
	}

	const projects, perProject = 12, 40
	base := time.Now().UTC().Add(-time.Hour).Truncate(time.Second)
	wantDelivered := map[int]uint64{}
	var usage, lifecycle uint64
	for i := range projects * perProject {
		project := fmt.Sprintf("proj-%02d", i%projects)
		wantDelivered[streams.PartitionOf(project)]++
		at := base.Add(time.Duration(i) * 100 * time.Millisecond)
		if (i/projects)%4 == 0 { // every project: 10 lifecycle events, 30 usage
			lc := &keytrailv1.LifecycleEvent{EventId: fmt.Sprintf("lc-%d", i), Time: timestamppb.New(at), Project: project,
				KeyId: fmt.Sprintf("key_%d", i%7), Action: keytrailv1.Action_ACTION_CREATED, Actor: "ops", ActorType: keytrailv1.ActorType_ACTOR_TYPE_USER}
			b, _ := proto.Marshal(lc)
			publish(t, js.JS, js.Streams.Subjects.Lifecycle(project), lc.EventId, "", b)
			lifecycle++
			continue
		}
		e := usageEvent(fmt.Sprintf("pu-%d", i), fmt.Sprintf("key_%d", i%7), "billing", at, 200)
		e.Project = project
		b, _ := proto.Marshal(e)
		publish(t, js.JS, js.Streams.Subjects.Usage(project), e.EventId, "", b)
		usage++
	}
	testenv.WaitForEvents(t, db, usage, lifecycle, 30*time.Second)
	if n := testenv.QueryUint64(t, db.Conn, "SELECT uniqExact(event_id) FROM usage_events"); n != usage {
		t.Errorf("%d distinct usage ids, want %d", n, usage)
	}

	chains, err := chreader.NewReader(db.Conn, nil).VerifyAuditTrail(context.Background(), "", time.Time{}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if len(chains) != projects {
		t.Errorf("%d chains, want one per project (%d)", len(chains), projects)
	}
	for _, c := range chains {
		if c.Break != nil || c.Rows != perProject/4 || c.LastSeq != uint64(perProject/4) {
			t.Errorf("chain of %s: %d rows through seq %d, break %+v; want %d intact rows", c.Project, c.Rows, c.LastSeq, c.Break, perProject/4)
		}
	}
	for p := range streams.Partitions {
		cons, err := js.JS.Consumer(context.Background(), streams.EventsStream, streams.DurableName(p))
		if err != nil {
			t.Fatal(err)
		}
		info, err := cons.Info(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if info.Delivered.Stream == 0 || info.AckFloor.Consumer != wantDelivered[p] {
			t.Errorf("partition %d acknowledged %d messages, want the %d of its projects", p, info.AckFloor.Consumer, wantDelivered[p])
		}
	}

	if _, err := js.JS.Publish(context.Background(), js.Streams.Subjects.Prefix+".usage.1.proj-00", []byte("x")); err == nil {
		t.Error("a four-token subject was accepted by the partitioned stream")
	}
}

// Every process must agree on the partition count: a process configured for another count
// than the stream's is refused at start, naming both.
func TestPartitionCountMustMatchTheStream(t *testing.T) {
	t.Parallel()
	streams := broker.DefaultStreamConfig()
	streams.Partitions = 2
	js := testenv.NewJetStream(t, streams)
	other := streams
	other.Partitions = 3
	err := broker.EnsureStreams(context.Background(), js.JS, other)
	if err == nil || !strings.Contains(err.Error(), "split into 2 ingest partitions, this process is configured for 3") {
		t.Errorf("EnsureStreams with another partition count: %v", err)
	}
	unpartitioned := broker.DefaultStreamConfig()
	if err := broker.EnsureStreams(context.Background(), js.JS, unpartitioned); err == nil {
		t.Error("an unpartitioned process was let onto a partitioned stream")
	}
}
