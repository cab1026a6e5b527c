package retry

import (
	"context"
	"math"
	"time"

	"github.com/cenkalti/backoff/v5"
)

// Policy is when to try again.
type Policy struct {
	// First is the wait after the first failure; each next wait is twice the one before.
	First time.Duration
	// Max caps the wait; 0 means no cap.
	Max time.Duration
	// Attempts bounds the tries, the first included; 0 means until success or ctx ends.
	Attempts int
}

// Do runs op until it returns nil, returns a Permanent error, has run Policy.Attempts times,
// or ctx ends. After each failure that will be retried, failed (when not nil) is told the
// attempt (1-based), its error and the wait before the next one. Do returns nil, the
// permanent error's cause, the last error once the attempts ran out, or ctx's cause.
func Do(ctx context.Context, p Policy, op func(attempt int) error, failed func(attempt int, err error, wait time.Duration)) error {
	capped := p.Max
	if capped <= 0 {
		capped = math.MaxInt64
	}
	attempt := 0
	opts := []backoff.RetryOption{
		// No jitter: the callers retry one shared resource each (ClickHouse, a webhook,
		// NATS) from a single goroutine, so there is no herd to spread out.
		backoff.WithBackOff(&backoff.ExponentialBackOff{InitialInterval: p.First, Multiplier: 2, MaxInterval: capped}),
		// The library gives up after 15 minutes by default; only ctx and Attempts end ours.
		backoff.WithMaxElapsedTime(0),
		backoff.WithMaxTries(uint(max(p.Attempts, 0))),
	}
	if failed != nil {
		opts = append(opts, backoff.WithNotify(func(err error, wait time.Duration) { failed(attempt, err, wait) }))
	}
	_, err := backoff.Retry(ctx, func() (struct{}, error) {
		attempt++
		return struct{}{}, op(attempt)
	}, opts...)
	return err
}

// Permanent marks an error another attempt cannot fix (a webhook's 400): Do returns it at once.
func Permanent(err error) error { return backoff.Permanent(err) }
