package bench

import (
	"fmt"
	"os/exec"
	"syscall"
	"time"
)

// child is a process the harness started (nats-server, keytrail). It is waited for exactly
// once, so its pid is signalled only while the process has not been reaped and cannot
// belong to another one.
type child struct {
	cmd    *exec.Cmd
	name   string
	exited chan struct{} // closed once the process is gone
	err    error         // its exit status, once exited is closed
}

// startChild starts cmd; onExit, when set, runs after the process is reaped (closing its
// log file, say).
func startChild(cmd *exec.Cmd, name string, onExit func()) (*child, error) {
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	c := &child{cmd: cmd, name: name, exited: make(chan struct{})}
	go func() {
		c.err = cmd.Wait()
		if onExit != nil {
			onExit()
		}
		close(c.exited)
	}()
	return c, nil
}

func (c *child) pid() int { return c.cmd.Process.Pid }

// stop ends the process (SIGTERM, SIGKILL after 30 s) and returns its exit status.
func (c *child) stop() error {
	select {
	case <-c.exited:
		return c.err
	default:
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.exited:
		return c.err
	case <-time.After(30 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.exited
		return fmt.Errorf("%s did not stop within 30 s of SIGTERM; killed", c.name)
	}
}
