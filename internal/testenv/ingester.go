package testenv

import (
	"context"
	"sync"
	"testing"

	"github.com/keytrail/keytrail/ingest"
)

// RunIngester starts an ingester with cfg in this process and runs it until stop is called
// or the test ends. stop cancels it, waits for Run to return (the ingester flushes what it
// holds) and returns Run's error, the same on every call. If the test never called stop, an
// error from Run fails it at the end.
func RunIngester(t testing.TB, cfg ingest.Config) (ing *ingest.Ingester, stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ing, err := ingest.New(ctx, cfg)
	if err != nil {
		cancel()
		t.Fatalf("new ingester: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- ing.Run(ctx) }()
	var (
		once   sync.Once
		runErr error
		called bool
	)
	halt := func() error {
		once.Do(func() { cancel(); runErr = <-done })
		return runErr
	}
	t.Cleanup(func() {
		if err := halt(); err != nil && !called {
			t.Errorf("ingester: %v", err)
		}
	})
	return ing, func() error { called = true; return halt() }
}
