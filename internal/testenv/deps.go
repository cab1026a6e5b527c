package testenv

import (
	"os/exec"
	"strings"
	"testing"
)

// Deps lists every package the named packages link, themselves included (`go list -deps`;
// the imports of their tests are not part of it): for tests that pin what a library or a
// binary must not pull in.
func Deps(t testing.TB, pkgs ...string) []string {
	t.Helper()
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(GoCommand(), append([]string{"list", "-deps", "-f", "{{.ImportPath}}"}, pkgs...)...)
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		var stderr string
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("testenv: go list -deps %s: %v\n%s", strings.Join(pkgs, " "), err, stderr)
	}
	return strings.Fields(string(out))
}

// Linked are the packages of deps that are one of pkgs or lie beneath one of them.
func Linked(deps []string, pkgs ...string) []string {
	var out []string
	for _, d := range deps {
		for _, p := range pkgs {
			if d == p || strings.HasPrefix(d, p+"/") {
				out = append(out, d)
				break
			}
		}
	}
	return out
}
