package testsupport

import (
	"bytes"
	"strings"
	"sync"
)

// LogBuffer collects a logger's lines while the code under test writes
// from its own goroutines. The zero value is ready to use.
type LogBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write appends p.
func (b *LogBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns everything written so far.
func (b *LogBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Count returns how many times substr was written.
func (b *LogBuffer) Count(substr string) int { return strings.Count(b.String(), substr) }
