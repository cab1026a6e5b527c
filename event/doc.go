// Package event is the contract between gateways and keytrail: the subjects events travel on,
// how a payload is encoded on the wire, and the rules an event must satisfy to be stored.
//
// It does no I/O. The ingester calls Decode for every message it consumes; whatever Decode
// rejects is dead-lettered with the Invalid reason, so a rule added here is a rule no stored
// row can break. Publishers use the same Subject and Encode functions, so both sides agree by
// construction.
package event
