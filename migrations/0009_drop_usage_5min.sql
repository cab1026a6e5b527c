-- 0008 copied usage_5min into usage_key_5min and stopped its view; nothing reads or writes it
-- since. Its own file, so that 0008 can always start over from it.

{{drop_table "usage_5min"}};
