package bench

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// CPU accounting. Every figure of the cost table is CPU time of one process over a stretch
// of work, divided by the events of that stretch: the harness's own (where the publisher or
// the ingester runs), the nats-server process's and the ClickHouse server's. Wall time on a
// shared 2-core machine says how busy the machine was; CPU time says what the work cost.

// userHz is the unit of utime and stime in /proc/<pid>/stat: USER_HZ, 100 on every Linux
// the kernel ABI has ever shipped for user space.
const userHz = 100

// procCPU is a process's user+system CPU time so far, from /proc/<pid>/stat (10 ms
// resolution: over a stretch of seconds that is well under 1%).
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may contain spaces; the fields after it start past its ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f)+2)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return time.Duration(utime+stime) * time.Second / userHz, nil
}

// selfCPU is this process's user+system CPU time (getrusage: microsecond resolution),
// all threads included: the garbage collector's work is part of what a stage costs.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// cpuMeter reads the CPU time of the processes a phase involves at two instants.
type cpuMeter struct {
	natsPID, chPID int // 0: not measurable
}

// cpuSample is the CPU time so far of the harness, nats-server and ClickHouse (-1: unknown).
type cpuSample struct {
	at             time.Time
	self, nats, ch time.Duration
}

func (m cpuMeter) sample() cpuSample {
	s := cpuSample{at: time.Now(), self: selfCPU(), nats: -1, ch: -1}
	if m.natsPID > 0 {
		if d, err := procCPU(m.natsPID); err == nil {
			s.nats = d
		}
	}
	if m.chPID > 0 {
		if d, err := procCPU(m.chPID); err == nil {
			s.ch = d
		}
	}
	return s
}

// cpuSpan is the CPU each process spent between two samples, and the wall time.
type cpuSpan struct {
	wall, self, nats, ch time.Duration // nats, ch: -1 when unknown
}

func (a cpuSample) to(b cpuSample) cpuSpan {
	d := func(x, y time.Duration) time.Duration {
		if x < 0 || y < 0 {
			return -1
		}
		return y - x
	}
	return cpuSpan{wall: b.at.Sub(a.at), self: b.self - a.self, nats: d(a.nats, b.nats), ch: d(a.ch, b.ch)}
}

// perEvent is a CPU time per event in microseconds; NaN when unknown.
func perEvent(d time.Duration, events int) float64 {
	if d < 0 || events <= 0 {
		return nan
	}
	return float64(d) / float64(time.Microsecond) / float64(events)
}

// perMillion is CPU seconds per million rows; NaN when unknown.
func perMillion(d time.Duration, rows int) float64 {
	if d < 0 || rows <= 0 {
		return nan
	}
	return d.Seconds() * 1e6 / float64(rows)
}

// listenerPID finds the process listening on a local TCP address (the ClickHouse server
// of the benchmark), through /proc/net/tcp{,6} and the processes' socket descriptors. It
// returns 0 when the address is not on this machine or the process cannot be seen (another
// user's): the ClickHouse rows of the cost table then say n/a.
func listenerPID(addr string) int {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return 0
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return 0
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return 0
	}
	inodes := map[string]bool{}
	for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(table)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		sc.Scan() // header
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			// f[1] local address:port in hex, f[3] state (0A = LISTEN), f[9] inode.
			if len(f) < 10 || f[3] != "0A" {
				continue
			}
			_, p, ok := strings.Cut(f[1], ":")
			if v, err := strconv.ParseUint(p, 16, 16); ok && err == nil && v == port {
				inodes["socket:["+f[9]+"]"] = true
			}
		}
	}
	if len(inodes) == 0 {
		return 0
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/fd")
	for _, fdDir := range procs {
		entries, err := os.ReadDir(fdDir)
		if err != nil {
			continue
		}
		for _, e := range entries {
			if link, err := os.Readlink(filepath.Join(fdDir, e.Name())); err == nil && inodes[link] {
				pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(fdDir)))
				return pid
			}
		}
	}
	return 0
}
