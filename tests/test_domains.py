"""`--domains a,b,c` / `stream.domains`: a subset or a custom order of a stream's domains (on digits-c)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tta_bench import streams as st
from tta_bench.cli import main
from tta_bench.config import RunConfig
from tta_bench.identity import resolve
from tta_bench.kernel import UserError


def cfg(tmp_path, **kw) -> RunConfig:
    base = dict(method="norm", stream="digits-c", limit=16, batch_size=16, clean_eval="off", device="cpu",
                out=str(tmp_path / "runs"))  # fmt: skip
    return RunConfig(**{**base, **kw})


def test_subset_in_custom_order_is_run_and_recorded(tmp_path):
    from tta_bench.runner import run

    result = run(cfg(tmp_path, stream_opts={"domains": "fog, gaussian_noise"}), quiet=True)
    assert list(pd.read_csv(result.folder / "domains.csv")["domain"]) == ["fog", "gaussian_noise"]
    config = json.loads((result.folder / "config.json").read_text())
    assert [s["domain"] for s in config["domain_order"]] == ["fog", "gaussian_noise"]
    assert config["config"]["stream_opts"]["domains"] == ["fog", "gaussian_noise"]
    assert config["stream_info"]["all_domains"][:3] == ["gaussian_noise", "shot_noise", "impulse_noise"]
    assert list(result.summary["domain_errors"]) == ["fog", "gaussian_noise"]


def test_domains_enter_the_run_id_in_normal_form(tmp_path):
    a = resolve(cfg(tmp_path, stream_opts={"domains": "fog,snow"})).identity()
    assert a == resolve(cfg(tmp_path, stream_opts={"domains": ["fog", " snow"]})).identity()
    assert a != resolve(cfg(tmp_path, stream_opts={"domains": "snow,fog"})).identity()  # order matters
    assert a != resolve(cfg(tmp_path)).identity()
    assert resolve(cfg(tmp_path)).stream_opts["domains"] is None


def test_unknown_domain_is_a_user_error_with_close_matches(tmp_path, capsys):
    with pytest.raises(UserError, match=r"no domain 'gausian_noise'. Did you mean: gaussian_noise"):
        st.build_stream("digits-c", None, 0, {"domains": ["gausian_noise"]})
    code = main(["run", "--method", "norm", "--stream", "digits-c", "--domains", "fogg", "--out", str(tmp_path / "r"),
                 "--quiet"])  # fmt: skip
    assert code == 2 and "Did you mean: fog" in capsys.readouterr().err
    assert not any((tmp_path / "r").glob("*/config.json"))  # nothing written


@pytest.mark.parametrize("bad", ["fog,fog", " , ", 3])
def test_bad_domain_lists(bad):
    with pytest.raises(UserError, match="stream.domains"):
        st.normalize_domains(bad)
