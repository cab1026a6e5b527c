// Package rotation judges a double-key roll: given what the old and the new key were used
// for, it says how far each service has moved, and whether the old key can be revoked.
//
// It does no I/O; package chreader gathers the facts from ClickHouse. The verdict keeps one
// promise: SAFE_TO_REVOKE only when the old key has served no successful request (status
// below 400) during the whole quiet period before the end of the window. Failing requests
// (a forgotten job getting 401 after the key was disabled) do not block the verdict, because
// the key already does not work for them, but they are reported as evidence, and services
// that used the old key in the window and never the new one are named as a warning even when
// their last success is older than the quiet period (a daily job may not have run yet).
package rotation
