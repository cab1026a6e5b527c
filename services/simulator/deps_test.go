package main

import (
	"testing"

	"github.com/keytrail/keytrail/internal/testenv"
)

// TestDoesNotLinkValidation: the simulator is a gateway as far as keytrail can tell, and
// links what a gateway links: the publisher and the wire contract (package event), none of
// the ingester's validation (package event/decode, protovalidate, CEL).
func TestDoesNotLinkValidation(t *testing.T) {
	const self = "github.com/keytrail/keytrail/services/simulator"
	deps := testenv.Deps(t, self)
	if len(deps) < 2 || deps[len(deps)-1] != self {
		t.Fatalf("go list -deps gave %q", deps)
	}
	validation := []string{"github.com/keytrail/keytrail/event/decode", "buf.build/go/protovalidate", "cel.dev/cel-go", "github.com/google/cel-go"}
	if linked := testenv.Linked(deps, validation...); len(linked) > 0 {
		t.Errorf("the simulator links the ingester's validation: %q", linked)
	}
}
