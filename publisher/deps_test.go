package publisher

import (
	"testing"

	"github.com/keytrail/keytrail/internal/testenv"
)

// ValidationPackages are the ingester's validation of events: package event/decode, the
// protovalidate it evaluates events.proto's rules with, and the CEL protovalidate compiles
// them into. A gateway never validates (the ingester does, and dead-letters what fails), so
// all they would add to a gateway is about 9 MB of binary.
var validationPackages = []string{
	"github.com/keytrail/keytrail/event/decode",
	"buf.build/go/protovalidate",
	"cel.dev/cel-go",
	"github.com/google/cel-go",
}

// TestDoesNotLinkValidation: a gateway that embeds the publisher links none of the
// ingester's validation.
func TestDoesNotLinkValidation(t *testing.T) {
	deps := testenv.Deps(t, "github.com/keytrail/keytrail/publisher")
	if len(deps) < 2 || deps[len(deps)-1] != "github.com/keytrail/keytrail/publisher" {
		t.Fatalf("go list -deps gave %q", deps)
	}
	if linked := testenv.Linked(deps, validationPackages...); len(linked) > 0 {
		t.Errorf("the publisher links the ingester's validation: %q", linked)
	}
}
