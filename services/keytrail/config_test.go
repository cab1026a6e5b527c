package main

import (
	"strings"
	"testing"
)

func TestMemoryLimit(t *testing.T) {
	ingestExternal := []string{"-role", "ingest", "-nats-url", "nats://127.0.0.1:4222"}
	cases := []struct {
		name string
		args []string
		want int64
	}{
		{"auto: ingest-only with external NATS", ingestExternal, 100 << 20},
		{"auto: all roles embed NATS", nil, 0},
		{"auto: ingest with embedded NATS", []string{"-role", "ingest"}, 0},
		{"auto: query", []string{"-role", "query", "-nats-url", "nats://127.0.0.1:4222"}, 0},
		{"off", append(ingestExternal, "-memory-limit", "off"), 0},
		{"MiB", []string{"-memory-limit", "256MiB"}, 256 << 20},
		{"GiB", []string{"-memory-limit", "2GiB"}, 2 << 30},
		{"bytes", []string{"-memory-limit", "16777216"}, 16 << 20},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := parseConfig("test", c.args)
			if err != nil {
				t.Fatal(err)
			}
			got, err := cfg.memoryLimit()
			if err != nil || got != c.want {
				t.Fatalf("memoryLimit() = %d, %v; want %d", got, err, c.want)
			}
		})
	}
	for _, bad := range []string{"lots", "100MB", "-5MiB", "1KiB", "15MiB", "99999999999TiB"} {
		_, err := parseConfig("test", []string{"-memory-limit", bad})
		if err == nil || !strings.Contains(err.Error(), `memory-limit "`+bad+`"`) {
			t.Errorf("-memory-limit %s: error %v, want one naming the flag and value", bad, err)
		}
	}
}
