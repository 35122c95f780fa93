"""Files: atomic writes, strict JSON, hashing, checked downloads, a restricted unpickler (stdlib only).

Every writer in the suite goes through these: a file is either its old complete content or its new complete
content, never a half-written one (temp file in the same folder + `os.replace`, which is atomic on POSIX).
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import math
import os
import pickle
import shutil
import stat
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from tta_bench.kernel.errors import UserError


# --- atomic writes --------------------------------------------------------------------------------------
def write_atomic(path: Path, data: str | bytes) -> None:
    """Write `data` to `path` atomically (a crash leaves the old file or none, never a partial one)."""
    raw = data.encode() if isinstance(data, str) else data
    write_with(path, lambda f: f.write(raw), size=len(raw))


def write_with(path: Path, write: Callable[[IO[bytes]], Any], *, fsync: bool = True, size: int = 0) -> None:
    """Call `write(f)` on a temporary binary file beside `path`, fsync it, then rename it over `path`.

    `fsync=False` skips the flush to disk (for millions of small regenerable files, e.g. ImageNet-C JPEGs):
    the rename is still atomic, but after a power loss the file may be empty. A full disk, an exhausted quota or a
    read-only file system (ENOSPC, EDQUOT, EROFS) is a `NoSpace` naming the folder and about how much the write
    needs (`size`, the bytes it meant to write, when known); the temporary file is removed and `path` unchanged.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o666 & ~umask())  # mkstemp makes 0600: give the file the mode open() would (shared results)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        written = 0
        if tmp is not None:
            written = _size(Path(tmp))
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in NO_SPACE_ERRNOS:
            raise no_space(e, path.parent, max(size, written) + (64 << 10), str(path.name)) from None
        raise


