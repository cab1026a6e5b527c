//go:build cluster

package clustertest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// keytrailProc is one `keytrail serve` process of the cluster, run from the binary TestMain
// built, so it can be SIGKILLed for real. Every run appends to one log file, shown when the
// test fails.
type keytrailProc struct {
	t       *testing.T
	name    string
	args    []string
	logPath string

	cmd    *exec.Cmd
	exited chan error
	starts int
	// HTTPAddr is where the last start serves REST (query role) or health and metrics.
	HTTPAddr string
}

func newKeytrailProc(t *testing.T, name string, args ...string) *keytrailProc {
	p := &keytrailProc{t: t, name: name, args: args, logPath: filepath.Join(t.TempDir(), name+".log")}
	t.Cleanup(func() {
		if p.cmd != nil {
			p.stop()
		}
		if t.Failed() {
			t.Logf("%s log (last 40 lines):\n%s", name, tail(p.logPath, 40))
		}
	})
	return p
}

var httpAddr = regexp.MustCompile(`msg="keytrail started".* http=(\S+)`)

// launch starts the process without waiting for it.
func (p *keytrailProc) launch() {
	p.t.Helper()
	logFile, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		p.t.Fatal(err)
	}
	defer logFile.Close()
	cmd := exec.Command(keytrailBin, p.args...)
	// Only the flags configure the child, never a KEYTRAIL_* variable of the caller's shell.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "KEYTRAIL_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		p.t.Fatalf("start %s: %v", p.name, err)
	}
	p.cmd, p.exited = cmd, make(chan error, 1)
	go func(c *exec.Cmd, exited chan<- error) { exited <- c.Wait() }(cmd, p.exited)
	p.starts++
}

// awaitStarted waits until the last launch logged "keytrail started".
func (p *keytrailProc) awaitStarted(timeout time.Duration) {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		logs, _ := os.ReadFile(p.logPath)
		if m := httpAddr.FindAllStringSubmatch(string(logs), -1); len(m) >= p.starts {
			p.HTTPAddr = m[len(m)-1][1]
			return
		}
		select {
		case err := <-p.exited:
			p.cmd = nil
			p.t.Fatalf("%s exited during start-up: %v\n%s", p.name, err, tail(p.logPath, 30))
		default:
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("%s not started after %s:\n%s", p.name, timeout, tail(p.logPath, 30))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (p *keytrailProc) start() {
	p.t.Helper()
	p.launch()
	p.awaitStarted(2 * time.Minute)
}

// kill sends SIGKILL: no shutdown flush, no final ack, connections cut mid-write.
func (p *keytrailProc) kill() {
	p.t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		p.t.Fatalf("kill %s: %v", p.name, err)
	}
	<-p.exited
	p.cmd = nil
}

// stop asks the process to shut down (SIGTERM) and waits for it.
func (p *keytrailProc) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.exited
	}
	p.cmd = nil
}

func (p *keytrailProc) String() string { return fmt.Sprintf("%s (%s)", p.name, p.HTTPAddr) }
