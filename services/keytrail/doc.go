// Command keytrail runs the keytrail service: by default an embedded NATS server with
// JetStream, the ingester and the query API (gRPC + REST) in one process. Flags point it at
// an external NATS and ClickHouse and pick one role for scaled deployments.
//
//	keytrail [serve] [flags]                     run (see -h)
//	keytrail migrate [flags]                     apply the ClickHouse schema and exit
//	keytrail rotation check --old KEY [flags]    is the old key of a roll safe to revoke?
//	                                             exit 0 safe, 3 not yet, 1 error, 2 usage
//	keytrail token new --name N --role R         make an API token and its tokens-file entry
//	keytrail deadletters list [--reason R]       show dead letters (stream and fallback table)
//	keytrail deadletters replay [--reason R]     republish them once their cause is fixed
//
// Guarantee: a bad flag or variable stops it before it starts anything, naming the flag and
// the variable; it migrates before its ingester starts; on SIGTERM it stops the ingester and
// the API first (they flush and drain: nothing acknowledged is lost, nothing stored is left
// unacknowledged for long), then NATS and ClickHouse. main only wires: the parts live in
// their packages.
package main
