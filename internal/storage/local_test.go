package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// newTestLocal returns a Local rooted at a fresh temp dir, and that dir.
func newTestLocal(t *testing.T) (*Local, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "root")
	l, err := NewLocal(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l, dir
}

func TestLocalRoundTrip(t *testing.T) {
	ctx := t.Context()
	l, dir := newTestLocal(t)
	for _, key := range []string{"a.jpg", "listings/1/original.jpg", "deep/er/and/deeper/x.bin"} {
		want := []byte("content of " + key)
		if err := l.Put(ctx, key, want, PutOptions{ContentType: "image/jpeg"}); err != nil {
			t.Fatalf("Put(%q): %v", key, err)
		}
		got, err := l.Get(ctx, key, 1<<20)
		if err != nil {
			t.Fatalf("Get(%q): %v", key, err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("Get(%q) = %q, want %q", key, got, want)
		}
		// The key maps to the same path on disk, so other tools can read it.
		onDisk, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(key)))
		if err != nil || !bytes.Equal(onDisk, want) {
			t.Errorf("file for %q = %q, %v", key, onDisk, err)
		}
	}
	fi, err := os.Stat(filepath.Join(dir, "deep", "er"))
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm&0o027 != 0 {
		t.Errorf("created folder mode %v is wider than 0750", perm)
	}
}

func TestLocalOverwriteAndEmpty(t *testing.T) {
	ctx := t.Context()
	l, _ := newTestLocal(t)
	for _, v := range []string{"first, longer value", "second", ""} {
		if err := l.Put(ctx, "k", []byte(v), PutOptions{}); err != nil {
			t.Fatal(err)
		}
		got, err := l.Get(ctx, "k", 100)
		if err != nil || string(got) != v {
			t.Fatalf("Get = %q, %v; want %q", got, err, v)
		}
	}
	// An empty object fits a zero limit.
	if _, err := l.Get(ctx, "k", 0); err != nil {
		t.Errorf("Get of empty object with maxBytes 0: %v", err)
	}
}

func TestLocalNotFound(t *testing.T) {
	ctx := t.Context()
	l, _ := newTestLocal(t)
	if err := l.Put(ctx, "file", []byte("x"), PutOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := l.Put(ctx, "folder/x", []byte("x"), PutOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"missing", "no/such/folder/x", "file/below-a-file", "folder"} {
		_, err := l.Get(ctx, key, 100)
		if !errors.Is(err, ErrNotFound) {
			t.Errorf("Get(%q) = %v, want ErrNotFound", key, err)
			continue
		}
		if !strings.Contains(err.Error(), key) {
			t.Errorf("message %q does not name the key", err)
		}
	}
}

func TestLocalTooLarge(t *testing.T) {
	ctx := t.Context()
	l, _ := newTestLocal(t)
	data := bytes.Repeat([]byte("x"), 100)
	if err := l.Put(ctx, "big", data, PutOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Get(ctx, "big", 99); !errors.Is(err, ErrTooLarge) {
		t.Errorf("Get with limit 99 = %v, want ErrTooLarge", err)
	}
	if got, err := l.Get(ctx, "big", 100); err != nil || len(got) != 100 {
		t.Errorf("Get with limit 100 = %d bytes, %v", len(got), err)
	}
	if _, err := l.Get(ctx, "big", -1); err == nil {
		t.Error("Get with a negative limit succeeded")
	}
}

func TestReadLimitedEnforcesWhileReading(t *testing.T) {
	// The announced size is a lie: the limit must hold anyway.
	r := strings.NewReader(strings.Repeat("x", 50))
	if _, err := readLimited(r, 10, 20); !errors.Is(err, ErrTooLarge) {
		t.Errorf("readLimited = %v, want ErrTooLarge", err)
	}
	r = strings.NewReader(strings.Repeat("x", 20))
	if got, err := readLimited(r, -1, 20); err != nil || len(got) != 20 {
		t.Errorf("readLimited at the limit = %d bytes, %v", len(got), err)
	}
}

func TestLocalRejectsInvalidKeys(t *testing.T) {
	ctx := t.Context()
	l, dir := newTestLocal(t)
	outside := filepath.Join(filepath.Dir(dir), "outside")
	for _, key := range []string{"../outside", "a/../../outside", "/etc/passwd", "a//b", `..\x`, "a\x00"} {
		if err := l.Put(ctx, key, []byte("x"), PutOptions{}); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("Put(%q) = %v, want ErrInvalidKey", key, err)
		}
		if _, err := l.Get(ctx, key, 100); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("Get(%q) = %v, want ErrInvalidKey", key, err)
		}
	}
	if _, err := os.Stat(outside); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("something was written outside the root: %v", err)
	}
}

