package storage

import (
	"errors"
	"fmt"
	"io/fs"
	"syscall"
)

// Errors for conditions of a key, or of what lies under it, that no retry
// can change. Like the others, they are wrapped with the key and the
// operation; test for them with [errors.Is]. Any other error from a store
// may be transient.
var (
	// ErrOutsideStore means that the key leads out of the store, as through
	// a symbolic link in a local folder that points elsewhere.
	ErrOutsideStore = errors.New("key leads outside the store")
	// ErrNotObject means that what lies under the key, or on the way to it,
	// is not a regular file: a FIFO, a device, a socket, a looping link, or
	// a file where a folder must be.
	ErrNotObject = errors.New("not a regular file")
	// ErrNameTooLong means that a segment of the key is longer than the
	// store's file system allows (usually 255 bytes).
	ErrNameTooLong = errors.New("name too long for the store")
)

// localFault adds the sentinels above to an error from an operation under
// the local store's root. Errors it does not recognise are returned as they
// came: they may be transient.
func localFault(err error) error {
	switch {
	case err == nil, errors.Is(err, ErrNotFound), errors.Is(err, ErrNotObject), errors.Is(err, ErrExists):
		return err
	case errors.Is(err, syscall.ENAMETOOLONG):
		return fmt.Errorf("%w: %w", ErrNameTooLong, err)
	case errors.Is(err, syscall.ELOOP), errors.Is(err, syscall.ENOTDIR), errors.Is(err, syscall.EISDIR),
		errors.Is(err, syscall.EEXIST): // from MkdirAll, meeting a file where a folder must be
		return fmt.Errorf("%w: %w", ErrNotObject, err)
	case escapesRoot(err):
		return fmt.Errorf("%w: %w", ErrOutsideStore, err)
	}
	return err
}

// escapesRoot reports whether err is os.Root's refusal of a path that
// leaves the root. The os package exports no sentinel for it; it is the one
// refusal a root operation makes of its own, outside the system's error
// numbers, that a valid key can meet (the others need an empty name or a
// bad file mode, which never reach the root from here).
func escapesRoot(err error) bool {
	var (
		pe    *fs.PathError
		errno syscall.Errno
	)
	return errors.As(err, &pe) && !errors.As(pe.Err, &errno)
}
