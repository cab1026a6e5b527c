package event

import keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"

// Event is one event of either kind: exactly one of Usage and Lifecycle is set. The
// ingester's decode.Event returns only valid ones; a gateway or a simulator builds them to
// publish.
type Event struct {
	Kind      Kind
	Usage     *keytrailv1.UsageEvent
	Lifecycle *keytrailv1.LifecycleEvent
}

// ID is the event's unique id.
func (e Event) ID() string {
	if e.Kind == KindLifecycle {
		return e.Lifecycle.GetEventId()
	}
	return e.Usage.GetEventId()
}
