-- Raw events. Never updated: every answer is derived from these rows or from rollups fed by
-- them. Partitioned by month so retention is a partition drop; sorted for per-key reads.
-- SQL here must run on ClickHouse 18.16 and current versions (see PLATFORM-NOTES.md).

CREATE TABLE IF NOT EXISTS {{create "usage_events"}}
(
    event_id String,
    event_time DateTime('UTC'),
    event_time_ms Int64,
    project String,
    key_id String,
    service String,
    gateway_instance String,
    method String,
    endpoint String,
    model String,
    provider String,
    status_code UInt16,
    latency_ms UInt32,
    input_tokens UInt64,
    output_tokens UInt64,
    cost_micros Int64,
    client_ip String,
    request_id String,
    -- xxhash64 of the event's deterministic protobuf encoding: tells a redelivered copy
    -- (same hash, dropped) from a different event reusing an id (dead-lettered).
    content_hash UInt64,
    stream_seq UInt64,
    ingested_at DateTime('UTC')
)
ENGINE = {{engine "usage_events" "MergeTree()"}}
PARTITION BY toYYYYMM(event_time)
ORDER BY (key_id, service, event_time);
{{distributed "usage_events"}};
{{ingest_input "usage_events"}};

CREATE TABLE IF NOT EXISTS {{create "lifecycle_events"}}
(
    event_id String,
    event_time DateTime('UTC'),
    event_time_ms Int64,
    project String,
    key_id String,
    action String,
    new_key_id String,
    actor String,
    actor_type String,
    reason String,
    expires_at Nullable(DateTime('UTC')),
    budget_amount_micros Nullable(Int64),
    budget_period String,
    scopes Array(String),
    attribute_keys Array(String),
    attribute_values Array(String),
    change_fields Array(String),
    change_before Array(String),
    change_after Array(String),
    -- Tamper evidence (package auditchain): a per-project hash chain in ingestion order.
    content_hash String,
    prev_hash String,
    chain_hash String,
    chain_seq UInt64,
    stream_seq UInt64,
    ingested_at DateTime('UTC')
)
ENGINE = {{engine "lifecycle_events" "MergeTree()"}}
PARTITION BY toYYYYMM(event_time)
ORDER BY (project, key_id, event_time_ms, event_id);
{{distributed "lifecycle_events" "cityHash64(project)"}};
