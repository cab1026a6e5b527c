package event

import (
	"fmt"
	"strings"
)

// Kind is the kind of event a subject carries.
type Kind int

const (
	KindUsage Kind = iota + 1
	KindLifecycle
)

func (k Kind) String() string {
	switch k {
	case KindUsage:
		return "usage"
	case KindLifecycle:
		return "lifecycle"
	default:
		return "unknown"
	}
}

// DefaultSubjectPrefix is the first token of every keytrail subject.
const DefaultSubjectPrefix = "keytrail"

// Subjects names the subjects under one prefix:
//
//	<prefix>.usage.<project>       UsageEvent
//	<prefix>.lifecycle.<project>   LifecycleEvent
//	<prefix>.deadletter.<kind>     messages the ingester rejected, with the reason in a header
type Subjects struct {
	Prefix string
}

// Usage is the subject a gateway publishes a project's usage events to.
func (s Subjects) Usage(project string) string {
	return s.Prefix + ".usage." + SubjectToken(project)
}

// Lifecycle is the subject a gateway publishes a project's lifecycle events to.
func (s Subjects) Lifecycle(project string) string {
	return s.Prefix + ".lifecycle." + SubjectToken(project)
}

// DeadLetter is the subject the ingester republishes a rejected message of this kind to.
func (s Subjects) DeadLetter(kind string) string { return s.Prefix + ".deadletter." + kind }

// EventFilters are the subject filters of the events stream.
func (s Subjects) EventFilters() []string {
	return []string{s.Prefix + ".usage.>", s.Prefix + ".lifecycle.>"}
}

// DeadLetterFilter is the subject filter of the dead-letter stream.
func (s Subjects) DeadLetterFilter() string { return s.Prefix + ".deadletter.>" }

// Parse tells which kind of event a subject carries and for which project token.
func (s Subjects) Parse(subject string) (Kind, string, error) {
	rest, ok := strings.CutPrefix(subject, s.Prefix+".")
	if !ok {
		return 0, "", fmt.Errorf("subject %q is not under prefix %q", subject, s.Prefix)
	}
	kind, project, ok := strings.Cut(rest, ".")
	if !ok || project == "" || strings.Contains(project, ".") {
		return 0, "", fmt.Errorf("subject %q is not <prefix>.<kind>.<project>", subject)
	}
	switch kind {
	case "usage":
		return KindUsage, project, nil
	case "lifecycle":
		return KindLifecycle, project, nil
	}
	return 0, "", fmt.Errorf("subject %q has unknown kind %q", subject, kind)
}

// SubjectToken makes a project name safe as one NATS subject token: the separators and
// wildcards of the subject grammar and white space become '_'. Validation compares the
// event's project through the same mapping, so a project named "a.b" still round-trips.
func SubjectToken(project string) string {
	return strings.Map(func(r rune) rune {
		switch r {
		case '.', '*', '>', ' ', '\t', '\r', '\n':
			return '_'
		}
		return r
	}, project)
}
