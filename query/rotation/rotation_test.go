package rotation

import (
	"reflect"
	"testing"
	"time"
)

var end = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)

func TestAnalyzeNoTrafficIsSafe(t *testing.T) {
	r := Analyze(Facts{OldKey: "o", NewKey: "n", End: end, Quiet: 15 * time.Minute})
	if r.Verdict != SafeToRevoke || r.NewShare != 0 || len(r.Services) != 0 || len(r.ServicesToChase) != 0 {
		t.Errorf("%+v", r)
	}
	if want := []string{"no successful request on o since 2026-11-01T11:45:00Z (quiet period 15m0s)"}; !reflect.DeepEqual(r.Reasons, want) {
		t.Errorf("reasons %q", r.Reasons)
	}
}

func TestAnalyzeFailingTrafficDoesNotBlockButIsMixed(t *testing.T) {
	failing := ServiceUse{Service: "cron", Requests: 3, FirstSeen: end.Add(-10 * time.Minute), LastSeen: end.Add(-time.Minute)}
	r := Analyze(Facts{
		OldKey: "o", NewKey: "n", End: end, Quiet: 15 * time.Minute,
		OldInWindow: []ServiceUse{failing},
		NewInWindow: []ServiceUse{{Service: "cron", Requests: 1, FirstSeen: end.Add(-20 * time.Minute), LastSeen: end.Add(-20 * time.Minute), LastSuccess: end.Add(-20 * time.Minute)}},
		OldInQuiet:  []ServiceUse{failing},
	})
	if r.Verdict != SafeToRevoke || len(r.Services) != 1 || r.Services[0].Migration != Mixed || r.NewShare != 0.25 {
		t.Errorf("%+v", r)
	}
	if len(r.ServicesToChase) != 0 {
		t.Errorf("a service whose old-key requests all fail is not to chase: %v", r.ServicesToChase)
	}
}

func TestMigrationNames(t *testing.T) {
	if Moved.String() != "moved" || Mixed.String() != "mixed" || NotStarted.String() != "not started" || SafeToRevoke.String() != "SAFE_TO_REVOKE" || NotYet.String() != "NOT_YET" {
		t.Error("names")
	}
}
