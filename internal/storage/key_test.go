package storage

import (
	"errors"
	"strings"
	"testing"
)

func TestValidateKeyAccepts(t *testing.T) {
	for _, key := range []string{
		"a",
		"demo/empty_living_room.jpg",
		"listings/123/original.png",
		"a/b/c/d/e/f/g.webp",
		"...",            // only "." and ".." are special
		"a/.../b",        // likewise
		".hidden/file",   // dot files are ordinary names
		"a/..b/c.",       // dots inside a name are fine
		"with space/x",   // spaces are printable
		"ünïcødé/文件.jpg", // any printable UTF-8
		"emoji/🏠.jpg",
		"a:b/c=d&e?f#g", // S3 allows these; the local store too
		strings.Repeat("k", MaxKeyLen),
		strings.Repeat("ab/", MaxKeyLen/3-1) + "end",
		"\u00a0", // NO-BREAK SPACE is past the C1 range
	} {
		if err := ValidateKey(key); err != nil {
			t.Errorf("ValidateKey(%q) = %v, want nil", key, err)
		}
	}
}

func TestValidateKeyRejects(t *testing.T) {
	tests := []struct {
		name, key, want string // want: a piece of the message
	}{
		{"empty", "", "empty"},
		{"too long", strings.Repeat("k", MaxKeyLen+1), "1025 bytes"},
		{"too long multibyte", strings.Repeat("é", MaxKeyLen/2+1), "bytes long"},
		{"invalid UTF-8", "a/\xff.jpg", "UTF-8"},
		{"truncated UTF-8", "a/\xe6\x96", "UTF-8"},
		{"surrogate half", "a/\xed\xa0\x80", "UTF-8"},
		{"absolute", "/etc/passwd", "starts with '/'"},
		{"only slash", "/", "starts with '/'"},
		{"dotdot", "..", `".." folder`},
		{"dotdot first", "../x", `".." folder`},
		{"dotdot middle", "a/../b", `".." folder`},
		{"dotdot last", "a/..", `".." folder`},
		{"dot", ".", `"." folder`},
		{"dot first", "./a", `"." folder`},
		{"dot middle", "a/./b", `"." folder`},
		{"double slash", "a//b", "empty folder"},
		{"trailing slash", "a/b/", "empty folder"},
		{"backslash", `a\b`, "backslash"},
		{"backslash dotdot", `..\..\etc`, "backslash"},
		{"NUL", "a\x00b", "U+0000"},
		{"tab", "a\tb", "U+0009"},
		{"newline", "a\nb", "U+000A"},
		{"carriage return", "a\rb", "U+000D"},
		{"escape", "a\x1b[31m", "U+001B"},
		{"unit separator", "a\x1f", "U+001F"},
		{"DEL", "a\x7fb", "U+007F"},
		{"C1 first", "a\u0080b", "U+0080"},
		{"C1 NEL", "a\u0085b", "U+0085"},
		{"C1 last", "a\u009fb", "U+009F"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateKey(tt.key)
			if !errors.Is(err, ErrInvalidKey) {
				t.Fatalf("ValidateKey(%q) = %v, want ErrInvalidKey", tt.key, err)
			}
			msg := err.Error()
			if !strings.Contains(msg, tt.want) {
				t.Errorf("message %q does not say %q", msg, tt.want)
			}
			if !strings.Contains(msg, "keys are relative paths") {
				t.Errorf("message %q does not say what is allowed", msg)
			}
		})
	}
}

func TestValidateKeyMessageIsShort(t *testing.T) {
	err := ValidateKey(strings.Repeat("é", 4000))
	if err == nil {
		t.Fatal("accepted an 8000-byte key")
	}
	if n := len(err.Error()); n > 400 {
		t.Errorf("message is %d bytes; a hostile key must not be echoed whole", n)
	}
	if !strings.Contains(err.Error(), "8000 bytes") {
		t.Errorf("message %q does not give the length", err)
	}
}

func TestParsePrefixes(t *testing.T) {
	tests := []struct {
		csv  string
		want []string
	}{
		{"", nil},
		{"   ", nil},
		{"listings", []string{"listings"}},
		{"listings/", []string{"listings"}},
		{" listings/ , uploads/tmp ", []string{"listings", "uploads/tmp"}},
		{"a,b/c/,d", []string{"a", "b/c", "d"}},
	}
	for _, tt := range tests {
		got, err := ParsePrefixes(tt.csv)
		if err != nil {
			t.Errorf("ParsePrefixes(%q): %v", tt.csv, err)
			continue
		}
		if strings.Join(got, "|") != strings.Join(tt.want, "|") || len(got) != len(tt.want) {
			t.Errorf("ParsePrefixes(%q) = %q, want %q", tt.csv, got, tt.want)
		}
	}
}

func TestParsePrefixesRejects(t *testing.T) {
	for _, csv := range []string{
		",",           // all entries empty must not mean "allow all"
		"a,",          // trailing comma
		"a,,b",        // empty middle entry
		" , a",        // blank entry
		"/",           // a bare slash is an empty folder
		"/listings",   // absolute
		"listings//",  // only one trailing slash is dropped
		"a//b",        // empty segment
		"../x",        // escape
		"a/./b",       // dot segment
		`a\b`,         // backslash
		"a\x00",       // control
		"a\u0085",     // C1 control
		"bad\xffutf8", // invalid UTF-8
		strings.Repeat("p", MaxKeyLen+1),
	} {
		p, err := ParsePrefixes(csv)
		if !errors.Is(err, ErrInvalidKey) {
			t.Errorf("ParsePrefixes(%q) = %q, %v; want ErrInvalidKey", csv, p, err)
		}
	}
}

func TestPrefixesAllows(t *testing.T) {
	p, err := ParsePrefixes("listings/,uploads/tmp")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		key  string
		want bool
	}{
		{"listings/a.jpg", true},
		{"listings/1/2/3.png", true},
		{"uploads/tmp/x", true},
		{"listings", false},         // the folder itself is not an object in it
		{"listings-evil/x", false},  // a name that merely starts the same
		{"listingsx/a.jpg", false},  // likewise
		{"uploads/tmpfile", false},  // likewise, one level down
		{"uploads/x", false},        // the parent of an allowed folder
		{"other/listings/a", false}, // the prefix must lead
		{"Listings/a.jpg", false},   // case matters, as in S3
		{"listings/../etc/passwd", false},
		{"listings//a", false},
		{"listings/a/", false},
		{"listings/a\x00", false},
		{"", false},
	}
	for _, tt := range tests {
		if got := p.Allows(tt.key); got != tt.want {
			t.Errorf("Allows(%q) = %v, want %v", tt.key, got, tt.want)
		}
	}
}

func TestPrefixesEmptyAllowsAnyValidKey(t *testing.T) {
	var p Prefixes
	for _, key := range []string{"a", "x/y/z.jpg", "listings-evil/x"} {
		if !p.Allows(key) {
			t.Errorf("empty Prefixes refused %q", key)
		}
	}
	for _, key := range []string{"", "../x", "/abs", "a//b"} {
		if p.Allows(key) {
			t.Errorf("empty Prefixes allowed invalid key %q", key)
		}
	}
}

func TestPrefixesString(t *testing.T) {
	p, err := ParsePrefixes("a/, b/c")
	if err != nil {
		t.Fatal(err)
	}
	if got := p.String(); got != "a,b/c" {
		t.Errorf("String() = %q", got)
	}
	again, err := ParsePrefixes(p.String())
	if err != nil || again.String() != p.String() {
		t.Errorf("String does not round-trip: %q, %v", again, err)
	}
}
