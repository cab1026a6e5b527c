// Package simulate generates the traffic of a fleet of API gateways: usage events for every
// request and lifecycle events for every change to a key, as a scenario in which keytrail has
// something to find. It does no I/O; services/simulator publishes what it generates.
//
// Guarantee: the events are a pure function of Config (Seed, Start, Rate) and the time slice
// asked for. Scenario.Tick(from, to) returns exactly the events with from <= time < to, and
// any way of cutting time into slices yields the same events with the same ids. Every event
// passes decode.ValidateUsage / decode.ValidateLifecycle. Event ids are name-based UUIDs
// (version 5) of Seed, Start and the event's place in the run, so two runs started at
// different times never share an id (and never deduplicate each other).
//
// # The fleet
//
// Four projects (acme, globex, initech, umbrella) with 80, 70, 60 and 50 keys named
// key_<project>_0001 onwards, all created during the first second with a created event whose
// actor is a user, a service (terraform, key-provisioner, ci-bootstrap) or the system, with
// scopes, attributes (ticket ids, tooling) and for some a TTL or a monthly budget. Each
// project has a few dozen services ("billing-api", "search-worker", "nightly-report-cron", ...);
// each key is called by one to three of them. Requests go to openai (gpt-4o, gpt-4o-mini on
// /v1/chat/completions, text-embedding-3-small on /v1/embeddings) or anthropic
// (claude-sonnet-4, claude-3-5-haiku on /v1/messages), with list-price cost in integer
// micro-units, log-normal latency and a status mix of about 94% 200, 3% 429, 1.5% 400,
// 1% 500, 0.5% 503. Rate is the mean number of usage events per second; usage starts one
// second in.
//
// # Notable features
//
// Ids are fixed for every seed; Scenario.Notable returns them with their absolute times.
// Offsets are from Start.
//
//   - Double-key roll in progress (acme): key_acme_0081 created at +10s by user dana
//     (ticket SEC-2291); key_acme_0007 rotated to it at +20s by dana. Moved: checkout-api
//     (at +1m) and billing-api (at +2m) then call only the new key. Mixed: invoice-worker and
//     search-api split their traffic between both keys from +1m on (gw-acme-1 sends the new
//     key, gw-acme-2 and -3 the old one). Not started: ledger-sync-cron and support-bot stay
//     on the old key.
//   - Disabled key still called (initech): key_initech_0013 disabled at +1m by user carol
//     (ticket SEC-2304). Its report-api stops; the forgotten cron job legacy-export-cron
//     keeps making 3 calls at second 7 of every minute (+7s, +1m7s, ...), answered 403.
//   - Spike (globex): key_globex_0021 (search-worker, catalog-api) runs 15 times its normal
//     rate from +6m to +10m, with 429s rising to 20%, then returns to normal.
//   - New caller (globex): fraud-scorer first calls key_globex_0042 at +4m; before that the
//     key is used only by recommendation-api and email-worker.
//   - Over budget (umbrella): key_umbrella_0005 (summarizer-worker, claude-sonnet-4) gets a
//     daily budget at +30s (budget_changed by user erin, ticket FIN-733). The amount is sized
//     from Rate so the key's spend passes it about +10m in (16.89 units at Rate 200).
//   - Expired by TTL (initech): key_initech_0061 created at +15s with expires_at +5m; no
//     expired event is ever sent. partner-sync-worker keeps calling it and gets 401 from +5m.
//   - Scopes changed (acme): key_acme_0003 at +3m by user bob, from "chat" to
//     "chat,embeddings" (a FieldChange on "scopes"), ticket SEC-2310.
//
// After +10m nothing new happens: the traffic continues in its final state for as long as
// the simulator runs.
//
// With Config.History the fleet's keys are created History before Start and carry their
// ordinary traffic from then on, so anomalies and new callers have a baseline to compare
// with; the story above still starts at Start (`simulator -history 90m`, as `make run` does).
package simulate
