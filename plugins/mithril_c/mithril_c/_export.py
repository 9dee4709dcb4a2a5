"""Standalone C export of a compiled model: ``pm.export_c(directory, params)``.

The export wraps the very ``mc_forward`` the C backend generates for the model (the
same :func:`~mithril_c._codegen.generate`, inference only) in a small documented API
(``model.h``: create / input / run / output / free), copies the kernel sources, writes
the parameters and the model's constant tensors to a weights file and a Makefile that
links OpenBLAS. Nothing of Python or cffi is needed to build or run the result.
"""

from __future__ import annotations

import os
import shlex
import shutil
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mithril_c._build import CFLAGS, CSRC, KERNELS, LDFLAGS, _openblas
from mithril_c._codegen import Loc, Plan, c_string, comment_text, generate, unresolved
from mithril_c._plan import ALIGN_BYTES, C_TYPES
from mithril_core.errors import CompileError, DtypeError, InputKeyError, ShapeError
from mithril_core.physical.flat import FlatGraph

HEADER = "model.h"
SOURCE = "model.c"
WEIGHTS = "model.weights"
MAKEFILE = "Makefile"
MAGIC = b"MITHRILW"
VERSION = 1
# Codes of the weights file's dtype field (documented in model.h).
DTYPE_CODES = {
    "float32": 0,
    "float64": 1,
    "int8": 2,
    "int16": 3,
    "int32": 4,
    "int64": 5,
    "uint8": 6,
    "bool": 7,
}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of an exported model: key, shape and NumPy dtype name."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class CExport:
    """What :meth:`CBackend.export_c` wrote.

    :param directory: where the files are.
    :param files: the file names written there.
    :param inputs: the run-time inputs, in the order of ``model_inputs[]``.
    :param outputs: the outputs, in the order of ``model_outputs[]``.
    :param cflags: compiler flags of every C file (``MC_REAL`` and include dirs too).
    :param ldflags: link flags and libraries (OpenBLAS, libm).
    """

    directory: Path
    files: tuple[str, ...]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    cflags: tuple[str, ...]
    ldflags: tuple[str, ...]

    @property
    def sources(self) -> tuple[str, ...]:
        """The C files to compile besides the caller's own ``main``."""
        return (SOURCE, *KERNELS)

    def command(self, main: str = "main.c", output: str = "main") -> list[str]:
        """The one ``cc`` command (argv, run in :attr:`directory`) that builds
        ``main`` with the model into the executable ``output``."""
        compiler = os.environ.get("CC", "cc")
        return [
            *shlex.split(compiler),
            *self.cflags,
            main,
            *self.sources,
            "-o",
            output,
            *self.ldflags,
        ]


def export(
    backend: Any,
    pm: Any,
    directory: str | os.PathLike[str],
    params: Mapping[str, Any],
    inputs: tuple[str, ...] | None = None,
) -> CExport:
    """Write the standalone C export of ``pm`` (compiled for ``backend``) into
    ``directory``; see :meth:`mithril_c.CBackend.export_c`."""
    from mithril_core.plugins import get_registry

    graph = _static_graph(pm.graph)
    real = "float" if backend.dtype.name == "float32" else "double"
    plan = generate(
        graph,
        dict(get_registry().lowerings("c")),
        real=real,
        grad_keys=(),
        differentiable_outputs=(),
        inference=True,
    )
    runtime = tuple(pm.data_keys) if inputs is None else tuple(inputs)
    weights = _weights(plan, params, runtime)
    layout = _Layout(plan, runtime, weights, backend.dtype.name)

    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    include, libdir, library = _openblas()
    cflags = (*CFLAGS, *backend.extra_cflags)
    link = LDFLAGS
    result = CExport(
        directory=target,
        files=(HEADER, SOURCE, WEIGHTS, MAKEFILE, "mithril_c.h", *KERNELS),
        inputs=layout.inputs,
        outputs=layout.outputs,
        cflags=(*cflags, f"-DMC_REAL={real}", "-I.", f"-I{include}"),
        ldflags=(
            *link,
            *backend.extra_ldflags,
            f"-L{libdir}",
            f"-Wl,-rpath,{libdir}",
            f"-l{library}",
            "-lm",
        ),
    )
    for name in ("mithril_c.h", *KERNELS):
        shutil.copyfile(CSRC / name, target / name)
    _write_weights(target / WEIGHTS, layout.entries)
    (target / HEADER).write_text(_header(layout, result), encoding="utf-8")
    (target / SOURCE).write_text(_source(layout), encoding="utf-8")
    makefile = _makefile(
        cflags, link, backend.extra_ldflags, real, include, libdir, result.command()
    )
    (target / MAKEFILE).write_text(makefile, encoding="utf-8")
    return result


