// Package gpu watches the accelerators through NVML: device memory and
// utilisation, the engine process's own GPU memory and CPU time. It
// exports them as metrics, tells the admission controller how much memory
// the engine can use, and asks the engine's supervisor to recycle an
// engine whose GPU memory leaks.
//
// Without an NVIDIA driver (a laptop, CI) NVML fails to load: the Monitor
// logs it once and becomes a null monitor. GPU metrics are then absent,
// Available reports no data so the VRAM guard steps aside, and everything
// else works.
package gpu

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/vstage/vstage/internal/engine"
)

// Library is the part of NVML the Monitor calls. The value of go-nvml's
// nvml.New satisfies it, and so do the servers of its mock package.
type Library interface {
	Init() nvml.Return
	Shutdown() nvml.Return
	DeviceGetCount() (int, nvml.Return)
	DeviceGetHandleByIndex(index int) (nvml.Device, nvml.Return)
}

// Recycler restarts the engine once its jobs in flight have ended;
// *engine.Supervisor implements it.
type Recycler interface {
	Recycle(reason, detail string)
}

// Options configures a Monitor. The zero value of every field means the
// default written next to it; the environment variable named in brackets is
// the setting the sidecar's configuration maps onto the field.
type Options struct {
	// Library is NVML; nil means nvml.New(), which loads
	// libnvidia-ml.so.1 when Run starts.
	Library Library
	// Interval is the sampling period [GPU_SAMPLE_INTERVAL]. Default 1s.
	Interval time.Duration
	// EnginePID returns the engine's current process id, 0 when none
	// runs; nil means no engine is watched.
	EnginePID func() int
	// Device is the index of the engine's GPU while its process is not
	// found on any [ENGINE_GPU]. Default 0.
	Device int
	// Dedicated says the GPUs serve this pod alone [GPU_DEDICATED]. In a
	// container NVML reports host process ids, which the sidecar cannot
	// match to the engine's; on a dedicated GPU every compute process is
	// the engine's, so its memory is theirs and the memory the engine can
	// use is the device's total.
	Dedicated bool

	// MaxEngineMemory is the engine's GPU memory above which, measured
	// between jobs on LeakSamples samples in a row, the engine is recycled
	// with reason engine.ReasonGPUMemory [ENGINE_MAX_GPU_MEMORY], in
	// bytes. Set it above the engine's steady footprint: weights, CUDA
	// context and the allocator's cache of the largest job. Zero disables
	// the check.
	MaxEngineMemory uint64
	// LeakSamples is the number of consecutive idle samples over
	// MaxEngineMemory that trigger a recycle. Default 3.
	LeakSamples int
	// Idle reports whether the engine has no job in flight; the leak check
	// only judges an idle engine, since a job's peak is not a leak.
	// Required with MaxEngineMemory.
	Idle func() bool
	// Recycler receives the leak check's restart; required with
	// MaxEngineMemory.
	Recycler Recycler

	// Logger receives the monitor's logs; nil means slog.Default().
	Logger *slog.Logger
	// Registerer receives the metrics; nil means they are not registered.
	Registerer prometheus.Registerer
}

// Monitor samples NVML. Create it with New and sample with Run; its
// methods are safe for concurrent use.
type Monitor struct {
	opts    Options
	lib     Library
	log     *slog.Logger
	running atomic.Bool

	mu   sync.Mutex
	snap snapshot
	// Leak check and log state, touched only by Run's goroutine.
	over        int
	recycledPID int
	deviceDown  map[int]bool
	unmatched   int // the engine pid last logged as not found
}

// snapshot is one sample of every device.
type snapshot struct {
	at      time.Time
	devices []deviceSample
	engine  engineSample
}

type deviceSample struct {
	index  int
	ok     bool // memory was read
	mem    nvml.Memory
	util   float64
	utilOK bool
	procs  []nvml.ProcessInfo
	// procsOK is false when the process query failed or is not supported.
	procsOK bool
}

// engineSample is the engine process's GPU memory. known is false when
// NVML gave no data for it.
type engineSample struct {
	pid    int
	device int
	bytes  uint64
	known  bool
}

