"""The README's Training example runs (once the loss primitives are in the library)."""

from __future__ import annotations

import pathlib
import re

import pytest

import mithril_core.models

README = pathlib.Path(__file__).parents[2] / "README.md"


def test_readme_training_example(tmp_path, monkeypatch) -> None:
    from mithril_core.plugins import get_registry

    loss = getattr(mithril_core.models, "SquaredError", None)
    if loss is None or loss.op_name not in get_registry().lowerings("numpy"):
        pytest.skip("SquaredError is not in mithril_core.models (with a lowering) yet")
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Training") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102
    result = namespace["result"]
    cost = result.history["final_cost"]
    assert cost[-1] < cost[0]
    assert namespace["meta"] == {"epoch": result.epoch}
    assert (tmp_path / "run.safetensors").exists()
