"""The kernel: what every part of the suite shares, with no third-party import and no import of the rest.

errors (UserError and name hints), options (`--set` parsing and type coercion), the one Registry, and files
(atomic writes, strict JSON, hashing, content fingerprints, verified cache entries, full disks, checked downloads,
a restricted unpickler), atomic (folders built aside and swapped in, owners and leases, locks), progress (of long
loops: a bar on terminals once the harness installs one, plain lines otherwise). `methods/`, `corruptions/`
and `leaderboard/` import from `tta_bench` only this package (and the leaderboard the run-folder schema).
"""

from __future__ import annotations

from tta_bench.kernel.errors import UserError, close_matches, unknown_name
from tta_bench.kernel.files import (
    FULL_HASH_BYTES,
    SAMPLE_BLOCK,
    SAMPLE_BLOCKS,
    NoSpace,
    content_digest,
    discard_cache_entry,
    download,
    dumps_json,
    fingerprint_files,
    folder_bytes,
    hash_file,
    hash_json,
    hash_text,
    is_hex_id,
    read_cache_entry,
    read_cifar_names,
    read_cifar_pickle,
    read_json,
    safe_unpickle,
    seal_path,
    strict,
    write_atomic,
    write_cache_entry,
    write_json,
    write_with,
)
from tta_bench.kernel.options import SCOPES, check_options, coerce, parse_sets, parse_value
from tta_bench.kernel.progressbar import progress
from tta_bench.kernel.registry import Entry, Registry, declared_options

__all__ = [
    "UserError",
    "close_matches",
    "unknown_name",
    "FULL_HASH_BYTES",
    "SAMPLE_BLOCK",
    "SAMPLE_BLOCKS",
    "NoSpace",
    "content_digest",
    "discard_cache_entry",
    "folder_bytes",
    "read_cache_entry",
    "seal_path",
    "write_cache_entry",
    "download",
    "dumps_json",
    "fingerprint_files",
    "hash_file",
    "hash_json",
    "hash_text",
    "is_hex_id",
    "read_cifar_names",
    "read_cifar_pickle",
    "read_json",
    "safe_unpickle",
    "strict",
    "write_atomic",
    "write_json",
    "write_with",
    "SCOPES",
    "check_options",
    "coerce",
    "parse_sets",
    "parse_value",
    "Entry",
    "Registry",
    "declared_options",
    "progress",
]

from tta_bench.kernel import atomic  # noqa: E402  (after files, which it uses)

__all__ += ["atomic"]
