package storage

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestOpenFile(t *testing.T) {
	ctx := t.Context()
	dir := filepath.Join(t.TempDir(), "new", "store")
	st, err := Open(ctx, "file://"+filepath.ToSlash(dir), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm&0o027 != 0 {
		t.Errorf("created folder mode %v is wider than 0750", perm)
	}
	if err := st.Put(ctx, "a/b", []byte("x"), PutOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "a", "b")); err != nil {
		t.Errorf("object not where the URL says: %v", err)
	}
	if _, ok := st.(*Local); !ok {
		t.Errorf("Open(file URL) = %T, want *Local", st)
	}
}

func TestOpenRejects(t *testing.T) {
	tests := []struct {
		url, want string // want: a piece of the message
	}{
		{"", "scheme"},
		{"/abs/dir", "scheme"},
		{"ftp://host/dir", `scheme "ftp"`},
		{"file://relative/dir", "three slashes"},
		{"file:relative", "three slashes"},
		{"file:///dir?mode=x", "query"},
		{"file:///dir#frag", "fragment"},
		{"s3://", "no bucket"},
		{"s3:bucket", "no bucket"},
		{"s3://Bad_Bucket", "bucket"},
		{"s3://ab", "bucket"},
		{"s3://bucket//double", "bad prefix"},
		{"s3://bucket/a/../b", "bad prefix"},
		{"s3://bucket/a%00b", "bad prefix"},
		{"s3://AKIDVSTAGETEST:test-secret-key@bucket/p", "user information"},
		{"s3://user:test-secret-key@bucket/%zz", "not a valid URL"},
		{"file://user:test-secret-key@localhost/dir", "user information"},
	}
	for _, tt := range tests {
		st, err := Open(t.Context(), tt.url, Options{})
		if err == nil {
			st.Close()
			t.Errorf("Open(%q) succeeded", tt.url)
			continue
		}
		msg := err.Error()
		if !strings.Contains(msg, tt.want) {
			t.Errorf("Open(%q) = %q, want it to say %q", tt.url, msg, tt.want)
		}
		if strings.Contains(msg, "test-secret-key") || strings.Contains(msg, "AKIDVSTAGETEST") {
			t.Errorf("Open(%q) leaks the credentials: %q", tt.url, msg)
		}
	}
}
