"""The C backend under hostile input (issue #10, items 2, 3, 4 and 8).

Every case that could crash the interpreter or run planted code runs in a fresh
interpreter (the ``isolated`` fixture) with its own cache directory. The corpus
snippets (names payload, 0-d indexing, NaN, out-of-range indices, empty axes) also run
against the AddressSanitizer + UBSan build of the generated code and kernels (marker
``sanitize``).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("mithril_c")

SANITIZE_FLAGS = (
    "-fsanitize=address,undefined",
    "-fno-omit-frame-pointer",
    "-fno-sanitize-recover=all",
    "-O1",
)

# Every snippet starts with this: a float64 C backend, with the sanitizer flags when
# MC_SANITIZE is set (the sanitize tests preload libasan into the child).
PRELUDE = f"""
import json, os, sys
import numpy as np
import mithril_core as ml
from mithril_core import models as mm
from mithril_core.models import IOKey, Model

FLAGS = {SANITIZE_FLAGS!r} if os.environ.get("MC_SANITIZE") else ()
backend = ml.CBackend(dtype=ml.float64, extra_cflags=FLAGS, extra_ldflags=FLAGS[:1])
rng = np.random.default_rng(0)
"""

# Names that used to end the comment they were embedded in (and so ran code), break a
# line, escape a quote or form a trigraph. MARKER is replaced by a path per test.
PAYLOADS = (
    'x */ int evil = system("touch MARKER"); /*',
    "x */ __attribute__((constructor)) static void f(void) "
    '{ system("touch MARKER"); } /*',
    'a\nint evil = system("touch MARKER");\n//',
    'tail \\\nint evil = system("touch MARKER");',
    'q" "??/\nint evil = system("touch MARKER"); ??/',
    "NAN",
    "t0",
    "i0",
    "__LINE__",
    "ünï_çødé ½",
    "x" * 200,
)

NAMES = """
marker = sys.argv[1]
payloads = [p.replace("MARKER", marker) for p in json.loads(sys.argv[2])]
x = rng.standard_normal((3, 4))
seed = rng.standard_normal((3, 2))
for n, evil in enumerate(payloads):
    # The payload as a child name, a model name, an input key and an output key.
    inner = Model(name=evil)
    inner |= mm.Linear(2, name=evil)(input=IOKey(evil + " in"), output="h")
    inner |= mm.Relu(name=evil + "\\n")(input="h", output=IOKey(evil + " out"))
    model = Model()
    model |= inner(**{evil + " in": IOKey("input"), evil + " out": IOKey("output")})
    pm = ml.compile(model, backend, shapes={"input": [3, 4]}, data_keys={"input"})
    params = pm.randomize_params()
    (wkey,) = [k for k in params if k.endswith("weight")]
    (bkey,) = [k for k in params if k.endswith("bias")]
    w, b = params[wkey], params[bkey]
    pre = x @ w.T + b
    out, grads = pm.evaluate(params, {"input": x}, output_gradients={"output": seed})
    np.testing.assert_allclose(out["output"], np.maximum(pre, 0), rtol=1e-12)
    np.testing.assert_allclose(grads[wkey], (seed * (pre > 0)).T @ x, rtol=1e-12)
    # The same names in a JSON model document made of library classes only.
    again = Model.from_json(json.dumps(model.to_dict()))
    pm = ml.compile(again, backend, shapes={"input": [3, 4]}, data_keys={"input"})
    out = pm.evaluate(params, {"input": x})
    np.testing.assert_allclose(out["output"], np.maximum(pre, 0), rtol=1e-12)
    assert not os.path.exists(marker), f"payload {n} ran code"
    for line in pm.code.splitlines():
        if "system(" in line:  # only ever inside one whole comment
            text = line.strip()
            assert text.startswith("/*") and text.endswith("*/"), line
            assert text.count("*/") == 1 and text.count("/*") == 1, line
    quoted = [line for line in pm.code.splitlines() if '"' in line or "\\\\" in line]
    assert quoted == ['#include "mithril_c.h"'], quoted
print("OK")
"""

INDEXER = """
cases = [((5,), 2), ((5,), -1), ((3, 4), (1, 2)), ((3, 4), (-1, -4)),
         ((2, 3, 4), (1, 2, 3)), ((5,), (Ellipsis, 0)), ((1,), 0),
         ((2, 3, 4), (1, slice(None), 2)), ((3, 4), (None, 2, 0))]
