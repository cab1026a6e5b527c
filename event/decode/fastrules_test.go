package decode

import (
	"regexp"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"buf.build/go/protovalidate"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
)

// The fast path covers the usage event, the one on the hot path; the lifecycle event has
// cross-field CEL rules, so protovalidate alone evaluates it.
func TestFastRulesCoverUsageOnly(t *testing.T) {
	for _, tc := range []struct {
		m    proto.Message
		want bool
	}{
		{&keytrailv1.UsageEvent{}, true},
		{&keytrailv1.LifecycleEvent{}, false},
		{&keytrailv1.Budget{}, true},
		{&keytrailv1.FieldChange{}, true},
	} {
		name := tc.m.ProtoReflect().Descriptor().FullName()
		f, ok := compileFast(tc.m.ProtoReflect().Descriptor())
		if ok != tc.want {
			t.Errorf("%s: compiled %v, want %v", name, ok, tc.want)
		}
		if ok && len(f.fields) == 0 {
			t.Errorf("%s: compiled without a rule", name)
		}
	}
	if rules().fast["keytrail.v1.UsageEvent"] == nil {
		t.Error("usage events are not on the fast path")
	}
}

func TestCompileRuneClassTakesOnlyAnAnchoredClassRun(t *testing.T) {
	for pattern, want := range map[string]bool{
		`^[^\p{Cc}\p{Z}]*$`: true,
		`^\P{Cc}*$`:         true,
		`^[a-z0-9_]*$`:      true,
		`^.*$`:              false, // not a class
		`[a-z]*`:            false, // not anchored
		`^[a-z]+$`:          false, // not empty-or-more
		`^key_[0-9]*$`:      false,
		`^(a|bc)*$`:         false,
	} {
		if _, ok := compileRuneClass(pattern); ok != want {
			t.Errorf("compileRuneClass(%q) = %v, want %v", pattern, ok, want)
		}
	}
}

// Every rune, and bytes that are not UTF-8, get the same answer from the compiled class as
// from the regexp protovalidate evaluates.
func TestRuneClassAgreesWithRegexp(t *testing.T) {
	for _, pattern := range []string{`^[^\p{Cc}\p{Z}]*$`, `^\P{Cc}*$`} {
		c, ok := compileRuneClass(pattern)
		if !ok {
			t.Fatalf("%q does not compile", pattern)
		}
		re := regexp.MustCompile(pattern)
		disagree := 0
		check := func(s string) {
			if c.allows(s) != re.MatchString(s) {
				if disagree++; disagree <= 5 {
					t.Errorf("%q on %q: class %v, regexp %v", pattern, s, c.allows(s), re.MatchString(s))
				}
			}
		}
		for r := rune(0); r <= utf8.MaxRune; r++ {
			if utf8.ValidRune(r) {
				check("ab" + string(r))
			}
		}
		for _, s := range []string{"", "\xff", "ok\xfe\xfd", "\xc3", "a\xed\xa0\x80"} {
			check(s)
		}
	}
}

// year2000 is the earliest event time events.proto allows.
var year2000 = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// FuzzFastRules: on any usage event, the fast path and protovalidate agree; only then may
// the fast path stand in for protovalidate. `go test -fuzz FuzzFastRules ./event/decode` explores.
func FuzzFastRules(f *testing.F) {
	seeds := []func(*keytrailv1.UsageEvent){
		func(*keytrailv1.UsageEvent) {},
		func(e *keytrailv1.UsageEvent) { e.EventId = "" },
		func(e *keytrailv1.UsageEvent) { e.Time = nil },
		func(e *keytrailv1.UsageEvent) { e.Time = timestamppb.New(year2000.Add(-time.Nanosecond)) },
		func(e *keytrailv1.UsageEvent) { e.Time = timestamppb.New(year2000) },
		func(e *keytrailv1.UsageEvent) { e.KeyId = "key 1" },
		func(e *keytrailv1.UsageEvent) { e.Service = "svc\u2028" },
		func(e *keytrailv1.UsageEvent) { e.Endpoint = "/v1/\x1b" },
		func(e *keytrailv1.UsageEvent) { e.Model = "gpt 4o\u00a0" },
		func(e *keytrailv1.UsageEvent) { e.RequestId = strings.Repeat("r", 256) },
		func(e *keytrailv1.UsageEvent) { e.RequestId = strings.Repeat("é", 129) },
		func(e *keytrailv1.UsageEvent) { e.StatusCode = 99 },
		func(e *keytrailv1.UsageEvent) { e.StatusCode = 599 },
		func(e *keytrailv1.UsageEvent) { e.CostMicros = -1 },
	}
	for _, mut := range seeds {
		e := fullUsage()
		mut(e)
		b, err := proto.Marshal(e)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	fast := rules().fast["keytrail.v1.UsageEvent"]
	v, err := protovalidate.New()
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		e := &keytrailv1.UsageEvent{}
		if proto.Unmarshal(data, e) != nil {
			return
		}
		agree(t, fast, v, e)
	})
}

func agree(t *testing.T, fast *fastRules, v protovalidate.Validator, m proto.Message) {
	t.Helper()
	pvErr := v.Validate(m)
	if got := fast.accepts(m.ProtoReflect()); got != (pvErr == nil) {
		t.Fatalf("fast path accepts=%v, protovalidate: %v, on %v", got, pvErr, m)
	}
}
