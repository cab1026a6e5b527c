package reconcile

import "context"

// SetAfterFirstRead makes every bucketed check call f between its first raw read and its
// fence: tests land an insert there.
func SetAfterFirstRead(r *Reconciler, f func()) { r.afterFirstRead = f }

// WeighedChunks is the sweep's split of a day's candidate keys into comparisons.
func WeighedChunks(r *Reconciler, ctx context.Context, day int64, keys []string) ([][]string, error) {
	set := map[string]bool{}
	for _, k := range keys {
		set[k] = true
	}
	return r.weighedChunks(ctx, day, set)
}
