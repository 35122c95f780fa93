"""DomainNet-126 (tta_bench/data/domainnet126.py) on generated stand-ins of its layout: images under
<root>/<domain>/<class>/ and the suite's `<domain>_list.txt` lists; the streamed domains and their order, the
clean/source split from the source domain, bad lists and missing images, and the checked list download."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tta_bench.data import domainnet126 as dn
from tta_bench.kernel import UserError
from tta_bench.streams import build_stream, stream_options

CLASSES = {0: "aircraft_carrier", 5: "axe", 125: "zebra"}


def write_domainnet(root: Path, per_domain: int = 6, lists: Path | None = None) -> dict[str, list[tuple[str, int]]]:
    """Images and lists (labels cycling over three classes, list order not sorted by class or name)."""
    lists = lists or root / "domainnet126_lists"
    lists.mkdir(parents=True, exist_ok=True)
    out = {}
    rng = np.random.default_rng(0)
    for d in dn.DOMAINS:
        rows = []
        for i in range(per_domain):
            label = list(CLASSES)[i % 3]
            rel = f"{d}/{CLASSES[label]}/{d}_{label:03d}_{i:06d}.jpg"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(root / rel)
            rows.append((rel, label))
        rows = rows[::-1]  # the list's order, not the folder's
        (lists / f"{d}_list.txt").write_text("".join(f"{r} {lab}\n" for r, lab in rows))
        out[d] = rows
    return out


def build(root: Path, **opts):
    return build_stream("domainnet126", root.parent, 0, {**stream_options("domainnet126"), "root": str(root), **opts})


def clean_split_standin(tmp: Path) -> dict:
    """tests/test_clean_splits.py's stand-in (EncodedFiles: identities are the file paths)."""
    write_domainnet(tmp / "dn", per_domain=24)
    return {"opts": {"root": str(tmp / "dn"), "clean_size": 10, "download": False}}


def test_domains_lists_and_split(tmp_path):
    rows = write_domainnet(tmp_path / "dn")
    spec = build(tmp_path / "dn", clean_size=2, download=False)
    assert spec.domain_names == ["clipart", "painting", "sketch"] and spec.num_classes == 126
    for d in spec.domain_names:
        ds = spec.load(d, None, None)
        assert [str(f.relative_to(tmp_path / "dn")) for f in ds.files] == [r for r, _ in rows[d]]
        assert ds.targets.tolist() == [lab for _, lab in rows[d]]
    assert len(spec.load("painting", None, 4)) == 4
    x, y = spec.load("sketch", None, None)[0]
    assert x.shape == (3, 224, 224) and y == rows["sketch"][0][1]
    real = [r for r, _ in rows["real"]]
    assert [str(f.relative_to(tmp_path / "dn")) for f in spec.clean.files] == real[:2]
    assert [str(f.relative_to(tmp_path / "dn")) for f in spec.source.files] == real[2:]
    assert spec.class_names[125] == "zebra" and spec.class_names[5] == "axe" and spec.class_names[1] == "class 1"
    other = build(tmp_path / "dn", source_domain="sketch", download=False)
    assert other.domain_names == ["clipart", "painting", "real"]
    assert other.source_fingerprint != spec.source_fingerprint


@pytest.mark.parametrize(
    "line, words",
    [
        ("clipart/zebra/a.jpg", "line 1"),
        ("clipart/zebra/a.jpg 126", "label 0..125"),
        ("painting/zebra/a.jpg 3", "clipart/<class>"),
        ("clipart/../../etc/passwd 3", "line 1"),
        ("clipart/zebra/missing.jpg 3", "missing under"),
    ],
)
def test_bad_lists(tmp_path, line, words):
    write_domainnet(tmp_path / "dn")
    (tmp_path / "dn" / "domainnet126_lists" / "clipart_list.txt").write_text(line + "\n")
    with pytest.raises(UserError, match=words):
        build(tmp_path / "dn", download=False)


def test_missing_parts_and_options(tmp_path):
    with pytest.raises(UserError, match="not found"):
        build(tmp_path / "nowhere", download=False)
    write_domainnet(tmp_path / "dn")
    (tmp_path / "dn" / "domainnet126_lists" / "sketch_list.txt").unlink()
    with pytest.raises(UserError, match="sketch_list.txt is missing"):
        build(tmp_path / "dn", download=False)
    with pytest.raises(UserError, match="source_domain"):
        build(tmp_path / "dn", source_domain="quickdraw", download=False)


def test_checked_list_download(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    write_domainnet(tmp_path / "dn", lists=mirror)
    sums = {d: hashlib.sha256((mirror / f"{d}_list.txt").read_bytes()).hexdigest() for d in dn.DOMAINS}
    monkeypatch.setattr(dn, "LIST_URL", mirror.as_uri() + "/{domain}_list.txt")
    monkeypatch.setattr(dn, "LIST_SHA256", sums)
    spec = build(tmp_path / "dn", lists=str(tmp_path / "got"))
    assert sorted(p.name for p in (tmp_path / "got").iterdir()) == [f"{d}_list.txt" for d in dn.DOMAINS]
    assert len(spec.load("clipart", None, None)) == 6
    monkeypatch.setattr(dn, "LIST_SHA256", {**sums, "real": "0" * 64})
    with pytest.raises(UserError, match="Checksum mismatch"):
        build(tmp_path / "dn", lists=str(tmp_path / "got2"))


def test_pinned_checks_describe_the_official_lists():
    assert set(dn.LIST_SHA256) == set(dn.DOMAINS) == set(dn.LIST_LINES)
    assert all(len(h) == 64 and int(h, 16) >= 0 for h in dn.LIST_SHA256.values())
    assert dn.SUITE_COMMIT in dn.LIST_URL and len(dn.SUITE_COMMIT) == 40
