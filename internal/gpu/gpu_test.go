package gpu

import (
	"context"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxh100"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	"go.uber.org/goleak"

	"github.com/vstage/vstage/internal/engine"
	"github.com/vstage/vstage/internal/testsupport"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const gib = 1 << 30

// enginePID is the engine's pid as the fake NVML reports it.
const enginePID = 4242

// fakeGPU is the state behind one mock device, changed by the test while
// the monitor samples it.
type fakeGPU struct {
	total       uint64
	otherUsed   atomic.Uint64 // memory of processes that are not the engine
	engineUsed  atomic.Uint64
	engineThere atomic.Bool
	procsRet    atomic.Int32 // nvml.Return of the process query
	memRet      atomic.Int32 // nvml.Return of the memory query
	util        atomic.Uint32
}

// newServer returns an 8-GPU H100 mock whose first two devices are backed
// by fakes. The mock leaves the utilisation and process queries unset, so
// they are set here for every device.
func newServer(t *testing.T) (*server.Server, [2]*fakeGPU) {
	t.Helper()
	s := dgxh100.New()
	var fakes [2]*fakeGPU
	for k, d := range s.Devices {
		dev := d.(*server.Device)
		f := &fakeGPU{total: 80 * gib}
		if k < len(fakes) {
			fakes[k] = f
		}
		dev.GetMemoryInfoFunc = func() (nvml.Memory, nvml.Return) {
			if ret := nvml.Return(f.memRet.Load()); ret != nvml.SUCCESS {
				return nvml.Memory{}, ret
			}
			used := f.otherUsed.Load() + f.engineUsed.Load()
			return nvml.Memory{Total: f.total, Used: used, Free: f.total - used}, nvml.SUCCESS
		}
		dev.GetUtilizationRatesFunc = func() (nvml.Utilization, nvml.Return) {
			return nvml.Utilization{Gpu: f.util.Load()}, nvml.SUCCESS
		}
		dev.GetComputeRunningProcessesFunc = func() ([]nvml.ProcessInfo, nvml.Return) {
			if ret := nvml.Return(f.procsRet.Load()); ret != nvml.SUCCESS {
				return nil, ret
			}
			var ps []nvml.ProcessInfo
			if n := f.otherUsed.Load(); n > 0 {
				ps = append(ps, nvml.ProcessInfo{Pid: 777, UsedGpuMemory: n})
			}
			if f.engineThere.Load() {
				ps = append(ps, nvml.ProcessInfo{Pid: enginePID, UsedGpuMemory: f.engineUsed.Load()})
			}
			return ps, nvml.SUCCESS
		}
	}
	return s, fakes
}

type harness struct {
	m    *Monitor
	reg  *prometheus.Registry
	logs *testsupport.LogBuffer
	stop func()
}

// run starts a monitor with o, sampling every 2ms, and stops it when the
// test ends.
func run(t *testing.T, o Options) *harness {
	t.Helper()
	h := &harness{reg: prometheus.NewRegistry(), logs: &testsupport.LogBuffer{}}
	o.Registerer, o.Logger = h.reg, slog.New(slog.NewJSONHandler(h.logs, nil))
	if o.Interval == 0 {
		o.Interval = 2 * time.Millisecond
	}
	if o.EnginePID == nil {
		o.EnginePID = func() int { return enginePID }
	}
	m, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	h.m = m
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	var once sync.Once
	h.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(h.stop)
	return h
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 5s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func (h *harness) value(t *testing.T, name string, labels ...string) (float64, bool) {
	t.Helper()
	mfs, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			for k := 0; k+1 < len(labels); k += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					found = found || lp.GetName() == labels[k] && lp.GetValue() == labels[k+1]
				}
				if !found {
					continue metrics
				}
			}
			switch {
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue(), true
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue(), true
			}
		}
	}
	return 0, false
}

