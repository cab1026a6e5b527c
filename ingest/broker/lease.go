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
// build on without ZooKeeper) one at a time does something: apply the migrations, or run the
// alert evaluator.
//
// The holder owns the key: it creates it (JetStream refuses a second create) and renews it
// every TTL/3 with a compare-and-set on its last revision. The bucket expires a key TTL after
// its last write, so a holder that dies without releasing frees the lease within TTL; one that
// stalls longer than that (a pause, a partition from NATS) finds its renewal refused, and Done
// tells it to stop. Expiry is judged by the NATS servers' clocks alone.
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
	lost     bool
	done     chan struct{}
	stop     context.CancelFunc
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

// AcquireLease waits until this process holds the lease, or ctx ends. The lease is renewed
// in the background until Release, or until it is lost (Done is then closed).
func AcquireLease(ctx context.Context, cfg LeaseConfig) (*Lease, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	var kv jetstream.KeyValue
	if err := Provision(ctx, "lease bucket "+cfg.Bucket, func(ctx context.Context) error {
		var err error
		kv, err = cfg.JetStream.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:      cfg.Bucket,
			Description: "keytrail leases: which process runs the migrations, the alert evaluator",
			TTL:         cfg.TTL,
			Replicas:    cfg.Replicas,
			Storage:     jetstream.FileStorage,
		})
		return err
	}); err != nil {
		return nil, err
	}
	waiting := false
	for {
		rev, err := kv.Create(ctx, cfg.Name, []byte(cfg.Holder))
		if err == nil {
			return startLease(kv, cfg, rev), nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			cfg.Logger.Warn("taking a lease failed; retrying", "lease", cfg.Name, "error", err)
		} else if !waiting {
			waiting = true
			holder := "?"
			if e, err := kv.Get(ctx, cfg.Name); err == nil {
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

func startLease(kv jetstream.KeyValue, cfg LeaseConfig, rev uint64) *Lease {
	ctx, stop := context.WithCancel(context.Background())
	l := &Lease{kv: kv, name: cfg.Name, holder: cfg.Holder, ttl: cfg.TTL, log: cfg.Logger,
		revision: rev, done: make(chan struct{}), stop: stop}
	go l.renew(ctx)
	return l
}

// renew writes the key every TTL/3. A renewal refused because the revision moved means
// another process holds the lease now; renewals failing for longer than the TTL (NATS
// unreachable) mean the key may have expired and been taken. Either way the lease is lost.
func (l *Lease) renew(ctx context.Context) {
	t := time.NewTicker(l.ttl / 3)
	defer t.Stop()
	lastOK := time.Now()
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
		rctx, cancel := context.WithTimeout(ctx, l.ttl/3)
		next, err := l.kv.Update(rctx, l.name, []byte(l.holder), l.revision)
		cancel()
		if err == nil {
			l.revision = next
		}
		l.mu.Unlock()
		switch {
		case err == nil:
			lastOK = time.Now()
		case errors.Is(err, jetstream.ErrKeyRevisionMismatch), time.Since(lastOK) > l.ttl:
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
	next, err := l.kv.Update(ctx, l.name, []byte(l.holder), l.revision)
	if err == nil {
		l.revision = next
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

// WithLease runs fn while holding the named lease: it waits for the lease, runs fn with a
// context that ends if the lease is lost, and releases it when fn returns.
func WithLease(ctx context.Context, cfg LeaseConfig, fn func(ctx context.Context, l *Lease) error) error {
	l, err := AcquireLease(ctx, cfg)
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
