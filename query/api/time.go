package api

import (
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"
)

// timeOrZero turns an unset timestamp into the zero time, which the query layer reads as
// "use the default" (beginning of history, or now).
func timeOrZero(ts *timestamppb.Timestamp) time.Time {
	if ts == nil {
		return time.Time{}
	}
	return ts.AsTime()
}

// optionalTime leaves a zero time unset in the response instead of sending 1970.
func optionalTime(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}
