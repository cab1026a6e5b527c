package decode

import (
	"errors"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/keytrail/keytrail/event"
)

// FuzzDecode feeds arbitrary payloads, content types and subjects to Event. Whatever the
// input, Event must either return a valid event that re-validates and re-encodes, or an
// *event.Invalid error: never panic and never another error type (the ingester dead-letters on
// *event.Invalid; anything else would be a bug in the contract code). `go test` runs the seeds;
// `go test -fuzz FuzzDecode ./event/decode` explores further.
func FuzzDecode(f *testing.F) {
	usage, _ := proto.Marshal(validUsage())
	lifecycle, _ := proto.Marshal(validLifecycle())
	usageJSON, _ := event.EncodingJSON.Marshal(validUsage())
	lifecycleJSON, _ := event.EncodingJSON.Marshal(validLifecycle())
	f.Add("keytrail.usage.acme", "", usage)
	f.Add("keytrail.lifecycle.acme", "", lifecycle)
	f.Add("keytrail.usage.acme", "application/json", usageJSON)
	f.Add("keytrail.lifecycle.acme", "application/json", lifecycleJSON)
	f.Add("keytrail.usage.acme", "application/json", []byte(`{"event_id": 5}`))
	f.Add("keytrail.usage.acme", "", []byte{0x0a, 0x02, 0xff, 0xfe})
	f.Add("keytrail.lifecycle.acme", "application/json", []byte(`{"action":"ACTION_ROTATED","new_key_id":"\u0000"}`))
	f.Add("keytrail.usage", "", []byte{})
	f.Fuzz(func(t *testing.T, subject, contentType string, data []byte) {
		ev, err := Event(subjects, subject, contentType, data, testNow)
		if err != nil {
			var inv *event.Invalid
			if !errors.As(err, &inv) {
				t.Fatalf("error of type %T: %v", err, err)
			}
			if inv.Reason == "" {
				t.Fatalf("invalid without reason: %v", err)
			}
			return
		}
		switch ev.Kind {
		case event.KindUsage:
			if err := ValidateUsage(ev.Usage, testNow); err != nil {
				t.Fatalf("accepted usage does not re-validate: %v", err)
			}
			if _, err := proto.Marshal(ev.Usage); err != nil {
				t.Fatalf("accepted usage does not re-encode: %v", err)
			}
		case event.KindLifecycle:
			if err := ValidateLifecycle(ev.Lifecycle, testNow); err != nil {
				t.Fatalf("accepted lifecycle does not re-validate: %v", err)
			}
			if _, err := proto.Marshal(ev.Lifecycle); err != nil {
				t.Fatalf("accepted lifecycle does not re-encode: %v", err)
			}
		default:
			t.Fatalf("accepted event of kind %v", ev.Kind)
		}
	})
}