// New returns a Monitor and registers its metrics; nothing is sampled
// until Run.
func New(opts Options) (*Monitor, error) {
	o := opts
	if o.Interval == 0 {
		o.Interval = time.Second
	}
	if o.LeakSamples == 0 {
		o.LeakSamples = 3
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	switch {
	case o.Interval < 0:
		return nil, errors.New("gpu: Interval must not be negative")
	case o.LeakSamples < 0:
		return nil, errors.New("gpu: LeakSamples must not be negative")
	case o.Device < 0:
		return nil, errors.New("gpu: Device must not be negative")
	case o.MaxEngineMemory > 0 && (o.Idle == nil || o.Recycler == nil || o.EnginePID == nil):
		return nil, errors.New("gpu: MaxEngineMemory needs Idle, Recycler and EnginePID")
	}
	lib := o.Library
	if lib == nil {
		lib = nvml.New()
	}
	m := &Monitor{opts: o, lib: lib, log: o.Logger, deviceDown: map[int]bool{}}
	if o.Registerer != nil {
		if err := o.Registerer.Register(&collector{m: m}); err != nil {
			return nil, fmt.Errorf("gpu: registering metrics: %w", err)
		}
	}
	return m, nil
}

// Run initialises NVML and samples every Interval until ctx is done, then
// shuts NVML down and returns nil. When NVML cannot be initialised it logs
// that once and returns nil at once: the Monitor stays a null monitor.
// A Monitor runs once.
func (m *Monitor) Run(ctx context.Context) error {
	if !m.running.CompareAndSwap(false, true) {
		return errors.New("gpu: Run called twice")
	}
	if ret := m.lib.Init(); ret != nvml.SUCCESS {
		if errors.Is(ret, nvml.ERROR_LIBRARY_NOT_FOUND) {
			m.log.Info("NVML not found; GPU metrics and the VRAM guard are off")
		} else {
			m.log.Error("NVML initialisation failed; GPU metrics and the VRAM guard are off", "error", ret.Error())
		}
		return nil
	}
	defer func() {
		m.mu.Lock()
		m.snap = snapshot{}
		m.mu.Unlock()
		if ret := m.lib.Shutdown(); ret != nvml.SUCCESS {
			m.log.Warn("NVML shutdown failed", "error", ret.Error())
		}
	}()
	t := time.NewTicker(m.opts.Interval)
	defer t.Stop()
	for {
		m.sample()
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// sample reads every device once and publishes the snapshot.
func (m *Monitor) sample() {
	s := snapshot{at: time.Now()}
	n, ret := m.lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		m.deviceState(-1, ret)
		n = 0
	} else {
		m.deviceState(-1, nvml.SUCCESS)
	}
	for k := range n {
		d := deviceSample{index: k}
		dev, ret := m.lib.DeviceGetHandleByIndex(k)
		if ret == nvml.SUCCESS {
			d.mem, ret = dev.GetMemoryInfo()
		}
		m.deviceState(k, ret)
		if ret == nvml.SUCCESS {
			d.ok = true
			if u, ret := dev.GetUtilizationRates(); ret == nvml.SUCCESS {
				d.util, d.utilOK = float64(u.Gpu)/100, true
			}
			// ERROR_NOT_SUPPORTED (some vGPU and MIG setups) means no
			// data, as does any other failure of this query.
			d.procs, ret = dev.GetComputeRunningProcesses()
			d.procsOK = ret == nvml.SUCCESS
		}
		s.devices = append(s.devices, d)
	}
	pid := 0
	if m.opts.EnginePID != nil {
		pid = m.opts.EnginePID()
	}
	s.engine = m.findEngine(s.devices, pid)
	m.mu.Lock()
	m.snap = s
	m.mu.Unlock()
	m.checkLeak(s.engine)
}

// deviceState logs a device's change between readable and failing once
// per change; index -1 stands for the device count.
func (m *Monitor) deviceState(index int, ret nvml.Return) {
	down := ret != nvml.SUCCESS
	if m.deviceDown[index] == down {
		return
	}
	m.deviceDown[index] = down
	if down {
		m.log.Error("GPU device cannot be read; its metrics are dropped", "gpu", index, "error", ret.Error())
	} else {
		m.log.Info("GPU device readable again", "gpu", index)
	}
}

// notAvailable is NVML's value for a process's memory it cannot tell.
const notAvailable = math.MaxUint64

// findEngine returns the engine's GPU memory. The engine holds none when
// every device's process list is known and none of them has a compute
// process; it is unknown when some process may be the engine under
// another pid namespace's id, unless the GPUs are dedicated.
func (m *Monitor) findEngine(devices []deviceSample, pid int) engineSample {
	e := engineSample{pid: pid, device: m.opts.Device}
	if pid <= 0 {
		return e
	}
	allKnown, others := true, false
	for _, d := range devices {
		if !d.ok || !d.procsOK {
			allKnown = false
			continue
		}
		for _, p := range d.procs {
			if int(p.Pid) == pid {
				if p.UsedGpuMemory == notAvailable {
					return e
				}
				e.device, e.bytes, e.known = d.index, p.UsedGpuMemory, true
				return e
			}
			others = true
		}
	}
	if m.opts.Dedicated {
		// Every compute process on the engine's device is the engine's.
		for _, d := range devices {
			if d.index != e.device || !d.ok || !d.procsOK {
				continue
			}
			e.known = true
			for _, p := range d.procs {
				if p.UsedGpuMemory != notAvailable {
					e.bytes += p.UsedGpuMemory
				}
			}
		}
		return e
	}
	if others && m.unmatched != pid {
		m.unmatched = pid
		m.log.Warn("the engine's process is not among the GPU's compute processes; in a container NVML reports host process ids: set GPU_DEDICATED when the GPU serves this pod alone",
			"engine_pid", pid)
	}
	e.known = allKnown && !others
	return e
}

// checkLeak recycles an engine whose GPU memory stayed over
// MaxEngineMemory for LeakSamples idle samples in a row, once per engine
// process. A sample taken during a job neither counts nor resets.
func (m *Monitor) checkLeak(e engineSample) {
	if m.opts.MaxEngineMemory == 0 || e.pid <= 0 || !e.known || e.pid == m.recycledPID {
		return
	}
	if !m.opts.Idle() {
		return
	}
	if e.bytes <= m.opts.MaxEngineMemory {
		m.over = 0
		return
	}
	m.over++
	if m.over < m.opts.LeakSamples {
		return
	}
	m.over = 0
	m.recycledPID = e.pid
	detail := fmt.Sprintf("GPU memory %d bytes between jobs, over the limit of %d for %d samples", e.bytes, m.opts.MaxEngineMemory, m.opts.LeakSamples)
	m.log.Warn("engine GPU memory over the limit; recycling the engine", "engine_pid", e.pid, "bytes", e.bytes, "limit", m.opts.MaxEngineMemory)
	m.opts.Recycler.Recycle(engine.ReasonGPUMemory, detail)
}

// staleAfter is the age past which a snapshot no longer counts: Run has
// stopped or NVML hangs.
func (m *Monitor) staleAfter() time.Duration { return 3*m.opts.Interval + time.Second }

// Available implements admission.VRAM: the memory the engine can use is
// the free memory of its device plus its own GPU memory, since PyTorch
// keeps what a job freed reserved inside the engine, ready for the next
// job. On a dedicated GPU it is the device's total. It reports false
// without a recent sample, when the engine's device failed, or when the
// engine's own memory is not known, so that the guard steps aside rather
// than refuse jobs on a partial view.
func (m *Monitor) Available() (uint64, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.snap
	if s.at.IsZero() || time.Since(s.at) > m.staleAfter() {
		return 0, false
	}
	e := s.engine
	if e.device >= len(s.devices) || !s.devices[e.device].ok {
		return 0, false
	}
	mem := s.devices[e.device].mem
	switch {
	case m.opts.Dedicated:
		return mem.Total, true
	case e.known:
		return min(mem.Free+e.bytes, mem.Total), true
	}
	return 0, false
}
