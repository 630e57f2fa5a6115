// Package mode defines the inference modes: the names of the backends that
// produce staged images. The configuration, the rollout state, its admin API
// and settings file, and the backends themselves all use these names, so
// they are spelled once, here.
package mode

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Mode names a backend. Its string form is what INFERENCE_MODE, the rollout
// state's "mode" field and a result's "backend" field hold.
type Mode string

// The modes.
const (
	// Self is the supervised engine on this pod's GPU.
	Self Mode = "self"
	// Managed is a hosted provider's API.
	Managed Mode = "managed"
	// Mock re-encodes the original and needs no GPU.
	Mock Mode = "mock"
)

// ErrUnknown is wrapped by the error of Parse for a name that is no mode.
var ErrUnknown = errors.New("unknown mode")

// All returns every mode, in the order messages list them. The slice is the
// caller's to keep.
func All() []Mode { return []Mode{Self, Managed, Mock} }

// Choices lists the modes for a message: "self, managed or mock".
func Choices() string {
	all := All()
	names := make([]string, len(all))
	for i, m := range all {
		names[i] = string(m)
	}
	return strings.Join(names[:len(names)-1], ", ") + " or " + names[len(names)-1]
}

// Valid reports whether m is one of the modes.
func (m Mode) Valid() bool { return slices.Contains(All(), m) }

// Parse returns the mode named s, spelled exactly (callers that accept
// other cases fold them first). The error for any other s wraps ErrUnknown
// and lists the modes.
func Parse(s string) (Mode, error) {
	if m := Mode(s); m.Valid() {
		return m, nil
	}
	return "", fmt.Errorf("%w: must be %s, got %.40q", ErrUnknown, Choices(), s)
}