def umask() -> int:
    """The process's umask, read without changing it (/proc/self/status on Linux; else set and restored at once)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# --- full disks -----------------------------------------------------------------------------------------
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


class NoSpace(UserError):
    """A write refused for lack of space, quota or writability (ENOSPC, EDQUOT, EROFS): one paragraph naming the
    folder, what was being written and about how much space it needs."""

    def __init__(self, err: int, folder: Path, need: int, what: str, hint: str = "") -> None:
        self.err, self.folder, self.need, self.what, self.hint = err, Path(folder), int(need), what, hint
        free = _free(self.folder)
        where = f"{self.folder}{f' ({hint})' if hint else ''}"
        if err == errno.EROFS:
            head = f"{where} is on a read-only file system: cannot write {what} (about {human_bytes(need)})."
            fix = "Choose a writable folder."
        else:
            why = "The disk quota is exhausted" if err == errno.EDQUOT else "No space is left"
            head = (
                f"{why} on the device holding {where} while writing {what}: it needs about {human_bytes(need)} "
                f"({'unknown' if free is None else human_bytes(free)} free now)."
            )
            fix = "Free space there or choose another folder, then run again."
        super().__init__(
            f"{head} {fix} Nothing completed was changed (earlier results and sites are intact) and this write's "
            "temporary files were removed."
        )

    def regarding(self, folder: Path, need: int = 0, hint: str | None = None) -> NoSpace:
        """The same failure told about `folder` (e.g. the run's --out rather than its temporary folder)."""
        return NoSpace(self.err, folder, max(self.need, need), self.what, self.hint if hint is None else hint)


def no_space(e: OSError, folder: Path, need: int, what: str, hint: str = "") -> NoSpace:
    """The NoSpace error for OSError `e` (errno ENOSPC, EDQUOT or EROFS) writing `what` under `folder`."""
    return NoSpace(e.errno or errno.ENOSPC, folder, need, what, hint)


def human_bytes(n: int | float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _free(folder: Path) -> int | None:
    for p in (folder, *folder.parents):
        try:
            return shutil.disk_usage(p).free
        except OSError:
            continue
    return None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def folder_bytes(folder: Path) -> int:
    """Bytes in the files under `folder` (0 when it does not exist)."""
    total = 0
    for root, _, files in os.walk(folder):
        total += sum(_size(Path(root) / f) for f in files)
    return total


def strict(obj: Any) -> Any:
    """`obj` made strict-JSON-ready: NaN/±inf -> None, tuples/sets -> lists, Paths and others -> str/number."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, dict):
        return {str(k): strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [strict(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        try:
            return strict(obj.item())
        except (TypeError, ValueError):
            pass
    if hasattr(obj, "tolist") and callable(obj.tolist):
        return strict(obj.tolist())
    return str(obj)


def dumps_json(obj: Any) -> str:
    """Strict JSON text (never NaN/Infinity: they become null), indented, newline-terminated."""
    return json.dumps(strict(obj), indent=2, allow_nan=False) + "\n"


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, dumps_json(obj))


def read_json(path: Path, what: str = "file") -> Any:
    """Parse a JSON file; a missing, truncated or invalid file is a UserError naming it."""
    try:
        return json.loads(Path(path).read_text(), parse_constant=_reject_constant)
    except FileNotFoundError:
        raise UserError(f"The {what} {path} does not exist.") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"The {what} {path} is not valid JSON ({e}); it is truncated or damaged.") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


# --- hashing --------------------------------------------------------------------------------------------
def hash_file(path: Path, algo: str = "sha256", chunk: int = 1 << 20) -> str:
    """Hex digest of a file's bytes (`algo`: any hashlib name, e.g. sha256 or md5)."""
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_text(text: str | bytes, n: int | None = 16) -> str:
    """sha256 hex of `text`, cut to `n` characters (None: whole)."""
    d = hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()
    return d if n is None else d[:n]


def hash_json(obj: Any, n: int | None = 16) -> str:
    """sha256 of the canonical JSON of `obj` (sorted keys; non-JSON values by str), cut to `n` characters."""
    return hash_text(json.dumps(obj, sort_keys=True, default=str), n)


FULL_HASH_BYTES = 1 << 20  # files up to this size are hashed whole
SAMPLE_BLOCKS, SAMPLE_BLOCK = 16, 1 << 16  # larger ones: 16 blocks of 64 KiB spread evenly, first and last included


def content_digest(path: Path, size: int | None = None) -> str:
    """16 hex of a file's content: the whole file up to FULL_HASH_BYTES, else its size and SAMPLE_BLOCKS blocks of
    SAMPLE_BLOCK bytes at evenly spaced offsets (first and last block included; 1 MiB read per file)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return _digest_fd(fd, os.fstat(fd).st_size if size is None else size)
    finally:
        os.close(fd)


def _digest_fd(fd: int, size: int) -> str:
    h = hashlib.sha256(f"{size}\0".encode())
    if size <= FULL_HASH_BYTES:
        h.update(os.read(fd, size + 1))
    else:
        for i in range(SAMPLE_BLOCKS):
            h.update(os.pread(fd, SAMPLE_BLOCK, (size - SAMPLE_BLOCK) * i // (SAMPLE_BLOCKS - 1)))
    return h.hexdigest()[:16]


def _file_entry(path: str | Path) -> tuple[int, str]:
    """(size, content digest) of a regular file; a device or other special file by its type (never read)."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        return st.st_size, f"mode-{stat.S_IFMT(st.st_mode)}"
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # unreadable: the run reading it will say so; its size and mtime meanwhile
        return st.st_size, f"unreadable-{st.st_mtime_ns}"
    try:
        size = os.fstat(fd).st_size
        return size, _digest_fd(fd, size)
    finally:
        os.close(fd)


def fingerprint_files(paths: Iterable[Path], root: Path | None = None) -> str:
    """Hash of (path relative to `root`, size, content digest) of every file; `root` None: their common folder.

    Content, not mtimes: a file rewritten in place is a new fingerprint even when its mtime was kept, and the same
    bytes under another folder (a copy, another mount) are the same fingerprint. Files up to FULL_HASH_BYTES are
    hashed whole; larger ones by a sample of their bytes (`content_digest`), so a change confined to the unsampled
    bytes of a large file is missed. Anything but a regular file (a device) counts by its type and size only.
    (CIFAR-10's 10,000 test JPEGs, 40 MB: 0.25 s with the files in the page cache.)
    """
    names = sorted(map(str, paths))  # strings: sorting 10,000 Paths costs more than hashing their files
    if root is None and names:
        root = Path(os.path.commonpath([os.path.dirname(n) for n in names]))
    prefix = str(root).rstrip(os.sep) + os.sep if root is not None else None
    h = hashlib.sha256()
    for text in names:
        if prefix is not None and text.startswith(prefix):
            name = text[len(prefix) :]
        else:
            try:
                name = str(Path(text).relative_to(root)) if root is not None else os.path.basename(text)
            except ValueError:
                name = text
        size, digest = _file_entry(text)
        h.update(f"{name}\0{size}\0{digest}\n".encode())
    return h.hexdigest()[:16]


# --- verified cache entries -----------------------------------------------------------------------------------
def seal_path(entry: Path) -> Path:
    """The record beside cache entry `entry`: `<entry>.json` holding its key and the sha256 of its bytes."""
    entry = Path(entry)
    return entry.with_name(entry.name + ".json")


def _canonical(key: Any) -> Any:
    return json.loads(json.dumps(key, sort_keys=True, default=str))


def write_cache_entry(entry: Path, data: bytes, key: Any, extra: dict[str, Any] | None = None) -> None:
    """Write cache entry `entry` (atomically) and then its record (`seal_path`: key, sha256, size, `extra`).

    A crash between the two leaves an entry whose record does not match: it is rebuilt, never used."""
    entry = Path(entry)
    discard_cache_entry(entry)
    write_atomic(entry, data)
    record = {"key": _canonical(key), "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), **(extra or {})}
    write_json(seal_path(entry), record)


def read_cache_entry(entry: Path, key: Any) -> tuple[bytes | None, str | None, dict[str, Any]]:
    """(bytes, None, record) of a cache entry made for `key` whose bytes match its record; (None, None, {}) when
    there is none; (None, problem, {}) when it cannot be trusted: not a regular file (a directory), no or a damaged
    record, made for another key (another recipe, model or data), or content that is not what was recorded
    (replaced, truncated). The bytes are read once and checked in memory, so what is returned is what was checked."""
    entry = Path(entry)
    if not entry.exists() and not entry.is_symlink():
        return None, None, {}
    if not entry.is_file():
        return None, "is not a regular file (a directory or a broken link)", {}
    try:
        record = json.loads(seal_path(entry).read_text())
    except FileNotFoundError:
        return None, f"has no record of its key and digest ({seal_path(entry).name})", {}
    except (OSError, ValueError, UnicodeDecodeError):
        return None, f"has a damaged record ({seal_path(entry).name})", {}
    if not isinstance(record, dict) or not isinstance(record.get("sha256"), str):
        return None, f"has a damaged record ({seal_path(entry).name})", {}
    if record.get("key") != _canonical(key):
        return None, "was made for another key (another recipe, model, data or options)", {}
    try:
        data = entry.read_bytes()
    except OSError as e:
        return None, f"is unreadable ({e.strerror})", {}
    if hashlib.sha256(data).hexdigest() != record["sha256"]:
        return None, "does not hold the bytes its record names (replaced, truncated or damaged)", {}
    return data, None, record


def discard_cache_entry(entry: Path) -> None:
    """Remove cache entry `entry` (a file, link or directory at its name) and its record; a UserError naming it
    when it cannot be removed."""
    for p in (Path(entry), seal_path(entry)):
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()
        except OSError as e:
            raise UserError(
                f"The cache entry {p} cannot be trusted and cannot be removed ({e.strerror}). Remove it by hand, or "
                "set $TTA_BENCH_CACHE to another folder."
            ) from None


# --- downloads ------------------------------------------------------------------------------------------
def download(
    url: str, dest: Path, *, sha256: str | None = None, md5: str | None = None, what: str = "file", hint: str = ""
) -> Path:
    """Return `dest`, downloading `url` there first if missing; verify the checksum (a hex prefix is enough).

    Offline or on a failed download: a UserError naming the file to place at `dest` by hand (`hint` adds
    where else the file may come from). A checksum mismatch names the file to delete.
    """
    dest = Path(dest)
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                write_with(dest, lambda f: _copy(r, f))
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            raise UserError(
                f"Could not download the {what} from {url} ({e}). If this machine is offline, download it "
                f"elsewhere and place it at {dest}.{(' ' + hint) if hint else ''}"
            ) from None
    for algo, want in (("sha256", sha256), ("md5", md5)):
        if want:
            got = hash_file(dest, algo)
            if not got.startswith(want.lower()):
                raise UserError(
                    f"Checksum mismatch for {dest}: {algo} {got[:16]}..., expected {want[:16]}.... The file is "
                    f"corrupt, truncated or a different release; delete it and download again from {url}."
                )
    return dest


def _copy(src: IO[bytes], dst: IO[bytes]) -> None:
    while block := src.read(1 << 20):
        dst.write(block)


# --- restricted unpickling --------------------------------------------------------------------------------
# What the dataset pickles this suite reads (CIFAR-10/100 python batches, their meta files) hold: dicts,
# lists, bytes, str, ints, and numpy arrays. Nothing else may be constructed (no code runs on load).
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("builtins", "dict"),
    ("builtins", "list"),
    ("builtins", "bytes"),
    ("builtins", "str"),
    ("builtins", "int"),
    ("builtins", "float"),
    ("builtins", "tuple"),
    ("builtins", "bytearray"),
    ("_codecs", "encode"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a dataset pickle")


def safe_unpickle(path: Path, encoding: str = "bytes") -> Any:
    """Load a dataset pickle allowing only plain data (dicts, lists, bytes, numbers, numpy arrays).

    A pickle that would construct anything else (e.g. call `os.system`) or is truncated is a UserError
    naming the file: loading never executes code from the file.
    """
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(io.BufferedReader(f), encoding=encoding).load()
    except pickle.UnpicklingError as e:
        raise UserError(
            f"Refusing to load {path}: {e}. Dataset pickles hold only arrays, lists and dicts; this file is damaged "
            "or was not made by the dataset's publisher. Replace it with the original download."
        ) from None
    except (EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError, KeyError) as e:
        raise UserError(
            f"Cannot read {path}: it is truncated or not a dataset pickle ({type(e).__name__}: {e}). Replace it with "
            "the original download."
        ) from None


CIFAR_LAYOUT = (
    "torchvision's CIFAR python pickles: cifar-10-batches-py/{data_batch_1..5,test_batch} or "
    "cifar-100-python/{train,test,meta} (from cifar-10-python.tar.gz / cifar-100-python.tar.gz)"
)


def read_cifar_pickle(path: Path, label_key: bytes | None = None) -> tuple[Any, list[int]]:
    """Images and labels of one CIFAR-10/100 python pickle (`test_batch`, `data_batch_k`, `train`, `test`).

    Returns `(images, labels)`: images the pickle's uint8 array viewed as (N, 3, 32, 32) (CHW, the published
    row layout), labels a list of ints (`label_key`: b"labels" for CIFAR-10, b"fine_labels" for CIFAR-100;
    None takes whichever is present). Loaded with `safe_unpickle` (no code runs); anything that is not such a
    pickle is a UserError naming the file and the expected layout.
    """
    d = safe_unpickle(path)
    keys = (label_key,) if label_key is not None else (b"labels", b"fine_labels")
    key = next((k for k in keys if isinstance(d, dict) and k in d), None)
    data = d.get(b"data") if isinstance(d, dict) else None
    shape = getattr(data, "shape", None)
    if key is None or shape is None or len(shape) != 2 or shape[1] != 3072 or str(data.dtype) != "uint8":
        found = sorted(map(repr, d)) if isinstance(d, dict) else type(d).__name__
        raise UserError(
            f"{path} is not a torchvision CIFAR pickle (found {found}{'' if shape is None else f', data {shape}'}); "
            f"expected a dict with b'data' (N, 3072) uint8 and {' or '.join(map(repr, keys))}. The layout is "
            f"{CIFAR_LAYOUT}; re-extract the archive."
        )
    raw = d[key]
    bad = [v for v in raw if not isinstance(v, int) or isinstance(v, bool)] if isinstance(raw, (list, tuple)) else [raw]
    if bad:
        bad = bad[0]
        raise UserError(
            f"{path}: {key!r} must be a list of integer class ids (labels), found {bad!r:.40} "
            f"({type(bad).__name__}); the file is damaged or not a CIFAR pickle. Re-extract the archive."
        )
    labels = list(raw)
    if len(labels) != shape[0]:
        raise UserError(f"{path}: {shape[0]} images but {len(labels)} labels; the file is truncated, re-extract it.")
    return data.reshape(-1, 3, 32, 32), labels


def read_cifar_names(path: Path, key: bytes = b"fine_label_names") -> list[str]:
    """Class names from a CIFAR `meta` / `batches.meta` pickle (b"label_names" for CIFAR-10)."""
    d = safe_unpickle(path)
    if not isinstance(d, dict) or key not in d:
        raise UserError(f"{path} is not a CIFAR meta pickle (no {key!r}); the layout is {CIFAR_LAYOUT}.")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in d[key]]


def is_hex_id(text: object, length: int | None = None) -> bool:
    """True when `text` is a lowercase hex string (optionally of exactly `length` characters): safe as a file name."""
    return (
        isinstance(text, str)
        and bool(text)
        and all(c in "0123456789abcdef" for c in text)
        and (length is None or len(text) == length)
    )
