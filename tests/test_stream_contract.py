"""The stream contract declared once: registration metadata in the registry entry, the run-id inputs as typed
StreamSpec fields (no free-form dict), the fast data path as a checked Protocol, the settings in one table."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from tta_bench import config, presets, settings
from tta_bench import streams as st
from tta_bench.models import MODELS


def _load(domain, severity, limit):
    return TensorDataset(torch.zeros(4, 3, 8, 8), torch.zeros(4, dtype=torch.long))


def test_run_id_inputs_are_required_typed_fields() -> None:
    with pytest.raises(TypeError, match="data_fingerprint"):
        st.StreamSpec("x", ["d"], _load, 2, source_fingerprint=None)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="source_fingerprint"):
        st.StreamSpec("x", ["d"], _load, 2, data_fingerprint="abc")  # type: ignore[call-arg]
    spec = st.StreamSpec("x", ["d"], _load, 2, data_fingerprint="abc", source_fingerprint=None)
    assert spec.data_fingerprint == "abc" and "data_fingerprint" not in spec.info
    with pytest.raises(TypeError):  # everything after num_classes is keyword-only: no silent positional shift
        st.StreamSpec("x", ["d"], _load, 2, "small-cnn", data_fingerprint=None, source_fingerprint=None)


def test_the_run_id_follows_the_typed_fingerprint(tmp_path) -> None:
    from tta_bench import identity
    from tta_bench.config import RunConfig

    run = identity.resolve(RunConfig(method="source", stream="digits-c", out=str(tmp_path)))
    spec = identity.open_stream(run)
    same = identity.run_id(run, spec)
    spec.data_fingerprint = spec.data_fingerprint + "-changed"
    assert identity.run_id(run, spec) != same


@pytest.mark.parametrize("name", st.STREAMS.names())
def test_registration_metadata_lives_in_the_entry(name: str) -> None:
    entry = st.STREAMS.get(name)
    assert set(entry.attrs) == {"default_model", "family", "clean", "source_option"}
    assert st.default_model(name) in MODELS, name
    assert st.family(name) in (*presets.FAMILIES, None)
    assert isinstance(st.clean_split(name), st.CleanSplit)
    assert not any(hasattr(entry.factory, k) for k in ("default_model", "family", "clean_split", "source_option"))


class _Partial:
    """Has `raw` but no `finish`: it would silently take the slow path."""

    def __init__(self) -> None:
        self.targets = np.zeros(4, dtype=np.int64)

    def __len__(self) -> int:
        return 4

    def raw(self, idx):
        return torch.zeros(len(idx), 3, 8, 8, dtype=torch.uint8)

    def __getitem__(self, i):
        return torch.zeros(3, 8, 8), 0


class _Fast(_Partial):
    def finish(self, x, idx, device=None):
        return x.float().div(255).to(device or x.device)


def test_fast_data_path_protocol_is_checked() -> None:
    with pytest.raises(TypeError, match=r"_Partial implements .*'raw'.* not \['finish'\]"):
        st._Tagged([(_Partial(), 0)])
    fast = _Fast()
    assert isinstance(fast, st.FastDataset) and st.check_fast_dataset(fast)
    x, y, doms = st._Tagged([(fast, 0)])[[0, 2]]
    assert x.shape == (2, 3, 8, 8) and x.dtype == torch.float32 and doms.tolist() == [0, 0]
    plain = TensorDataset(torch.ones(3, 3, 8, 8), torch.arange(3))
    assert not st.check_fast_dataset(plain)  # a plain dataset takes the general path, no error
    x, y, _ = st._Tagged([(plain, 0)])[[2, 0]]
    assert y.tolist() == [2, 0]


def test_settings_are_declared_once() -> None:
    assert config.SETTINGS == tuple(settings.SETTINGS)
    assert st.SETTINGS is settings.SETTINGS
    text = {n: settings.describe(n) for n in settings.SETTINGS}
    assert len(set(text.values())) == len(text), "each setting says what it is in its own words"
    assert "compute" in text["realistic"].lower() and "k times slower" in text["realistic"]
    segs = settings.SETTINGS["episodic"](["a", "b"], 5, 0, True)
    assert [s.reset for s in segs] == [True, True]
    grad = settings.SETTINGS["gradual"](["a"], 5, 0, True)
    assert [s.severity for s in grad] == list(settings.GRADUAL_SEVERITIES)


def test_settings_module_is_torch_free() -> None:
    import subprocess
    import sys

    code = "import sys, tta_bench.settings; print('torch' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
