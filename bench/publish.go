package bench

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/keytrail/keytrail/event"
	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
)

// The publisher package against raw nats.go async publishing of the same events, on one
// connection each, from this process to the phase's nats-server. Runs alternate
// raw, package, package, raw, so that a machine getting busier or quieter during the
// phase weighs on both alike; each run publishes PublishEvents events into an emptied stream.

// publishPool is how many distinct events the publish runs cycle through (each publish gets
// a fresh event id): generating events is not what is measured.
const publishPool = 1 << 14

// publishRun is what one way of publishing achieved over its runs.
type publishRun struct {
	events int
	cpu    cpuSpan
}

func (r *publishRun) add(events int, s cpuSpan) {
	r.events += events
	r.cpu.wall += s.wall
	r.cpu.self += s.self
	if s.nats < 0 || r.cpu.nats < 0 {
		r.cpu.nats = -1
	} else {
		r.cpu.nats += s.nats
	}
}

func (r publishRun) rate() float64 { return float64(r.events) / r.cpu.wall.Seconds() }

func (h *harness) runPublish(ctx context.Context) error {
	n := h.sizes.PublishEvents
	js, err := h.startJetStream(ctx)
	if err != nil {
		return err
	}
	defer js.close()
	meter := h.meter(js)
	stream, err := js.js.Stream(ctx, js.streams.EventsStream)
	if err != nil {
		return err
	}
	pool := make([]*keytrailv1.UsageEvent, publishPool)
	g := newGenerator(h.names, 5)
	for i := range pool {
		pool[i] = g.usage(time.Now())
	}
	var raw, pkg publishRun
	for i, kind := range []string{"raw", "package", "package", "raw"} {
		if err := stream.Purge(ctx); err != nil {
			return err
		}
		// Every run its own ids: a repeated id would be a duplicate, which costs the server less.
		ids := newGenerator(h.names, uint64(1000+i))
		h.logf("publish: %s, %s events", kind, count(n))
		stopProfile := h.profile(fmt.Sprintf("publish-%d-%s", i+1, kind), false)
		s0 := meter.sample()
		if kind == "raw" {
			err = publishRaw(ctx, js, pool, ids, n)
		} else {
			err = publishPackage(ctx, js, pool, ids, n)
		}
		stopProfile()
		if err != nil {
			return fmt.Errorf("%s publish: %w", kind, err)
		}
		span := s0.to(meter.sample())
		if got, err := js.streamMsgs(ctx); err != nil || got != uint64(n) {
			return fmt.Errorf("%s publish: the stream holds %d messages, want %d (%v)", kind, got, n, err)
		}
		if kind == "raw" {
			raw.add(n, span)
		} else {
			pkg.add(n, span)
		}
	}
	ratio := pkg.rate() / raw.rate()
	h.report.add(Row{Figure: "publisher package publish rate (1 connection)", Value: pkg.rate(), Unit: UnitRate,
		Baseline: "raw nats.go PublishMsgAsync", BaselineValue: raw.rate(), Ratio: ratio,
		Target: ">= 0.7x raw", Met: met(ratio >= 0.7),
		Note: fmt.Sprintf("%d events per run, runs alternated raw, package, package, raw", n)})
	h.report.cost(
		CostRow{Stage: costPublishClient, Value: perEvent(pkg.cpu.self, pkg.events), Unit: UnitMicrosPerEvent,
			Baseline: "raw PublishMsgAsync", BaselineValue: perEvent(raw.cpu.self, raw.events),
			Note: fmt.Sprintf("package %s/s, raw %s/s (one connection each)", count(int(pkg.rate())), count(int(raw.rate())))},
		CostRow{Stage: costPublishServer, Value: perEvent(pkg.cpu.nats, pkg.events), Unit: UnitMicrosPerEvent,
			Baseline: "raw PublishMsgAsync", BaselineValue: perEvent(raw.cpu.nats, raw.events)},
	)
	return nil
}

// publishRaw publishes n events the way a gateway would with nats.go alone: protobuf,
// Nats-Msg-Id = event id, Content-Type, PublishMsgAsync with 4096 pending, then waits for
// every acknowledgement.
func publishRaw(ctx context.Context, env *jetStreamEnv, pool []*keytrailv1.UsageEvent, ids *generator, n int) error {
	nc, err := nats.Connect(env.url(), nats.Name("bench-raw-publisher"))
	if err != nil {
		return err
	}
	defer nc.Close()
	var failed atomic.Int64
	js, err := jetstream.New(nc,
		jetstream.WithPublishAsyncMaxPending(4096),
		jetstream.WithPublishAsyncErrHandler(func(jetstream.JetStream, *nats.Msg, error) { failed.Add(1) }))
	if err != nil {
		return err
	}
	contentType := event.EncodingProto.ContentType()
	for i := range n {
		if i%4096 == 0 && ctx.Err() != nil {
			return ctx.Err()
		}
		ev := pool[i%len(pool)]
		ev.EventId = ids.uuid()
		data, err := proto.Marshal(ev)
		if err != nil {
			return err
		}
		msg := &nats.Msg{Subject: env.streams.Subjects.Usage(ev.GetProject()), Data: data, Header: nats.Header{}}
		msg.Header.Set(jetstream.MsgIDHeader, ev.GetEventId())
		msg.Header.Set(event.ContentTypeHeader, contentType)
		if _, err := js.PublishMsgAsync(msg); err != nil {
			return err
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(2 * time.Minute):
		return errors.New("acknowledgements still pending after 2 minutes")
	}
	if f := failed.Load(); f > 0 {
		return fmt.Errorf("%d publishes failed", f)
	}
	return nil
}

// publishPackage publishes n events with package publisher (default settings) on its own
// connection, then flushes.
func publishPackage(ctx context.Context, env *jetStreamEnv, pool []*keytrailv1.UsageEvent, ids *generator, n int) error {
	pubs, closePubs, err := newPublishers(env, 1)
	if err != nil {
		return err
	}
	defer closePubs()
	p := pubs[0]
	for i := range n {
		ev := pool[i%len(pool)]
		ev.EventId = ids.uuid()
		if err := p.PublishUsage(ctx, ev); err != nil {
			return err
		}
	}
	fctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	return p.Flush(fctx)
}
