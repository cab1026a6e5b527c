package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// A Lease is a named lock held in a JetStream key-value bucket, so that among all keytrail
// processes of a deployment (which all reach NATS; ClickHouse has no lock that is safe to
// build on without ZooKeeper) one at a time does something: apply the migrations, run the
// alert evaluator, repair the rollups of one database.
//
// The holder owns the key: it creates it (JetStream refuses a second create) and renews it
// every TTL/4 with a compare-and-set on its last revision. The bucket expires a key TTL after
// its last write, so a holder that dies without releasing frees the lease within TTL. A
// holder gives the lease up before the key can expire under it: when a renewal is refused
// (another process holds it now), or when 3/4 of the TTL passed since it sent its last
// successful renewal (NATS unreachable, a pause); one failed renewal is retried first. Done
// then tells it to stop. Expiry is judged by the NATS servers' clocks alone.
//
// What a lease cannot do is stop a holder that has already lost it from finishing the step it
// is in: the migration runner checks its lease before every statement, which narrows that to
// one statement.
type Lease struct {
	kv     jetstream.KeyValue
	name   string
	holder string
	ttl    time.Duration
	log    *slog.Logger

	mu       sync.Mutex
	revision uint64
	// renewed is when the last successful write of the key was sent: the key expires no
	// sooner than TTL after it.
	renewed time.Time
	lost    bool
	done    chan struct{}
	stop    context.CancelFunc
}

// LeaseConfig configures a Lease.
type LeaseConfig struct {
	JetStream jetstream.JetStream
	// Bucket holds every lease of a deployment (default KEYTRAIL_LEASES).
	Bucket string
	// Name of the lease, a KV key: "migrations", "alert-evaluator".
	Name string
	// Holder identifies this process in the key's value, for operators (default host:pid).
	Holder string
	// TTL is how long a lease outlives its holder's last renewal (default 10s). Every process
	// of a deployment must use the same TTL: it is the bucket's.
	TTL time.Duration
	// Replicas of the bucket on clustered NATS (default 1).
	Replicas int
	// Poll is how often a waiting process tries to take the lease (default TTL/5).
	Poll   time.Duration
	Logger *slog.Logger
}

// DefaultLeaseBucket holds keytrail's leases.
const DefaultLeaseBucket = "KEYTRAIL_LEASES"

// Validate reports every problem with the configuration at once.
func (c LeaseConfig) Validate() error {
	var errs []error
	if c.JetStream == nil {
		errs = append(errs, errors.New("lease: jetstream is required"))
	}
	if c.Name == "" {
		errs = append(errs, errors.New("lease: name is required"))
	}
	if c.TTL < 0 || c.Poll < 0 || c.Replicas < 0 {
		errs = append(errs, errors.New("lease: ttl, poll and replicas must not be negative"))
	}
	return errors.Join(errs...)
}

func (c LeaseConfig) withDefaults() LeaseConfig {
	if c.Bucket == "" {
		c.Bucket = DefaultLeaseBucket
	}
	if c.Holder == "" {
		host, _ := os.Hostname()
		c.Holder = host + ":" + strconv.Itoa(os.Getpid())
	}
	if c.TTL == 0 {
		c.TTL = 10 * time.Second
	}
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.Poll == 0 {
		c.Poll = c.TTL / 5
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// A LeaseKey is one named lease with its bucket in place, to be acquired as often as needed:
// a process that takes the same lease again and again (the rollup reconciler, once per
// repair) opens it once.
type LeaseKey struct {
	kv  jetstream.KeyValue
	cfg LeaseConfig
}

// OpenLease makes sure the lease bucket exists and returns the named lease, not yet held.
func OpenLease(ctx context.Context, cfg LeaseConfig) (*LeaseKey, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	var kv jetstream.KeyValue
	if err := Provision(ctx, "lease bucket "+cfg.Bucket, func(ctx context.Context) error {
		var err error
		kv, err = cfg.JetStream.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:      cfg.Bucket,
			Description: "keytrail leases: which process runs the migrations, the alert evaluator, a database's rollup repairs",
			TTL:         cfg.TTL,
			Replicas:    cfg.Replicas,
			Storage:     jetstream.FileStorage,
		})
		return err
	}); err != nil {
		return nil, err
	}
	return &LeaseKey{kv: kv, cfg: cfg}, nil
}

