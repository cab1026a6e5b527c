package testenv

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// natsServerModule is the module the nats-server binary is built from: the one go.mod
// requires (the embedded server of keytrail), so the process runs the same server code.
const natsServerModule = "github.com/nats-io/nats-server/v2"

var natsBuild sync.Mutex

// NATSServerBinary returns the path of a nats-server binary built from natsServerModule at
// the version go.mod requires (BuildNATSServer in the repository), failing the test if it
// cannot be built.
func NATSServerBinary(t testing.TB) string {
	t.Helper()
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin, err := BuildNATSServer(context.Background(), root)
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// BuildNATSServer builds nats-server from natsServerModule at the version go.mod requires,
// once, into <root>/.local/bin/nats-server-<version>, and returns its path. Later tests and
// runs reuse it (a few seconds the first time, from Go's build cache after that); the fault
// tests, the benchmark and deploy/cluster/local.sh all run the same file.
func BuildNATSServer(ctx context.Context, root string) (string, error) {
	natsBuild.Lock()
	defer natsBuild.Unlock()
	goCmd := GoCommand()
	list := exec.CommandContext(ctx, goCmd, "list", "-m", "-f", "{{.Version}}", natsServerModule)
	list.Dir = root
	out, err := list.Output()
	if err != nil {
		return "", fmt.Errorf("testenv: version of %s: %w", natsServerModule, err)
	}
	bin, err := filepath.Abs(filepath.Join(root, ".local", "bin", "nats-server-"+strings.TrimSpace(string(out))))
	if err != nil {
		return "", err
	}
	if fileExists(bin) {
		return bin, nil
	}
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		return "", err
	}
	// Built beside its final name and renamed: another process building at the same time
	// never sees half a binary.
	tmp := fmt.Sprintf("%s.tmp%d", bin, os.Getpid())
	build := exec.CommandContext(ctx, goCmd, "build", "-o", tmp, natsServerModule)
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		_ = os.Remove(tmp)
		return "", fmt.Errorf("testenv: go build %s: %w\n%s", natsServerModule, err, out)
	}
	return bin, os.Rename(tmp, bin)
}

// NATSServerConfig configures a nats-server process.
type NATSServerConfig struct {
	// Name is the server_name (default "keytrail-test"); servers of a cluster need distinct
	// names.
	Name string
	// Port is the client port; 0 lets the server pick a free one at its first start, which
	// every restart then reuses (clients reconnect to the same URL).
	Port int
	// StoreDir holds JetStream's file store (default a fresh t.TempDir()); restarts reuse it.
	StoreDir string
	// Cluster, when set, makes the server a member of a cluster.
	Cluster *NATSClusterConfig
	// Extra is appended verbatim to the generated configuration file.
	Extra string
}

// NATSClusterConfig is the cluster block of a server's configuration.
type NATSClusterConfig struct {
	Name string
	// Port is the route listener (must be fixed: the other members' Routes name it).
	Port int
	// Routes are the other members, e.g. "nats-route://127.0.0.1:6223".
	Routes []string
}

// NATSServer is a nats-server process with JetStream: started by StartNATSServer, killed
// with SIGKILL by Kill, started again on the same port and store by Start, stopped when the
// test ends. Its output goes to a log file shown when the test fails.
type NATSServer struct {
	t        testing.TB
	cfg      NATSServerConfig
	bin      string
	dir      string
	confPath string
	logPath  string

	mu  sync.Mutex
	cur *child
	// URL and Port are where clients connect; set by the first start.
	URL  string
	Port int
}

// StartNATSServer starts a nats-server process and waits until it serves JetStream (for a
// cluster member: until it accepts clients; forming the cluster is the caller's to wait
// for).
func StartNATSServer(t testing.TB, cfg NATSServerConfig) *NATSServer {
	t.Helper()
	if cfg.Name == "" {
		cfg.Name = "keytrail-test"
	}
	dir := t.TempDir()
	if cfg.StoreDir == "" {
		cfg.StoreDir = filepath.Join(dir, "jetstream")
	}
	s := &NATSServer{
		t: t, cfg: cfg, bin: NATSServerBinary(t), dir: dir,
		confPath: filepath.Join(dir, "nats-server.conf"),
		logPath:  filepath.Join(dir, "nats-server.log"),
	}
	t.Cleanup(func() {
		s.mu.Lock()
		cur := s.cur
		s.mu.Unlock()
		if cur != nil && !cur.done() {
			_ = cur.signal(syscall.SIGKILL)
			cur.wait(10 * time.Second)
		}
		if t.Failed() {
			t.Logf("nats-server %s log (last 40 lines of %s):\n%s", cfg.Name, s.logPath, Tail(s.logPath, 40))
		}
	})
	s.Start()
	return s
}

// conf renders the configuration file; port -1 asks the server to pick one.
func (s *NATSServer) conf(port int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "server_name: %q\nlisten: \"127.0.0.1:%d\"\nmax_payload: 1048576\nports_file_dir: %q\n", s.cfg.Name, port, s.dir)
	fmt.Fprintf(&b, "jetstream {\n  store_dir: %q\n}\n", s.cfg.StoreDir)
	if c := s.cfg.Cluster; c != nil {
		routes := make([]string, len(c.Routes))
		for i, r := range c.Routes {
			routes[i] = fmt.Sprintf("%q", r)
		}
		fmt.Fprintf(&b, "cluster {\n  name: %q\n  listen: \"127.0.0.1:%d\"\n  routes: [%s]\n}\n", c.Name, c.Port, strings.Join(routes, ", "))
	}
	b.WriteString(s.cfg.Extra)
	return b.String()
}

