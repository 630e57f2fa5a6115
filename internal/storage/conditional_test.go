package storage

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// bothStores runs f against the local store and against S3 over HTTP.
func bothStores(t *testing.T, f func(t *testing.T, st Store)) {
	t.Run("local", func(t *testing.T) {
		l, _ := newTestLocal(t)
		f(t, l)
	})
	t.Run("s3", func(t *testing.T) {
		st := NewS3(newFakeS3(t).client(), testBucket, "p/")
		defer st.Close()
		f(t, st)
	})
}

func TestPutIfAbsent(t *testing.T) {
	bothStores(t, func(t *testing.T, st Store) {
		ctx := t.Context()
		if err := st.Put(ctx, "jobs/a.claim", []byte("first"), PutOptions{IfAbsent: true}); err != nil {
			t.Fatalf("first conditional put: %v", err)
		}
		err := st.Put(ctx, "jobs/a.claim", []byte("second"), PutOptions{IfAbsent: true, Ephemeral: true})
		if !errors.Is(err, ErrExists) {
			t.Fatalf("second conditional put = %v, want ErrExists", err)
		}
		if got, err := st.Get(ctx, "jobs/a.claim", 100); err != nil || string(got) != "first" {
			t.Fatalf("after a refused put: %q, %v; want the first content", got, err)
		}
		// A plain put still replaces it.
		if err := st.Put(ctx, "jobs/a.claim", []byte("third"), PutOptions{}); err != nil {
			t.Fatal(err)
		}
		if got, _ := st.Get(ctx, "jobs/a.claim", 100); string(got) != "third" {
			t.Fatalf("plain put after a conditional one: %q", got)
		}
	})
}

// TestPutIfAbsentRace lets writers race for one key: exactly one wins and
// its content is what is stored.
func TestPutIfAbsentRace(t *testing.T) {
	bothStores(t, func(t *testing.T, st Store) {
		const n = 12
		var (
			wg      sync.WaitGroup
			mu      sync.Mutex
			winners []int
		)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				err := st.Put(t.Context(), "race/x", []byte(fmt.Sprint(i)), PutOptions{IfAbsent: true})
				switch {
				case err == nil:
					mu.Lock()
					winners = append(winners, i)
					mu.Unlock()
				case !errors.Is(err, ErrExists):
					t.Errorf("writer %d: %v", i, err)
				}
			}()
		}
		wg.Wait()
		if len(winners) != 1 {
			t.Fatalf("%d writers won (%v), want exactly one", len(winners), winners)
		}
		got, err := st.Get(t.Context(), "race/x", 100)
		if err != nil || string(got) != fmt.Sprint(winners[0]) {
			t.Errorf("stored %q (%v), want the winner's %d", got, err, winners[0])
		}
	})
}

func TestDelete(t *testing.T) {
	bothStores(t, func(t *testing.T, st Store) {
		ctx := t.Context()
		if err := st.Delete(ctx, "never/written"); err != nil {
			t.Errorf("deleting a missing key: %v, want nil", err)
		}
		if err := st.Put(ctx, "d/x", []byte("x"), PutOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := st.Delete(ctx, "d/x"); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Get(ctx, "d/x", 10); !errors.Is(err, ErrNotFound) {
			t.Errorf("Get after Delete = %v, want ErrNotFound", err)
		}
		// The key is free again for a conditional writer.
		if err := st.Put(ctx, "d/x", []byte("y"), PutOptions{IfAbsent: true}); err != nil {
			t.Errorf("conditional put after Delete: %v", err)
		}
		if err := st.Delete(ctx, "../x"); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("Delete of an invalid key = %v, want ErrInvalidKey", err)
		}
	})
}

func TestS3PutIfAbsentSendsIfNoneMatch(t *testing.T) {
	f := newFakeS3(t)
	st := NewS3(f.client(), testBucket, "")
	if err := st.Put(t.Context(), "c/1", []byte("x"), PutOptions{IfAbsent: true}); err != nil {
		t.Fatal(err)
	}
	if got := f.putHeader("/" + testBucket + "/c/1").Get("If-None-Match"); got != "*" {
		t.Errorf("If-None-Match = %q, want *", got)
	}
	if err := st.Put(t.Context(), "c/2", []byte("x"), PutOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := f.putHeader("/" + testBucket + "/c/2").Get("If-None-Match"); got != "" {
		t.Errorf("a plain put sent If-None-Match %q", got)
	}
}

// TestLocalDeleteRefusesNonFiles keeps Delete from removing a folder or a
// planted link (and what it points to).
func TestLocalDeleteRefusesNonFiles(t *testing.T) {
	l, dir := newTestLocal(t)
	ctx := t.Context()
	if err := l.Put(ctx, "f/x", []byte("x"), PutOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := l.Delete(ctx, "f"); err == nil {
		t.Error("Delete removed a folder")
	}
	outside := filepath.Join(t.TempDir(), "target")
	if err := os.WriteFile(outside, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	if err := l.Delete(ctx, "link"); err == nil {
		t.Error("Delete removed a symbolic link")
	}
	if got, err := os.ReadFile(outside); err != nil || !bytes.Equal(got, []byte("keep")) {
		t.Errorf("link target changed: %q, %v", got, err)
	}
}

// TestLocalPutIfAbsentLeavesNoTemps checks the losing writer cleans up.
func TestLocalPutIfAbsentLeavesNoTemps(t *testing.T) {
	l, dir := newTestLocal(t)
	for range 3 {
		_ = l.Put(t.Context(), "t/x", []byte("x"), PutOptions{IfAbsent: true, Ephemeral: true})
	}
	assertNoTemps(t, dir)
}
