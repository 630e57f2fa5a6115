package storage

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzValidateKey checks ValidateKey against an independent statement of
// the rules, and that a Local store never writes outside its root for an
// accepted key, even with links to the outside planted inside the root.
func FuzzValidateKey(f *testing.F) {
	for _, seed := range []string{
		// good
		"a", "demo/empty_living_room.jpg", "listings/1/staged/x.jpg", "...", "a/.../b",
		".hidden", "ünï/文件.jpg", "a b/c", "escape/x", "abs/x", "escape/../x",
		// bad
		"", "/", "/abs", "..", ".", "../x", "a/../b", "a/./b", "a//b", "a/", `a\b`,
		"a\x00b", "a\nb", "a\x7f", "a\u0085", "a\u009f", "\xff", "a/\xed\xa0\x80",
		strings.Repeat("k", MaxKeyLen), strings.Repeat("k", MaxKeyLen+1),
	} {
		f.Add(seed)
	}

	base := f.TempDir()
	rootDir := filepath.Join(base, "root")
	outDir := filepath.Join(base, "outside")
	l, err := NewLocal(rootDir)
	if err != nil {
		f.Fatal(err)
	}
	defer l.Close()
	if err := os.Mkdir(outDir, 0o750); err != nil {
		f.Fatal(err)
	}
	sentinel := filepath.Join(outDir, "sentinel")
	if err := os.WriteFile(sentinel, []byte("untouched"), 0o600); err != nil {
		f.Fatal(err)
	}
	// Bait: links to the outside under names the seeds use.
	if err := os.Symlink(filepath.Join("..", "outside"), filepath.Join(rootDir, "escape")); err != nil {
		f.Fatal(err)
	}
	if err := os.Symlink(outDir, filepath.Join(rootDir, "abs")); err != nil {
		f.Fatal(err)
	}

	f.Fuzz(func(t *testing.T, key string) {
		err := ValidateKey(key)
		if want := ruleBreak(key); (err == nil) != (want == "") {
			t.Fatalf("ValidateKey(%q) = %v, but the rules say %q", key, err, want)
		}
		if err != nil {
			if !errors.Is(err, ErrInvalidKey) {
				t.Fatalf("ValidateKey(%q) = %v, does not wrap ErrInvalidKey", key, err)
			}
			if perr := l.Put(t.Context(), key, []byte("x"), PutOptions{}); !errors.Is(perr, ErrInvalidKey) {
				t.Fatalf("Local.Put(%q) = %v, want ErrInvalidKey", key, perr)
			}
			return
		}

		data := []byte("value of " + key)
		if perr := l.Put(t.Context(), key, data, PutOptions{}); perr == nil {
			// Earlier inputs may have made a path component a file, so a
			// failed Put is fine; a successful one must read back.
			got, gerr := l.Get(t.Context(), key, 1<<20)
			if gerr != nil || !bytes.Equal(got, data) {
				t.Fatalf("Get(%q) after Put = %q, %v", key, got, gerr)
			}
		}
		entries, rerr := os.ReadDir(outDir)
		if rerr != nil || len(entries) != 1 {
			t.Fatalf("key %q: the outside folder now has %d entries (%v)", key, len(entries), rerr)
		}
		if b, _ := os.ReadFile(sentinel); string(b) != "untouched" {
			t.Fatalf("key %q changed a file outside the root", key)
		}
		if entries, _ := os.ReadDir(base); len(entries) != 2 {
			t.Fatalf("key %q: something appeared beside the root", key)
		}
	})
}

// ruleBreak restates the key rules in the plainest way, independently of
// keyProblem, and returns the first rule that key breaks, or "".
func ruleBreak(key string) string {
	if len(key) < 1 || len(key) > MaxKeyLen {
		return "length"
	}
	if !utf8.ValidString(key) {
		return "utf8"
	}
	if strings.HasPrefix(key, "/") {
		return "absolute"
	}
	if strings.Contains(key, `\`) {
		return "backslash"
	}
	for _, r := range key {
		if r <= 0x1f || r == 0x7f || (0x80 <= r && r <= 0x9f) {
			return "control"
		}
	}
	for _, seg := range strings.Split(key, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return "segment"
		}
	}
	return ""
}