// Start runs the server (again: same port and store) and waits until it is ready.
func (s *NATSServer) Start() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur != nil && !s.cur.done() {
		s.t.Fatalf("nats-server %s is already running (pid %d)", s.cfg.Name, s.cur.pid())
	}
	port := s.Port
	if port == 0 {
		port = s.cfg.Port
	}
	if port == 0 {
		port = -1
	}
	if err := os.WriteFile(s.confPath, []byte(s.conf(port)), 0o600); err != nil {
		s.t.Fatal(err)
	}
	out, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		s.t.Fatal(err)
	}
	defer out.Close()
	cmd := exec.Command(s.bin, "-c", s.confPath)
	cmd.Stdout, cmd.Stderr = out, out
	started := time.Now()
	c, err := startChild(cmd)
	if err != nil {
		s.t.Fatalf("start nats-server: %v", err)
	}
	s.cur = c
	if err := s.awaitReady(c, 30*time.Second); err != nil {
		_ = c.signal(syscall.SIGKILL)
		c.wait(5 * time.Second)
		s.t.Fatalf("nats-server %s (pid %d) not ready after %s: %v\n%s", s.cfg.Name, c.pid(), time.Since(started).Round(time.Millisecond), err, Tail(s.logPath, 30))
	}
}

// awaitReady waits for the ports file of process c, then for a client connection and, on a
// standalone server, for JetStream to answer.
func (s *NATSServer) awaitReady(c *child, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	portsFile := filepath.Join(s.dir, fmt.Sprintf("%s_%d.ports", filepath.Base(s.bin), c.pid()))
	var last error
	for time.Now().Before(deadline) {
		if c.done() {
			return fmt.Errorf("exited: %v", c.err)
		}
		if last = s.tryReady(portsFile); last == nil {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return last
}

func (s *NATSServer) tryReady(portsFile string) error {
	b, err := os.ReadFile(portsFile)
	if err != nil {
		return err
	}
	var ports struct {
		Nats []string `json:"nats"`
	}
	if err := json.Unmarshal(b, &ports); err != nil || len(ports.Nats) == 0 {
		return fmt.Errorf("ports file %s: %q", portsFile, b)
	}
	u, err := url.Parse(ports.Nats[0])
	if err != nil {
		return err
	}
	_, portStr, err := net.SplitHostPort(u.Host)
	if err != nil {
		return err
	}
	port := 0
	if _, err := fmt.Sscanf(portStr, "%d", &port); err != nil {
		return err
	}
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	nc, err := nats.Connect(url, nats.Timeout(time.Second))
	if err != nil {
		return err
	}
	defer nc.Close()
	if s.cfg.Cluster == nil {
		js, err := jetstream.New(nc)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if _, err := js.AccountInfo(ctx); err != nil {
			return err
		}
	}
	s.Port, s.URL = port, url
	return nil
}

// PID is the running server's process id.
func (s *NATSServer) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur == nil || s.cur.done() {
		return 0
	}
	return s.cur.pid()
}

// Kill sends SIGKILL (after checking that the pid is still this server: nats-server with
// this configuration file) and waits for the process to exit. No shutdown, no flush: what
// the operating system has of the store is what a restart finds.
func (s *NATSServer) Kill() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur == nil || s.cur.done() {
		s.t.Fatalf("nats-server %s is not running", s.cfg.Name)
	}
	if err := killVerified(s.cur.pid(), s.bin, []string{"-c", s.confPath}, 10*time.Second); err != nil {
		s.t.Fatal(err)
	}
	if !s.cur.wait(10 * time.Second) {
		s.t.Fatalf("nats-server %s (pid %d) did not exit after SIGKILL", s.cfg.Name, s.cur.pid())
	}
}

// Stop asks the server to shut down (SIGTERM) and waits for it.
func (s *NATSServer) Stop() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur == nil || s.cur.done() {
		return
	}
	_ = s.cur.signal(syscall.SIGTERM)
	if !s.cur.wait(30 * time.Second) {
		_ = s.cur.signal(syscall.SIGKILL)
		s.cur.wait(10 * time.Second)
	}
}

// LogTail is the last n lines the server logged (across restarts).
func (s *NATSServer) LogTail(n int) string { return Tail(s.logPath, n) }

// FreePort returns a TCP port that was free a moment ago, for listeners whose port others
// must know before they start (a cluster's routes). Prefer port 0 wherever the listener can
// report what it got.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// FreePortRange finds, at random, n consecutive ports in [lo, hi) that nothing listens on,
// for servers whose ports must be known before any of them starts (a cluster's configuration
// names them all). The range is the caller's: below the kernel's ephemeral ports (32768 and
// up here), which any outgoing connection may take between this check and a server's start,
// and apart from the ranges of other suites running at the same time.
func FreePortRange(lo, hi, n int) (int, error) {
	for range 50 {
		base := lo + rand.IntN(hi-lo-n+1)
		ok := true
		for p := base; p < base+n && ok; p++ {
			l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
			if err != nil {
				ok = false
				continue
			}
			l.Close()
		}
		if ok {
			return base, nil
		}
	}
	return 0, fmt.Errorf("no %d free consecutive ports found in %d-%d", n, lo, hi-1)
}
