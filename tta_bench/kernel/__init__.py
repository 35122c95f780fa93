"""The kernel: what every part of the suite shares, with no third-party import and no import of the rest.

errors (UserError and name hints), options (`--set` parsing and type coercion), the one Registry, and files
(atomic writes, strict JSON, hashing, checked downloads, a restricted unpickler), progress (of long loops: a bar on
terminals once the harness installs one, plain lines otherwise). `methods/`, `corruptions/`
and `leaderboard/` import from `tta_bench` only this package (and the leaderboard the run-folder schema).
"""

from __future__ import annotations

from tta_bench.kernel.errors import UserError, close_matches, unknown_name
from tta_bench.kernel.files import (
    download,
    dumps_json,
    fingerprint_files,
    hash_file,
    hash_json,
    hash_text,
    is_hex_id,
    read_cifar_names,
    read_cifar_pickle,
    read_json,
    safe_unpickle,
    strict,
    write_atomic,
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
