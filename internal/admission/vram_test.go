package admission

import (
	"context"
	"sort"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/vstage/vstage/internal/fault"
)

const gib = 1 << 30

// fakeVRAM is a VRAM whose answer the test sets.
type fakeVRAM struct {
	avail   atomic.Uint64
	unknown atomic.Bool
}

func (f *fakeVRAM) Available() (uint64, bool) { return f.avail.Load(), !f.unknown.Load() }

// vramOptions seed a 1 MP job at 10 GiB with 1 GiB of headroom.
func vramOptions(v VRAM) Options {
	return Options{
		Concurrency: 2, VRAM: v, VRAMHeadroom: gib, VRAMBase: 6 * gib, VRAMPerMegapixel: 4 * gib,
		QueueTimeout: time.Minute, DurationPerMegapixel: time.Millisecond, VRAMPollInterval: 5 * time.Millisecond,
	}
}

func TestVRAMGuardRejectsWithoutQueue(t *testing.T) {
	v := &fakeVRAM{}
	v.avail.Store(11 * gib) // one 10 GiB job plus headroom
	c, _ := newController(t, vramOptions(v))
	a := mustAcquire(t, c, Request{Megapixels: 1})
	_, err := c.Acquire(context.Background(), Request{Megapixels: 1})
	if rej := rejection(t, err, fault.Overloaded); rej.Reason != ReasonVRAM {
		t.Fatalf("reason = %s, want vram with a slot free", rej.Reason)
	}
	a.Release(Report{})
	b := mustAcquire(t, c, Request{Megapixels: 1})
	b.Release(Report{})

	v.avail.Store(10 * gib) // short of the headroom
	if _, err := c.Acquire(context.Background(), Request{Megapixels: 1}); err == nil {
		t.Fatal("admitted a job into the headroom")
	}
	v.unknown.Store(true) // no data: the guard steps aside
	mustAcquire(t, c, Request{Megapixels: 1}).Release(Report{})
}

func TestVRAMGuardQueuedJobWaitsForMemory(t *testing.T) {
	v := &fakeVRAM{}
	v.avail.Store(5 * gib) // another process holds the rest
	o := vramOptions(v)
	o.QueueDepth = 2
	c, _ := newController(t, o)
	out := make(chan result, 2)
	enqueue(t, context.Background(), c, "big", Request{Megapixels: 1}, out)
	if s := c.Stats(); !s.VRAMBlocked || s.InFlight != 0 {
		t.Fatalf("stats = %+v, want the head blocked on memory", s)
	}
	v.avail.Store(12 * gib) // the other process is gone
	r := receive(t, out)
	if r.err != nil {
		t.Fatal(r.err)
	}
	r.t.Release(Report{})
}

func TestVRAMGuardWaitPastTimeoutSaysVRAM(t *testing.T) {
	v := &fakeVRAM{}
	v.avail.Store(5 * gib)
	o := vramOptions(v)
	o.QueueDepth, o.QueueTimeout = 1, 30*time.Millisecond
	c, _ := newController(t, o)
	_, err := c.Acquire(context.Background(), Request{Megapixels: 1})
	if rej := rejection(t, err, fault.Overloaded); rej.Reason != ReasonVRAM {
		t.Fatalf("reason = %s", rej.Reason)
	}
}