# -- the graph and the parameters ------------------------------------------------------
def _static_graph(graph: FlatGraph) -> FlatGraph:
    """``graph`` with every shape and dtype kind known, as the C backend compiled it
    (inputs of several possible kinds take the kinds it assumes)."""
    from mithril_c._specialize import assumed, specialize

    unknown = []
    for key, value in graph.inputs.items():
        shape = value.shape()
        if shape is None or None in shape:
            unknown.append(f"{key} {shape}")
    if unknown:
        msg = (
            f"export_c: the shapes of {', '.join(unknown)} are not fully known, and "
            "the exported C has fixed shapes. Compile with shapes={...} giving every "
            "dim of these inputs (None marks an unknown dim)."
        )
        raise ShapeError(msg)
    kinds, ambiguous = assumed(graph)
    known = tuple(k for k in kinds if k is not None)
    if ambiguous and len(known) == len(kinds):
        try:
            graph = specialize(graph, tuple(graph.inputs), known)
        except ShapeError as exc:
            msg = (
                f"export_c: the dtypes of {', '.join(ambiguous)} are known only from "
                "the data. Declare them, e.g. IOKey(key, type=Tensor[int]) or "
                "Tensor[float], and compile again."
            )
            raise ShapeError(msg) from exc
    missing = unresolved(graph)
    if missing:
        msg = (
            f"export_c: the shapes or dtypes of {', '.join(missing[:8])} are not "
            "known at compile time, and the exported C has fixed shapes and dtypes. "
            "Give every input's shape with compile(shapes=...) and its type with "
            "IOKey(type=...)."
        )
        raise ShapeError(msg)
    return graph


def _weights(
    plan: Plan, params: Mapping[str, Any], runtime: tuple[str, ...]
) -> dict[str, np.ndarray]:
    """Each parameter as the array the weights file holds, checked against the
    compiled shape and dtype (ints are widened exactly, nothing else is cast)."""
    keys = plan.input_keys
    problems = []
    unknown = [k for k in runtime if k not in keys]
    if unknown:
        problems.append(f"run-time inputs {unknown} are not inputs of the model")
    extra = [k for k in params if k not in keys]
    if extra:
        problems.append(f"params has keys {extra} that are not inputs of the model")
    both = [k for k in params if k in runtime]
    if both:
        problems.append(
            f"{both} are run-time inputs of the exported C (given to model_run), so "
            "they cannot also be params in the weights file"
        )
    missing = [k for k in keys if k not in params and k not in runtime]
    if missing:
        problems.append(
            f"params lacks {missing}; pass every parameter, or make data inputs "
            "run-time inputs: compile(data_keys={...}) or export_c(inputs=(...))"
        )
    if problems:
        msg = "export_c: " + "; ".join(problems) + f". Model inputs: {list(keys)}."
        raise InputKeyError(msg)
    result = {}
    for key, shape, dtype in zip(
        keys, plan.input_shapes, plan.input_dtypes, strict=True
    ):
        if key not in params:
            continue
        array = np.asarray(params[key])
        if array.dtype != np.dtype(dtype):
            widen = np.dtype(dtype).kind == "i" and (
                array.dtype.kind == "i"
                or (array.dtype.kind == "u" and array.dtype.itemsize < 8)
            )
            if not widen:
                msg = (
                    f"export_c: params[{key!r}] has dtype {array.dtype}; the model "
                    f"was compiled for {dtype}. Convert it with backend.array(...); "
                    "nothing is cast silently."
                )
                raise DtypeError(msg)
            array = array.astype(dtype)
        if array.shape != shape:
            msg = (
                f"export_c: params[{key!r}] has shape {list(array.shape)}; the model "
                f"was compiled for {list(shape)}."
            )
            raise ShapeError(msg)
        result[key] = array
    return result


@dataclass(frozen=True)
class _Entry:
    """One array of the weights file and the ``io[]`` slot it is bound to."""

    name: str
    array: np.ndarray
    slot: int


