package engine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/stats"

	enginev1 "github.com/vstage/vstage/proto/vstage/engine/v1"
)

// maxMessageBytes matches the engine's smallest allowed message limit.
const maxMessageBytes = 64 << 20

// instance is one engine process and the connection to it. Fields below mu
// in Supervisor are guarded by Supervisor.mu.
type instance struct {
	pid    int
	dir    string
	socket string
	cmd    *exec.Cmd
	// stopProc cancels the command's context: exec then runs cmd.Cancel
	// (SIGTERM to the process group) and, after WaitDelay, SIGKILL.
	stopProc context.CancelFunc
	// killedByUs is set before the supervisor sends any signal, so that
	// exitReason can tell our kills from the kernel's.
	killedByUs atomic.Bool

	// exited is closed once Wait has returned; status is valid after.
	exited chan struct{}
	status syscall.WaitStatus

	// dead is done once the instance is given up: from then on every job
	// on it ends with ErrUnavailable.
	dead   context.Context
	giveUp context.CancelFunc

	stderr    *os.File
	readDone  chan struct{}
	writeDone chan struct{}

	oomBefore uint64
	haveOOM   bool

	conn   *grpc.ClientConn
	engine enginev1.EngineClient
	health healthpb.HealthClient

	restart chan restartRequest

	// lastProgress is the UnixNano time of the last stream event or answer
	// to Cancel: the engine moved.
	lastProgress atomic.Int64

	// Guarded by Supervisor.mu.
	info     *enginev1.InfoResponse
	ready    bool
	lastOK   time.Time
	pending  restartRequest
	inFlight int
	jobs     int
	seq      uint64
}

type restartRequest struct {
	reason, detail string
}

func (i *instance) requestRestart(reason, detail string) {
	select {
	case i.restart <- restartRequest{reason, detail}:
	default:
	}
}

func (i *instance) touch() { i.lastProgress.Store(time.Now().UnixNano()) }

func (i *instance) sinceProgress() time.Duration {
	return time.Since(time.Unix(0, i.lastProgress.Load()))
}

func (i *instance) hasExited() bool {
	select {
	case <-i.exited:
		return true
	default:
		return false
	}
}

// spawn starts an engine process. The goroutines it starts are counted in
// s.wg and end once the process has been reaped and its stderr closed.
func (s *Supervisor) spawn() (*instance, error) {
	i, err := newInstance(s.opts.SocketDir)
	if err != nil {
		return nil, err
	}
	// The process's lifetime is not tied to Run's context: stopping is an
	// explicit step so that jobs are failed and the socket removed in order.
	procCtx, stopProc := context.WithCancel(context.Background())
	cmd := s.command(procCtx, i)
	i.oomBefore, i.haveOOM = s.oomKills()
	stderr, err := s.startProcess(cmd)
	if err != nil {
		stopProc()
		os.RemoveAll(i.dir)
		return nil, err
	}
	i.cmd, i.pid, i.stopProc, i.stderr = cmd, cmd.Process.Pid, stopProc, stderr
	i.touch()
	if s.onSpawn != nil {
		s.onSpawn(i.pid)
	}
	s.track(i)
	return i, nil
}

// newInstance makes the instance's private socket directory.
func newInstance(socketDir string) (*instance, error) {
	dir, err := os.MkdirTemp(socketDir, "vstage-engine-")
	if err != nil {
		return nil, fmt.Errorf("engine: socket directory: %w", err)
	}
	// MkdirTemp makes the directory 0700 already; say so explicitly, as
	// the socket's privacy rests on it.
	if err := os.Chmod(dir, 0o700); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("engine: socket directory: %w", err)
	}
	i := &instance{
		dir:     dir,
		socket:  filepath.Join(dir, socketName),
		exited:  make(chan struct{}),
		restart: make(chan restartRequest, 1),
	}
	i.dead, i.giveUp = context.WithCancel(context.Background())
	return i, nil
}

// args returns the engine's command line after the interpreter.
func (o Options) args(socket string) []string {
	args := []string{"-m", o.Module, "--socket", socket}
	if o.ModelDir != "" {
		args = append(args, "--model-dir", o.ModelDir)
	}
	if o.TinyModel {
		args = append(args, "--tiny-model")
	}
	if o.Device != "" {
		args = append(args, "--device", o.Device)
	}
	if o.WarmupLongSide > 0 {
		args = append(args, "--warmup-long-side", strconv.Itoa(o.WarmupLongSide))
	}
	return append(args, o.Args...)
}

// command builds the engine's command; cancelling ctx stops it (SIGTERM to
// its process group, SIGKILL after StopGrace).
func (s *Supervisor) command(ctx context.Context, i *instance) *exec.Cmd {
	cmd := exec.CommandContext(ctx, s.opts.Python, s.opts.args(i.socket)...)
	cmd.Env = append(scrubEnv(os.Environ()), s.opts.Env...)
	// Setpgid: the engine and anything it forks form one group that a
	// single kill reaches. Pdeathsig: if the sidecar dies, even by SIGKILL,
	// the kernel kills the engine. Pdeathsig follows the OS thread that
	// forked; Go keeps threads alive unless a goroutine locked to one
	// exits, and no goroutine here locks its thread.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error {
		i.killedByUs.Store(true)
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
	}
	cmd.WaitDelay = s.opts.StopGrace
	return cmd
}

