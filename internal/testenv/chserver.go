package testenv

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/keytrail/keytrail/internal/storage"
	"github.com/keytrail/keytrail/migrations"
)

// ClickHouseServer is a private ClickHouse started with deploy/clickhouse/local.sh in a
// temporary directory on free ports, for tests that stop or kill it. The shared test server
// (KEYTRAIL_TEST_CLICKHOUSE_ADDR) is never touched: every command names this instance's
// KEYTRAIL_CH_DIR, and Kill checks the pid's command line names its config file.
type ClickHouseServer struct {
	t      testing.TB
	script string
	// Dir is the instance's KEYTRAIL_CH_DIR (config, data, logs, pid file).
	Dir                                string
	TCPPort, HTTPPort, InterserverPort int
}

// StartClickHouseServer starts a private server and stops it when the test ends.
func StartClickHouseServer(t testing.TB) *ClickHouseServer {
	t.Helper()
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	c := &ClickHouseServer{t: t, script: filepath.Join(root, "deploy", "clickhouse", "local.sh"), Dir: dir}
	c.TCPPort, c.HTTPPort, c.InterserverPort = freePorts(t)
	t.Cleanup(func() {
		if out, err := c.Run("stop"); err != nil {
			t.Logf("stop private clickhouse: %v\n%s", err, out)
		}
	})
	c.Start()
	return c
}

// freePorts picks three consecutive free ports at random in 20000-29999 (local.sh takes
// fixed ports), so parallel runs and other instances (19000/18123 and friends) do not clash.
func freePorts(t testing.TB) (int, int, int) {
	t.Helper()
	base, err := FreePortRange(20000, 30000, 3)
	if err != nil {
		t.Fatal(err)
	}
	return base, base + 1, base + 2
}

// DSN is the native-protocol DSN of a database on this server.
func (c *ClickHouseServer) DSN(database string) string {
	return fmt.Sprintf("clickhouse://127.0.0.1:%d/%s?dial_timeout=2s", c.TCPPort, database)
}

// Start starts the server (again, on its data) and waits until it answers.
func (c *ClickHouseServer) Start() {
	c.t.Helper()
	if out, err := c.Run("start"); err != nil {
		c.t.Fatalf("start private clickhouse: %v\n%s", err, out)
	}
}

// Stop asks the server to shut down (SIGTERM; local.sh waits for it).
func (c *ClickHouseServer) Stop() {
	c.t.Helper()
	if out, err := c.Run("stop"); err != nil {
		c.t.Fatalf("stop private clickhouse: %v\n%s", err, out)
	}
}

// configArg is how this instance's server names its config file on its command line.
func (c *ClickHouseServer) configArg() string {
	return "--config-file=" + filepath.Join(c.Dir, "etc", "config.xml")
}

// PID is the running server's process id, checked against its command line; 0 when it is
// not running.
func (c *ClickHouseServer) PID() int {
	b, err := os.ReadFile(filepath.Join(c.Dir, "clickhouse-server.pid"))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || !ProcessMatches(pid, "clickhouse-server", c.configArg()) {
		return 0
	}
	return pid
}

// Kill sends SIGKILL to the server, after checking that the pid in its pid file is
// clickhouse-server with this instance's config file, and waits until the process is gone:
// no shutdown, inserts cut wherever they are. Start brings it back on the same data.
func (c *ClickHouseServer) Kill() {
	c.t.Helper()
	pid := c.PID()
	if pid == 0 {
		c.t.Fatalf("private clickhouse in %s is not running", c.Dir)
	}
	if err := killVerified(pid, "clickhouse-server", []string{c.configArg()}, 30*time.Second); err != nil {
		c.t.Fatal(err)
	}
}

// Run runs a local.sh command (start, stop, status) for this instance.
func (c *ClickHouseServer) Run(command string) (string, error) {
	cmd := exec.Command(c.script, command)
	cmd.Env = append(os.Environ(),
		"KEYTRAIL_CH_DIR="+c.Dir,
		"KEYTRAIL_CH_TCP_PORT="+strconv.Itoa(c.TCPPort),
		"KEYTRAIL_CH_HTTP_PORT="+strconv.Itoa(c.HTTPPort),
		"KEYTRAIL_CH_INTERSERVER_PORT="+strconv.Itoa(c.InterserverPort),
	)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// OpenDatabase connects to database on the server (creating it), applies the schema and
// closes the connection when the test ends.
func (c *ClickHouseServer) OpenDatabase(database string) driver.Conn {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := storage.Open(ctx, storage.Config{DSN: c.DSN(database)})
	if err != nil {
		c.t.Fatalf("open %s: %v", c.DSN(database), err)
	}
	if _, err := migrations.Apply(ctx, conn); err != nil {
		c.t.Fatalf("apply migrations: %v", err)
	}
	c.t.Cleanup(func() { conn.Close() })
	return conn
}
