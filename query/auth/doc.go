// Package auth decides who is calling the query API and what they may read.
//
// Callers authenticate with a bearer token or, when mTLS is configured, a verified client
// certificate. Tokens are never stored: the tokens file holds their SHA-256, a name (what the
// query audit log records), a role and optional expiry and rate limit. Roles:
//
//	admin           everything
//	auditor         read every project, verify the audit chain
//	project_reader  read only the listed projects
//
// Guarantee: a Principal exists only for a caller that presented a known, unexpired
// credential; without one, every call except health and readiness is refused.
package auth