// AcquireLease opens the lease and waits until this process holds it (LeaseKey.Acquire).
func AcquireLease(ctx context.Context, cfg LeaseConfig) (*Lease, error) {
	k, err := OpenLease(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return k.Acquire(ctx)
}

// WithLease opens the lease and runs fn while holding it (LeaseKey.With).
func WithLease(ctx context.Context, cfg LeaseConfig, fn func(ctx context.Context, l *Lease) error) error {
	k, err := OpenLease(ctx, cfg)
	if err != nil {
		return err
	}
	return k.With(ctx, fn)
}

// Acquire waits until this process holds the lease, or ctx ends. The lease is renewed in the
// background until Release, or until it is lost (Done is then closed). A failed attempt to
// take it (NATS unreachable) is logged and tried again at the next poll.
func (k *LeaseKey) Acquire(ctx context.Context) (*Lease, error) {
	cfg := k.cfg
	waiting := false
	for {
		sent := time.Now()
		rev, err := k.kv.Create(ctx, cfg.Name, []byte(cfg.Holder))
		if err == nil {
			return startLease(k.kv, cfg, rev, sent), nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			cfg.Logger.Warn("taking a lease failed; retrying", "lease", cfg.Name, "error", err)
		} else if !waiting {
			waiting = true
			holder := "?"
			if e, err := k.kv.Get(ctx, cfg.Name); err == nil {
				holder = string(e.Value())
			}
			cfg.Logger.Info("waiting for a lease another process holds", "lease", cfg.Name, "holder", holder)
		}
		t := time.NewTimer(cfg.Poll)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
	}
}

// With runs fn while holding the lease: it waits for the lease, runs fn with a context that
// ends if the lease is lost, and releases it when fn returns.
func (k *LeaseKey) With(ctx context.Context, fn func(ctx context.Context, l *Lease) error) error {
	l, err := k.Acquire(ctx)
	if err != nil {
		return err
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = l.Release(rctx)
	}()
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-l.Done():
			cancel()
		case <-fctx.Done():
		}
	}()
	return fn(fctx, l)
}

func startLease(kv jetstream.KeyValue, cfg LeaseConfig, rev uint64, sent time.Time) *Lease {
	ctx, stop := context.WithCancel(context.Background())
	l := &Lease{kv: kv, name: cfg.Name, holder: cfg.Holder, ttl: cfg.TTL, log: cfg.Logger,
		revision: rev, renewed: sent, done: make(chan struct{}), stop: stop}
	go l.renew(ctx)
	return l
}

// renew writes the key every TTL/4. A renewal refused because the revision moved means
// another process holds the lease now. Otherwise a failed renewal is retried at the next
// tick, every attempt cut off at the horizon, 3/4 of the TTL after the last successful
// renewal was sent: the key lives at least TTL after that, so a holder that reaches the
// horizon without renewing gives the lease up while no other process can have it yet.
func (l *Lease) renew(ctx context.Context) {
	t := time.NewTicker(l.ttl / 4)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		// Under the lock, so that Release and Check see the latest revision.
		l.mu.Lock()
		if l.lost {
			l.mu.Unlock()
			return
		}
		horizon := l.renewed.Add(l.ttl * 3 / 4)
		sent := time.Now()
		err := errLeaseHorizon
		if sent.Before(horizon) {
			rctx, cancel := context.WithTimeout(ctx, min(horizon.Sub(sent), l.ttl/4))
			var next uint64
			next, err = l.kv.Update(rctx, l.name, []byte(l.holder), l.revision)
			cancel()
			if err == nil {
				l.revision, l.renewed = next, sent
			}
		}
		l.mu.Unlock()
		switch {
		case err == nil:
		case errors.Is(err, jetstream.ErrKeyRevisionMismatch), !time.Now().Before(horizon):
			if ctx.Err() == nil {
				l.log.Warn("lease lost", "lease", l.name, "error", err)
				l.lose()
			}
			return
		default:
			l.log.Warn("renewing a lease failed; retrying", "lease", l.name, "error", err)
		}
	}
}

var errLeaseHorizon = errors.New("not renewed within 3/4 of its TTL")

func (l *Lease) lose() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.loseLocked()
}

func (l *Lease) loseLocked() {
	if !l.lost {
		l.lost = true
		close(l.done)
	}
}

// Done is closed when the lease is lost or released.
func (l *Lease) Done() <-chan struct{} { return l.done }

// Check renews the lease now and reports an error if it is no longer held: a step that must
// not run twice calls it right before it starts.
func (l *Lease) Check(ctx context.Context) error {
	l.mu.Lock()
	if l.lost {
		l.mu.Unlock()
		return fmt.Errorf("lease %s is no longer held", l.name)
	}
	sent := time.Now()
	next, err := l.kv.Update(ctx, l.name, []byte(l.holder), l.revision)
	if err == nil {
		l.revision, l.renewed = next, sent
	}
	l.mu.Unlock()
	if err != nil {
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			l.lose()
		}
		return fmt.Errorf("lease %s: %w", l.name, err)
	}
	return nil
}

// Release gives the lease up at once (the next process need not wait for the TTL).
func (l *Lease) Release(ctx context.Context) error {
	l.stop()
	l.mu.Lock()
	rev, lost := l.revision, l.lost
	l.loseLocked()
	l.mu.Unlock()
	if lost {
		return nil
	}
	// Only if still ours: a revision mismatch means another process holds it already.
	if err := l.kv.Delete(ctx, l.name, jetstream.LastRevision(rev)); err != nil && !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return fmt.Errorf("release lease %s: %w", l.name, err)
	}
	return nil
}
