package managed

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
)

// Token is a provider API token. Its String, GoString and LogValue methods
// hide the value, so an Options printed with %+v or logged by slog does not
// leak it; only the Authorization header carries the real value.
type Token string

const redacted = "[redacted]"

// String returns a placeholder, never the token.
func (Token) String() string { return redacted }

// GoString returns a placeholder, never the token.
func (Token) GoString() string { return redacted }

// LogValue returns a placeholder, never the token.
func (Token) LogValue() slog.Value { return slog.StringValue(redacted) }

// maxTokenFileBytes bounds the token file; a token is well under a kilobyte.
const maxTokenFileBytes = 16 << 10

// ReadToken returns the token from value (an environment variable's value)
// or, when value is empty, from the file at path (a mounted secret), with
// surrounding white space removed. Setting both is refused, as is neither.
// Errors name the file, never its content.
func ReadToken(value, path string) (Token, error) {
	switch {
	case value != "" && path != "":
		return "", errors.New("set the provider token either directly or as a file, not both")
	case value != "":
		return Token(strings.TrimSpace(value)), nil
	case path == "":
		return "", errors.New("the provider token is missing")
	}
	st, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	if st.Size() > maxTokenFileBytes {
		return "", fmt.Errorf("token file %s is larger than %d bytes", path, maxTokenFileBytes)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	t := strings.TrimSpace(string(b))
	if t == "" {
		return "", fmt.Errorf("token file %s is empty", path)
	}
	return Token(t), nil
}
