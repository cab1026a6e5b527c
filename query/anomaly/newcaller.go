package anomaly

import (
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
)

// NewCaller is a service or client IP seen on a key for the first time: an answer of
// /v1/new-callers and the subject of a new-caller alert.
type NewCaller struct {
	Project string
	KeyID   string
	Kind    keytrailv1.CallerKind
	// Caller is the service name or the client IP.
	Caller string
	// FirstSeen and LastSeen are over all history (ms precision); Requests is every request
	// of this caller on this key so far.
	FirstSeen    time.Time
	LastSeen     time.Time
	Requests     uint64
	KeyFirstSeen time.Time
}

// Proto is the form the API answers and the alert stream carry.
func (c NewCaller) Proto() *keytrailv1.NewCaller {
	return &keytrailv1.NewCaller{
		Project:      c.Project,
		KeyId:        c.KeyID,
		Kind:         c.Kind,
		Caller:       c.Caller,
		FirstSeen:    timestamppb.New(c.FirstSeen),
		LastSeen:     timestamppb.New(c.LastSeen),
		Requests:     int64(c.Requests),
		KeyFirstSeen: timestamppb.New(c.KeyFirstSeen),
	}
}
