package testenv

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// RepoRoot is the directory of keytrail's go.mod, found upwards from the working directory
// (a test's is its package directory).
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.HasPrefix(b, []byte("module github.com/keytrail/keytrail\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("testenv: keytrail's go.mod not found above the working directory")
		}
		dir = parent
	}
}

// GoCommand is the go binary that runs the tests: $GOROOT/bin/go when it exists (go test
// sets GOROOT), else go from PATH.
func GoCommand() string {
	if root := os.Getenv("GOROOT"); root != "" {
		if p := filepath.Join(root, "bin", "go"); fileExists(p) {
			return p
		}
	}
	return "go"
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// processArgs reads a live process's command line. A zombie (exited, not yet reaped) has
// none and is reported as not running.
func processArgs(pid int) ([]string, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || len(b) == 0 {
		return nil, false
	}
	return strings.Split(strings.TrimRight(string(b), "\x00"), "\x00"), true
}

// ProcessMatches reports whether pid is a live process whose executable's base name is
// exe and whose arguments include every one of args. PIDs wrap quickly on a busy machine
// (pid_max 32768 here), so a pid from a file proves nothing until its command line says
// whose it is: check this before signalling.
func ProcessMatches(pid int, exe string, args ...string) bool {
	argv, ok := processArgs(pid)
	if !ok || filepath.Base(argv[0]) != filepath.Base(exe) {
		return false
	}
	for _, want := range args {
		found := false
		for _, a := range argv[1:] {
			if a == want {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// killVerified sends SIGKILL to pid after checking that it is the process described, and
// waits (up to timeout) until it is gone or a zombie.
func killVerified(pid int, exe string, args []string, timeout time.Duration) error {
	if !ProcessMatches(pid, exe, args...) {
		return fmt.Errorf("pid %d is not %s %s (command line %q): not killing it", pid, exe, strings.Join(args, " "), cmdline(pid))
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill %d: %w", pid, err)
	}
	deadline := time.Now().Add(timeout)
	for {
		if _, alive := processArgs(pid); !alive {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pid %d still running %s after SIGKILL", pid, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func cmdline(pid int) string {
	argv, _ := processArgs(pid)
	return strings.Join(argv, " ")
}

// child is a process this test started: its exit is collected by a goroutine, so its pid
// stays reserved (a zombie at worst) until we know it exited.
type child struct {
	cmd    *exec.Cmd
	exited chan struct{}
	err    error
}

func startChild(cmd *exec.Cmd) (*child, error) {
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &child{cmd: cmd, exited: make(chan struct{})}
	go func() {
		c.err = cmd.Wait()
		close(c.exited)
	}()
	return c, nil
}

func (c *child) pid() int { return c.cmd.Process.Pid }

func (c *child) done() bool {
	select {
	case <-c.exited:
		return true
	default:
		return false
	}
}

// signal sends sig unless the child has exited (then its pid may be someone else's).
func (c *child) signal(sig syscall.Signal) error {
	if c.done() {
		return fmt.Errorf("pid %d already exited: %v", c.pid(), c.err)
	}
	return c.cmd.Process.Signal(sig)
}

// wait waits for the exit, up to timeout.
func (c *child) wait(timeout time.Duration) bool {
	select {
	case <-c.exited:
		return true
	case <-time.After(timeout):
		return false
	}
}
