-- Dead letters that the dead-letter stream refused (full, deleted, unavailable). The ingester
-- writes them here before it acknowledges them, so a rejected message is never lost; the
-- stream stays the first choice. `keytrail deadletters list` shows them beside the stream's.
-- One row per rejected message of the events stream: a redelivered message dead-lettered again
-- collapses into its row (ReplacingMergeTree on the stream position; read with FINAL), and
-- `keytrail deadletters replay` marks a row replayed by inserting it again with replayed_at
-- set (the newest version wins). received_at is when the events stream stored the message,
-- the same on every redelivery, so both copies land in one partition.
-- Subject, detail, headers and payload are redacted as in the dead-letter stream
-- (docs/events.md). Retention by partition drop like the event tables.
CREATE TABLE IF NOT EXISTS {{create "dead_letters"}}
(
    stream String,
    stream_seq UInt64,
    received_at DateTime('UTC'),
    dead_lettered_at DateTime('UTC'),
    reason String,
    detail String,
    kind String,
    subject String,
    original_msg_id String,
    header_keys Array(String),
    header_values Array(String),
    dropped_headers Array(String),
    payload String,
    payload_bytes UInt64,
    payload_sha256 String,
    redacted UInt32,
    truncated UInt8,
    fallback_cause String,
    replayed_at DateTime('UTC')
)
ENGINE = {{engine "dead_letters" "ReplacingMergeTree(replayed_at)"}}
PARTITION BY toYYYYMM(received_at)
ORDER BY (stream, stream_seq);
-- On a cluster every copy of a row lands on one shard, so FINAL collapses them.
{{distributed "dead_letters" "cityHash64(stream, stream_seq)"}};
