-- Test data: every statement of migrations 0001-0009 as they were before the files became
-- templates, the single-server schema they must still render to (render_test.go).

-- 0001_events statement 1
CREATE TABLE IF NOT EXISTS usage_events
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
    content_hash UInt64,
    stream_seq UInt64,
    ingested_at DateTime('UTC')
)
ENGINE = MergeTree()
PARTITION BY toYYYYMM(event_time)
ORDER BY (key_id, service, event_time);

-- 0001_events statement 2
CREATE TABLE IF NOT EXISTS lifecycle_events
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
    content_hash String,
    prev_hash String,
    chain_hash String,
    chain_seq UInt64,
    stream_seq UInt64,
    ingested_at DateTime('UTC')
)
ENGINE = MergeTree()
PARTITION BY toYYYYMM(event_time)
ORDER BY (project, key_id, event_time_ms, event_id);

-- 0002_usage_rollups statement 1
CREATE TABLE IF NOT EXISTS usage_by_key_minute
(
    minute DateTime('UTC'),
    project String,
    key_id String,
    service String,
    requests AggregateFunction(count),
    errors AggregateFunction(sum, UInt64),
    first_seen_ms AggregateFunction(min, Int64),
    last_seen_ms AggregateFunction(max, Int64),
    last_success_ms AggregateFunction(maxIf, Int64, UInt8)
)
ENGINE = AggregatingMergeTree()
PARTITION BY toYYYYMM(minute)
ORDER BY (key_id, service, minute, project);

-- 0002_usage_rollups statement 2
CREATE MATERIALIZED VIEW IF NOT EXISTS usage_by_key_minute_mv TO usage_by_key_minute AS
SELECT
    toStartOfMinute(event_time) AS minute,
    project,
    key_id,
    service,
    countState() AS requests,
    sumState(toUInt64(status_code >= 400)) AS errors,
    minState(event_time_ms) AS first_seen_ms,
    maxState(event_time_ms) AS last_seen_ms,
    maxIfState(event_time_ms, status_code < 400) AS last_success_ms
FROM usage_events
GROUP BY minute, project, key_id, service;

-- 0002_usage_rollups statement 3
CREATE TABLE IF NOT EXISTS usage_by_service_minute
(
    minute DateTime('UTC'),
    project String,
    service String,
    key_id String,
    requests AggregateFunction(count),
    errors AggregateFunction(sum, UInt64),
    first_seen_ms AggregateFunction(min, Int64),
    last_seen_ms AggregateFunction(max, Int64),
    last_success_ms AggregateFunction(maxIf, Int64, UInt8)
)
ENGINE = AggregatingMergeTree()
PARTITION BY toYYYYMM(minute)
ORDER BY (service, key_id, minute, project);

-- 0002_usage_rollups statement 4
CREATE MATERIALIZED VIEW IF NOT EXISTS usage_by_service_minute_mv TO usage_by_service_minute AS
SELECT
    toStartOfMinute(event_time) AS minute,
    project,
    service,
    key_id,
    countState() AS requests,
    sumState(toUInt64(status_code >= 400)) AS errors,
    minState(event_time_ms) AS first_seen_ms,
    maxState(event_time_ms) AS last_seen_ms,
    maxIfState(event_time_ms, status_code < 400) AS last_success_ms
FROM usage_events
GROUP BY minute, project, service, key_id;

-- 0003_answer_rollups statement 1
CREATE TABLE IF NOT EXISTS key_service_totals
(
    project String,
    key_id String,
    service String,
    requests AggregateFunction(count),
    errors AggregateFunction(sum, UInt64),
    first_seen_ms AggregateFunction(min, Int64),
    last_seen_ms AggregateFunction(max, Int64),
    last_success_ms AggregateFunction(maxIf, Int64, UInt8)
)
ENGINE = AggregatingMergeTree()
ORDER BY (key_id, service, project);

-- 0003_answer_rollups statement 2
CREATE MATERIALIZED VIEW IF NOT EXISTS key_service_totals_mv TO key_service_totals AS
SELECT
    project,
    key_id,
    service,
    countState() AS requests,
    sumState(toUInt64(status_code >= 400)) AS errors,
    minState(event_time_ms) AS first_seen_ms,
    maxState(event_time_ms) AS last_seen_ms,
    maxIfState(event_time_ms, status_code < 400) AS last_success_ms
FROM usage_events
GROUP BY project, key_id, service;

-- 0003_answer_rollups statement 3
CREATE TABLE IF NOT EXISTS key_client_ip_totals
(
    project String,
    key_id String,
    client_ip String,
    requests AggregateFunction(count),
    first_seen_ms AggregateFunction(min, Int64),
    last_seen_ms AggregateFunction(max, Int64)
)
ENGINE = AggregatingMergeTree()
ORDER BY (key_id, client_ip, project);

