package backoff

import (
	"context"
	"errors"
	"math"
	"net/http"
	"testing"
	"time"
)

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for in, want := range map[string]time.Duration{
		"": 0, "3": 3 * time.Second, " 7 ": 7 * time.Second, "-1": 0, "soon": 0,
		now.Add(10 * time.Second).Format(http.TimeFormat): 10 * time.Second,
		now.Add(-time.Minute).Format(http.TimeFormat):     0,
	} {
		if got := ParseRetryAfter(in, now); got != want {
			t.Errorf("ParseRetryAfter(%q) = %s, want %s", in, got, want)
		}
	}
}

// Every wait lies in the upper half of a ceiling that starts at base,
// doubles per attempt and stops at maxWait, the engine's restart schedule
// included (500ms doubling to 30s).
func TestDelayGrowsWithinItsBounds(t *testing.T) {
	for _, tc := range []struct {
		base, maxWait time.Duration
		ceilings      map[int]time.Duration
	}{
		{100 * time.Millisecond, time.Second, map[int]time.Duration{
			0: 100 * time.Millisecond, -3: 100 * time.Millisecond, 1: 100 * time.Millisecond,
			2: 200 * time.Millisecond, 4: 800 * time.Millisecond, 5: time.Second, 80: time.Second,
			math.MaxInt: time.Second,
		}},
		{500 * time.Millisecond, 30 * time.Second, map[int]time.Duration{
			1: 500 * time.Millisecond, 2: time.Second, 3: 2 * time.Second, 6: 16 * time.Second,
			7: 30 * time.Second, 64: 30 * time.Second,
		}},
		// A cap that is not a power-of-two multiple of base is reached exactly.
		{300 * time.Millisecond, time.Second, map[int]time.Duration{
			2: 600 * time.Millisecond, 3: time.Second,
		}},
		// A base above the cap starts at the cap.
		{time.Minute, time.Second, map[int]time.Duration{1: time.Second, 3: time.Second}},
		// No overflow near the largest duration.
		{time.Duration(1) << 61, math.MaxInt64, map[int]time.Duration{
			2: time.Duration(1) << 62, 3: math.MaxInt64, 100: math.MaxInt64,
		}},
		{time.Nanosecond, 3 * time.Nanosecond, map[int]time.Duration{1: 1, 2: 2, 9: 3}},
	} {
		for attempt, ceiling := range tc.ceilings {
			for range 200 {
				if d := Delay(attempt, tc.base, tc.maxWait); d < ceiling/2 || d > ceiling {
					t.Fatalf("Delay(%d, %s, %s) = %s, want within [%s, %s]", attempt, tc.base, tc.maxWait, d, ceiling/2, ceiling)
				}
			}
		}
	}
}

// The draw covers the whole upper half, ends included, so that callers
// spread out; a fixed wait would bring them back together.
func TestDelayIsJittered(t *testing.T) {
	seen := map[time.Duration]bool{}
	for range 2000 {
		seen[Delay(1, 4*time.Nanosecond, time.Second)] = true
	}
	for _, d := range []time.Duration{2, 3, 4} {
		if !seen[d] {
			t.Errorf("Delay(1, 4ns, 1s) never drew %s in 2000 draws: %v", d, seen)
		}
	}
	if len(seen) != 3 {
		t.Errorf("draws %v outside [2ns, 4ns]", seen)
	}
}

func TestDelayWithoutABaseIsZero(t *testing.T) {
	for _, c := range [][2]time.Duration{{0, time.Second}, {-time.Second, time.Second}, {time.Second, 0}, {time.Second, -time.Second}} {
		if d := Delay(3, c[0], c[1]); d != 0 {
			t.Errorf("Delay(3, %s, %s) = %s, want 0", c[0], c[1], d)
		}
	}
}

func TestSleepEndsWithTheContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Sleep(ctx, time.Hour); !errors.Is(err, context.Canceled) {
		t.Errorf("Sleep = %v, want context.Canceled at once", err)
	}
	if err := Sleep(context.Background(), time.Millisecond); err != nil {
		t.Errorf("Sleep = %v", err)
	}
}
