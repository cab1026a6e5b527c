package reconcile

// SetAfterFirstRead makes every bucketed check call f between its first raw read and its
// fence: tests land an insert there.
func SetAfterFirstRead(r *Reconciler, f func()) { r.afterFirstRead = f }
