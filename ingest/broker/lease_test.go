package broker_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keytrail/keytrail/ingest/broker"
	"github.com/keytrail/keytrail/internal/testenv"
)

func leaseConfig(js jetstream.JetStream, holder string) broker.LeaseConfig {
	return broker.LeaseConfig{JetStream: js, Name: "migrations", Holder: holder, TTL: time.Second, Poll: 50 * time.Millisecond}
}

// Processes starting at once take turns: of four goroutines, each on its own NATS connection,
// asking for the same lease together, never two hold it at once, and every one gets it.
func TestLeaseIsHeldByOneAtATime(t *testing.T) {
	t.Parallel()
	env := testenv.NewJetStream(t, broker.DefaultStreamConfig())
	var inside, most, ran atomic.Int32
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range 4 {
		nc, err := nats.Connect(env.URL)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		js, _ := jetstream.New(nc)
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			err := broker.WithLease(ctx, leaseConfig(js, "p"+string(rune('a'+i))), func(ctx context.Context, l *broker.Lease) error {
				n := inside.Add(1)
				for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
				}
				time.Sleep(150 * time.Millisecond) // a migration's worth of work, shortened
				if err := l.Check(ctx); err != nil {
					return err
				}
				inside.Add(-1)
				ran.Add(1)
				return nil
			})
			if err != nil {
				t.Errorf("holder %d: %v", i, err)
			}
		}()
	}
	close(start)
	wg.Wait()
	if most.Load() != 1 || ran.Load() != 4 {
		t.Errorf("at most %d held the lease at once and %d of 4 ran; want 1 and 4", most.Load(), ran.Load())
	}
}

// A holder that dies without releasing (its NATS connection gone, so no renewals) frees the
// lease within its TTL, and the holder learns it lost the lease before another process can
// take it: for a moment it may still be running, and it must not run beside its successor.
func TestLeaseOfADeadHolderExpires(t *testing.T) {
	t.Parallel()
	env := testenv.NewJetStream(t, broker.DefaultStreamConfig())
	ncA, err := nats.Connect(env.URL, nats.MaxReconnects(0))
	if err != nil {
		t.Fatal(err)
	}
	jsA, _ := jetstream.New(ncA)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	a, err := broker.AcquireLease(ctx, leaseConfig(jsA, "a"))
	if err != nil {
		t.Fatal(err)
	}
	took := make(chan time.Time, 1)
	go func() {
		b, err := broker.AcquireLease(ctx, leaseConfig(env.JS, "b"))
		if err != nil {
			t.Error(err)
			return
		}
		took <- time.Now()
		_ = b.Release(context.Background())
	}()
	select {
	case <-took:
		t.Fatal("a second holder got the lease while the first renews it")
	case <-time.After(2500 * time.Millisecond): // more than twice the TTL
	}
	lostAt := make(chan time.Time, 1)
	go func() {
		<-a.Done()
		lostAt <- time.Now()
	}()
	var tookAt time.Time
	died := time.Now()
	ncA.Close()
	select {
	case at := <-took:
		tookAt = at
		if wait := at.Sub(died); wait > 3*time.Second {
			t.Errorf("the lease was free %s after its holder died; want within about its 1s TTL", wait)
		}
	case <-ctx.Done():
		t.Fatal("the lease of a dead holder never expired")
	}
	select {
	case <-a.Done():
	case <-time.After(5 * time.Second):
		t.Error("the dead holder was never told it lost the lease")
	}
	gaveUp := <-lostAt
	t.Logf("lost %s, taken %s after death", gaveUp.Sub(died), tookAt.Sub(died))
	if !gaveUp.Before(tookAt) {
		t.Errorf("the cut-off holder gave the lease up %s after another took it; want before",
			gaveUp.Sub(tookAt))
	}
	if err := a.Check(context.Background()); err == nil {
		t.Error("Check passed on a lost lease")
	}
}
