package imagecheck

import (
	"testing"
)

// Large decodes hand memory back when the budget goes idle, but at most
// once per period however many follow, and small ones never do.
func TestBudgetGivesMemoryBackAtMostOncePerPeriod(t *testing.T) {
	b := NewBudget(100)
	var gave int
	b.giveBack = func() { gave++ }
	decode := func(pixels int64) {
		t.Helper()
		release, err := b.Acquire(t.Context(), pixels)
		if err != nil {
			t.Fatal(err)
		}
		release()
	}
	decode(10)
	if gave != 0 {
		t.Fatalf("a small decode gave memory back %d times", gave)
	}
	decode(50)
	decode(50)
	decode(50)
	if gave != 1 {
		t.Fatalf("three large decodes in a row gave memory back %d times, want once in the period", gave)
	}
	b.lastGave = b.lastGave.Add(-giveBackEvery)
	decode(10)
	if gave != 2 {
		t.Fatalf("after the period, the large decodes not yet given back: %d, want 2", gave)
	}
}