// TestLocalSymlinkEscape plants links inside the root that point outside it,
// both relative and absolute, to a file and to a folder.
func TestLocalSymlinkEscape(t *testing.T) {
	ctx := t.Context()
	l, dir := newTestLocal(t)
	outDir := filepath.Join(filepath.Dir(dir), "outside")
	if err := os.Mkdir(outDir, 0o750); err != nil {
		t.Fatal(err)
	}
	secret := filepath.Join(outDir, "secret")
	if err := os.WriteFile(secret, []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	links := map[string]string{
		"rel-file": filepath.Join("..", "outside", "secret"),
		"abs-file": secret,
		"rel-dir":  filepath.Join("..", "outside"),
		"abs-dir":  outDir,
		"sub/deep": filepath.Join("..", "..", "outside"),
	}
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o750); err != nil {
		t.Fatal(err)
	}
	for name, target := range links {
		if err := os.Symlink(target, filepath.Join(dir, filepath.FromSlash(name))); err != nil {
			t.Fatal(err)
		}
	}
	for _, key := range []string{"rel-file", "abs-file", "rel-dir/secret", "abs-dir/secret", "sub/deep/secret"} {
		if got, err := l.Get(ctx, key, 100); err == nil {
			t.Errorf("Get(%q) followed a link outside the root: %q", key, got)
		}
	}
	for _, key := range []string{"rel-file", "abs-file", "rel-dir/secret", "abs-dir/secret", "abs-dir/new", "rel-dir/x/y", "sub/deep/new"} {
		if err := l.Put(ctx, key, []byte("overwritten"), PutOptions{}); err == nil {
			t.Errorf("Put(%q) succeeded through a link outside the root", key)
		}
	}
	got, err := os.ReadFile(secret)
	if err != nil || string(got) != "secret" {
		t.Errorf("outside file = %q, %v; want it untouched", got, err)
	}
	entries, err := os.ReadDir(outDir)
	if err != nil || len(entries) != 1 {
		t.Errorf("outside folder has %d entries (%v); want only the secret", len(entries), err)
	}
	// The planted links themselves are left as they were, not replaced.
	for name := range links {
		fi, err := os.Lstat(filepath.Join(dir, filepath.FromSlash(name)))
		if err != nil || fi.Mode().Type() != fs.ModeSymlink {
			t.Errorf("link %q was replaced: %v, %v", name, fi, err)
		}
	}
}

func TestLocalSymlinkInsideRootIsFollowed(t *testing.T) {
	ctx := t.Context()
	l, dir := newTestLocal(t)
	if err := l.Put(ctx, "real/x", []byte("inside"), PutOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("real", filepath.Join(dir, "alias")); err != nil {
		t.Fatal(err)
	}
	got, err := l.Get(ctx, "alias/x", 100)
	if err != nil || string(got) != "inside" {
		t.Errorf("Get through an inside link = %q, %v", got, err)
	}
}

func TestLocalRefusesFIFO(t *testing.T) {
	l, dir := newTestLocal(t)
	if err := syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Without O_NONBLOCK this would hang, waiting for a writer.
	if _, err := l.Get(t.Context(), "fifo", 100); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("Get(fifo) = %v, want a refusal", err)
	}
	if err := l.Put(t.Context(), "fifo", []byte("x"), PutOptions{}); err == nil {
		t.Error("Put replaced a FIFO")
	}
}

