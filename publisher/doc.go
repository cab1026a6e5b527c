// Package publisher is the library a gateway embeds to send usage and lifecycle events to
// keytrail over NATS JetStream.
//
// A gateway calls PublishUsage or PublishLifecycle on its request path; the call encodes the
// event, hands it to JetStream asynchronously and returns without waiting for the server. A
// bounded number of events (Config.MaxInFlight) may be awaiting their acknowledgement; beyond
// that the call blocks, so a slow or absent NATS server slows the gateway's event path down
// instead of growing its memory without limit.
//
// Guarantee: every accepted event ends in exactly one of two ways, and Flush or Close tells the
// caller which:
//
//   - acknowledged by the stream (Stats.Acked): it is stored once. Each event is published with
//     its event_id as the JetStream message id (Nats-Msg-Id), and every retry reuses that id, so
//     a retry of an event the server had already stored is dropped by the stream's duplicate
//     window and acknowledged as a duplicate (Stats.Duplicates) rather than stored again;
//   - given up on after Config.MaxRetries retries or a refusal retrying cannot fix
//     (Stats.Failed): Config.OnFailure is called once with its id and Flush returns an error.
//     A failed event may still have been stored (its acknowledgement may be what was lost);
//     publishing it again with the same event_id within the duplicate window is safe.
//
// Nothing is dropped silently. Events are not ordered: retries overtake one another, and
// keytrail orders by event time, not arrival.
//
// It checks only what publishing needs (an event_id for the message id, a project for the
// subject); the contract's rules are the ingester's, which dead-letters what breaks them. So
// it links the wire contract (package event) but not the ingester's validation (package
// event/decode, with protovalidate and CEL: about 9 MB of a binary); TestDoesNotLinkValidation
// keeps it so. A gateway that wants to check an event before publishing it can call
// decode.ValidateUsage or decode.ValidateLifecycle and link them itself.
package publisher
