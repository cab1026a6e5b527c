// Package rotation judges a double-key roll: given what the old and the new key were used
// for, it says how far each service has moved, and whether the old key can be revoked.
//
// It does no I/O; package chreader gathers the facts from ClickHouse, all within the old
// key's project. The verdict keeps one promise: SAFE_TO_REVOKE only when revoking the old key
// breaks no caller it still serves that the caller of the API did not accept. In detail:
//
//   - no service the caller did not accept had a successful request (status below 400) on
//     the old key in the quiet period before the end of the window, and
//   - every service seen on the old key over the history (a lookback before the window,
//     through its end) has moved (succeeded on the new key after its last success on the old
//     one), gets nothing from the old key (every request failed, or every one since the key
//     was revoked did), was accepted by the caller (accept_pending), or is overdue: its next
//     call, expected from the rhythm learned from its history, did not come.
//
// The rhythm of a service is the largest gap between its successful calls over the history;
// its next call is expected by its last success plus that gap plus the quiet period (the
// slack for a job that runs a little late). A service that called in one run only (no gap
// longer than the quiet period) shows no rhythm; it is given the whole lookback instead, so a
// job rarer than the lookback is waited for rather than taken as gone. While any service's
// call is still due the verdict is NOT_YET, with that service's evidence among the reasons.
package rotation
