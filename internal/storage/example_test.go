package storage_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/vstage/vstage/internal/storage"
)

func ExampleOpen() {
	dir, err := os.MkdirTemp("", "vstage-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	ctx := context.Background()
	st, err := storage.Open(ctx, "file://"+filepath.ToSlash(dir), storage.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer st.Close()

	err = st.Put(ctx, "listings/42/note.txt", []byte("hello"), storage.PutOptions{ContentType: "text/plain"})
	if err != nil {
		log.Fatal(err)
	}
	data, err := st.Get(ctx, "listings/42/note.txt", 1<<20)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s\n", data)

	_, err = st.Get(ctx, "listings/42/missing.txt", 1<<20)
	fmt.Println(errors.Is(err, storage.ErrNotFound))

	_, err = st.Get(ctx, "../etc/passwd", 1<<20)
	fmt.Println(errors.Is(err, storage.ErrInvalidKey))
	// Output:
	// hello
	// true
	// true
}