func TestLocalPutOverFolderFails(t *testing.T) {
	ctx := t.Context()
	l, dir := newTestLocal(t)
	if err := l.Put(ctx, "a/b", []byte("x"), PutOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := l.Put(ctx, "a", []byte("x"), PutOptions{}); err == nil {
		t.Error("Put replaced a folder")
	}
	if err := l.Put(ctx, "a/b/c", []byte("x"), PutOptions{}); err == nil {
		t.Error("Put made a folder below a file")
	}
	assertNoTemps(t, dir)
}

func TestLocalCancelledContext(t *testing.T) {
	l, dir := newTestLocal(t)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := l.Put(ctx, "k", []byte("x"), PutOptions{}); !errors.Is(err, context.Canceled) {
		t.Errorf("Put = %v, want context.Canceled", err)
	}
	if _, err := l.Get(ctx, "k", 10); !errors.Is(err, context.Canceled) {
		t.Errorf("Get = %v, want context.Canceled", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "k")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a cancelled Put wrote the object: %v", err)
	}
	assertNoTemps(t, dir)
}

func TestLocalClosed(t *testing.T) {
	l, _ := newTestLocal(t)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Put(t.Context(), "k", []byte("x"), PutOptions{}); err == nil {
		t.Error("Put after Close succeeded")
	}
	if _, err := l.Get(t.Context(), "k", 10); err == nil {
		t.Error("Get after Close succeeded")
	}
}

// TestLocalAtomicWrite has readers race a writer that alternates between two
// values of different lengths; every read must be one whole value.
func TestLocalAtomicWrite(t *testing.T) {
	ctx := t.Context()
	l, dir := newTestLocal(t)
	values := [][]byte{bytes.Repeat([]byte("a"), 256<<10), bytes.Repeat([]byte("b"), 100<<10)}
	if err := l.Put(ctx, "obj", values[0], PutOptions{}); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	errs := make(chan error, 8)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				got, err := l.Get(ctx, "obj", 1<<20)
				if err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(got, values[0]) && !bytes.Equal(got, values[1]) {
					errs <- fmt.Errorf("partial read: %d bytes starting %q", len(got), got[:min(len(got), 8)])
					return
				}
			}
		})
	}
	for i := range 200 {
		if err := l.Put(ctx, "obj", values[i%2], PutOptions{}); err != nil {
			t.Error(err)
			break
		}
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	assertNoTemps(t, dir)
}

// TestLocalConcurrentWriters has many writers put different values under one
// key; exactly one complete value must remain.
func TestLocalConcurrentWriters(t *testing.T) {
	ctx := t.Context()
	l, dir := newTestLocal(t)
	const writers = 16
	want := make(map[string]bool)
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for i := range writers {
		v := bytes.Repeat([]byte{byte('A' + i)}, 64<<10+i)
		want[string(v)] = true
		wg.Go(func() {
			for range 10 {
				if err := l.Put(ctx, "shared/obj", v, PutOptions{}); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	got, err := l.Get(ctx, "shared/obj", 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if !want[string(got)] {
		t.Errorf("final value (%d bytes) is not one of the written values", len(got))
	}
	assertNoTemps(t, dir)
}

// assertNoTemps fails if any temporary file is left under dir.
func assertNoTemps(t *testing.T, dir string) {
	t.Helper()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if strings.HasPrefix(d.Name(), tempPrefix) {
			t.Errorf("temporary file left behind: %s", p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestLocalWriteTempCleansUpOnFailure(t *testing.T) {
	l, dir := newTestLocal(t)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	// The cancellation is noticed after the data is written and synced, the
	// last moment before the object would be published.
	if err := l.writeTemp(ctx, tempPrefix+"x", []byte("data"), true); !errors.Is(err, context.Canceled) {
		t.Errorf("writeTemp = %v, want context.Canceled", err)
	}
	assertNoTemps(t, dir)
}
