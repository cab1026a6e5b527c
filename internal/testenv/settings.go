package testenv

import (
	"os"
	"strconv"
	"testing"
	"time"
)

// EnvInt reads a positive integer setting of a test (a load size, a count of faults) from
// the environment, def when unset; anything else fails the test rather than run another load
// than the one asked for.
func EnvInt(t testing.TB, name string, def int) int {
	t.Helper()
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		t.Fatalf("%s=%q: want a positive integer", name, s)
	}
	return n
}

// EnvDuration is EnvInt for a positive duration.
func EnvDuration(t testing.TB, name string, def time.Duration) time.Duration {
	t.Helper()
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		t.Fatalf("%s=%q: want a positive duration", name, s)
	}
	return d
}
