"""Build generated C with cffi (API mode) into a cached extension module.

The kernels (``csrc/*.c``) are compiled once per element type and flags into a static
archive in the cache; each model then compiles only its generated source and links the
archive. The cache key of a model is a hash of the generated source, the kernel
sources, the flags and the Python/cffi versions; a hit imports the cached library
without running the compiler. Cache: ``$MITHRIL_C_CACHE``, else
``$XDG_CACHE_HOME/mithril_c``, else ``~/.cache/mithril_c``.

Whatever sits in the cache is loaded into the process, so the cache is private: it is
created with mode 0700, and a directory owned by another user or writable by group or
others is refused. Libraries and kernel archives are built in a temporary directory
inside the cache and renamed into place (atomic); the SHA-256 of each is recorded
beside it (``<file>.sha256``, written the same way) and checked before every use. A
file whose record is missing or does not match (planted, truncated, damaged) is
rebuilt, never loaded.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import platform
import shlex
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
import threading
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType

from mithril_c._emit import c_string
from mithril_core.errors import CompileError, MithrilError

CSRC = Path(__file__).resolve().parent / "csrc"
KERNELS = (
    "elementwise.c",
    "reduction.c",
    "shape.c",
    "linalg.c",
    "gemm_avx512.c",
    "nn.c",
    "loss.c",
)
# Portable: no -march=native (cached libraries may move between machines) and no
# -ffast-math (results must match NumPy). -fno-math-errno and -fno-trapping-math
# change no value: they let sqrt and branch-free selects (relu, sigmoid) vectorise.
# -fopenmp: kernels and generated loops run on OpenMP teams (gcc's libgomp).
CFLAGS = (
    "-O3",
    "-fopenmp",
    "-fno-math-errno",
    "-fno-trapping-math",
    "-ffp-contract=off",
    "-std=gnu11",
    "-Werror=implicit-function-declaration",
)
LDFLAGS = ("-fopenmp",)
# The vector extensions a build may target, widest first, as /proc/cpuinfo names them.
ISAS = ("avx512f", "avx2")


@cache
def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags as Linux names them (x86-64 only; else ``None``)."""
    if platform.machine() not in ("x86_64", "AMD64") or sys.platform != "linux":
        return None
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return None


def isa_flags() -> tuple[str, ...]:
    """Flags compiling for the widest vector ISA of this machine (x86-64 Linux),
    instead of AVX-512, AVX2 and baseline clones of every loop picked at load time:
    a third of the compile time, and the loops OpenMP outlines into their own
    functions (which inherit no clone) get the wide ISA too. The flags are part of
    every cache key, so a cache moved to another machine is not reused there."""
    flags = cpu_flags()
    if flags is None:
        return ()
    best = next((isa for isa in ISAS if isa in flags), None)
    return ("-DMC_SINGLE_TARGET", *(() if best is None else (f"-m{best}",)))


@dataclass
class Stats:
    """How often the compiler ran and how often the cache answered (tests read it)."""

    compiled: int = 0
    cached: int = 0


STATS = Stats()


class UnsafeCacheError(MithrilError, PermissionError):
    """The C build cache is not private to the current user: libraries found there
    could have been planted, so nothing is built or loaded from it."""


_RECORD = ".sha256"


def cache_dir() -> Path:
    """The build cache, created (mode 0700) if missing and checked to be private."""
    explicit = os.environ.get("MITHRIL_C_CACHE")
    if explicit:
        path = Path(explicit)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
            os.path.expanduser("~"), ".cache"
        )
        path = Path(base) / "mithril_c"
    if not path.exists():  # an existing non-directory is reported just below
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    _check_private(path)
    return path


