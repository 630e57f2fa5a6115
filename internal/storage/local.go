package storage

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"syscall"
)

// Local is a [Store] kept in a folder on the local disk. Keys map to files
// under the folder, with '/' as the separator.
//
// All access goes through an [os.Root], so no key reaches outside the
// folder: not through "..", which [ValidateKey] rejects anyway, and not
// through a symbolic link placed inside the folder that points outside it.
// Symbolic links that stay inside the folder are followed.
//
// A process killed in the middle of a Put can leave a temporary file, named
// with the prefix ".vstage-tmp-", beside the object; it is never visible
// under the object's key and may be removed when no Put is running.
type Local struct {
	root *os.Root
}

var _ Store = (*Local)(nil)

const (
	dirPerm  = 0o750
	filePerm = 0o640
	// tempPrefix starts with a dot so that temporary files stay out of
	// casual listings; the random tail keeps concurrent writers apart.
	tempPrefix = ".vstage-tmp-"
)

// NewLocal returns a store kept in the folder dir, creating it with mode
// 0o750 if missing.
func NewLocal(dir string) (*Local, error) {
	if err := os.MkdirAll(dir, dirPerm); err != nil {
		return nil, fmt.Errorf("storage: create local folder: %w", err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("storage: open local folder: %w", err)
	}
	return &Local{root: root}, nil
}

// Get implements [Store]. It refuses a file larger than maxBytes from its
// size, before reading any of it.
func (l *Local) Get(ctx context.Context, key string, maxBytes int64) ([]byte, error) {
	if err := checkGet(ctx, key, maxBytes); err != nil {
		return nil, opError("get", key, err)
	}
	// O_NONBLOCK keeps a FIFO planted under the root from blocking the open
	// forever; it changes nothing for a regular file.
	f, err := l.root.OpenFile(key, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, opError("get", key, localFault(notFound(err)))
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, opError("get", key, err)
	}
	switch {
	case fi.IsDir():
		return nil, opError("get", key, fmt.Errorf("%w: it is a folder", ErrNotFound))
	case !fi.Mode().IsRegular():
		return nil, opError("get", key, fmt.Errorf("%w (%v)", ErrNotObject, fi.Mode().Type()))
	case fi.Size() > maxBytes:
		return nil, opError("get", key, fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, fi.Size(), maxBytes))
	}
	// The file may grow between Stat and the read; the limit still holds.
	data, err := readLimited(f, fi.Size(), maxBytes)
	if err != nil {
		return nil, opError("get", key, err)
	}
	return data, nil
}

// Put implements [Store]. It writes a temporary file in the key's folder,
// syncs it and renames it over the key, so that a reader sees the old
// content or the new, and a crash leaves no partial object. With
// opts.IfAbsent the temporary file is hard-linked to the key instead, which
// fails when the key exists, so the object appears whole or not at all.
// opts.Ephemeral skips the syncs. Missing parent folders are created with
// mode 0o750. Put refuses to replace a folder or a symbolic link. The
// metadata in opts is ignored.
func (l *Local) Put(ctx context.Context, key string, data []byte, opts PutOptions) error {
	if err := ValidateKey(key); err != nil {
		return opError("put", key, err)
	}
	if err := ctx.Err(); err != nil {
		return opError("put", key, err)
	}
	dir := path.Dir(key)
	if dir != "." {
		if err := l.root.MkdirAll(dir, dirPerm); err != nil {
			return opError("put", key, localFault(err))
		}
	}
	// Rename would replace a link rather than follow it, so this is not an
	// escape; refusing keeps a planted link from being silently overwritten.
	if fi, err := l.root.Lstat(key); err == nil && !fi.Mode().IsRegular() {
		return opError("put", key, fmt.Errorf("existing entry: %w (%v)", ErrNotObject, fi.Mode().Type()))
	}
	tmp := path.Join(dir, tempPrefix+rand.Text())
	if err := l.writeTemp(ctx, tmp, data, !opts.Ephemeral); err != nil {
		return opError("put", key, localFault(err))
	}
	if err := l.publish(tmp, key, opts.IfAbsent); err != nil {
		return opError("put", key, localFault(err))
	}
	if opts.Ephemeral {
		return nil
	}
	// Without syncing the folder, a power cut could lose the rename even
	// though the data itself reached the disk.
	if err := l.syncDir(dir); err != nil {
		return opError("put", key, err)
	}
	return nil
}

// publish moves the finished temporary file tmp to key: a rename, which
// replaces any object there, or with ifAbsent a hard link, which fails when
// key exists. tmp is gone afterwards either way.
func (l *Local) publish(tmp, key string, ifAbsent bool) error {
	if !ifAbsent {
		if err := l.root.Rename(tmp, key); err != nil {
			_ = l.root.Remove(tmp)
			return err
		}
		return nil
	}
	err := l.root.Link(tmp, key)
	_ = l.root.Remove(tmp)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%w: %w", ErrExists, err)
	}
	return err
}

// writeTemp writes data to the new file tmp and, when sync is set, syncs
// it. On failure it removes the file.
func (l *Local) writeTemp(ctx context.Context, tmp string, data []byte, sync bool) (err error) {
	f, err := l.root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, filePerm)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = l.root.Remove(tmp)
		}
	}()
	if _, err := f.Write(data); err != nil {
		return err
	}
	if sync {
		if err := f.Sync(); err != nil {
			return err
		}
	}
	// A cancelled caller has given up on the result; do not publish it.
	if err := ctx.Err(); err != nil {
		return err
	}
	return f.Close()
}

func (l *Local) syncDir(dir string) error {
	d, err := l.root.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Delete implements [Store]. It refuses to remove anything but a regular
// file, so a key cannot be used to remove a folder or a planted link.
func (l *Local) Delete(ctx context.Context, key string) error {
	if err := ValidateKey(key); err != nil {
		return opError("delete", key, err)
	}
	if err := ctx.Err(); err != nil {
		return opError("delete", key, err)
	}
	fi, err := l.root.Lstat(key)
	switch {
	case errors.Is(notFound(err), ErrNotFound):
		return nil
	case err != nil:
		return opError("delete", key, localFault(err))
	case !fi.Mode().IsRegular():
		return opError("delete", key, fmt.Errorf("existing entry: %w (%v)", ErrNotObject, fi.Mode().Type()))
	}
	if err := l.root.Remove(key); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return opError("delete", key, localFault(err))
	}
	return nil
}

// Close closes the store's folder handle.
func (l *Local) Close() error {
	return l.root.Close()
}

// notFound adds ErrNotFound to the errors that mean "no such object":
// a missing file, or a missing folder on the way to it.
func notFound(err error) error {
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	}
	return err
}

// opError wraps err with the operation and the key. Key errors already quote
// the key, so it is not repeated.
func opError(op, key string, err error) error {
	if errors.Is(err, ErrInvalidKey) {
		return fmt.Errorf("storage: %s: %w", op, err)
	}
	return fmt.Errorf("storage: %s %s: %w", op, quoteKey(key), err)
}
