"""The service's store as the harness sees it: a folder (file://) it copies cases into and reads
staged images from."""

from __future__ import annotations

import shutil
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse


class FolderStore:
    """FolderStore is the folder of a file:// STORAGE_URL, the same one the service uses."""

    def __init__(self, url: str) -> None:
        u = urlparse(url)
        if u.scheme != "file" or u.netloc not in ("", "localhost") or not u.path.startswith("/"):
            raise ValueError(
                f"--store must be the service's file:///absolute/folder STORAGE_URL, got {url!r}"
            )
        self.root = Path(unquote(u.path))
        if not self.root.is_dir():
            raise ValueError(f"--store: {self.root} is not a folder")

    def _path(self, key: str) -> Path:
        parts = PurePosixPath(key).parts
        if not parts or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"key {key!r} is not a relative key")
        return self.root.joinpath(*parts)

    def put_file(self, key: str, source: Path) -> None:
        """Copies source to key, replacing what was there."""
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.copyfile(source, tmp)
        tmp.replace(dest)

    def read(self, key: str) -> bytes:
        """Returns the object at key."""
        return self._path(key).read_bytes()
