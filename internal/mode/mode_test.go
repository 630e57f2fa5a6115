package mode

import (
	"errors"
	"strings"
	"testing"
)

func TestParseAcceptsEveryModeAndNothingElse(t *testing.T) {
	for _, m := range All() {
		got, err := Parse(string(m))
		if err != nil || got != m {
			t.Errorf("Parse(%q) = %q, %v; want %q", m, got, err, m)
		}
	}
	for _, s := range []string{"", "Self", "MOCK", " managed", "gpu", "self\x00"} {
		got, err := Parse(s)
		if !errors.Is(err, ErrUnknown) || got != "" {
			t.Errorf("Parse(%q) = %q, %v; want ErrUnknown", s, got, err)
		}
	}
}

func TestParseErrorListsTheModes(t *testing.T) {
	_, err := Parse("gpu")
	if err == nil || !strings.Contains(err.Error(), "must be self, managed or mock") || !strings.Contains(err.Error(), `"gpu"`) {
		t.Fatalf("error %v: want the list of modes and the bad value", err)
	}
}

func TestChoicesNamesEveryMode(t *testing.T) {
	c := Choices()
	for _, m := range All() {
		if !strings.Contains(c, string(m)) {
			t.Errorf("Choices() = %q, missing %q", c, m)
		}
	}
}

func TestAllReturnsAFreshSlice(t *testing.T) {
	a := All()
	a[0] = "changed"
	if All()[0] != Self {
		t.Fatal("All shares its slice with its callers")
	}
}
