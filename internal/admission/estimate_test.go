package admission

import (
	"testing"
	"time"
)

// An upscaled job (a 1 MP render refined to 4.2 MP) costs fewer seconds per
// final megapixel than a plain one; its class learns that without moving the
// plain class's estimate, and borrows the overall average until it has.
func TestEstimatorLearnsEachSizeClass(t *testing.T) {
	const plain, upscaled = 1.048576, 4.194304 // 1024² and 2048²
	var e estimator
	e.observeDuration(plain, 5*time.Second)
	near := func(got, want time.Duration) bool {
		d := got - want
		return d < time.Millisecond && d > -time.Millisecond
	}
	if got, want := e.duration(upscaled), time.Duration(upscaled/plain*5*float64(time.Second)); !near(got, want) {
		t.Errorf("before its first job, an upscaled job is expected to take %v; want the overall rate's %v", got, want)
	}
	e.observeDuration(upscaled, 8*time.Second)
	if got := e.duration(upscaled); !near(got, 8*time.Second) {
		t.Errorf("upscaled job expected to take %v, want its own measurement's 8s", got)
	}
	if got := e.duration(plain); !near(got, 5*time.Second) {
		t.Errorf("plain job expected to take %v after an upscaled one, want 5s", got)
	}
	e.observeDuration(upscaled, 18*time.Second)
	if got := e.duration(upscaled); !near(got, 10*time.Second) {
		t.Errorf("upscaled job expected to take %v, want 8s moved a fifth of the way to 18s", got)
	}
}
