package staging

import (
	"bytes"
	"errors"
	"image"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/vstage/vstage/internal/fault"
	"github.com/vstage/vstage/internal/storage"
)

func putPNG(t *testing.T, f fixture, key string, w, h int) {
	t.Helper()
	var buf bytes.Buffer
	if err := png.Encode(&buf, image.NewGray(image.Rect(0, 0, w, h))); err != nil {
		t.Fatal(err)
	}
	if err := f.store.Put(t.Context(), key, buf.Bytes(), storage.PutOptions{}); err != nil {
		t.Fatal(err)
	}
}

func TestImageTooLargeNamesTheDeclaredSize(t *testing.T) {
	f := newFixture(t, 0)
	putPNG(t, f, "l/big.png", 2000, 1000) // over the fixture's 1 MiB pixel cap
	r := req("big")
	r.OriginalKey = "l/big.png"
	_, err := f.svc.Stage(t.Context(), r)
	e := fault.From(err)
	if e.Code != fault.ImageTooLarge || !strings.Contains(e.Message, "2000x1000") {
		t.Fatalf("err = %s %q, want image_too_large naming 2000x1000", e.Code, e.Message)
	}
}

// TestPermanentStorageConditionsAreClientErrors plants, in a local store,
// conditions that no retry can change; each is answered as a client error
// that is not retryable, and nothing is recorded.
func TestPermanentStorageConditionsAreClientErrors(t *testing.T) {
	long := strings.Repeat("n", 256)
	for name, tc := range map[string]struct {
		plant    func(t *testing.T, root string)
		original string
		code     fault.Code
	}{
		"original through a link out of the store": {
			plant:    func(t *testing.T, root string) { symlink(t, t.TempDir(), filepath.Join(root, "l", "out")) },
			original: "l/out/o.jpg", code: fault.Forbidden,
		},
		"staged folder is a link out of the store": {
			plant:    func(t *testing.T, root string) { symlink(t, t.TempDir(), filepath.Join(root, "l", "staged")) },
			original: "l/o.jpg", code: fault.Forbidden,
		},
		"original is a FIFO": {
			plant: func(t *testing.T, root string) {
				if err := syscall.Mkfifo(filepath.Join(root, "l", "fifo.jpg"), 0o600); err != nil {
					t.Fatal(err)
				}
			},
			original: "l/fifo.jpg", code: fault.InvalidInput,
		},
		"record is a FIFO": {
			plant: func(t *testing.T, root string) {
				if err := os.MkdirAll(filepath.Join(root, "l", "staged"), 0o750); err != nil {
					t.Fatal(err)
				}
				if err := syscall.Mkfifo(filepath.Join(root, "l", "staged", "job.jpg.json"), 0o600); err != nil {
					t.Fatal(err)
				}
			},
			original: "l/o.jpg", code: fault.InvalidInput,
		},
		"original name over 255 bytes": {
			plant:    func(*testing.T, string) {},
			original: "l/" + long + ".jpg", code: fault.InvalidInput,
		},
	} {
		t.Run(name, func(t *testing.T) {
			root := t.TempDir()
			store, err := storage.NewLocal(root)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = store.Close() })
			f := newFixture(t, 0)
			data, err := f.store.Get(t.Context(), "l/o.jpg", 1<<20)
			if err != nil {
				t.Fatal(err)
			}
			if err := store.Put(t.Context(), "l/o.jpg", data, storage.PutOptions{}); err != nil {
				t.Fatal(err)
			}
			tc.plant(t, root)
			svc := New(store, NewSingle(f.be), f.svc.catalog, f.svc.opts, f.metrics, nil)
			r := req("job")
			r.OriginalKey = tc.original
			_, err = svc.Stage(t.Context(), r)
			e := fault.From(err)
			if e.Code != tc.code || e.Retryable {
				t.Fatalf("err = %v (retryable %v), want %s, not retryable", err, e.Retryable, tc.code)
			}
			if _, err := os.Lstat(filepath.Join(root, "l", "staged", "job.jpg")); err == nil {
				t.Error("a staged image was written")
			}
		})
	}
}

func symlink(t *testing.T, target, name string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(name), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, name); err != nil {
		t.Fatal(err)
	}
}

// TestCorruptMaskIsRefusedBeforeAnyBackend gives the mock backend, which
// ignores masks, a mask whose header is fine and whose data is not: it is
// refused as the engine would refuse it, and nothing is recorded that a
// later switch to the engine could replay.
func TestCorruptMaskIsRefusedBeforeAnyBackend(t *testing.T) {
	f := newFixture(t, 0)
	var buf bytes.Buffer
	if err := png.Encode(&buf, image.NewGray(image.Rect(0, 0, 200, 100))); err != nil {
		t.Fatal(err)
	}
	mask := buf.Bytes()
	mask[len(mask)-20] ^= 0xFF // inside the image data: its checksum no longer holds
	if err := f.store.Put(t.Context(), "l/mask.png", mask, storage.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	r := req("masked")
	r.MaskKey = "l/mask.png"
	_, err := f.svc.Stage(t.Context(), r)
	if e := fault.From(err); e.Code != fault.InvalidInput || e.Retryable || !strings.Contains(e.Message, "mask_key") {
		t.Fatalf("err = %v, want invalid_input about mask_key", err)
	}
	if f.be.calls.Load() != 0 {
		t.Error("the backend ran")
	}
	if _, err := f.store.Get(t.Context(), "l/staged/masked.jpg.json", 1<<20); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("a record was written: %v", err)
	}
	// A sound mask of the same size passes, with mock's warning.
	putPNG(t, f, "l/good-mask.png", 200, 100)
	r.ImageID, r.MaskKey = "masked-ok", "l/good-mask.png"
	if out, err := f.svc.Stage(t.Context(), r); err != nil || len(out.Warnings) != 1 || out.Warnings[0] != "mask_ignored" {
		t.Errorf("sound mask: %+v, %v", out, err)
	}
}