func TestMetricsAndAvailableCountTheEnginesOwnMemory(t *testing.T) {
	s, f := newServer(t)
	f[0].otherUsed.Store(10 * gib)
	f[0].engineUsed.Store(20 * gib) // PyTorch's cache after a job
	f[0].engineThere.Store(true)
	f[0].util.Store(75)
	h := run(t, Options{Library: s})
	waitFor(t, "a sample", func() bool { _, ok := h.m.Available(); return ok })

	// Free is 50 GiB; the engine's 20 GiB are reusable by its next job.
	if got, _ := h.m.Available(); got != 70*gib {
		t.Errorf("Available = %d GiB, want 70", got/gib)
	}
	for _, c := range []struct {
		name, gpu string
		want      float64
	}{
		{"vstage_gpu_memory_total_bytes", "0", 80 * gib},
		{"vstage_gpu_memory_used_bytes", "0", 30 * gib},
		{"vstage_gpu_memory_free_bytes", "0", 50 * gib},
		{"vstage_gpu_utilization_ratio", "0", 0.75},
		{"vstage_gpu_up", "7", 1},
	} {
		if got, ok := h.value(t, c.name, "gpu", c.gpu); !ok || got != c.want {
			t.Errorf("%s{gpu=%s} = %v (present %v), want %v", c.name, c.gpu, got, ok, c.want)
		}
	}
	if got, ok := h.value(t, "vstage_engine_gpu_memory_bytes"); !ok || got != 20*gib {
		t.Errorf("engine GPU memory = %v (present %v)", got, ok)
	}
	problems, err := promlint.NewWithMetricFamilies(must(h.reg.Gather())).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
	h.stop()
	if _, ok := h.m.Available(); ok {
		t.Error("Available still reports after Run returned")
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func TestEngineNotOnTheGPU(t *testing.T) {
	s, f := newServer(t)
	f[0].otherUsed.Store(30 * gib)
	h := run(t, Options{Library: s})
	waitFor(t, "a sample", func() bool { return h.m.sampled() })
	// Another process runs, and may be the engine under a host pid: no
	// judgement, and one warning.
	if _, ok := h.m.Available(); ok {
		t.Error("Available reported with an unattributed process on the device")
	}
	waitFor(t, "the warning", func() bool { return h.logs.Count("not among the GPU's compute processes") == 1 })

	// No process at all: the engine holds nothing yet.
	s2, _ := newServer(t)
	h2 := run(t, Options{Library: s2})
	waitFor(t, "a sample", func() bool { _, ok := h2.m.Available(); return ok })
	if got, _ := h2.m.Available(); got != 80*gib {
		t.Errorf("Available = %d GiB, want all 80 free", got/gib)
	}
	if _, ok := h2.value(t, "vstage_engine_gpu_memory_bytes"); !ok {
		t.Error("engine GPU memory absent while known to be zero")
	}
}

func TestProcessQueryNotSupported(t *testing.T) {
	s, f := newServer(t)
	f[0].engineUsed.Store(20 * gib)
	f[0].procsRet.Store(int32(nvml.ERROR_NOT_SUPPORTED))
	h := run(t, Options{Library: s})
	waitFor(t, "a sample", func() bool { return h.m.sampled() })
	if _, ok := h.m.Available(); ok {
		t.Error("Available reported without the engine's memory")
	}
	if _, ok := h.value(t, "vstage_engine_gpu_memory_bytes"); ok {
		t.Error("engine GPU memory present without data")
	}
	if _, ok := h.value(t, "vstage_gpu_memory_free_bytes", "gpu", "0"); !ok {
		t.Error("device metrics missing")
	}

	// On a dedicated GPU the engine may use the whole device.
	s2, f2 := newServer(t)
	f2[0].procsRet.Store(int32(nvml.ERROR_NOT_SUPPORTED))
	h2 := run(t, Options{Library: s2, Dedicated: true})
	waitFor(t, "a sample", func() bool { _, ok := h2.m.Available(); return ok })
	if got, _ := h2.m.Available(); got != 80*gib {
		t.Errorf("dedicated: Available = %d GiB", got/gib)
	}
}

// In a container NVML reports host pids; on a dedicated GPU every compute
// process is the engine's.
func TestDedicatedGPUHostPIDs(t *testing.T) {
	s, f := newServer(t)
	f[0].otherUsed.Store(12 * gib) // the engine, under its host pid
	h := run(t, Options{Library: s, Dedicated: true})
	waitFor(t, "a sample", func() bool { _, ok := h.value(t, "vstage_engine_gpu_memory_bytes"); return ok })
	if got, _ := h.value(t, "vstage_engine_gpu_memory_bytes"); got != 12*gib {
		t.Errorf("engine GPU memory = %v", got)
	}
	if h.logs.Count("not among") != 0 {
		t.Error("warned on a dedicated GPU")
	}
}

func TestLibraryMissing(t *testing.T) {
	logs := &testsupport.LogBuffer{}
	reg := prometheus.NewRegistry()
	m, err := New(Options{
		// A path that does not exist, so the test means the same on a
		// machine with a driver.
		Library:   nvml.New(nvml.WithLibraryPath("libnvidia-ml-absent.so.1")),
		EnginePID: os.Getpid, Registerer: reg, Logger: slog.New(slog.NewJSONHandler(logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Run(context.Background()); err != nil {
		t.Fatalf("Run = %v, want nil at once", err)
	}
	if n := logs.Count("NVML not found"); n != 1 {
		t.Errorf("logged %d times", n)
	}
	if _, ok := m.Available(); ok {
		t.Error("a null monitor reports memory")
	}
	mfs := must(reg.Gather())
	var names []string
	for _, mf := range mfs {
		names = append(names, mf.GetName())
	}
	if len(names) != 1 || names[0] != "vstage_engine_cpu_seconds_total" {
		t.Errorf("metrics without NVML = %v, want only the engine's CPU time", names)
	}
	if err := m.Run(context.Background()); err == nil {
		t.Error("a second Run succeeded")
	}
}

func TestInitFailsOtherwise(t *testing.T) {
	s, _ := newServer(t)
	s.InitFunc = func() nvml.Return { return nvml.ERROR_DRIVER_NOT_LOADED }
	h := run(t, Options{Library: s})
	waitFor(t, "the log", func() bool { return h.logs.Count("NVML initialisation failed") == 1 })
	if _, ok := h.m.Available(); ok {
		t.Error("Available without NVML")
	}
}

func TestDeviceErrorMidRun(t *testing.T) {
	s, f := newServer(t)
	f[0].engineThere.Store(true)
	f[0].engineUsed.Store(8 * gib)
	h := run(t, Options{Library: s})
	waitFor(t, "a sample", func() bool { _, ok := h.m.Available(); return ok })

	f[1].memRet.Store(int32(nvml.ERROR_GPU_IS_LOST))
	waitFor(t, "gpu 1 marked down", func() bool { v, ok := h.value(t, "vstage_gpu_up", "gpu", "1"); return ok && v == 0 })
	if _, ok := h.value(t, "vstage_gpu_memory_free_bytes", "gpu", "1"); ok {
		t.Error("a failed device still has memory metrics")
	}
	if _, ok := h.m.Available(); !ok {
		t.Error("the engine's device is fine, yet Available has no data")
	}
	// The engine's own device failing turns the guard aside.
	f[0].memRet.Store(int32(nvml.ERROR_UNKNOWN))
	waitFor(t, "no data", func() bool { _, ok := h.m.Available(); return !ok })

	f[0].memRet.Store(0)
	f[1].memRet.Store(0)
	waitFor(t, "recovery", func() bool { v, ok := h.value(t, "vstage_gpu_up", "gpu", "1"); return ok && v == 1 })
	waitFor(t, "Available again", func() bool { _, ok := h.m.Available(); return ok })
	if n := h.logs.Count("GPU device cannot be read"); n != 2 {
		t.Errorf("%d error lines, want one per failing device", n)
	}
	waitFor(t, "recovery logs", func() bool { return h.logs.Count("readable again") == 2 })
}

type fakeRecycler struct {
	mu    sync.Mutex
	calls []string
}

func (r *fakeRecycler) Recycle(reason, detail string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, reason)
}

func (r *fakeRecycler) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.calls)
}

func TestLeakRecyclesOnce(t *testing.T) {
	s, f := newServer(t)
	f[0].engineThere.Store(true)
	f[0].engineUsed.Store(30 * gib) // a job's peak
	var idle atomic.Bool
	var pid atomic.Int64
	pid.Store(enginePID)
	rec := &fakeRecycler{}
	h := run(t, Options{
		Library: s, MaxEngineMemory: 20 * gib, LeakSamples: 3, Recycler: rec,
		Idle: idle.Load, EnginePID: func() int { return int(pid.Load()) },
	})
	waitFor(t, "samples", func() bool { return h.m.sampled() })
	time.Sleep(30 * time.Millisecond) // busy: over the limit, not judged
	if rec.count() != 0 {
		t.Fatal("recycled during a job")
	}
	idle.Store(true)
	waitFor(t, "a recycle", func() bool { return rec.count() == 1 })
	time.Sleep(30 * time.Millisecond) // the same engine is not recycled twice
	if n := rec.count(); n != 1 || rec.calls[0] != engine.ReasonGPUMemory {
		t.Fatalf("calls = %v", rec.calls)
	}
	// The next engine starts clean and is judged afresh.
	pid.Store(enginePID + 1)
	f[0].engineThere.Store(false)
	time.Sleep(20 * time.Millisecond)
	if rec.count() != 1 {
		t.Fatal("recycled an engine that holds no GPU memory")
	}
}

func TestOptions(t *testing.T) {
	if _, err := New(Options{MaxEngineMemory: 1}); err == nil {
		t.Error("MaxEngineMemory without Idle and Recycler accepted")
	}
	if _, err := New(Options{Interval: -1}); err == nil {
		t.Error("negative interval accepted")
	}
	reg := prometheus.NewRegistry()
	if _, err := New(Options{Registerer: reg}); err != nil {
		t.Fatal(err)
	}
	if _, err := New(Options{Registerer: reg}); err == nil {
		t.Error("registered twice")
	}
}

func TestEngineCPUSeconds(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := New(Options{Library: dgxh100.New(), EnginePID: os.Getpid, Registerer: reg}); err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(reg, "vstage_engine_cpu_seconds_total"); n != 1 {
		t.Fatalf("series = %d", n)
	}
}

func (m *Monitor) sampled() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return !m.snap.at.IsZero()
}
