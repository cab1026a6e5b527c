// Package storage opens keytrail's ClickHouse connection: it parses the DSN, makes sure the
// database exists and hands out a native-protocol connection (the HTTP protocol of
// clickhouse-go does not work with ClickHouse 18.16).
package storage
