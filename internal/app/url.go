package app

import (
	"net/url"
	"strings"
)

// redactURL drops any user information from a storage URL before it is
// logged.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable)"
	}
	u.User = nil
	return u.String()
}

// localDir returns the folder of a file:// storage URL.
func localDir(raw string) (string, bool) {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "file" {
		return "", false
	}
	return strings.TrimSuffix(u.Path, "/"), true
}
