package gpu

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/shirou/gopsutil/v4/process"
)

func fqName(sub, name string) string { return prometheus.BuildFQName("vstage", sub, name) }

var (
	descTotal = prometheus.NewDesc(fqName("gpu", "memory_total_bytes"),
		"Memory of the GPU.", []string{"gpu"}, nil)
	descUsed = prometheus.NewDesc(fqName("gpu", "memory_used_bytes"),
		"Memory of the GPU in use by any process.", []string{"gpu"}, nil)
	descFree = prometheus.NewDesc(fqName("gpu", "memory_free_bytes"),
		"Memory of the GPU that no process holds.", []string{"gpu"}, nil)
	descUtil = prometheus.NewDesc(fqName("gpu", "utilization_ratio"),
		"Share of the last sample period during which a kernel ran on the GPU.", []string{"gpu"}, nil)
	descUp = prometheus.NewDesc(fqName("gpu", "up"),
		"1 when the last sample read the GPU, 0 when NVML failed on it (its other metrics are then absent).", []string{"gpu"}, nil)
	descEngineMem = prometheus.NewDesc(fqName("engine", "gpu_memory_bytes"),
		"GPU memory of the engine process, including what PyTorch's allocator keeps cached.", nil, nil)
	descEngineCPU = prometheus.NewDesc(fqName("engine", "cpu_seconds_total"),
		"User and system CPU time of the current engine process; it restarts from zero with the engine.", nil, nil)
)

// collector exports the latest snapshot at each scrape, so a device that
// fails or a monitor without NVML simply has no series, and the engine's
// CPU time, read from /proc at scrape time.
type collector struct{ m *Monitor }

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descTotal, descUsed, descFree, descUtil, descUp, descEngineMem, descEngineCPU} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	m := c.m
	m.mu.Lock()
	s := m.snap
	fresh := !s.at.IsZero()
	m.mu.Unlock()
	if fresh {
		for _, d := range s.devices {
			gpu := strconv.Itoa(d.index)
			if !d.ok {
				ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, 0, gpu)
				continue
			}
			ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, 1, gpu)
			ch <- prometheus.MustNewConstMetric(descTotal, prometheus.GaugeValue, float64(d.mem.Total), gpu)
			ch <- prometheus.MustNewConstMetric(descUsed, prometheus.GaugeValue, float64(d.mem.Used), gpu)
			ch <- prometheus.MustNewConstMetric(descFree, prometheus.GaugeValue, float64(d.mem.Free), gpu)
			if d.utilOK {
				ch <- prometheus.MustNewConstMetric(descUtil, prometheus.GaugeValue, d.util, gpu)
			}
		}
		if s.engine.known && s.engine.pid > 0 {
			ch <- prometheus.MustNewConstMetric(descEngineMem, prometheus.GaugeValue, float64(s.engine.bytes))
		}
	}
	if m.opts.EnginePID == nil {
		return
	}
	if pid := m.opts.EnginePID(); pid > 0 {
		if secs, ok := cpuSeconds(pid); ok {
			ch <- prometheus.MustNewConstMetric(descEngineCPU, prometheus.CounterValue, secs)
		}
	}
}

// cpuSeconds returns the user and system CPU time of process pid.
func cpuSeconds(pid int) (float64, bool) {
	p, err := process.NewProcess(int32(pid))
	if err != nil {
		return 0, false
	}
	t, err := p.Times()
	if err != nil {
		return 0, false
	}
	return t.User + t.System, true
}
