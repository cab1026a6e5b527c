package flagenv

import (
	"errors"
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/peterbourgon/ff/v3"
)

// EnvName is the environment variable that sets flag flagName.
func EnvName(prefix, flagName string) string {
	return prefix + "_" + strings.ToUpper(strings.NewReplacer("-", "_", ".", "_", "/", "_").Replace(flagName))
}

// Ref names a flag and its variable for an error message: "-batch-size (env KEYTRAIL_BATCH_SIZE)".
func Ref(prefix, flagName string) string {
	return "-" + flagName + " (env " + EnvName(prefix, flagName) + ")"
}

// Invalid is the error for a value a flag cannot take: "invalid value "x" for -f (env P_F): want ...".
func Invalid(prefix, flagName, value, want string) error {
	return fmt.Errorf("invalid value %q for %s: want %s", value, Ref(prefix, flagName), want)
}

// Parse parses args into fs, then sets each flag that the command line did not set from its
// environment variable; an empty variable counts as unset. Each flag's usage gains the name
// of its variable. The error joins every malformed value and any argument left over after
// the flags; an unknown flag is the flag package's own error, and -h is flag.ErrHelp.
func Parse(fs *flag.FlagSet, args []string, prefix string) error {
	var bad []error
	original := map[string]flag.Value{}
	fs.VisitAll(func(f *flag.Flag) {
		f.Usage += " (env " + EnvName(prefix, f.Name) + ")"
		original[f.Name] = f.Value
		// A value that fails to parse is recorded and parsing goes on, so that one run
		// reports every bad value instead of the first.
		f.Value = &strict{Value: f.Value, flag: f.Name, prefix: prefix, bad: &bad}
	})
	defer fs.VisitAll(func(f *flag.Flag) { f.Value = original[f.Name] })
	usage := fs.Usage
	fs.Usage = func() {
		// The help names each flag's type from its own Value, so it is printed with those.
		fs.VisitAll(func(f *flag.Flag) { f.Value = original[f.Name] })
		if usage != nil {
			usage()
		} else {
			fmt.Fprintf(fs.Output(), "Usage of %s:\n", fs.Name())
			fs.PrintDefaults()
		}
	}
	defer func() { fs.Usage = usage }()
	if err := ff.Parse(fs, args, ff.WithEnvVarPrefix(prefix)); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return flag.ErrHelp
		}
		return errors.Join(append(bad, err)...)
	}
	if fs.NArg() > 0 {
		// The flag package stops at the first argument that is not a flag; what follows
		// would be dropped unread.
		bad = append(bad, fmt.Errorf("unexpected argument %q (flags come as -name value)", fs.Arg(0)))
	}
	return errors.Join(bad...)
}

// strict wraps a flag's Value to record a failed Set with the flag's and variable's names.
type strict struct {
	flag.Value
	flag, prefix string
	bad          *[]error
}

func (s *strict) Set(v string) error {
	if err := s.Value.Set(v); err != nil {
		*s.bad = append(*s.bad, Invalid(s.prefix, s.flag, v, want(s.Value, err)))
	}
	return nil
}

// IsBoolFlag lets a wrapped bool flag be given without a value (-json), as before wrapping.
func (s *strict) IsBoolFlag() bool {
	b, ok := s.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

// want says what the flag takes; the standard flag types' own error is just "parse error".
func want(v flag.Value, err error) string {
	g, ok := v.(flag.Getter)
	if !ok {
		return err.Error()
	}
	switch g.Get().(type) {
	case time.Duration:
		return "a duration such as 500ms, 30s or 1h30m"
	case bool:
		return "true or false (or 1 or 0)"
	case int, int64, uint, uint64:
		return "a whole number"
	case float64:
		return "a number"
	}
	return err.Error()
}
