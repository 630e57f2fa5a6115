package storage

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// MaxKeyLen is the longest key accepted, in bytes, as in S3.
const MaxKeyLen = 1024

// keyRules is appended to every key error so that the caller learns what is
// allowed, not only what was wrong.
const keyRules = "keys are relative paths of 1 to 1024 bytes of UTF-8, " +
	"folders separated by single '/', with no '.' or '..' folder, no backslash and no control characters"

// ValidateKey reports whether key is acceptable as an object key. The error,
// if any, wraps [ErrInvalidKey] and says what is wrong and what is allowed.
//
// A valid key is relative (no leading '/'), 1 to [MaxKeyLen] bytes of valid
// UTF-8, made of non-empty segments separated by '/' (so no "//" and no
// trailing '/'), none of them "." or "..", with no backslash and no control
// character (C0, DEL or C1). These rules make a key mean the same object on
// S3 and on a local disk, and keep it inside the local store's root.
func ValidateKey(key string) error {
	if problem := keyProblem(key); problem != "" {
		return fmt.Errorf("%w %s: %s; %s", ErrInvalidKey, quoteKey(key), problem, keyRules)
	}
	return nil
}

// keyProblem returns what is wrong with key, or "" if nothing is.
func keyProblem(key string) string {
	switch {
	case key == "":
		return "it is empty"
	case len(key) > MaxKeyLen:
		return fmt.Sprintf("it is %d bytes long", len(key))
	case !utf8.ValidString(key):
		return "it is not valid UTF-8"
	case key[0] == '/':
		return "it starts with '/'"
	}
	for i, r := range key {
		switch {
		case r == '\\':
			return fmt.Sprintf("it has a backslash at byte %d", i)
		case isControl(r):
			return fmt.Sprintf("it has control character %U at byte %d", r, i)
		}
	}
	for seg := range strings.SplitSeq(key, "/") {
		switch seg {
		case "":
			return "it has an empty folder name ('//' or a trailing '/')"
		case ".", "..":
			return fmt.Sprintf("it has a %q folder", seg)
		}
	}
	return ""
}

// isControl reports whether r is a C0 control, DEL or a C1 control. It is
// narrower than unicode.IsControl on purpose: the rule must not change with
// the Unicode tables of the Go release.
func isControl(r rune) bool {
	return r < 0x20 || (r >= 0x7f && r <= 0x9f)
}

// quoteKey quotes key for an error message, shortened so that a megabyte of
// hostile input does not end up in a log line.
func quoteKey(key string) string {
	const max = 64
	if len(key) <= max {
		return fmt.Sprintf("%q", key)
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(key[cut]) {
		cut--
	}
	return fmt.Sprintf("%q… (%d bytes)", key[:cut], len(key))
}

// asciiBlank is what ParsePrefixes trims. Unicode spaces such as NEL are
// left in place, so that ValidateKey sees and rejects them.
const asciiBlank = " \t"

// Prefixes is the list of folders that keys must be under, as parsed from
// ALLOWED_PREFIXES by [ParsePrefixes]. Each entry is stored without a
// trailing '/'. An empty list allows every valid key.
type Prefixes []string

// ParsePrefixes parses a comma-separated list of folder paths such as
// "listings/, uploads/tmp". Spaces and tabs around an entry and one
// trailing '/' are ignored; each entry must otherwise be a valid key (see
// [ValidateKey]). An empty or all-blank string yields an empty list, which
// allows any key.
//
// An empty entry, as in "a,,b" or "a,", is an error rather than skipped, so
// that a typo cannot turn a restrictive list into an empty, permissive one.
func ParsePrefixes(csv string) (Prefixes, error) {
	if strings.Trim(csv, asciiBlank) == "" {
		return nil, nil
	}
	var out Prefixes
	for i, entry := range strings.Split(csv, ",") {
		p := strings.Trim(entry, asciiBlank)
		p = strings.TrimSuffix(p, "/")
		if p == "" {
			return nil, fmt.Errorf("%w: allowed prefix %d of %s is empty; want comma-separated folder paths such as listings/,uploads/",
				ErrInvalidKey, i+1, quoteKey(csv))
		}
		if err := ValidateKey(p); err != nil {
			return nil, fmt.Errorf("allowed prefix %d: %w", i+1, err)
		}
		out = append(out, p)
	}
	return out, nil
}

// Allows reports whether key is a valid key (see [ValidateKey]) inside one
// of the folders in p. A key is inside folder "listings" when it starts with
// "listings/", so "listings-evil/x" and "listings" itself are not. An empty
// p allows every valid key.
func (p Prefixes) Allows(key string) bool {
	if ValidateKey(key) != nil {
		return false
	}
	if len(p) == 0 {
		return true
	}
	for _, pre := range p {
		if len(key) > len(pre) && key[len(pre)] == '/' && strings.HasPrefix(key, pre) {
			return true
		}
	}
	return false
}

// String returns the list as ParsePrefixes accepts it, for logs.
func (p Prefixes) String() string {
	return strings.Join(p, ",")
}