for shape, index in cases:
    model = Model()
    model |= mm.Indexer(index=index)(input=IOKey("input"), output=IOKey("output"))
    pm = ml.compile(model, backend, shapes={"input": list(shape)})
    for _ in range(3):
        x = rng.standard_normal(shape)
        g = rng.standard_normal(np.shape(x[index]))
        out, grads = pm.evaluate({"input": x}, output_gradients={"output": g})
        expected = np.zeros_like(x)
        expected[index] += g
        assert out["output"].shape == np.shape(x[index]), (shape, index)
        np.testing.assert_array_equal(out["output"], x[index])
        np.testing.assert_array_equal(grads["input"], expected)
# x[i] feeding more computation (the gather result is read by a later loop).
model = Model()
model |= mm.Indexer(index=(1, 2))(input=IOKey("input"), output="picked")
model |= mm.Multiply()(left="picked", right=IOKey("scale"), output=IOKey("output"))
pm = ml.compile(model, backend, shapes={"input": [3, 4], "scale": [5]})
x, s, g = rng.standard_normal((3, 4)), rng.standard_normal(5), rng.standard_normal(5)
out, grads = pm.evaluate({"input": x, "scale": s}, output_gradients={"output": g})
np.testing.assert_allclose(out["output"], x[1, 2] * s, rtol=1e-15)
expected = np.zeros_like(x)
expected[1, 2] = (g * s).sum()
np.testing.assert_allclose(grads["input"], expected, rtol=1e-12)
np.testing.assert_allclose(grads["scale"], g * x[1, 2], rtol=1e-15)
print("OK")
"""

NAN = """
nan, inf = float("nan"), float("inf")
a = np.array([nan, 1.0, -1.0, 2.0, 0.0, nan, -inf, 3.0])
b = np.array([1.0, nan, -1.0, 1.0, 0.0, nan, 2.0, inf])
ops = {
    "relu": (lambda: mm.Relu()(input="a", output=IOKey("output")),
             lambda: np.maximum(a, 0.0)),
    "maximum": (lambda: mm.Maximum()(left="a", right="b", output=IOKey("output")),
                lambda: np.maximum(a, b)),
    "minimum": (lambda: mm.Minimum()(left="a", right="b", output=IOKey("output")),
                lambda: np.minimum(a, b)),
}
results = {}
for name, (make, reference) in ops.items():
    model = Model()
    model |= make()
    keys = ["a", "b"] if name != "relu" else ["a"]
    pm = ml.compile(model, backend, shapes={k: [8] for k in keys},
                    data_keys=set(keys))
    data = {"a": a, "b": b}
    inputs = {k: data[k] for k in keys}
    g = np.arange(1.0, 9.0)
    out = pm.evaluate({}, inputs)["output"]
    np.testing.assert_array_equal(out, reference())  # NaN where NumPy has NaN
    # Gradients of the data keys: compile a trainable variant.
    pm = ml.compile(model, backend, shapes={k: [8] for k in keys})
    out, grads = pm.evaluate(inputs, output_gradients={"output": g})
    np.testing.assert_array_equal(out["output"], reference())
    results[name] = {k: grads[k].tolist() for k in keys}
print("GRADS " + json.dumps(results))
print("OK")
"""

INDICES = """
from mithril_c._runtime import KernelIndexError
model = Model()
model |= mm.Embedding()(input=IOKey("ids"), weight=IOKey("table"), output="rows")
model |= mm.CrossEntropy()(input=IOKey("logits"), target=IOKey("target"),
                           output="ce")
model |= mm.Sum()(input="rows", output="total")
model |= mm.Add()(left="total", right="ce", output=IOKey("output"))
shapes = {"ids": [4], "table": [5, 3], "logits": [4, 6], "target": [4]}
pm = ml.compile(model, backend, shapes=shapes, data_keys={"ids", "target", "logits"})
table = rng.standard_normal((5, 3))
logits = rng.standard_normal((4, 6))
good = {"ids": np.array([0, 4, 2, 1]), "target": np.array([5, 0, 1, 2]),
        "logits": logits}
out = pm.evaluate({"table": table}, good)["output"]
log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
ce = -log_softmax[np.arange(4), good["target"]]
np.testing.assert_allclose(out, table[good["ids"]].sum() + ce, rtol=1e-12)
bad_cases = [("ids", [0, 5, 0, 0]), ("ids", [0, 0, 2**40, 0]), ("ids", [-6, 0, 0, 0]),
             ("target", [0, 6, 0, 0]), ("target", [0, 0, -7, 0]),
             ("target", [2**62, 0, 0, 0])]
