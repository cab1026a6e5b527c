// Package event is the wire contract between gateways and keytrail, the part both sides link:
// the subjects events travel on (Subjects, SubjectToken), how a payload is encoded
// (Encoding, ParseContentType), the stored names of enums, the reasons a message is
// dead-lettered (Reason, Invalid) and the limits it must keep, and the secret detector and
// redaction (LooksLikeSecret, RedactUsage, Fingerprint) that keep secrets out of storage and
// logs.
//
// It does no I/O. Publishers and the ingester use the same Subjects and Encoding, so both
// sides agree on where an event travels and how it is encoded by construction. Deciding
// whether an event may be stored is the ingester's alone and lives in package event/decode,
// with protovalidate and CEL beneath it: this package imports neither, so a gateway that
// embeds the publisher does not link them (TestDoesNotLinkValidation in package publisher
// keeps it so).
package event
