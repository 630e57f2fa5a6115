package gpu

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/vstage/vstage/internal/admission"
)

// The monitor is the admission controller's VRAM guard: the memory
// PyTorch keeps cached in the engine counts as usable.
func TestGuardWithAdmission(t *testing.T) {
	s, f := newServer(t)
	f[0].engineThere.Store(true)
	f[0].engineUsed.Store(14 * gib)
	f[0].otherUsed.Store(64 * gib) // 2 GiB free on the device
	h := run(t, Options{Library: s})
	waitFor(t, "a sample", func() bool { _, ok := h.m.Available(); return ok })
	c, err := admission.New(admission.Options{
		VRAM: h.m, VRAMHeadroom: gib, VRAMBase: 10 * gib, VRAMPerMegapixel: gib,
	})
	if err != nil {
		t.Fatal(err)
	}
	tk, err := c.Acquire(context.Background(), admission.Request{Megapixels: 1})
	if err != nil {
		t.Fatalf("a job that fits in the engine's cache plus free memory: %v", err)
	}
	tk.Release(admission.Report{})

	f[0].otherUsed.Store(70 * gib)
	f[0].engineUsed.Store(8 * gib) // 8 + 2 GiB for an 11 GiB need
	waitFor(t, "the new sample", func() bool { v, _ := h.m.Available(); return v == 10*gib })
	_, err = c.Acquire(context.Background(), admission.Request{Megapixels: 1})
	var rej *admission.Rejection
	if !errors.As(err, &rej) || rej.Reason != admission.ReasonVRAM {
		t.Fatalf("err = %v, want a vram rejection", err)
	}
}

// TestRealNVML samples the machine's own GPUs through the driver's NVML;
// it is skipped where there is none.
func TestRealNVML(t *testing.T) {
	lib := nvml.New()
	if ret := lib.Init(); ret != nvml.SUCCESS {
		t.Skipf("no NVML here: %v", ret)
	}
	lib.Shutdown()
	h := run(t, Options{Library: nvml.New(), Interval: 50 * time.Millisecond, EnginePID: os.Getpid})
	waitFor(t, "a sample", func() bool { return h.m.sampled() })
	total, ok := h.value(t, "vstage_gpu_memory_total_bytes", "gpu", "0")
	if !ok || total <= 0 {
		t.Fatalf("gpu 0 total memory = %v (present %v)", total, ok)
	}
	avail, known := h.m.Available()
	t.Logf("gpu 0: total %.1f GiB; Available %.1f GiB (known %v)", total/gib, float64(avail)/gib, known)
}