for key, bad in bad_cases:
    for with_grad in (False, True):
        try:
            pm.evaluate({"table": table}, {**good, key: np.array(bad)},
                        output_gradients={"output": np.ones(4)} if with_grad else None)
        except IndexError as exc:
            # Core's check before dispatch names the key; the kernels' own check
            # (the last line of defence) names the node.
            assert key in str(exc) or "out of range" in str(exc), exc
        else:
            raise AssertionError(f"{key}={bad} was accepted")
print("OK")
"""

EMPTY = """
from mithril_core.errors import ShapeError
for cls in (mm.Max, mm.Min, mm.ArgMax, mm.ArgMin):
    for shape, axis in (([3, 0], 1), ([0, 2], 0), ([0], None)):
        model = Model()
        model |= cls(axis=axis)(input=IOKey("input"), output=IOKey("output"))
        try:
            reference = getattr(np, cls.__name__.lower())(np.zeros(shape), axis=axis)
        except ValueError:
            pass
        else:
            raise AssertionError("NumPy reduced an empty axis")
        try:
            pm = ml.compile(model, backend, shapes={"input": shape},
                            data_keys={"input"}, inference=True)
            pm.evaluate({}, {"input": np.zeros(shape)})
        except ShapeError as exc:
            assert "empty axis" in str(exc) and repr(cls.__name__) != "", exc
            assert isinstance(exc, ValueError)
        else:
            raise AssertionError(f"{cls.__name__} over {shape} axis {axis} ran")
    # Empty but not reduced: the result is empty, as NumPy's.
    model = Model()
    model |= cls(axis=1)(input=IOKey("input"), output=IOKey("output"))
    pm = ml.compile(model, backend, shapes={"input": [0, 3]}, data_keys={"input"},
                    inference=True)
    out = pm.evaluate({}, {"input": np.zeros((0, 3))})["output"]
    assert out.shape == (0,), out.shape
