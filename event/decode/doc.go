// Package decode is the ingester's side of the contract in package event: it turns a message
// (subject, Content-Type, payload) into a valid event, or into an *event.Invalid saying why
// not. Event decodes either kind; Usage is the usage path without a message in between
// (UsageFields, UsageWire); ValidateUsage and ValidateLifecycle are the rules, which are the
// buf.validate annotations of events.proto evaluated by protovalidate (with a plain-Go fast
// path, fastrules.go) plus the checks that depend on the ingester's clock.
//
// It does no I/O. The ingester decodes every message it consumes here and dead-letters
// whatever is refused with its Reason, so a rule added to events.proto is a rule no stored
// row can break. Gateways do not import this package: it is what links protovalidate and
// CEL, which a gateway never needs.
package decode