// TestVRAMGuardLearnsPeaks: the engine's reported peak replaces the seed
// for its size, so a second job fits beside the first.
func TestVRAMGuardLearnsPeaks(t *testing.T) {
	v := &fakeVRAM{}
	v.avail.Store(17 * gib)
	c, _ := newController(t, vramOptions(v))
	a := mustAcquire(t, c, Request{Megapixels: 1})
	if _, err := c.Acquire(context.Background(), Request{Megapixels: 1}); err == nil {
		t.Fatal("two seeded 10 GiB jobs fit in 17 GiB")
	}
	a.Release(Report{Duration: time.Second, Megapixels: 1, PeakGPUBytes: 7 * gib})
	a = mustAcquire(t, c, Request{Megapixels: 1})
	b := mustAcquire(t, c, Request{Megapixels: 1}) // 7+7+1 <= 17
	// A lighter job pulls the estimate down slowly; a heavier one at once.
	a.Release(Report{Duration: time.Second, Megapixels: 1, PeakGPUBytes: 3 * gib})
	if got := c.est.need(1); got != 7*gib-(4*gib)/8 {
		t.Fatalf("after a light peak: %d", got)
	}
	b.Release(Report{Duration: time.Second, Megapixels: 1, PeakGPUBytes: 9 * gib})
	if got := c.est.need(1); got != 9*gib {
		t.Fatalf("after a heavy peak: %d", got)
	}
	// Other sizes keep their own estimate.
	if got := c.est.need(0.5); got != 6*gib+2*gib {
		t.Fatalf("a half megapixel job: %d", got)
	}
}

func TestSizeBuckets(t *testing.T) {
	for _, tc := range []struct {
		w, h int
		want string
	}{
		{768, 768, "768"}, {768, 576, "768"}, {1024, 1024, "1024"}, {1024, 768, "1024"},
		{1536, 1024, "1280"}, {64, 64, "256"}, {20000, 20000, "4096"},
	} {
		if got := sizeLabel(float64(tc.w*tc.h) / 1e6); got != tc.want {
			t.Errorf("%dx%d: %s, want %s", tc.w, tc.h, got, tc.want)
		}
	}
}

func TestMetricNames(t *testing.T) {
	c, reg := newController(t, Options{})
	mustAcquire(t, c, Request{Megapixels: 1}).Release(Report{Duration: time.Second, Megapixels: 1, PeakGPUBytes: gib})
	var names []string
	for _, mf := range gather(t, reg) {
		names = append(names, mf.GetName())
	}
	sort.Strings(names)
	want := []string{
		"vstage_admission_job_duration_seconds", "vstage_admission_jobs_in_flight",
		"vstage_admission_queue_abandoned_total", "vstage_admission_queue_depth",
		"vstage_admission_queue_wait_seconds", "vstage_admission_rejections_total",
		"vstage_admission_slots", "vstage_admission_vram_estimate_bytes",
	}
	if len(names) != len(want) {
		t.Fatalf("metrics = %v, want %v", names, want)
	}
	for k := range want {
		if names[k] != want[k] {
			t.Fatalf("metrics = %v, want %v", names, want)
		}
	}
	lint(t, reg)
}

func gather(t *testing.T, reg *prometheus.Registry) []*dto.MetricFamily {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	return mfs
}

// BenchmarkRejectSaturated measures a rejection while every slot and every
// place in the queue is taken.
func BenchmarkRejectSaturated(b *testing.B) {
	c, _ := newController(b, Options{Concurrency: 2, QueueDepth: 4, FreeQueueShare: 1, QueueTimeout: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 6)
	for range 6 {
		go func() {
			tk, err := c.Acquire(ctx, Request{Tier: TierPro, Megapixels: 1})
			if err == nil {
				<-ctx.Done()
				tk.Release(Report{})
			}
			done <- struct{}{}
		}()
	}
	for c.Stats().Queued < 4 {
		time.Sleep(time.Millisecond)
	}
	req := Request{Tier: TierBusiness, Megapixels: 1}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := c.Acquire(context.Background(), req); err == nil {
			b.Fatal("admitted")
		}
	}
	b.StopTimer()
	cancel()
	for range 6 {
		<-done
	}
}

func TestHugeJobsDoNotOverflow(t *testing.T) {
	v := &fakeVRAM{}
	v.avail.Store(80 * gib)
	c, _ := newController(t, vramOptions(v))
	if _, err := c.Acquire(context.Background(), Request{Megapixels: 1e12}); err == nil {
		t.Fatal("a terapixel job fits in 80 GiB")
	}
	if d := c.est.duration(1e12); d <= 0 {
		t.Fatalf("duration = %v", d)
	}
}