// startProcess starts cmd with its stdout and stderr on a pipe and returns
// the pipe's read end.
func (s *Supervisor) startProcess(cmd *exec.Cmd) (*os.File, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("engine: stderr pipe: %w", err)
	}
	// Our own pipe, not StderrPipe: Wait must not depend on the reader
	// having drained it, and the reader must not block Wait.
	cmd.Stdout, cmd.Stderr = w, w
	err = cmd.Start()
	w.Close()
	if err != nil {
		r.Close()
		return nil, fmt.Errorf("engine: start %s: %w", s.opts.Python, err)
	}
	return r, nil
}

// track starts the goroutines that forward the engine's stderr to the log
// and reap the process.
func (s *Supervisor) track(i *instance) {
	log := s.log.With("source", "engine", "engine_pid", i.pid)
	fwd := newForwarder(log, s.opts.StderrLines, s.m.dropped.Inc)
	i.readDone, i.writeDone = make(chan struct{}), make(chan struct{})
	s.wg.Add(3)
	go func() {
		defer s.wg.Done()
		defer close(i.readDone)
		fwd.read(i.stderr)
	}()
	go func() {
		defer s.wg.Done()
		defer close(i.writeDone)
		fwd.write()
	}()
	go func() {
		defer s.wg.Done()
		_ = i.cmd.Wait() // the status is read from ProcessState
		if ws, ok := i.cmd.ProcessState.Sys().(syscall.WaitStatus); ok {
			i.status = ws
		}
		// The leader is gone; anything it left in its group goes too.
		_ = syscall.Kill(-i.pid, syscall.SIGKILL)
		close(i.exited)
	}()
}

// connect dials the socket once it exists. gRPC's default reconnect backoff
// starts at a second, too slow for a socket that appears any moment.
func (s *Supervisor) connect(i *instance) error {
	if i.conn != nil {
		return nil
	}
	if _, err := os.Stat(i.socket); err != nil {
		return err
	}
	dial := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: time.Second,
		}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMessageBytes), grpc.MaxCallSendMsgSize(maxMessageBytes),
			grpc.ForceCodecV2(s.codec)),
	}
	if tp := s.opts.TracerProvider; tp != nil {
		dial = append(dial, grpc.WithStatsHandler(otelgrpc.NewClientHandler(
			otelgrpc.WithTracerProvider(tp), otelgrpc.WithPropagators(s.opts.propagator()),
			// Health checks every second and Info calls are not jobs.
			otelgrpc.WithFilter(func(info *stats.RPCTagInfo) bool {
				return info.FullMethodName == enginev1.Engine_Stage_FullMethodName ||
					info.FullMethodName == enginev1.Engine_Cancel_FullMethodName
			}),
		)))
	}
	conn, err := grpc.NewClient("unix://"+i.socket, dial...)
	if err != nil {
		return fmt.Errorf("engine: dial %s: %w", i.socket, err)
	}
	i.conn, i.engine, i.health = conn, enginev1.NewEngineClient(conn), healthpb.NewHealthClient(conn)
	return nil
}

// check asks the engine's health service once.
func (i *instance) check(ctx context.Context, timeout time.Duration) (healthpb.HealthCheckResponse_ServingStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, err := i.health.Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return healthpb.HealthCheckResponse_UNKNOWN, err
	}
	return resp.GetStatus(), nil
}

// stop gives the instance up, stops the process and reaps it, and removes
// its socket directory. graceful sends SIGTERM first and SIGKILL after
// StopGrace; otherwise SIGKILL at once, for an engine that cannot be
// trusted to act on SIGTERM (stopped, wedged). Safe to call twice.
func (s *Supervisor) stop(i *instance, graceful bool) {
	i.giveUp()
	s.mu.Lock()
	i.ready = false
	s.mu.Unlock()
	s.publish()
	if !i.hasExited() {
		i.killedByUs.Store(true)
		if !graceful {
			_ = syscall.Kill(-i.pid, syscall.SIGKILL)
		}
		i.stopProc()
		<-i.exited
	}
	i.stopProc()
	s.m.rss.Set(0)
	if i.conn != nil {
		_ = i.conn.Close()
	}
	// Every writer of the pipe is dead, so the reader is at EOF or close
	// to it; the timeout covers a descendant that escaped the group.
	select {
	case <-i.readDone:
	case <-time.After(time.Second):
	}
	_ = i.stderr.Close()
	<-i.writeDone
	if err := os.RemoveAll(i.dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		s.log.Warn("engine socket directory not removed", "dir", i.dir, "error", err)
	}
}

// watchHealth checks health every HealthInterval and the engine's memory,
// until the instance is given up.
func (s *Supervisor) watchHealth(i *instance) {
	defer s.wg.Done()
	t := time.NewTicker(s.opts.HealthInterval)
	defer t.Stop()
	for {
		select {
		case <-i.dead.Done():
			return
		case <-t.C:
		}
		st, err := i.check(i.dead, s.opts.HealthInterval)
		now := time.Now()
		s.mu.Lock()
		if err == nil && st == healthpb.HealthCheckResponse_SERVING {
			i.lastOK = now
		}
		silent := now.Sub(i.lastOK)
		s.mu.Unlock()
		s.publish()
		if silent > s.opts.HealthTimeout {
			detail := fmt.Sprintf("no SERVING health answer for %v", silent.Round(time.Millisecond))
			if err != nil {
				detail += ": " + err.Error()
			} else {
				detail += ", status " + st.String()
			}
			i.requestRestart(ReasonHealth, detail)
		}
		s.checkRSS(i)
	}
}
