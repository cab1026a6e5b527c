package reconcile

import (
	"context"
	"slices"
)

// SetAfterFirstRead makes every bucketed check call f between its first raw read and its
// fence: tests land an insert there.
func SetAfterFirstRead(r *Reconciler, f func()) { r.afterFirstRead = f }

// WeighedChunks is the split of keys into bucketed comparisons of one day.
func WeighedChunks(r *Reconciler, ctx context.Context, day int64, keys []string) ([][]string, error) {
	return r.weighedChunks(ctx, []int64{day}, slices.Compact(slices.Sorted(slices.Values(keys))))
}

// SetOnGroup makes every bucketed comparison tell f its keys.
func SetOnGroup(r *Reconciler, f func(keys []string)) { r.onGroup = f }