def _check_private(path: Path) -> None:
    info = path.stat()
    uid = os.getuid()
    problem = None
    if not stat.S_ISDIR(info.st_mode):
        problem = "is not a directory"
    elif info.st_uid != uid:
        problem = f"is owned by uid {info.st_uid}, not by the current user (uid {uid})"
    elif info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        mode = stat.S_IMODE(info.st_mode)
        problem = f"is writable by group or others (mode {mode:04o})"
    if problem is None:
        return
    msg = (
        f"Backend 'c': the build cache {path} {problem}; a library planted there "
        "would run inside this process, so it is not used. Make it private "
        f"(`chmod 700 {shlex.quote(str(path))}` on a directory you own) or set "
        "MITHRIL_C_CACHE to a private directory of your own (created with mode "
        "0700 if missing)."
    )
    raise UnsafeCacheError(msg)


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verified(path: Path) -> bool:
    """Whether ``path`` exists and its content has the SHA-256 recorded at build
    time (a missing or unreadable record counts as a mismatch)."""
    record = path.with_name(path.name + _RECORD)
    try:
        expected = record.read_text(encoding="ascii").strip()
        return _digest(path) == expected
    except (OSError, UnicodeDecodeError):
        return False


def _install(built: Path, target: Path, workdir: Path) -> None:
    """Move ``built`` (inside ``workdir``, in the cache) to ``target`` with its
    SHA-256 record, each by an atomic rename. The record goes first: a reader that
    sees the new record beside the old file finds a mismatch and rebuilds."""
    record = workdir / (target.name + _RECORD)
    record.write_text(_digest(built) + "\n", encoding="ascii")
    os.replace(record, target.with_name(target.name + _RECORD))
    os.replace(built, target)


def _write_atomic(path: Path, text: str) -> None:
    handle, name = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


def _openblas() -> tuple[str, str, str]:
    import scipy_openblas32

    return (
        scipy_openblas32.get_include_dir(),
        scipy_openblas32.get_lib_dir(),
        scipy_openblas32.get_library(),
    )


def cdef(real: str, functions: tuple[str, ...]) -> str:
    lines = [f"typedef {real} real;", "void mc_set_threads(int n);"]
    for name in functions:
        if name == "mc_backward":
            lines.append(f"int {name}(real *const *io, real *const *og, real *ws);")
        else:
            lines.append(f"int {name}(real *const *io, real *ws);")
    return "\n".join(lines)


def build(
    source: str,
    *,
    real: str,
    functions: tuple[str, ...],
    extra_cflags: tuple[str, ...] = (),
    extra_ldflags: tuple[str, ...] = (),
) -> tuple[ModuleType, Path]:
    """Compile (or load from the cache) ``source``; return the module and the path of
    the generated C file beside it."""
    include, libdir, library = _openblas()
    cflags = (*CFLAGS, *isa_flags(), *extra_cflags)
    digest = hashlib.sha256()
    for part in (
        source,
        real,
        repr(functions),
        repr(cflags),
        repr((*LDFLAGS, *extra_ldflags)),
        sys.version,
        _cffi_version(),
        libdir,
        *((CSRC / name).read_text() for name in (*KERNELS, "mithril_c.h")),
    ):
        digest.update(part.encode())
        digest.update(b"\0")
    name = f"_mithril_c_{digest.hexdigest()[:24]}"
    directory = cache_dir()
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    library_path = directory / f"{name}{suffix}"
    source_path = directory / f"{name}.model.c"
    if name in sys.modules or _verified(library_path):
        STATS.cached += 1
        return _load(name, library_path), source_path
    archive = _kernels(real, cflags, include)
    _write_atomic(source_path, source)
    _compile(
        name,
        source,
        source_path,
        library_path,
        real=real,
        functions=functions,
        cflags=cflags,
        ldflags=extra_ldflags,
        openblas=(include, libdir, library),
        archive=archive,
    )
    STATS.compiled += 1
    return _load(name, library_path), source_path


