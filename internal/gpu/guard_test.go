package gpu

import (
	"context"
	"errors"
	"testing"

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
