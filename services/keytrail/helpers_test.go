package main

import "regexp"

// regexpLine reports whether any line of text matches pattern.
func regexpLine(text, pattern string) bool {
	return regexp.MustCompile(`(?m)` + pattern).MatchString(text)
}
