// Package flagenv reads a command's flags from its command line and, for every flag not
// given there, from an environment variable (ff's naming: PREFIX_ + the flag name in upper
// case with - as _). Its guarantee: no value is silently ignored. Every malformed value, on
// the command line or in the environment, is reported, all of them at once, each naming
// both the flag and its variable, so the operator finds the setting whichever way it came.
package flagenv
