package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/keytrail/keytrail/event"
	"github.com/keytrail/keytrail/ingest/broker"
	"github.com/keytrail/keytrail/internal/storage"
	"github.com/keytrail/keytrail/migrations"
)

// jetStreamEnv is one phase's nats-server process (see natsproc.go) with keytrail's
// streams, its store in a temporary directory removed by close.
type jetStreamEnv struct {
	proc    *natsProcess
	dir     string
	nc      *nats.Conn
	js      jetstream.JetStream
	streams broker.StreamConfig
}

func (h *harness) startJetStream(ctx context.Context) (*jetStreamEnv, error) {
	bin, err := h.natsServerBinary(ctx)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "keytrail-bench-nats-")
	if err != nil {
		return nil, err
	}
	proc, err := startNATSProcess(ctx, bin, dir)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	env := &jetStreamEnv{proc: proc, dir: dir, streams: broker.DefaultStreamConfig()}
	if env.nc, err = nats.Connect(proc.url, nats.Name("keytrail-bench")); err != nil {
		env.close()
		return nil, fmt.Errorf("connect nats: %w", err)
	}
	if env.js, err = jetstream.New(env.nc); err != nil {
		env.close()
		return nil, err
	}
	if err := broker.EnsureStreams(ctx, env.js, env.streams); err != nil {
		env.close()
		return nil, err
	}
	return env, nil
}

func (e *jetStreamEnv) url() string { return e.proc.url }

func (e *jetStreamEnv) close() {
	if e.nc != nil {
		e.nc.Close()
	}
	e.proc.stop()
	os.RemoveAll(e.dir)
}

// streamMsgs is how many messages the events stream holds.
func (e *jetStreamEnv) streamMsgs(ctx context.Context) (uint64, error) {
	s, err := e.js.Stream(ctx, e.streams.EventsStream)
	if err != nil {
		return 0, err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return 0, err
	}
	return info.State.Msgs, nil
}

// fillResult describes a backlog written to the stream.
type fillResult struct {
	events   int
	bytes    int64 // protobuf payload bytes
	duration time.Duration
}

