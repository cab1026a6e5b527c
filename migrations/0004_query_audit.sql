-- Every call to the query API, so security can audit the auditors. Written by package
-- queryaudit; never updated. Retention by partition drop like the event tables.
CREATE TABLE IF NOT EXISTS {{create "query_audit_log"}}
(
    time DateTime('UTC'),
    time_ms Int64,
    principal String,
    role String,
    method String,
    request String,
    code String,
    duration_ms UInt32,
    peer String
)
ENGINE = {{engine "query_audit_log" "MergeTree()"}}
PARTITION BY toYYYYMM(time)
ORDER BY (time, principal);
{{distributed "query_audit_log" "rand()"}};
