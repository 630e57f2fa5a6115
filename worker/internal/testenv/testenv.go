// Package testenv starts the real servers the worker's tests need, each a
// private instance in a temporary folder that the test's cleanup stops:
// Redis and PostgreSQL from the machine's packages (see mk/servers.sh), and
// the vstage sidecar built from this repository.
package testenv

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
)

// Redis starts redis-server listening on a Unix socket only and returns
// its URL for REDIS_URL.
func Redis(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redis-server is not installed (make test installs it with mk/servers.sh): %v", err)
	}
	dir := shortTempDir(t, "redis")
	sock := filepath.Join(dir, "redis.sock")
	cmd := exec.Command(bin, "--port", "0", "--unixsocket", sock, "--unixsocketperm", "700",
		"--dir", dir, "--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning")
	startServer(t, cmd, os.Interrupt, filepath.Join(dir, "redis.log"))
	waitFor(t, "redis", func(ctx context.Context) error {
		c := redis.NewClient(&redis.Options{Network: "unix", Addr: sock})
		defer c.Close()
		return c.Ping(ctx).Err()
	})
	return "redis-socket://" + sock
}

// Postgres starts a PostgreSQL cluster listening on a Unix socket only,
// with trust authentication, and returns a URL for DATABASE_URL naming its
// database vstage. PostgreSQL refuses to run as root; under root the
// cluster runs as the postgres user that Debian's package creates.
func Postgres(t testing.TB) string {
	t.Helper()
	bin := postgresBin(t)
	dir := shortTempDir(t, "pg")
	data := filepath.Join(dir, "data")
	cred := serverUser(t, dir)
	initdb := exec.Command(filepath.Join(bin, "initdb"), "-D", data, "-U", "vstage", "--auth=trust", "-E", "UTF8", "--no-sync", "--no-instructions")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if out, err := initdb.CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	cmd := exec.Command(filepath.Join(bin, "postgres"), "-D", data, "-k", dir, "-c", "listen_addresses=",
		"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off", "-c", "max_connections=100")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	// SIGINT is PostgreSQL's fast shutdown: sessions are ended at once.
	startServer(t, cmd, os.Interrupt, filepath.Join(t.TempDir(), "postgres.log"))
	admin := fmt.Sprintf("host=%s user=vstage dbname=postgres", dir)
	waitFor(t, "postgres", func(ctx context.Context) error {
		conn, err := pgx.Connect(ctx, admin)
		if err != nil {
			return err
		}
		defer conn.Close(ctx)
		_, err = conn.Exec(ctx, "CREATE DATABASE vstage")
		return err
	})
	return fmt.Sprintf("postgres://vstage@/vstage?host=%s&sslmode=disable", dir)
}

// postgresBin finds the folder of initdb: on PATH, else the newest of
// Debian's /usr/lib/postgresql/N/bin.
func postgresBin(t testing.TB) string {
	if p, err := exec.LookPath("initdb"); err == nil {
		// Debian links initdb into /usr/local/bin without its siblings.
		if real, err := filepath.EvalSymlinks(p); err == nil {
			return filepath.Dir(real)
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return version(dirs[i]) < version(dirs[j]) })
	for i := len(dirs) - 1; i >= 0; i-- {
		if _, err := os.Stat(filepath.Join(dirs[i], "initdb")); err == nil {
			return dirs[i]
		}
	}
	t.Fatal("PostgreSQL's initdb is not installed (make test installs it with mk/servers.sh)")
	return ""
}

func version(dir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(dir)))
	return n
}

// serverUser returns nil (run as ourselves) unless we are root; then the
// postgres user, made owner of dir.
func serverUser(t testing.TB, dir string) *syscall.Credential {
	if os.Geteuid() != 0 {
		return nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		t.Fatalf("running as root, PostgreSQL needs the postgres user: %v", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := os.Chown(dir, uid, gid); err != nil {
		t.Fatal(err)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
}

// shortTempDir makes a folder for a server's socket: Unix socket paths are
// limited to about 100 bytes, which t.TempDir's long names can pass. Other
// users may enter it (the postgres user needs to).
func shortTempDir(t testing.TB, name string) string {
	dir, err := os.MkdirTemp("", "vst-"+name+"-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// startServer starts cmd in its own process group, dying with the test
// process, its output in logPath (printed when the test fails); the
// cleanup sends stop and waits, then kills after 10 s.
func startServer(t testing.TB, cmd *exec.Cmd, stop os.Signal, logPath string) {
	t.Helper()
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", cmd.Path, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(stop)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
		if t.Failed() {
			data, _ := os.ReadFile(logPath)
			t.Logf("%s log:\n%s", filepath.Base(cmd.Path), tail(data, 4000))
		}
	})
}

// waitFor polls ready until it succeeds, for up to a minute.
func waitFor(t testing.TB, what string, ready func(context.Context) error) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	var err error
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err = ready(ctx)
		cancel()
		if err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s did not become ready in a minute: %v", what, err)
}

// FreePort returns a loopback TCP address that was free a moment ago.
func FreePort(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// RepoRoot returns the repository's root: the folder above the worker module.
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "worker", "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("the repository root (with worker/go.mod) is not above the working directory")
		}
		dir = parent
	}
}