print("OK")
"""

CORPUS = {
    "names": NAMES,
    "indexer": INDEXER,
    "nan": NAN,
    "indices": INDICES,
    "empty": EMPTY,
}


def _run_case(
    isolated: Callable[..., Any],
    name: str,
    cache: Path,
    tmp_path: Path,
    env: dict[str, str] | None = None,
) -> Any:
    marker = tmp_path / "PWNED"
    source = PRELUDE + CORPUS[name]
    args = f"import sys, json; sys.argv = ['-c', {str(marker)!r}, {_payloads()!r}]\n"
    outcome = isolated(
        args + source,
        timeout=900,
        env={"MITHRIL_C_CACHE": str(cache), **(env or {})},
    )
    assert not marker.exists(), "a payload name ran code"
    return outcome


def _payloads() -> str:
    import json

    return json.dumps(PAYLOADS)


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("c_cache")


@pytest.mark.parametrize("case", sorted(CORPUS))
def test_corpus_case_exits_cleanly(
    case: str,
    isolated: Callable[..., Any],
    clean_exit: Callable[[Any], None],
    shared_cache: Path,
    tmp_path: Path,
) -> None:
    outcome = _run_case(isolated, case, shared_cache, tmp_path)
    clean_exit(outcome)
    assert outcome.stdout.strip().endswith("OK")


def test_nan_gradients_match_torch(
    isolated: Callable[..., Any],
    clean_exit: Callable[[Any], None],
    shared_cache: Path,
    tmp_path: Path,
) -> None:
    torch = pytest.importorskip("torch")
    import json

    outcome = _run_case(isolated, "nan", shared_cache, tmp_path)
    clean_exit(outcome)
    line = next(s for s in outcome.stdout.splitlines() if s.startswith("GRADS "))
    grads = json.loads(line[len("GRADS ") :])
    nan, inf = float("nan"), float("inf")
    a = torch.tensor([nan, 1.0, -1.0, 2.0, 0.0, nan, -inf, 3.0], dtype=torch.float64)
    b = torch.tensor([1.0, nan, -1.0, 1.0, 0.0, nan, 2.0, inf], dtype=torch.float64)
    g = torch.arange(1.0, 9.0, dtype=torch.float64)
    functions = {
        "relu": lambda a, b: torch.relu(a),
        "maximum": torch.maximum,
        "minimum": torch.minimum,
    }
    for name, function in functions.items():
        left = a.clone().requires_grad_(True)
        right = b.clone().requires_grad_(True)
        function(left, right).backward(g)
        assert grads[name]["a"] == left.grad.tolist(), name
        if name != "relu":
            assert grads[name]["b"] == right.grad.tolist(), name


@pytest.fixture(scope="module")
def sanitize_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("c_sanitize_cache")


def _libasan() -> str:
    path = subprocess.run(
        ["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True
    ).stdout.strip()
    if not os.path.isabs(path) or not os.path.exists(path):
        pytest.skip("gcc has no libasan.so")
    return path


@pytest.mark.sanitize
@pytest.mark.parametrize("case", sorted(CORPUS))
def test_corpus_case_is_clean_under_asan_and_ubsan(
    case: str,
    isolated: Callable[..., Any],
    clean_exit: Callable[[Any], None],
    sanitize_cache: Path,
    tmp_path: Path,
) -> None:
    env = {
        "LD_PRELOAD": _libasan(),
        "ASAN_OPTIONS": "detect_leaks=0",
        "MC_SANITIZE": "1",
    }
    outcome = _run_case(isolated, case, sanitize_cache, tmp_path, env)
    clean_exit(outcome)
    assert outcome.stdout.strip().endswith("OK")
    assert "runtime error" not in outcome.stderr
    assert "AddressSanitizer" not in outcome.stderr


# -- the build cache ---------------------------------------------------------------

CACHED_MODEL = """
from mithril_c import _build
model = Model()
model |= mm.Linear(3)(input=IOKey("input"), output="h")
model |= mm.Tanh()(input="h", output=IOKey("output"))
pm = ml.compile(model, backend, shapes={"input": [2, 4]}, data_keys={"input"})
params = pm.randomize_params()
(w,) = [v for k, v in params.items() if k.endswith("weight")]
(b,) = [v for k, v in params.items() if k.endswith("bias")]
x = rng.standard_normal((2, 4))
out = pm.evaluate(params, {"input": x})["output"]
np.testing.assert_allclose(out, np.tanh(x @ w.T + b), rtol=1e-12)
print(f"compiled={_build.STATS.compiled} cached={_build.STATS.cached}")
print("OK")
"""

PLANTED = r"""
#include <stdio.h>
__attribute__((constructor)) static void planted(void) {
    FILE *f = fopen(MARKER, "w");
    if (f) fclose(f);
}
void *PyInit_planted(void) { return 0; }
"""


def _use_cache(isolated: Callable[..., Any], cache: Path) -> Any:
    return isolated(
        PRELUDE + CACHED_MODEL, timeout=900, env={"MITHRIL_C_CACHE": str(cache)}
    )


def _built(outcome: Any) -> str:
    assert outcome.stdout.strip().endswith("OK"), outcome.stderr[-3000:]
    return next(s for s in outcome.stdout.splitlines() if s.startswith("compiled="))


@pytest.fixture(scope="module")
def warm_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("warm") / "cache"
    done = subprocess.run(
        [sys.executable, "-c", PRELUDE + CACHED_MODEL],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "MITHRIL_C_CACHE": str(cache)},
        check=False,
    )
    assert _built(done) == "compiled=1 cached=0", done.stderr[-3000:]
    return cache


@pytest.fixture
def cache(warm_cache: Path, tmp_path: Path) -> Path:
    """A private copy of a cache holding one model's library and the kernels."""
    copy = tmp_path / "cache"
    shutil.copytree(warm_cache, copy)
    return copy


def _library(cache: Path) -> Path:
    (library,) = [p for p in cache.glob("_mithril_c_*.so") if "kernels" not in p.name]
    return library


def _archive(cache: Path) -> Path:
    (archive,) = cache.glob("_mithril_c_kernels_*.a")
    return archive


def _record(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def test_new_cache_is_private_and_a_hit_is_verified(
    isolated: Callable[..., Any], tmp_path: Path
) -> None:
    import hashlib

    cache = tmp_path / "deep" / "cache"
    first = _use_cache(isolated, cache)
    assert _built(first) == "compiled=1 cached=0"
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    for path in (_library(cache), _archive(cache)):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert _record(path).read_text().strip() == digest
    assert not [p for p in cache.iterdir() if p.is_dir()], "temporary dirs left"
    assert _built(_use_cache(isolated, cache)) == "compiled=0 cached=1"


def test_planted_library_is_rebuilt_not_loaded(
    isolated: Callable[..., Any],
    clean_exit: Callable[[Any], None],
    cache: Path,
    tmp_path: Path,
) -> None:
    marker = tmp_path / "PLANTED_RAN"
    source = tmp_path / "planted.c"
    source.write_text(PLANTED.replace("MARKER", f'"{marker}"'))
    library = _library(cache)
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-o", str(library), str(source)], check=True
    )
    outcome = _use_cache(isolated, cache)
    clean_exit(outcome)
    assert not marker.exists(), "the planted library was loaded"
    assert _built(outcome) == "compiled=1 cached=0"
    assert _built(_use_cache(isolated, cache)) == "compiled=0 cached=1"


