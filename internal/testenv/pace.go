package testenv

import (
	"context"
	"time"
)

// Paced calls do(i) for i from 0 to n-1 at about perSecond calls a second, the first at once,
// so that a load overlaps the faults a test injects instead of landing before them. It stops
// at the first error, or when ctx ends.
func Paced(ctx context.Context, n, perSecond int, do func(i int) error) error {
	start := time.Now()
	for i := 0; i < n; {
		due := min(n, int(time.Since(start).Seconds()*float64(perSecond))+1)
		if i >= due {
			if err := ctx.Err(); err != nil {
				return err
			}
			time.Sleep(2 * time.Millisecond) // pacing only
			continue
		}
		for ; i < due; i++ {
			if err := do(i); err != nil {
				return err
			}
		}
	}
	return nil
}