def _kernels(real: str, cflags: tuple[str, ...], include: str) -> Path:
    """The static archive of the kernels for ``real`` and ``cflags`` (built once)."""
    compiler = shlex.split(sysconfig.get_config_var("CC") or "cc")
    digest = hashlib.sha256()
    for part in (
        real,
        repr(cflags),
        repr(compiler),
        include,
        *((CSRC / name).read_text() for name in (*KERNELS, "mithril_c.h")),
    ):
        digest.update(part.encode())
        digest.update(b"\0")
    directory = cache_dir()
    archive = directory / f"_mithril_c_kernels_{digest.hexdigest()[:24]}.a"
    if _verified(archive):
        return archive
    workdir = Path(tempfile.mkdtemp(prefix="kernels-", dir=directory))
    try:
        flags = ["-fPIC", *cflags, f"-DMC_REAL={real}", f"-I{CSRC}", f"-I{include}"]
        jobs = [
            (
                subprocess.Popen(
                    [*compiler, "-c", *flags, str(CSRC / kernel), "-o", str(obj)],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                ),
                obj,
            )
            for kernel in KERNELS
            for obj in [workdir / kernel.replace(".c", ".o")]
        ]
        failures = []
        for job, _ in jobs:
            output, _ = job.communicate()
            if job.returncode:
                failures.append(output)
        objects = [str(obj) for _, obj in jobs]
        if not failures:
            ar = sysconfig.get_config_var("AR") or "ar"
            result = subprocess.run(
                [*shlex.split(ar), "rcs", str(workdir / archive.name), *objects],
                capture_output=True,
                text=True,
            )
            if result.returncode:
                failures.append(result.stdout + result.stderr)
        if failures:
            msg = (
                f"Backend 'c': compiling the kernels in {CSRC} failed:\n"
                + "\n".join(failures).strip()
            )
            raise CompileError(msg)
        _install(workdir / archive.name, archive, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return archive


def _cffi_version() -> str:
    import cffi

    return cffi.__version__


def _compile(
    name: str,
    source: str,
    source_path: Path,
    library_path: Path,
    *,
    real: str,
    functions: tuple[str, ...],
    cflags: tuple[str, ...],
    ldflags: tuple[str, ...],
    openblas: tuple[str, str, str],
    archive: Path,
) -> None:
    import cffi

    include, libdir, library = openblas
    ffi = cffi.FFI()
    ffi.cdef(cdef(real, functions))
    # The #line makes compiler messages point into the generated file.
    ffi.set_source(
        name,
        f"#line 1 {c_string(str(source_path))}\n{source}",
        include_dirs=[str(CSRC), include],
        extra_objects=[str(archive)],
        library_dirs=[libdir],
        libraries=[library],
        define_macros=[("MC_REAL", real)],
        extra_compile_args=list(cflags),
        extra_link_args=[f"-Wl,-rpath,{libdir}", *LDFLAGS, *ldflags],
    )
    workdir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=library_path.parent))
    try:
        log = workdir / "compiler.log"
        try:
            with _captured_output(log):
                built = ffi.compile(tmpdir=str(workdir), verbose=False)
        except Exception as exc:
            output = log.read_text(errors="replace") if log.exists() else ""
            msg = (
                f"Backend 'c': compiling the generated file {source_path} failed: "
                f"{exc}\n{output.strip()}"
            )
            raise CompileError(msg) from exc
        _install(Path(built), library_path, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


class _captured_output:  # noqa: N801 - used as a context manager
    """Send fds 1 and 2 (where the compiler subprocess writes) to a file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self.handle = open(self.path, "wb")  # noqa: SIM115 - closed in __exit__
        self.saved = [os.dup(1), os.dup(2)]
        os.dup2(self.handle.fileno(), 1)
        os.dup2(self.handle.fileno(), 2)

    def __exit__(self, *exc: object) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self.saved[0], 1)
        os.dup2(self.saved[1], 2)
        for fd in self.saved:
            os.close(fd)
        self.handle.close()


_LOADING = threading.Lock()


def _load(name: str, path: Path) -> ModuleType:
    with _LOADING:  # threads loading one library get one module
        module = sys.modules.get(name)
        if module is not None:
            return module
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
        return module
