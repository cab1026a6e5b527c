-- 0006 copied usage_by_key_minute into usage_key_minute and stopped its view; nothing reads
-- or writes it since. Its own file, so that 0006 can always start over from it.

{{drop_table "usage_by_key_minute"}};
