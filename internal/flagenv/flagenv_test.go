package flagenv_test

import (
	"bytes"
	"errors"
	"flag"
	"strings"
	"testing"
	"time"

	"github.com/keytrail/keytrail/internal/flagenv"
)

type settings struct {
	n    int
	d    time.Duration
	on   bool
	name string
}

func newFlags(s *settings, out *bytes.Buffer) *flag.FlagSet {
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.IntVar(&s.n, "batch-size", 10, "how many")
	fs.DurationVar(&s.d, "flush-interval", time.Second, "how often")
	fs.BoolVar(&s.on, "shared", false, "share")
	fs.StringVar(&s.name, "name", "x", "a name")
	return fs
}

func TestParse(t *testing.T) {
	for _, v := range []string{"FT_BATCH_SIZE", "FT_FLUSH_INTERVAL", "FT_SHARED", "FT_NAME"} {
		t.Setenv(v, "")
	}
	cases := []struct {
		name string
		env  map[string]string
		args []string
		want settings
		err  string
	}{
		{name: "defaults", want: settings{10, time.Second, false, "x"}},
		{name: "flags", args: []string{"-batch-size", "5", "-flush-interval", "2s", "-shared", "-name", "y"}, want: settings{5, 2 * time.Second, true, "y"}},
		{name: "environment", env: map[string]string{"FT_BATCH_SIZE": "7", "FT_FLUSH_INTERVAL": "3s", "FT_SHARED": "1", "FT_NAME": "z"}, want: settings{7, 3 * time.Second, true, "z"}},
		{name: "the flag wins, and the variable is not read", env: map[string]string{"FT_BATCH_SIZE": "bad", "FT_NAME": "z"}, args: []string{"-batch-size", "5", "-name", "y"}, want: settings{5, time.Second, false, "y"}},
		{name: "an empty variable is unset", env: map[string]string{"FT_BATCH_SIZE": "", "FT_NAME": ""}, want: settings{10, time.Second, false, "x"}},
		{name: "false from the environment", env: map[string]string{"FT_SHARED": "false"}, args: nil, want: settings{10, time.Second, false, "x"}},
		{
			name: "every bad value at once, flags first", env: map[string]string{"FT_FLUSH_INTERVAL": "2", "FT_SHARED": "yes"}, args: []string{"-batch-size", "1e3"},
			err: `invalid value "1e3" for -batch-size (env FT_BATCH_SIZE): want a whole number
invalid value "2" for -flush-interval (env FT_FLUSH_INTERVAL): want a duration such as 500ms, 30s or 1h30m
invalid value "yes" for -shared (env FT_SHARED): want true or false (or 1 or 0)`,
		},
		{name: "a stray argument", args: []string{"-name", "y", "serve"}, err: `unexpected argument "serve" (flags come as -name value)`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for k, v := range c.env {
				t.Setenv(k, v)
			}
			var got settings
			var out bytes.Buffer
			err := flagenv.Parse(newFlags(&got, &out), c.args, "FT")
			if c.err != "" {
				if err == nil || err.Error() != c.err {
					t.Fatalf("error:\n%v\nwant\n%s", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != c.want {
				t.Errorf("got %+v, want %+v", got, c.want)
			}
		})
	}
}

// -h prints each flag with its type and variable, as the flag package would, and is
// reported as flag.ErrHelp.
func TestParseHelp(t *testing.T) {
	var s settings
	var out bytes.Buffer
	if err := flagenv.Parse(newFlags(&s, &out), []string{"-h"}, "FT"); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("error %v, want flag.ErrHelp", err)
	}
	for _, line := range []string{"-batch-size int", "how many (env FT_BATCH_SIZE) (default 10)", "-flush-interval duration", "-shared\n", "share (env FT_SHARED)"} {
		if !strings.Contains(out.String(), line) {
			t.Errorf("help lacks %q:\n%s", line, out.String())
		}
	}
}
