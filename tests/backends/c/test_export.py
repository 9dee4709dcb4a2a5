"""Standalone C export (``pm.export_c``): the export is built with ``cc`` (no Python
or cffi in the program), run from a small C ``main`` on the input a NumPy run used,
and its outputs compared with the NumPy backend's; and the errors of a bad export."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("mithril_c")

import mithril_core as ml  # noqa: E402
from mithril_core.errors import (  # noqa: E402
    CompileError,
    DtypeError,
    InputKeyError,
    ShapeError,
)
from mithril_core.models import (  # noqa: E402
    Buffer,
    IOKey,
    Linear,
    Model,
    Relu,
    Reshape,
    Sigmoid,
    resnet18,
)
from mithril_core.models.gpt import gpt2  # noqa: E402

RNG = np.random.default_rng(0)
COMPILER = shutil.which(os.environ.get("CC", "cc"))
needs_cc = pytest.mark.skipif(COMPILER is None, reason="no C compiler (cc)")

# Reads every input (in model_inputs[] order) from one file, runs by name, writes every
# output to another; then runs again on two threads, on its own arrays through
# model_run_with, and checks both runs agree.
MAIN = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "model.h"

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s WEIGHTS INPUTS OUTPUTS\n", argv[0]);
        return 1;
    }
    model_t *model = model_create(argv[1]);
    if (!model) {
        fprintf(stderr, "%s\n", model_create_error());
        return 2;
    }
    FILE *in = fopen(argv[2], "rb");
    if (!in) return 3;
    const void *inputs[MODEL_NUM_INPUTS + 1];
    for (int i = 0; i < MODEL_NUM_INPUTS; ++i) {
        void *buffer = model_input(model, model_inputs[i].name);
        if (!buffer || fread(buffer, 1, model_inputs[i].nbytes, in) !=
                           model_inputs[i].nbytes)
            return 3;
        inputs[i] = buffer;
    }
    fclose(in);
    int status = model_run(model);
    if (status) {
        fprintf(stderr, "%s\n", model_error(status));
        return 4;
    }
    FILE *out = fopen(argv[3], "wb");
    void *outputs[MODEL_NUM_OUTPUTS + 1];
    for (int i = 0; i < MODEL_NUM_OUTPUTS; ++i) {
        const void *result = model_output(model, model_outputs[i].name);
        if (!result) return 5;
        fwrite(result, 1, model_outputs[i].nbytes, out);
        outputs[i] = malloc(model_outputs[i].nbytes);
    }
    fclose(out);
    model_set_threads(2);  /* results do not depend on the thread count */
    if (model_run_with(model, inputs, outputs)) return 6;
    for (int i = 0; i < MODEL_NUM_OUTPUTS; ++i) {
        const void *first = model_output(model, model_outputs[i].name);
        if (memcmp(first, outputs[i], model_outputs[i].nbytes) != 0) return 7;
        free(outputs[i]);
    }
    if (model_input(model, "no such input") || model_output(model, "no such output"))
        return 8;
    model_free(model);
    return 0;
}
"""


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: Any) -> None:
    path = tmp_path_factory.getbasetemp() / "mithril_c_cache"
    monkeypatch.setenv("MITHRIL_C_CACHE", str(path))