@pytest.mark.parametrize("damage", ["truncated", "flipped", "no record", "bad record"])
def test_damaged_library_is_rebuilt(
    damage: str,
    isolated: Callable[..., Any],
    clean_exit: Callable[[Any], None],
    cache: Path,
) -> None:
    import hashlib

    library = _library(cache)
    data = library.read_bytes()
    if damage == "truncated":  # loading this used to kill the process (SIGBUS)
        library.write_bytes(data[: len(data) // 2])
    elif damage == "flipped":
        middle = len(data) // 2
        library.write_bytes(
            data[:middle] + bytes([data[middle] ^ 1]) + data[middle + 1 :]
        )
    elif damage == "no record":
        _record(library).unlink()
    else:
        _record(library).write_text("0" * 64)
    outcome = _use_cache(isolated, cache)
    clean_exit(outcome)
    assert _built(outcome) == "compiled=1 cached=0"
    digest = hashlib.sha256(library.read_bytes()).hexdigest()
    assert _record(library).read_text().strip() == digest


@pytest.mark.parametrize("damage", ["truncated", "no record"])
def test_damaged_kernel_archive_is_rebuilt(
    damage: str,
    isolated: Callable[..., Any],
    clean_exit: Callable[[Any], None],
    cache: Path,
) -> None:
    import hashlib

    archive = _archive(cache)
    if damage == "truncated":
        archive.write_bytes(archive.read_bytes()[:1000])
    else:
        _record(archive).unlink()
    for path in (_library(cache), _record(_library(cache))):
        path.unlink()  # so that the next compile links the archive again
    outcome = _use_cache(isolated, cache)
    clean_exit(outcome)
    assert _built(outcome) == "compiled=1 cached=0"
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert _record(archive).read_text().strip() == digest


def _compile_small(monkeypatch: Any, cache: Path) -> None:
    import mithril_core as ml
    from mithril_core import models as mm
    from mithril_core.models import IOKey, Model

    monkeypatch.setenv("MITHRIL_C_CACHE", str(cache))
    model = Model()
    model |= mm.Relu()(input=IOKey("input"), output=IOKey("output"))
    ml.compile(model, ml.CBackend(), shapes={"input": [2]}, data_keys={"input"})


@pytest.mark.parametrize("mode", [0o770, 0o777, 0o722, 0o1777])
def test_cache_writable_by_others_is_refused(
    mode: int, monkeypatch: Any, tmp_path: Path
) -> None:
    from mithril_c._build import UnsafeCacheError

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(mode)
    with pytest.raises(UnsafeCacheError, match="writable by group or others") as info:
        _compile_small(monkeypatch, shared)
    assert isinstance(info.value, PermissionError)
    assert f"chmod 700 {shared}" in str(info.value)
    assert "MITHRIL_C_CACHE" in str(info.value)
    assert list(shared.iterdir()) == []  # nothing built or written there


def test_cache_owned_by_another_user_is_refused(
    monkeypatch: Any, tmp_path: Path
) -> None:
    from mithril_c._build import UnsafeCacheError

    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    if os.getuid() == 0:
        os.chown(theirs, 1, 1)
    else:
        real = os.getuid()
        monkeypatch.setattr(os, "getuid", lambda: real + 1)
    with pytest.raises(UnsafeCacheError, match="owned by uid") as info:
        _compile_small(monkeypatch, theirs)
    assert "MITHRIL_C_CACHE" in str(info.value)
    assert list(theirs.iterdir()) == []


def test_cache_path_that_is_a_file_is_refused(monkeypatch: Any, tmp_path: Path) -> None:
    from mithril_c._build import UnsafeCacheError

    plain = tmp_path / "file"
    plain.write_text("")
    with pytest.raises(UnsafeCacheError, match="is not a directory"):
        _compile_small(monkeypatch, plain)