-- 0003_answer_rollups statement 4
CREATE MATERIALIZED VIEW IF NOT EXISTS key_client_ip_totals_mv TO key_client_ip_totals AS
SELECT
    project,
    key_id,
    client_ip,
    countState() AS requests,
    minState(event_time_ms) AS first_seen_ms,
    maxState(event_time_ms) AS last_seen_ms
FROM usage_events
WHERE client_ip != ''
GROUP BY project, key_id, client_ip;

-- 0003_answer_rollups statement 5
CREATE TABLE IF NOT EXISTS spend_hourly
(
    hour DateTime('UTC'),
    project String,
    key_id String,
    service String,
    model String,
    requests UInt64,
    errors UInt64,
    total_input_tokens UInt64,
    total_output_tokens UInt64,
    total_cost_micros Int64
)
ENGINE = SummingMergeTree()
PARTITION BY toYYYYMM(hour)
ORDER BY (project, key_id, service, model, hour);

-- 0003_answer_rollups statement 6
CREATE MATERIALIZED VIEW IF NOT EXISTS spend_hourly_mv TO spend_hourly AS
SELECT
    toStartOfHour(event_time) AS hour,
    project,
    key_id,
    service,
    model,
    count() AS requests,
    countIf(status_code >= 400) AS errors,
    sum(input_tokens) AS total_input_tokens,
    sum(output_tokens) AS total_output_tokens,
    sum(cost_micros) AS total_cost_micros
FROM usage_events
GROUP BY hour, project, key_id, service, model;

-- 0003_answer_rollups statement 7
CREATE TABLE IF NOT EXISTS usage_5min
(
    bucket DateTime('UTC'),
    project String,
    key_id String,
    service String,
    requests UInt64,
    errors UInt64,
    total_cost_micros Int64
)
ENGINE = SummingMergeTree()
PARTITION BY toYYYYMM(bucket)
ORDER BY (bucket, key_id, service, project);

-- 0003_answer_rollups statement 8
CREATE MATERIALIZED VIEW IF NOT EXISTS usage_5min_mv TO usage_5min AS
SELECT
    toStartOfFiveMinute(event_time) AS bucket,
    project,
    key_id,
    service,
    count() AS requests,
    countIf(status_code >= 400) AS errors,
    sum(cost_micros) AS total_cost_micros
FROM usage_events
GROUP BY bucket, project, key_id, service;

-- 0004_query_audit statement 1
CREATE TABLE IF NOT EXISTS query_audit_log
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
ENGINE = MergeTree()
PARTITION BY toYYYYMM(time)
ORDER BY (time, principal);

-- 0005_scan_rollups statement 1
DROP TABLE IF EXISTS spend_daily_mv;

-- 0005_scan_rollups statement 2
DROP TABLE IF EXISTS spend_daily;

-- 0005_scan_rollups statement 3
DROP TABLE IF EXISTS usage_key_hourly_mv;

-- 0005_scan_rollups statement 4
DROP TABLE IF EXISTS usage_key_hourly;

-- 0005_scan_rollups statement 5
CREATE TABLE IF NOT EXISTS spend_daily
(
    day DateTime('UTC'),
    project String,
    key_id String,
    service String,
    model String,
    requests UInt64,
    errors UInt64,
    total_input_tokens UInt64,
    total_output_tokens UInt64,
    total_cost_micros Int64
)
ENGINE = SummingMergeTree()
PARTITION BY toYYYYMM(day)
ORDER BY (project, key_id, service, model, day);

-- 0005_scan_rollups statement 6
CREATE MATERIALIZED VIEW IF NOT EXISTS spend_daily_mv TO spend_daily AS
SELECT
    toStartOfDay(event_time) AS day,
    project,
    key_id,
    service,
    model,
    count() AS requests,
    countIf(status_code >= 400) AS errors,
    sum(input_tokens) AS total_input_tokens,
    sum(output_tokens) AS total_output_tokens,
    sum(cost_micros) AS total_cost_micros
FROM usage_events
GROUP BY day, project, key_id, service, model;

-- 0005_scan_rollups statement 7
INSERT INTO spend_daily (day, project, key_id, service, model, requests, errors, total_input_tokens, total_output_tokens, total_cost_micros)
SELECT toStartOfDay(hour), project, key_id, service, model, sum(requests), sum(errors), sum(total_input_tokens), sum(total_output_tokens), sum(total_cost_micros)
FROM spend_hourly
GROUP BY toStartOfDay(hour), project, key_id, service, model;

