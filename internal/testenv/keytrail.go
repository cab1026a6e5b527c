package testenv

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// BuildKeytrail builds the keytrail binary into dir and returns its path: a TestMain builds it
// once for the tests that run keytrail as a process of its own.
func BuildKeytrail(dir string) (string, error) {
	bin := filepath.Join(dir, "keytrail")
	out, err := exec.Command(GoCommand(), "build", "-o", bin, "github.com/keytrail/keytrail/services/keytrail").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("build keytrail: %v\n%s", err, out)
	}
	return bin, nil
}

// KeytrailProcess is a keytrail process run from a binary (BuildKeytrail), so that a test
// can SIGKILL, pause and restart it for real. Only its arguments configure it: a KEYTRAIL_*
// variable of the caller's shell (say KEYTRAIL_INGEST_SHARED_CONSUMER) must not change what
// is being tested. Every start appends to one log file, whose tail is shown when the test
// fails; the process is stopped when the test ends.
type KeytrailProcess struct {
	t       testing.TB
	name    string
	bin     string
	args    []string
	logPath string

	cur    *child
	starts int
	// HTTPAddr is where the last start serves REST (query role) or health and metrics.
	HTTPAddr string
}

// NewKeytrailProcess prepares `bin args...`; Start runs it.
func NewKeytrailProcess(t testing.TB, bin, name string, args ...string) *KeytrailProcess {
	t.Helper()
	p := &KeytrailProcess{t: t, name: name, bin: bin, args: args, logPath: filepath.Join(t.TempDir(), name+".log")}
	t.Cleanup(func() {
		p.Stop()
		if t.Failed() {
			t.Logf("%s log (last 60 lines of %s):\n%s", name, p.logPath, p.LogTail(60))
		}
	})
	return p
}

// Running reports whether the last start's process is alive.
func (p *KeytrailProcess) Running() bool { return p.cur != nil && !p.cur.done() }

// Launch starts the process without waiting for it to be ready (AwaitStarted does).
func (p *KeytrailProcess) Launch() {
	p.t.Helper()
	logFile, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		p.t.Fatal(err)
	}
	defer logFile.Close()
	cmd := exec.Command(p.bin, p.args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "KEYTRAIL_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	c, err := startChild(cmd)
	if err != nil {
		p.t.Fatalf("start %s: %v", p.name, err)
	}
	p.cur = c
	p.starts++
}

var startedLine = regexp.MustCompile(`msg="keytrail started".* http=(\S+)`)

// AwaitStarted waits until the last launch logged "keytrail started" (its consumers bound,
// its listeners open) and records its HTTP address.
func (p *KeytrailProcess) AwaitStarted(timeout time.Duration) {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if m := startedLine.FindAllStringSubmatch(p.Logs(), -1); len(m) >= p.starts {
			p.HTTPAddr = m[len(m)-1][1]
			return
		}
		if p.cur.done() {
			p.t.Fatalf("%s exited during start-up: %v\n%s", p.name, p.cur.err, p.LogTail(30))
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("%s not started after %s:\n%s", p.name, timeout, p.LogTail(30))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Start launches the process and waits until it has started.
func (p *KeytrailProcess) Start() {
	p.t.Helper()
	p.Launch()
	p.AwaitStarted(2 * time.Minute)
}

// Kill sends SIGKILL: no shutdown flush, no final ack, connections cut mid-write.
func (p *KeytrailProcess) Kill() {
	p.t.Helper()
	p.signal(syscall.SIGKILL)
	if !p.cur.wait(30 * time.Second) {
		p.t.Fatalf("%s (pid %d) did not exit after SIGKILL", p.name, p.cur.pid())
	}
}

// Pause stops the process where it is (SIGSTOP).
func (p *KeytrailProcess) Pause() { p.t.Helper(); p.signal(syscall.SIGSTOP) }

// Resume lets a paused process go on (SIGCONT).
func (p *KeytrailProcess) Resume() { p.t.Helper(); p.signal(syscall.SIGCONT) }

func (p *KeytrailProcess) signal(sig syscall.Signal) {
	p.t.Helper()
	if !p.Running() {
		p.t.Fatalf("%s is not running", p.name)
	}
	if err := p.cur.signal(sig); err != nil {
		p.t.Fatalf("%s %s: %v", sig, p.name, err)
	}
}

// Stop asks the process to shut down (SIGTERM) and waits for it; SIGKILL after 30 s.
func (p *KeytrailProcess) Stop() {
	if !p.Running() {
		return
	}
	_ = p.cur.signal(syscall.SIGTERM)
	if !p.cur.wait(30 * time.Second) {
		_ = p.cur.signal(syscall.SIGKILL)
		p.cur.wait(30 * time.Second)
	}
}

// RSS is the running process's resident set size in bytes (VmRSS).
func (p *KeytrailProcess) RSS() (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cur.pid()))
	if err != nil {
		return 0, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("no VmRSS in /proc status")
}

// Logs is everything the process logged, across its starts.
func (p *KeytrailProcess) Logs() string {
	b, _ := os.ReadFile(p.logPath)
	return string(b)
}

// LogTail is the last n lines of Logs.
func (p *KeytrailProcess) LogTail(n int) string { return Tail(p.logPath, n) }

func (p *KeytrailProcess) String() string { return fmt.Sprintf("%s (%s)", p.name, p.HTTPAddr) }

// Tail is the last n lines of the file at path (or why it cannot be read), for failure
// reports.
func Tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
