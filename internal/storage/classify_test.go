package storage

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestLocalPermanentConditions checks that every condition of a key that no
// retry can change is reported with its sentinel, on both reads and writes,
// so the caller can answer the client instead of retrying forever.
func TestLocalPermanentConditions(t *testing.T) {
	ctx := t.Context()
	l, dir := newTestLocal(t)
	outside := t.TempDir()
	if err := os.WriteFile(filepath.Join(outside, "secret"), []byte("s"), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, target := range map[string]string{"out": outside, "loop": "loop"} {
		if err := os.Symlink(target, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	if err := syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"file", "dir/x"} {
		if err := l.Put(ctx, key, []byte("x"), PutOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	long := strings.Repeat("n", 256)
	for _, tc := range []struct {
		key      string
		get, put error
	}{
		{"out/secret", ErrOutsideStore, ErrOutsideStore},
		{"out/new/x", ErrOutsideStore, ErrOutsideStore},
		{"fifo", ErrNotObject, ErrNotObject},
		{"loop", ErrNotObject, ErrNotObject},
		{"file/below", ErrNotFound, ErrNotObject},
		{long, ErrNameTooLong, ErrNameTooLong},
		{"dir/" + long + "/x", ErrNameTooLong, ErrNameTooLong},
	} {
		if _, err := l.Get(ctx, tc.key, 100); !errors.Is(err, tc.get) {
			t.Errorf("Get(%.20q) = %v, want %v", tc.key, err, tc.get)
		}
		if err := l.Put(ctx, tc.key, []byte("x"), PutOptions{}); !errors.Is(err, tc.put) {
			t.Errorf("Put(%.20q) = %v, want %v", tc.key, err, tc.put)
		}
	}
	// A missing object stays a plain not-found, with none of the above.
	_, err := l.Get(ctx, "missing/x", 100)
	if !errors.Is(err, ErrNotFound) || errors.Is(err, ErrOutsideStore) || errors.Is(err, ErrNotObject) || errors.Is(err, ErrNameTooLong) {
		t.Errorf("Get(missing) = %v", err)
	}
}