-- 0005_scan_rollups statement 8
CREATE TABLE IF NOT EXISTS usage_key_hourly
(
    hour DateTime('UTC'),
    project String,
    key_id String,
    requests UInt64,
    errors UInt64,
    total_cost_micros Int64
)
ENGINE = SummingMergeTree()
PARTITION BY toYYYYMM(hour)
ORDER BY (hour, key_id, project);

-- 0005_scan_rollups statement 9
CREATE MATERIALIZED VIEW IF NOT EXISTS usage_key_hourly_mv TO usage_key_hourly AS
SELECT
    toStartOfHour(event_time) AS hour,
    project,
    key_id,
    count() AS requests,
    countIf(status_code >= 400) AS errors,
    sum(cost_micros) AS total_cost_micros
FROM usage_events
GROUP BY hour, project, key_id;

-- 0005_scan_rollups statement 10
INSERT INTO usage_key_hourly (hour, project, key_id, requests, errors, total_cost_micros)
SELECT hour, project, key_id, sum(requests), sum(errors), sum(total_cost_micros)
FROM spend_hourly
GROUP BY hour, project, key_id;

-- 0006_key_minute_by_time statement 1
DROP TABLE IF EXISTS usage_key_minute_mv;

-- 0006_key_minute_by_time statement 2
DROP TABLE IF EXISTS usage_key_minute;

-- 0006_key_minute_by_time statement 3
CREATE TABLE IF NOT EXISTS usage_key_minute
(
    minute DateTime('UTC'),
    project String,
    key_id String,
    service String,
    requests AggregateFunction(count),
    errors AggregateFunction(sum, UInt64),
    first_seen_ms AggregateFunction(min, Int64),
    last_seen_ms AggregateFunction(max, Int64),
    last_success_ms AggregateFunction(maxIf, Int64, UInt8)
)
ENGINE = AggregatingMergeTree()
PARTITION BY toYYYYMM(minute)
ORDER BY (key_id, minute, service, project)
SETTINGS index_granularity = 1024;

-- 0006_key_minute_by_time statement 4
CREATE MATERIALIZED VIEW IF NOT EXISTS usage_key_minute_mv TO usage_key_minute AS
SELECT
    toStartOfMinute(event_time) AS minute,
    project,
    key_id,
    service,
    countState() AS requests,
    sumState(toUInt64(status_code >= 400)) AS errors,
    minState(event_time_ms) AS first_seen_ms,
    maxState(event_time_ms) AS last_seen_ms,
    maxIfState(event_time_ms, status_code < 400) AS last_success_ms
FROM usage_events
GROUP BY minute, project, key_id, service;

-- 0006_key_minute_by_time statement 5
INSERT INTO usage_key_minute (minute, project, key_id, service, requests, errors, first_seen_ms, last_seen_ms, last_success_ms)
SELECT minute, project, key_id, service, requests, errors, first_seen_ms, last_seen_ms, last_success_ms
FROM usage_by_key_minute;

-- 0006_key_minute_by_time statement 6
DROP TABLE IF EXISTS usage_by_key_minute_mv;

-- 0007_drop_usage_by_key_minute statement 1
DROP TABLE IF EXISTS usage_by_key_minute;

-- 0008_five_minute_by_key statement 1
DROP TABLE IF EXISTS usage_key_5min_mv;

-- 0008_five_minute_by_key statement 2
DROP TABLE IF EXISTS usage_key_5min;

-- 0008_five_minute_by_key statement 3
CREATE TABLE IF NOT EXISTS usage_key_5min
(
    bucket DateTime('UTC'),
    project String,
    key_id String,
    service String,
    requests UInt64,
    errors UInt64,
    total_cost_micros Int64
)
ENGINE = SummingMergeTree()
PARTITION BY toYYYYMM(bucket)
ORDER BY (key_id, bucket, service, project)
SETTINGS index_granularity = 1024;

-- 0008_five_minute_by_key statement 4
CREATE MATERIALIZED VIEW IF NOT EXISTS usage_key_5min_mv TO usage_key_5min AS
SELECT
    toStartOfFiveMinute(event_time) AS bucket,
    project,
    key_id,
    service,
    count() AS requests,
    countIf(status_code >= 400) AS errors,
    sum(cost_micros) AS total_cost_micros
FROM usage_events
GROUP BY bucket, project, key_id, service;

-- 0008_five_minute_by_key statement 5
INSERT INTO usage_key_5min (bucket, project, key_id, service, requests, errors, total_cost_micros)
SELECT bucket, project, key_id, service, requests, errors, total_cost_micros
FROM usage_5min;

-- 0008_five_minute_by_key statement 6
DROP TABLE IF EXISTS usage_5min_mv;

-- 0009_drop_usage_5min statement 1
DROP TABLE IF EXISTS usage_5min;