// fill publishes n usage events of the generator to the stream the way package publisher
// does (protobuf, Nats-Msg-Id = event id, Content-Type), asynchronously with a bounded
// window, and checks the stream holds them all.
func (e *jetStreamEnv) fill(ctx context.Context, g *generator, n int, base time.Time) (fillResult, error) {
	var failed atomic.Int64
	js, err := jetstream.New(e.nc,
		jetstream.WithPublishAsyncMaxPending(4096),
		jetstream.WithPublishAsyncErrHandler(func(jetstream.JetStream, *nats.Msg, error) { failed.Add(1) }))
	if err != nil {
		return fillResult{}, err
	}
	before, err := e.streamMsgs(ctx)
	if err != nil {
		return fillResult{}, err
	}
	contentType := event.EncodingProto.ContentType()
	res := fillResult{events: n}
	start := time.Now()
	for i := range n {
		if i%65536 == 0 && ctx.Err() != nil {
			return res, ctx.Err()
		}
		ev := g.usage(g.backlogTime(base))
		data, err := proto.Marshal(ev)
		if err != nil {
			return res, err
		}
		res.bytes += int64(len(data))
		msg := &nats.Msg{Subject: e.streams.Subjects.Usage(ev.GetProject()), Data: data, Header: nats.Header{}}
		msg.Header.Set(jetstream.MsgIDHeader, ev.GetEventId())
		msg.Header.Set(event.ContentTypeHeader, contentType)
		// A server that falls behind (10M ids in the duplicate window make its GC slow) is
		// back-pressure: wait for it rather than fail after the default 200 ms stall.
		if _, err := js.PublishMsgAsync(msg, jetstream.WithStallWait(time.Minute)); err != nil {
			return res, fmt.Errorf("publish backlog: %w", err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-ctx.Done():
		return res, ctx.Err()
	case <-time.After(2 * time.Minute):
		return res, errors.New("publish backlog: acknowledgements still pending after 2 minutes")
	}
	res.duration = time.Since(start)
	if f := failed.Load(); f > 0 {
		return res, fmt.Errorf("publish backlog: %d publishes failed", f)
	}
	after, err := e.streamMsgs(ctx)
	if err != nil {
		return res, err
	}
	if after-before != uint64(n) {
		return res, fmt.Errorf("publish backlog: the stream grew by %d messages, want %d", after-before, n)
	}
	return res, nil
}

// clientProduct names the harness's ClickHouse connections (system.processes client_name),
// so that queries of other clients sharing the server can be told apart.
const clientProduct = "keytrail-bench"

// clickHouse manages the dedicated benchmark database.
type clickHouse struct {
	addr, database string
}

func (c clickHouse) dsn() string {
	return fmt.Sprintf("clickhouse://%s/%s?dial_timeout=10s&read_timeout=1800s&client_info_product=%s/1", c.addr, c.database, clientProduct)
}

// openDefault connects to the server's default database (for work that must not depend on
// the benchmark database existing).
func (c clickHouse) openDefault(ctx context.Context) (driver.Conn, error) {
	return storage.Open(ctx, storage.Config{DSN: fmt.Sprintf("clickhouse://%s/default?dial_timeout=10s&client_info_product=%s/1", c.addr, clientProduct)})
}

// drop removes the database (and everything in it) if it exists.
func (c clickHouse) drop(ctx context.Context) error {
	conn, err := c.openDefault(ctx)
	if err != nil {
		return fmt.Errorf("clickhouse at %s: %w", c.addr, err)
	}
	defer conn.Close()
	// The name matched a plain identifier in Config.Validate.
	if err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+c.database); err != nil {
		return fmt.Errorf("drop database %s: %w", c.database, err)
	}
	return nil
}

// fresh drops and recreates the database with keytrail's schema and returns a connection
// to it.
func (c clickHouse) fresh(ctx context.Context) (driver.Conn, error) {
	if err := c.drop(ctx); err != nil {
		return nil, err
	}
	return c.open(ctx, true)
}

// open connects to the database, applying the migrations when migrate is set.
func (c clickHouse) open(ctx context.Context, migrate bool) (driver.Conn, error) {
	conn, err := storage.Open(ctx, storage.Config{DSN: c.dsn()})
	if err != nil {
		return nil, err
	}
	if migrate {
		if _, err := migrations.Apply(ctx, conn); err != nil {
			conn.Close()
			return nil, err
		}
	}
	return conn, nil
}

// usageCounts is what every usage table holds: the raw row count and each rollup's request
// total. All equal means every stored event is visible to every answer.
var usageCounts = func() string {
	cols := []string{"(SELECT count() FROM usage_events)"}
	for _, r := range migrations.UsageRollups {
		cols = append(cols, "(SELECT "+r.Requests+" FROM "+r.Table+")")
	}
	return "SELECT\n    " + strings.Join(cols, ",\n    ")
}()

// waitQueryable polls until the raw table holds want usage rows and every rollup counts them
// all, and returns when that was first seen. It polls the raw count alone (cheap) until it is
// reached. poll bounds the measurement error.
func waitQueryable(ctx context.Context, conn driver.Conn, want uint64, poll, timeout time.Duration) (time.Time, error) {
	deadline := time.Now().Add(timeout)
	last := make([]uint64, 1+len(migrations.UsageRollups))
	dest := make([]any, len(last))
	for i := range last {
		dest[i] = &last[i]
	}
	for {
		var raw uint64
		if err := conn.QueryRow(ctx, "SELECT count() FROM usage_events").Scan(&raw); err != nil {
			return time.Time{}, fmt.Errorf("count usage events: %w", err)
		}
		last[0] = raw
		if raw > want {
			return time.Time{}, fmt.Errorf("usage_events holds %d rows, more than the %d events sent (duplicates)", raw, want)
		}
		if raw == want {
			if err := conn.QueryRow(ctx, usageCounts).Scan(dest...); err != nil {
				return time.Time{}, fmt.Errorf("count rollups: %w", err)
			}
			if !slices.ContainsFunc(last, func(n uint64) bool { return n != want }) {
				return time.Now(), nil
			}
		}
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("not all %d events queryable after %s: raw and rollup counts %v", want, timeout, last)
		}
		select {
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		case <-time.After(poll):
		}
	}
}

// contention samples, once a second, what else the ClickHouse server and this machine are
// doing: queries of other clients, merges in other databases, and the load average. Shared
// servers make figures worse than the code deserves; the report says how much was shared.
type contention struct {
	samples, foreignQueries, foreignMerges int
	loadSum                                float64
}

func (c *contention) String() string {
	if c.samples == 0 {
		return "no samples"
	}
	return fmt.Sprintf("other clients' queries running in %.0f%% of 1-s samples, merges in other databases in %.0f%%, mean load average %.1f",
		100*float64(c.foreignQueries)/float64(c.samples), 100*float64(c.foreignMerges)/float64(c.samples), c.loadSum/float64(c.samples))
}

// watchContention samples until ctx ends; read the result after it returned.
func watchContention(ctx context.Context, conn driver.Conn, database string, into *contention) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		var queries, merges uint64
		errQ := conn.QueryRow(ctx, "SELECT count() FROM system.processes WHERE position(client_name, ?) = 0", clientProduct).Scan(&queries)
		errM := conn.QueryRow(ctx, "SELECT count() FROM system.merges WHERE database != ?", database).Scan(&merges)
		if errQ == nil && errM == nil {
			into.samples++
			if queries > 0 {
				into.foreignQueries++
			}
			if merges > 0 {
				into.foreignMerges++
			}
			if b, err := os.ReadFile("/proc/loadavg"); err == nil {
				var l float64
				fmt.Sscan(string(b), &l)
				into.loadSum += l
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