class _Layout:
    """Where every input, output, parameter and constant of the exported C lives."""

    def __init__(
        self,
        plan: Plan,
        runtime: tuple[str, ...],
        weights: dict[str, np.ndarray],
        real: str,
    ) -> None:
        self.plan = plan
        self.itemsize = np.dtype(real).itemsize
        self.real = real
        first_output = len(plan.input_keys)
        first_constant = first_output + len(plan.output_shapes)
        slot_of = {k: i for i, k in enumerate(plan.input_keys)}
        self.entries = [
            _Entry(k, weights[k], slot_of[k]) for k in plan.input_keys if k in weights
        ]
        for index, constant in enumerate(plan.constants):
            self.entries.append(
                _Entry(f"constant:{index}", constant, first_constant + index)
            )
        self.slots = first_constant + len(plan.constants)
        self.input_slots = [slot_of[k] for k in runtime]
        self.inputs = tuple(
            TensorSpec(k, plan.input_shapes[slot_of[k]], plan.input_dtypes[slot_of[k]])
            for k in runtime
        )
        # Per output: ("slot", io slot its buffer is bound to), or where the result
        # is copied from after the call: ("io", slot) or ("ws", byte offset).
        self.sources: list[tuple[str, int]] = []
        outputs = []
        claimed: set[int] = set()
        for key, where in plan.outputs.items():
            if isinstance(where, np.ndarray):
                # Folded to a constant at compile: a weights entry copied out.
                slot = self.slots
                self.slots += 1
                self.entries.append(
                    _Entry(f"constant:{slot - first_constant}", where, slot)
                )
                outputs.append(TensorSpec(key, where.shape, where.dtype.name))
                self.sources.append(("io", slot))
                continue
            loc, shape, dtype = where
            outputs.append(TensorSpec(key, shape, dtype))
            self.sources.append(
                self._source(loc, first_output, first_constant, claimed)
            )
        self.outputs = tuple(outputs)
        # Output slots no output buffer is bound to (an output that aliases another
        # value) still get memory: the generated code may write them.
        self.scratch = [
            (slot, int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
            for slot, (shape, dtype) in enumerate(
                zip(plan.output_shapes, plan.output_dtypes, strict=True),
                start=first_output,
            )
            if slot not in claimed
        ]
        names = [e.name for e in self.entries]
        clash = sorted({n for n in names if names.count(n) > 1})
        if clash:
            msg = (
                f"export_c: parameter keys {clash} clash with the names the weights "
                "file gives the model's constants (constant:<i>); rename the inputs."
            )
            raise InputKeyError(msg)

    def _source(
        self, loc: Loc, first_output: int, first_constant: int, claimed: set[int]
    ) -> tuple[str, int]:
        if loc.kind == "ws":
            return ("ws", loc.index * self.itemsize)
        if loc.kind != "io":
            msg = f"internal: an output stored in {loc.kind}[] by the forward"
            raise CompileError(msg)
        if first_output <= loc.index < first_constant and loc.index not in claimed:
            claimed.add(loc.index)
            return ("slot", loc.index)
        return ("io", loc.index)


# -- files -----------------------------------------------------------------------------
def _write_weights(path: Path, entries: list[_Entry]) -> None:
    names = [e.name.encode("utf-8", errors="surrogateescape") for e in entries]
    # magic, version, count; per entry: name length, name, dtype, rank, dims,
    # offset and size.
    head = 16 + sum(
        4 + len(n) + 8 + 8 * e.array.ndim + 16
        for n, e in zip(names, entries, strict=True)
    )
    offsets = []
    offset = _aligned(head)
    for entry in entries:
        offsets.append(offset)
        offset = _aligned(offset + entry.array.nbytes)
    parts = [MAGIC, struct.pack("<II", VERSION, len(entries))]
    for name, entry, where in zip(names, entries, offsets, strict=True):
        array = entry.array
        parts.append(struct.pack("<I", len(name)) + name)
        parts.append(struct.pack("<II", DTYPE_CODES[array.dtype.name], array.ndim))
        parts.append(struct.pack(f"<{array.ndim}q", *array.shape))
        parts.append(struct.pack("<QQ", where, array.nbytes))
    header = b"".join(parts)
    assert len(header) == head
    with open(path, "wb") as handle:
        handle.write(header)
        position = head
        for entry, where in zip(entries, offsets, strict=True):
            handle.write(b"\0" * (where - position))
            data = np.ascontiguousarray(entry.array)
            data = data.astype(data.dtype.newbyteorder("<"), copy=False)
            handle.write(data.tobytes())
            position = where + data.nbytes


def _aligned(offset: int) -> int:
    return -(-offset // ALIGN_BYTES) * ALIGN_BYTES


def _c_dims(shape: tuple[int, ...]) -> str:
    return "{" + ", ".join(str(d) for d in shape) + "}" if shape else "{0}"


def _describe(spec: TensorSpec) -> str:
    return f"{comment_text(spec.name)}  {spec.dtype} {list(spec.shape)}"


def _header(layout: _Layout, result: CExport) -> str:
    inputs = (
        "\n".join(f" *   {i}: {_describe(s)}" for i, s in enumerate(layout.inputs))
        or " *   (none)"
    )
    outputs = (
        "\n".join(f" *   {i}: {_describe(s)}" for i, s in enumerate(layout.outputs))
        or " *   (none)"
    )
    first_input = layout.inputs[0].name if layout.inputs else "input"
    first_output = layout.outputs[0].name if layout.outputs else "output"
    element = C_TYPES[layout.real]
    return f"""\
/* model.h: one mithril model as standalone C, written by pm.export_c (mithril_c).
 *
 * Inference forward only: model_run computes what pm.evaluate(params, data) returns,
 * for the shapes and dtypes the model was compiled with; there are no gradients. No
 * Python or cffi is needed at build or run time, only a C compiler, libm and OpenBLAS
 * (scipy-openblas32; the Makefile names where it was found at export).
 *
 * Build: `make` (libmodel.a; `make main` links main.c with it), or the one `cc`
 * command at the top of the Makefile (OpenBLAS paths as found at export).
 *
 * Element types: float tensors are {element} ({layout.real}), int tensors int64_t,
 * bool tensors one byte (0 or 1); arrays are C-contiguous (row-major).
 *
 * Run-time inputs (model_inputs[] and model_run_with's inputs[], in this order):
{inputs}
 * Outputs (model_outputs[] and model_run_with's outputs[], in this order):
{outputs}
 *
 * Use:
 *   model_t *m = model_create("{WEIGHTS}");
 *   if (!m) {{ fprintf(stderr, "%s\\n", model_create_error()); return 1; }}
 *   {element} *x = model_input(m, {c_string(first_input)});   (fill it)
 *   int status = model_run(m);
 *   if (status) {{ fprintf(stderr, "%s\\n", model_error(status)); }}
 *   const {element} *y = model_output(m, {c_string(first_output)});
 *   model_free(m);
 *
 * Threads: a model_t runs one call at a time (it owns one workspace); use one per
 * thread. One exported model per program: the generated code and the kernels define
 * global mc_* symbols.
 *
 * Weights file ({WEIGHTS}), little-endian: "MITHRILW" (8 bytes), uint32 version (1),
 * uint32 entry count; per entry: uint32 name length, the name (UTF-8, no NUL), uint32
 * dtype (0 float32, 1 float64, 2 int8, 3 int16, 4 int32, 5 int64, 6 uint8, 7 bool),
 * uint32 rank, rank x int64 dims, uint64 data offset (from the file start, a multiple
 * of 64), uint64 data size in bytes; then the data. Entries: every parameter (by its
 * model key) and the model's constant tensors ("constant:<i>"), in any order.
 * model_create checks every name, dtype and shape against the compiled model.
 */
#ifndef MITHRIL_MODEL_H
#define MITHRIL_MODEL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {{
#endif

#define MODEL_NUM_INPUTS {len(layout.inputs)}
#define MODEL_NUM_OUTPUTS {len(layout.outputs)}

/* One run-time input or output: its key, NumPy dtype name, rank, dims, number of
 * elements and size in bytes. */
typedef struct {{
    const char *name;
    const char *dtype;
    int rank;
    const int64_t *shape;
    int64_t numel;
    size_t nbytes;
}} model_tensor_t;

/* Run-time inputs and outputs, in the order listed above; each array ends with an
 * entry whose name is NULL. */
extern const model_tensor_t model_inputs[];
extern const model_tensor_t model_outputs[];

typedef struct model model_t;

/* Load the weights file and allocate the buffers; NULL on failure, with the reason in
 * model_create_error() (per thread). */
model_t *model_create(const char *weights_path);
const char *model_create_error(void);

/* The model's own buffer for input `name` (model_inputs[i].nbytes bytes), to fill
 * before model_run; NULL for an unknown name. */
void *model_input(model_t *model, const char *name);

/* Run the forward on the model's own input buffers into its own output buffers.
 * Returns 0, or a status > 0 that model_error describes (an index out of range). */
int model_run(model_t *model);

/* Run the forward on caller arrays: inputs[i] holds model_inputs[i], outputs[i]
 * receives model_outputs[i] (C-contiguous, of their dtypes). Same return value. */
int model_run_with(model_t *model, const void *const *inputs, void *const *outputs);

/* The output `name` of the last model_run (model_outputs[i].nbytes bytes); NULL for
 * an unknown name. */
const void *model_output(const model_t *model, const char *name);

/* How many threads model_run / model_run_with use when called from this thread
 * (OpenMP teams in the kernels and loops, matrix products split per thread and
 * OpenBLAS then serial); 1 (serial) until set. Results do not depend on it. */
void model_set_threads(int n);

/* What a nonzero status of model_run / model_run_with means. */
const char *model_error(int status);

/* Free the model, its weights and buffers (NULL is allowed). */
void model_free(model_t *model);

#ifdef __cplusplus
}}
#endif

#endif /* MITHRIL_MODEL_H */
"""


def _source(layout: _Layout) -> str:
    plan = layout.plan

    def tensors(specs: tuple[TensorSpec, ...], name: str) -> list[str]:
        lines = []
        for index, spec in enumerate(specs):
            lines.append(
                f"static const int64_t {name}_shape_{index}[] = {_c_dims(spec.shape)};"
            )
        lines.append(f"const model_tensor_t {name}[] = {{")
        for index, spec in enumerate(specs):
            numel = int(np.prod(spec.shape, dtype=np.int64))
            lines.append(
                f"    {{{c_string(spec.name)}, {c_string(spec.dtype)}, "
                f"{len(spec.shape)}, {name}_shape_{index}, {numel}, {spec.nbytes}u}},"
            )
        lines.append("    {NULL, NULL, 0, NULL, 0, 0u},")
        lines.append("};")
        return lines

    entries = []
    for index, entry in enumerate(layout.entries):
        shape = tuple(int(d) for d in entry.array.shape)
        entries.append(
            f"static const int64_t mc_entry_shape_{index}[] = {_c_dims(shape)};"
        )
    table = [
        f"    {{{c_string(e.name)}, {DTYPE_CODES[e.array.dtype.name]}, "
        f"{e.array.ndim}, mc_entry_shape_{i}, {e.array.nbytes}u, {e.slot}}},"
        for i, e in enumerate(layout.entries)
    ]
    kinds = {"slot": 0, "io": 1, "ws": 2}
    sources = [f"    {{{kinds[k]}, {i}}}," for k, i in layout.sources]
    scratch = [f"    {{{slot}, {size}u}}," for slot, size in layout.scratch]
    errors = [f"    {c_string(text)}," for text in plan.errors]
    workspace = plan.workspace * layout.itemsize
    lines = [
        "/* model.c: written by pm.export_c (mithril_c); see model.h. The first part",
        " * is the forward the C backend generated for this model, unchanged; the",
        " * second the export API around it. */",
        "#include <stdio.h>",
        "#include <stdlib.h>",
        "#include <string.h>",
        '#include "model.h"',
        "",
        plan.source,
        "/* ---- export API ------------------------------------------------------ */",
        "",
        f"#define MC_IO_SLOTS {max(layout.slots, 1)}",
        f"#define MC_NUM_ENTRIES {len(layout.entries)}",
        f"#define MC_NUM_SCRATCH {len(layout.scratch)}",
        f"#define MC_WORKSPACE_BYTES {workspace}u",
        "",
        *tensors(layout.inputs, "model_inputs"),
        *tensors(layout.outputs, "model_outputs"),
        "",
        "/* weights file entries: name, dtype code, rank, dims, bytes, io slot */",
        "typedef struct {",
        "    const char *name; uint32_t dtype; uint32_t rank; const int64_t *shape;",
        "    size_t nbytes; int slot;",
        "} mc_entry_t;",
        *entries,
        "static const mc_entry_t mc_entries[] = {",
        *table,
        "    {NULL, 0, 0, NULL, 0u, -1},",
        "};",
        "",
        "/* run-time input i lives in io[mc_input_slots[i]] */",
        "static const int mc_input_slots[] = {"
        + ", ".join(str(s) for s in layout.input_slots)
        + ("" if layout.input_slots else "-1")
        + "};",
        "/* output i: {0, slot}: its buffer is io[slot]; {1, slot}: copied from",
        " * io[slot]; {2, offset}: copied from the workspace at byte offset */",
        "typedef struct { int kind; size_t index; } mc_source_t;",
        "static const mc_source_t mc_output_sources[] = {",
        *sources,
        "    {-1, 0},",
        "};",
        "/* output slots no output buffer is bound to: slot, bytes */",
        "typedef struct { int slot; size_t nbytes; } mc_scratch_t;",
        "static const mc_scratch_t mc_scratch[] = {",
        *scratch,
        "    {-1, 0u},",
        "};",
        "static const char *const mc_errors[] = {",
        *errors,
        "    NULL,",
        "};",
        "",
        _API,
    ]
    return "\n".join(lines)


_API = r"""struct model {
    real *io[MC_IO_SLOTS];
    real *ws;
    unsigned char *weights;
    void *inputs[MODEL_NUM_INPUTS + 1];
    void *outputs[MODEL_NUM_OUTPUTS + 1];
    void *scratch[MC_NUM_SCRATCH + 1];
};

static _Thread_local char mc_create_error[512];

const char *model_create_error(void) { return mc_create_error; }

static void *mc_alloc(size_t nbytes) {
    void *memory = NULL;
    size_t size = (nbytes + 63u) / 64u * 64u;
    if (posix_memalign(&memory, 64, size ? size : 64u) != 0) return NULL;
    memset(memory, 0, size ? size : 64u);
    return memory;
}

static int mc_fail(model_t *model, const char *path, const char *what) {
    snprintf(mc_create_error, sizeof mc_create_error, "model_create(%s): %s", path,
             what);
    model_free(model);
    return 0;
}

static int mc_read(const unsigned char *data, size_t size, size_t *at, void *out,
                   size_t n) {
    if (*at > size || size - *at < n) return 0;
    memcpy(out, data + *at, n);
    *at += n;
    return 1;
}

static int mc_load(model_t *model, const char *path) {
    char what[400];
    const uint16_t probe = 1;
    if (*(const unsigned char *)&probe != 1)
        return mc_fail(model, path, "the weights are little-endian, this host is not");
    FILE *file = fopen(path, "rb");
    if (!file) return mc_fail(model, path, "cannot open the weights file");
    long size = -1;
    if (fseek(file, 0, SEEK_END) == 0) size = ftell(file);
    if (size < 16 || fseek(file, 0, SEEK_SET) != 0) {
        fclose(file);
        return mc_fail(model, path, "not a weights file (too short)");
    }
    model->weights = mc_alloc((size_t)size);
    if (!model->weights) {
        fclose(file);
        return mc_fail(model, path, "out of memory");
    }
    size_t got = fread(model->weights, 1, (size_t)size, file);
    fclose(file);
    if (got != (size_t)size)
        return mc_fail(model, path, "cannot read the weights file");
    const unsigned char *data = model->weights;
    size_t at = 8;
    uint32_t version = 0, count = 0;
    if (memcmp(data, "MITHRILW", 8) != 0) return mc_fail(model, path, "bad magic");
    mc_read(data, (size_t)size, &at, &version, 4);
    mc_read(data, (size_t)size, &at, &count, 4);
    if (version != 1) return mc_fail(model, path, "unknown weights file version");
    int found[MC_NUM_ENTRIES + 1] = {0};
    for (uint32_t n = 0; n < count; ++n) {
        uint32_t length = 0, dtype = 0, rank = 0;
        uint64_t offset = 0, nbytes = 0;
        if (!mc_read(data, (size_t)size, &at, &length, 4) || length > (size_t)size - at)
            return mc_fail(model, path, "truncated entry table");
        const char *name = (const char *)data + at;
        at += length;
        if (!mc_read(data, (size_t)size, &at, &dtype, 4) ||
            !mc_read(data, (size_t)size, &at, &rank, 4))
            return mc_fail(model, path, "truncated entry table");
        int index = -1;
        for (int e = 0; e < MC_NUM_ENTRIES; ++e) {
            if (strlen(mc_entries[e].name) == length &&
                memcmp(mc_entries[e].name, name, length) == 0) {
                index = e;
                break;
            }
        }
        int shown = length > 200 ? 200 : (int)length;
        if (index < 0) {
            snprintf(what, sizeof what, "unexpected entry '%.*s'", shown, name);
            return mc_fail(model, path, what);
        }
        const mc_entry_t *entry = &mc_entries[index];
        if (found[index]) {
            snprintf(what, sizeof what, "entry '%s' appears twice", entry->name);
            return mc_fail(model, path, what);
        }
        found[index] = 1;
        if (dtype != entry->dtype || rank != entry->rank) {
            snprintf(what, sizeof what,
                     "entry '%s' has dtype code %u and rank %u; the model needs "
                     "%u and %u",
                     entry->name, dtype, rank, entry->dtype, entry->rank);
            return mc_fail(model, path, what);
        }
        for (uint32_t d = 0; d < rank; ++d) {
            int64_t dim = 0;
            if (!mc_read(data, (size_t)size, &at, &dim, 8))
                return mc_fail(model, path, "truncated entry table");
            if (dim != entry->shape[d]) {
                snprintf(what, sizeof what,
                         "entry '%s' has dim %u of size %lld; the model needs %lld",
                         entry->name, d, (long long)dim, (long long)entry->shape[d]);
                return mc_fail(model, path, what);
            }
        }
        if (!mc_read(data, (size_t)size, &at, &offset, 8) ||
            !mc_read(data, (size_t)size, &at, &nbytes, 8))
            return mc_fail(model, path, "truncated entry table");
        if (nbytes != entry->nbytes || offset % 64u != 0 || offset > (uint64_t)size ||
            (uint64_t)size - offset < nbytes) {
            snprintf(what, sizeof what, "entry '%s' has a bad data offset or size",
                     entry->name);
            return mc_fail(model, path, what);
        }
        model->io[entry->slot] = (real *)(model->weights + offset);
    }
    for (int e = 0; e < MC_NUM_ENTRIES; ++e) {
        if (!found[e]) {
            snprintf(what, sizeof what, "entry '%s' is missing", mc_entries[e].name);
            return mc_fail(model, path, what);
        }
    }
    return 1;
}

static model_t *mc_oom(model_t *model, const char *path) {
    mc_fail(model, path, "out of memory");
    return NULL;
}

model_t *model_create(const char *weights_path) {
    mc_create_error[0] = '\0';
    model_t *model = calloc(1, sizeof *model);
    if (!model) {
        snprintf(mc_create_error, sizeof mc_create_error,
                 "model_create: out of memory");
        return NULL;
    }
    if (!mc_load(model, weights_path)) return NULL;
    model->ws = mc_alloc(MC_WORKSPACE_BYTES);
    if (!model->ws) return mc_oom(model, weights_path);
    for (int i = 0; i < MODEL_NUM_INPUTS; ++i) {
        model->inputs[i] = mc_alloc(model_inputs[i].nbytes);
        if (!model->inputs[i]) return mc_oom(model, weights_path);
    }
    for (int i = 0; i < MODEL_NUM_OUTPUTS; ++i) {
        model->outputs[i] = mc_alloc(model_outputs[i].nbytes);
        if (!model->outputs[i]) return mc_oom(model, weights_path);
    }
    for (int i = 0; i < MC_NUM_SCRATCH; ++i) {
        model->scratch[i] = mc_alloc(mc_scratch[i].nbytes);
        if (!model->scratch[i]) return mc_oom(model, weights_path);
        model->io[mc_scratch[i].slot] = (real *)model->scratch[i];
    }
    return model;
}

void *model_input(model_t *model, const char *name) {
    for (int i = 0; i < MODEL_NUM_INPUTS; ++i)
        if (strcmp(model_inputs[i].name, name) == 0) return model->inputs[i];
    return NULL;
}

const void *model_output(const model_t *model, const char *name) {
    for (int i = 0; i < MODEL_NUM_OUTPUTS; ++i)
        if (strcmp(model_outputs[i].name, name) == 0) return model->outputs[i];
    return NULL;
}

int model_run_with(model_t *model, const void *const *inputs, void *const *outputs) {
    for (int i = 0; i < MODEL_NUM_INPUTS; ++i)
        model->io[mc_input_slots[i]] = (real *)(void *)inputs[i];
    for (int i = 0; i < MODEL_NUM_OUTPUTS; ++i)
        if (mc_output_sources[i].kind == 0)
            model->io[mc_output_sources[i].index] = (real *)outputs[i];
    int status = mc_forward(model->io, model->ws);
    if (status) return status;
    for (int i = 0; i < MODEL_NUM_OUTPUTS; ++i) {
        const mc_source_t source = mc_output_sources[i];
        if (source.kind == 1)
            memcpy(outputs[i], model->io[source.index], model_outputs[i].nbytes);
        else if (source.kind == 2)
            memcpy(outputs[i], (unsigned char *)model->ws + source.index,
                   model_outputs[i].nbytes);
    }
    return 0;
}

int model_run(model_t *model) {
    return model_run_with(model, (const void *const *)model->inputs, model->outputs);
}

void model_set_threads(int n) { mc_set_threads(n); }

const char *model_error(int status) {
    int count = (int)(sizeof mc_errors / sizeof mc_errors[0]) - 1;
    if (status == 0) return "no error";
    if (status < 0 || status > count) return "unknown status";
    return mc_errors[status - 1];
}

void model_free(model_t *model) {
    if (!model) return;
    free(model->weights);
    free(model->ws);
    for (int i = 0; i < MODEL_NUM_INPUTS; ++i) free(model->inputs[i]);
    for (int i = 0; i < MODEL_NUM_OUTPUTS; ++i) free(model->outputs[i]);
    for (int i = 0; i < MC_NUM_SCRATCH; ++i) free(model->scratch[i]);
    free(model);
}
"""


def _makefile(
    cflags: tuple[str, ...],
    link: tuple[str, ...],
    ldflags: tuple[str, ...],
    real: str,
    include: str,
    libdir: str,
    command: list[str],
) -> str:
    if any(c in part for part in command for c in "\n\r"):
        msg = f"export_c: a build path holds a line break: {command}"
        raise CompileError(msg)
    objects = " ".join(name.replace(".c", ".o") for name in (SOURCE, *KERNELS))
    return f"""\
# Builds the model exported by pm.export_c (mithril_c); see model.h.
#   make            libmodel.a: the model and its kernels
#   make main       links $(MAIN) (default main.c) with libmodel.a into ./main
# Or, without make, one command (in this directory):
#   {shlex.join(command)}
# OpenBLAS (scipy-openblas32) was found at export in the directories below; override
# them on the command line if it lives elsewhere, e.g.
#   make OPENBLAS_INCLUDE=/opt/openblas/include OPENBLAS_LIBDIR=/opt/openblas/lib
# MC_CFLAGS are the C backend's own flags (keep -ffp-contract=off: results then match
# the backend's); add yours with CFLAGS=..., LDFLAGS=...

CC ?= cc
AR ?= ar
OPENBLAS_INCLUDE ?= {include}
OPENBLAS_LIBDIR ?= {libdir}
OPENBLAS_LIB ?= scipy_openblas
MC_CFLAGS = {" ".join(cflags)} -DMC_REAL={real}
MC_LDFLAGS = {" ".join((*link, *ldflags))}
MAIN ?= main.c
OBJECTS = {objects}

all: libmodel.a

%.o: %.c model.h mithril_c.h
\t$(CC) $(MC_CFLAGS) $(CFLAGS) -I. -I$(OPENBLAS_INCLUDE) -c $< -o $@

libmodel.a: $(OBJECTS)
\t$(AR) rcs $@ $(OBJECTS)

main: $(MAIN) libmodel.a
\t$(CC) $(MC_CFLAGS) $(CFLAGS) -I. $(MAIN) libmodel.a -o $@ $(MC_LDFLAGS) $(LDFLAGS) \\
\t\t-L$(OPENBLAS_LIBDIR) -Wl,-rpath,$(OPENBLAS_LIBDIR) -l$(OPENBLAS_LIB) -lm

clean:
\trm -f $(OBJECTS) libmodel.a main

.PHONY: all clean
"""
