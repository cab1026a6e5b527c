package retry_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/keytrail/keytrail/internal/retry"
)

type failure struct {
	attempt int
	err     string
	wait    time.Duration
}

func TestDo(t *testing.T) {
	errDown := errors.New("down")
	cases := []struct {
		name string
		p    retry.Policy
		// failUntil: attempts before this one fail; permanentAt: this attempt fails for good.
		failUntil, permanentAt int
		wantErr                error
		wantAttempts           int
		wantWaits              []time.Duration
	}{
		{name: "success first time", p: retry.Policy{First: time.Millisecond}, failUntil: 1, wantAttempts: 1},
		{name: "doubling, capped", p: retry.Policy{First: time.Millisecond, Max: 4 * time.Millisecond}, failUntil: 6, wantAttempts: 6,
			wantWaits: []time.Duration{1, 2, 4, 4, 4}},
		{name: "no cap", p: retry.Policy{First: time.Millisecond}, failUntil: 5, wantAttempts: 5, wantWaits: []time.Duration{1, 2, 4, 8}},
		{name: "attempts run out", p: retry.Policy{First: time.Millisecond, Attempts: 3}, failUntil: 100, wantErr: errDown, wantAttempts: 3,
			wantWaits: []time.Duration{1, 2}},
		{name: "permanent ends at once", p: retry.Policy{First: time.Millisecond}, failUntil: 100, permanentAt: 2, wantErr: errDown, wantAttempts: 2,
			wantWaits: []time.Duration{1}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			attempts := 0
			var failures []failure
			err := retry.Do(context.Background(), c.p, func(attempt int) error {
				attempts++
				if attempt != attempts {
					t.Errorf("attempt %d, want %d", attempt, attempts)
				}
				switch {
				case attempt == c.permanentAt:
					return retry.Permanent(errDown)
				case attempt < c.failUntil:
					return errDown
				}
				return nil
			}, func(attempt int, err error, wait time.Duration) {
				failures = append(failures, failure{attempt, err.Error(), wait})
			})
			if !errors.Is(err, c.wantErr) || (c.wantErr == nil) != (err == nil) {
				t.Errorf("error %v, want %v", err, c.wantErr)
			}
			if attempts != c.wantAttempts {
				t.Errorf("%d attempts, want %d", attempts, c.wantAttempts)
			}
			var want []failure
			for i, w := range c.wantWaits {
				want = append(want, failure{i + 1, "down", w * time.Millisecond})
			}
			if fmt.Sprint(failures) != fmt.Sprint(want) {
				t.Errorf("failures reported %v, want %v", failures, want)
			}
		})
	}
}

// A cancelled context stops the retries during the wait, and Do says why.
func TestDoStopsWhenContextEnds(t *testing.T) {
	ctx, cancel := context.WithCancelCause(context.Background())
	stopped := errors.New("shutting down")
	attempts := 0
	done := make(chan error, 1)
	go func() {
		done <- retry.Do(ctx, retry.Policy{First: time.Hour}, func(int) error {
			attempts++
			return errors.New("down")
		}, func(int, error, time.Duration) { cancel(stopped) })
	}()
	select {
	case err := <-done:
		if !errors.Is(err, stopped) || attempts != 1 {
			t.Errorf("error %v after %d attempts, want %v after 1", err, attempts, stopped)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Do kept waiting after its context ended")
	}
}