def build(export: Any, *, make: bool) -> Path:
    """Build the test's ``main`` with the export: by its Makefile or its one command."""
    directory = export.directory
    (directory / "main.c").write_text(MAIN, encoding="utf-8")
    if make:
        command = ["make", "-j2", "main"]
    else:
        command = export.command("main.c", "main")
    # The build must not lean on Python: no include or library path of its own.
    result = subprocess.run(
        command, cwd=directory, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return directory / "main"


def run(
    export: Any, program: Path, data: dict[str, np.ndarray]
) -> tuple[subprocess.CompletedProcess[str], dict[str, np.ndarray]]:
    directory = export.directory
    with open(directory / "inputs.bin", "wb") as handle:
        for spec in export.inputs:
            array = np.ascontiguousarray(data[spec.name], dtype=spec.dtype)
            assert array.shape == spec.shape
            handle.write(array.tobytes())
    result = subprocess.run(
        [str(program), "model.weights", "inputs.bin", "outputs.bin"],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=300,
    )
    outputs = {}
    if result.returncode == 0:
        raw = (directory / "outputs.bin").read_bytes()
        offset = 0
        for spec in export.outputs:
            count = int(np.prod(spec.shape, dtype=np.int64))
            array = np.frombuffer(raw, dtype=spec.dtype, count=count, offset=offset)
            outputs[spec.name] = array.reshape(spec.shape)
            offset += spec.nbytes
        assert offset == len(raw)
    return result, outputs


def check_export(
    model: Model,
    shapes: dict[str, list[int]],
    data: dict[str, np.ndarray],
    tmp_path: Path,
    *,
    make: bool = False,
    atol: float = 1e-5,
    dtype: str = "float32",
) -> tuple[Any, Path]:
    """Export ``model`` (compiled for C), build and run it; compare with NumPy."""
    options: dict[str, Any] = {
        "shapes": shapes,
        "data_keys": set(data),
        "inference": True,
    }
    pm = ml.compile(model, ml.backend("c", dtype=dtype), **options)
    params = pm.randomize_params(seed=1)
    export = pm.export_c(tmp_path / "export", params)
    assert [s.name for s in export.inputs] == list(data)
    assert [s.name for s in export.outputs] == list(pm.output_keys)
    program = build(export, make=make)
    result, outputs = run(export, program, data)
    assert result.returncode == 0, result.stderr

    reference = ml.compile(model, ml.backend("numpy", dtype=dtype), **options)
    expected = reference.evaluate(params, data)
    same_code = pm.evaluate(params, data)
    assert set(outputs) == set(expected)
    for key, value in outputs.items():
        want = np.asarray(expected[key])
        assert value.dtype == want.dtype, key
        scale = max(float(np.abs(want).max()), 1.0)
        np.testing.assert_allclose(value, want, rtol=1e-4, atol=atol * scale)
        # The same generated forward as the backend's own build.
        np.testing.assert_allclose(value, same_code[key], rtol=1e-6, atol=1e-6)
    return export, program


def mlp() -> Model:
    model = Model()
    model |= Linear(16)(input="input")
    model += Relu()
    model += Linear(8)
    model += Sigmoid()
    model += Linear(3)(output="output")
    return model


@needs_cc
def test_mlp_export_runs_standalone(tmp_path: Path) -> None:
    x = RNG.standard_normal((5, 4)).astype(np.float32)
    export, program = check_export(
        mlp(), {"input": [5, 4]}, {"input": x}, tmp_path, make=True
    )
    names = {p.name for p in export.directory.iterdir()}
    assert set(export.files) <= names
    header = (export.directory / "model.h").read_text()
    for api in ("model_create", "model_run", "model_input", "model_output"):
        assert api in header
    assert "Inference forward only" in header


@needs_cc
def test_float64_export_runs_standalone(tmp_path: Path) -> None:
    x = RNG.standard_normal((5, 4))
    export, _ = check_export(
        mlp(), {"input": [5, 4]}, {"input": x}, tmp_path, dtype="float64", atol=1e-12
    )
    assert "-DMC_REAL=double" in export.cflags


@needs_cc
def test_outputs_that_alias_inputs_and_each_other(tmp_path: Path) -> None:
    """Outputs bound to their own buffer, copied from another output, from a
    reshape's storage and from an input."""
    model = Model()
    model |= Relu()(input="input", output=IOKey("a"))
    model |= Buffer()(input="a", output=IOKey("b"))
    model |= Reshape(shape=(8,))(input="a", output=IOKey("flat"))
    model |= Buffer()(input="input", output=IOKey("same"))
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    check_export(model, {"input": [2, 4]}, {"input": x}, tmp_path)


@needs_cc
def test_mlp_export_reports_bad_weights(tmp_path: Path) -> None:
    x = RNG.standard_normal((5, 4)).astype(np.float32)
    export, program = check_export(mlp(), {"input": [5, 4]}, {"input": x}, tmp_path)
    weights = export.directory / "model.weights"
    data = weights.read_bytes()
    weights.write_bytes(data[:-8])  # the last entry's data is cut short
    result, _ = run(export, program, {"input": x})
    assert result.returncode == 2
    assert "bad data offset or size" in result.stderr
    weights.write_bytes(b"NOTMODEL" + data[8:])
    result, _ = run(export, program, {"input": x})
    assert result.returncode == 2
    assert "bad magic" in result.stderr
    weights.unlink()
    result, _ = run(export, program, {"input": x})
    assert result.returncode == 2
    assert "cannot open the weights file" in result.stderr


@needs_cc
def test_resnet18_export_runs_standalone(tmp_path: Path) -> None:
    x = RNG.standard_normal((1, 3, 32, 32)).astype(np.float32)
    check_export(
        resnet18(num_classes=10),
        {"input": [1, 3, 32, 32]},
        {"input": x},
        tmp_path,
        atol=1e-4,
    )


@needs_cc
def test_gpt2_export_runs_standalone(tmp_path: Path) -> None:
    model = gpt2(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32)
    ids = RNG.integers(0, 64, (2, 7))
    export, program = check_export(
        model, {"input": [2, 7]}, {"input": ids}, tmp_path, atol=1e-4
    )
    assert export.inputs[0].dtype == "int64"
    # An id out of range is reported by the kernel: model_run returns a status.
    bad = ids.copy()
    bad[1, 3] = 64
    result, _ = run(export, program, {"input": bad})
    assert result.returncode == 4
    assert result.stderr.strip()


# -- errors ----------------------------------------------------------------------------


def test_export_refuses_a_non_c_backend(tmp_path: Path) -> None:
    pm = ml.compile(mlp(), ml.backend("numpy"), shapes={"input": [5, 4]})
    with pytest.raises(CompileError, match="backend 'numpy' cannot export"):
        pm.export_c(tmp_path, pm.randomize_params())


def test_export_refuses_unknown_dims(tmp_path: Path) -> None:
    pm = ml.compile(
        mlp(), ml.backend("c"), shapes={"input": [None, 4]}, data_keys={"input"}
    )
    params = {k: v for k, v in pm.randomize_params().items() if k != "input"}
    with pytest.raises(ShapeError, match=r"shapes of input \[None, 4\]"):
        pm.export_c(tmp_path, params)


@pytest.fixture
def compiled() -> Any:
    return ml.compile(
        mlp(), ml.backend("c"), shapes={"input": [5, 4]}, data_keys={"input"}
    )


def test_export_refuses_missing_params(compiled: Any, tmp_path: Path) -> None:
    params = compiled.randomize_params()
    del params["linear_1_bias"]
    with pytest.raises(InputKeyError, match=r"params lacks \['linear_1_bias'\]"):
        compiled.export_c(tmp_path, params)


def test_export_refuses_unknown_and_runtime_keys(compiled: Any, tmp_path: Path) -> None:
    params = compiled.randomize_params()
    with pytest.raises(InputKeyError, match="not inputs of the model"):
        compiled.export_c(tmp_path, {**params, "nope": np.zeros(1, np.float32)})
    x = np.zeros((5, 4), np.float32)
    with pytest.raises(InputKeyError, match="run-time inputs of the exported C"):
        compiled.export_c(tmp_path, {**params, "input": x})
    with pytest.raises(InputKeyError, match=r"run-time inputs \['nope'\] are not"):
        compiled.export_c(tmp_path, params, inputs=("input", "nope"))
    # A parameter may be a run-time input instead.
    del params["linear_0_weight"]
    export = compiled.export_c(tmp_path, params, inputs=("input", "linear_0_weight"))
    assert [s.name for s in export.inputs] == ["input", "linear_0_weight"]


def test_export_refuses_wrong_dtype_and_shape(compiled: Any, tmp_path: Path) -> None:
    params = compiled.randomize_params()
    wrong = {**params, "linear_0_bias": params["linear_0_bias"].astype(np.float64)}
    with pytest.raises(DtypeError, match="linear_0_bias"):
        compiled.export_c(tmp_path, wrong)
    wrong = {**params, "linear_0_bias": params["linear_0_bias"][:3]}
    with pytest.raises(ShapeError, match=r"linear_0_bias.*\[3\].*\[16\]"):
        compiled.export_c(tmp_path, wrong)
