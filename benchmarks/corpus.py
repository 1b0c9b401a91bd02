"""Measure porter on real third-party PyTorch model packages: PASS, REPORTED or SILENT per model.

    python benchmarks/corpus.py                          # the whole corpus (benchmarks/corpus.toml)
    python benchmarks/corpus.py --only timm conformer    # packages (or package:Class) to run
    python benchmarks/corpus.py --json results.json --keep /tmp/converted

Each package of the table is fetched at run time from the package registry (`pip download --no-deps`,
a wheel, else the sdist) into a cache outside the repository (~/.cache/porter-corpus, --cache), never
installed into the environment and never committed. Its package directory is converted as it is with
`porter convert PKG -o OUT` (the report is kept as porter_report.json), then each model runs in a
subprocess of its own with a timeout, stage by stage:

  original   the torch model builds (torch.manual_seed, eval mode) and runs on the inputs
  import     the converted module imports
  construct  the converted class builds with rngs=nnx.Rngs(seed)
  load       porter.load_torch_state_dict loads the original's state_dict (strict)
  eager      the converted model runs on the inputs (eval mode)
  jit        ... and under nnx.jit
  check      porter.check.check_equivalence (outputs, per-module outputs, gradients; eval mode) passes

and is classified (see /work/shared/DESIGN.md "Measuring on real code"):

  PASS       every stage passed;
  REPORTED   a stage failed and porter's report has an error-level diagnostic in a converted file on
             the failing path: the files of the traceback's frames inside OUT, or for a load failure or
             a numerical difference (no traceback in OUT) the converted files the model imported;
  SILENT     a stage failed with no such diagnostic (an info or a warning does not count);
  BROKEN     the original itself did not build or run with the table's config (nor, in porter check,
             with gradients), or, where only gradients differ, its own gradient fails
             torch.autograd.gradcheck: not porter's difference, not counted.

REPORTED* is a REPORTED whose errors are all elsewhere in those files: none on a statement of the
traceback (mapped back to the original's lines through a diff: porter keeps the layout) nor on a
binding such a statement uses, up to three steps back (`LayerNorm = partial(nn.LayerNorm, ...)` ->
`norm_fn = partial(norm_class, dim)` -> `self.norm = norm_fn()`); for a state_dict mismatch, from the
attribute that holds the key. Such an error does not say why, so read REPORTED* as silent in spirit.
A model that fails under jit only is still compared eagerly, for information (`eagerly, porter check`).

    python benchmarks/corpus.py --reclassify DIR         # classify a --keep run again, running nothing
"""

from __future__ import annotations

import argparse
import ast
import difflib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
import traceback
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TABLE = Path(__file__).with_name("corpus.toml")
DEFAULT_CACHE = Path(os.environ.get("PORTER_CORPUS_CACHE", Path.home() / ".cache" / "porter-corpus"))
STAGES = ("original", "import", "construct", "load", "eager", "jit", "check")
PASS, REPORTED, SILENT, BROKEN = "PASS", "REPORTED", "SILENT", "BROKEN"


# ---------------------------------------------------------------------------------------------- table

@dataclass
class Package:
    name: str
    version: str
    module: str  # the import name: a directory or a single .py file of the distribution
    deps: list[str] = field(default_factory=list)
    shims: list[str] = field(default_factory=list)


@dataclass
class Model:
    package: str
    cls: str  # "module.path:Class"
    kwargs: dict = field(default_factory=dict)
    inputs: list[dict] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.package}:{self.cls.rpartition(':')[2]}"


def load_table(path: Path = TABLE) -> tuple[dict[str, Package], list[Model]]:
    data = tomllib.loads(path.read_text())
    packages = {name: Package(name=name, **spec) for name, spec in data["packages"].items()}
    models = [Model(**spec) for spec in data["models"]]
    unknown = sorted({m.package for m in models} - set(packages))
    if unknown:
        raise SystemExit(f"{path}: models of packages not in the table: {', '.join(unknown)}")
    return packages, models


def select(models: list[Model], only: list[str] | None) -> list[Model]:
    if not only:
        return models
    chosen = [m for m in models if m.package in only or m.key in only]
    missing = [name for name in only if not any(m.package == name or m.key == name for m in models)]
    if missing:
        raise SystemExit(f"--only: not in the corpus: {', '.join(missing)}")
    return chosen


# ------------------------------------------------------------------------------------------- fetching

def pip(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=timeout)


def fetch(requirement: str, cache: Path) -> Path:
    """Download one distribution (no dependencies) and unpack it; the directory to put on sys.path."""
    name, _, version = requirement.partition("==")
    slug = f"{name}-{version or 'latest'}"
    unpacked = cache / "unpacked" / slug
    if (unpacked / ".complete").exists():
        return _import_root(unpacked)
    downloads = cache / "downloads" / slug
    downloads.mkdir(parents=True, exist_ok=True)
    if not _archives(downloads):
        got = pip("download", "--no-deps", "--only-binary=:all:", "-d", str(downloads), requirement)
        if got.returncode != 0:  # no wheel for this version: the sdist
            got = pip("download", "--no-deps", "--no-binary=:all:", "-d", str(downloads), requirement)
        if got.returncode != 0:
            raise RuntimeError(f"pip download {requirement} failed: {got.stderr.strip().splitlines()[-1:]}")
    archive = _archives(downloads)[0]
    shutil.rmtree(unpacked, ignore_errors=True)
    unpacked.mkdir(parents=True)
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(unpacked)
    else:
        with tarfile.open(archive) as tf:
            tf.extractall(unpacked, filter="data")
    (unpacked / ".complete").write_text(archive.name)
    return _import_root(unpacked)


def _archives(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.endswith((".whl", ".tar.gz", ".zip")))


def _import_root(unpacked: Path) -> Path:
    """A wheel unpacks to the import root; an sdist to NAME-VERSION/ (with src/ in some)."""
    if any(p.suffix == ".dist-info" for p in unpacked.iterdir()):
        return unpacked
    top = next(p for p in unpacked.iterdir() if p.is_dir())
    return top / "src" if (top / "src").is_dir() else top


def module_path(root: Path, module: str) -> Path:
    directory = root / module
    if directory.is_dir():
        return directory
    single = root / f"{module}.py"
    if single.is_file():
        return single
    raise RuntimeError(f"{root}: no package or module {module!r}")


# ----------------------------------------------------------------------------------------- converting

def convert(source: Path, out: Path, report_dir: Path, timeout: int, porter: Path = ROOT,
            deps: list[str] = ()) -> dict:
    """`porter convert SOURCE -o OUT` with the porter of the checkout `porter`, the package's deps installed (on
    the path, as a user's would be: porter reads their source); its JSON report, and how it went."""
    shutil.rmtree(out, ignore_errors=True)
    report_dir.mkdir(parents=True, exist_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(porter), *deps])}
    started = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "porter", "convert", str(source), "-o", str(out),
                               "--report", str(report_dir)], capture_output=True, text=True, timeout=timeout,
                              env=env)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"porter convert timed out after {timeout}s", "report": None}
    seconds = time.perf_counter() - started
    report_file = report_dir / "porter_report.json"
    report = json.loads(report_file.read_text()) if report_file.exists() else None
    ok = out.exists() and report is not None
    return {"ok": ok, "seconds": round(seconds, 2), "returncode": done.returncode, "report": report,
            "error": None if ok else (done.stderr.strip()[-2000:] or "porter convert wrote nothing")}


# -------------------------------------------------------------------------------------------- running

def run_job(job: dict, timeout: int, porter: Path = ROOT) -> dict:
    """Run one model's stages in a subprocess (this file with --worker); a crash or a hang is a result."""
    job_file = Path(job["result"]).with_suffix(".job.json")
    job_file.write_text(json.dumps(job))
    hang = Path(job["result"]).with_suffix(".hang.txt")
    env = {**os.environ, "PYTHONPATH": str(porter), "CORPUS_HANG_FILE": str(hang),
           "CORPUS_TIMEOUT": str(timeout)}
    try:
        done = subprocess.run([sys.executable, __file__, "--worker", str(job_file)], capture_output=True,
                              text=True, timeout=timeout + 30, env=env)
        tail = (done.stdout + done.stderr)[-3000:]
    except subprocess.TimeoutExpired:
        tail = "killed"
    result_file = Path(job["result"])
    if result_file.exists():
        return json.loads(result_file.read_text())
    dump = hang.read_text() if hang.exists() else ""
    timed_out = "Timeout (" in dump
    return {"stage": _stage_from_dump(dump) or "original", "passed": False, "imported": [],
            "failure": {"type": "Timeout" if timed_out else "WorkerDied",
                        "message": f"no result after {timeout}s" if timed_out else f"the worker died: {tail[-300:]}",
                        "frames": _frames_from_dump(dump)}}


def _frames_from_dump(text: str) -> list[dict]:
    """faulthandler's 'File "...", line N in f' lines of the first thread it dumps (the one running),
    outermost first (it prints innermost first)."""
    frames, threads = [], 0
    for line in text.splitlines():
        line = line.strip()
        threads += line.startswith(("Thread 0x", "Current thread 0x"))
        if threads > 1:
            break
        if line.startswith('File "'):
            filename, _, rest = line[6:].partition('", line ')
            lineno, _, function = rest.partition(" in ")
            if lineno.strip().isdigit():
                frames.append({"file": filename, "line": int(lineno), "function": function, "source": ""})
    return frames[::-1]


def _stage_from_dump(text: str) -> str | None:
    for line in text.splitlines():
        if line.startswith("stage: "):
            return line[7:].strip()
    return None


# the worker: one model, in its own process ----------------------------------------------------------

SHIMS = {
    # The PyPI torchvision wheel is a CUDA build: with this CPU torch its operator library does not load
    # and `import torchvision` fails registering fake kernels of two operators it never defined.
    # Defining their schemas lets it import (the models here use none of torchvision's operators).
    "torchvision_ops": lambda: _define_ops("torchvision", [
        "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
        "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    ]),
}
_LIBRARIES = []


def _define_ops(namespace: str, schemas: list[str]) -> None:
    import torch

    library = torch.library.Library(namespace, "DEF")
    for schema in schemas:
        library.define(schema)
    _LIBRARIES.append(library)


class StageFailed(Exception):
    pass


def worker(job_file: Path) -> None:
    import faulthandler

    job = json.loads(job_file.read_text())
    hang_file = os.environ.get("CORPUS_HANG_FILE")
    if hang_file:
        hang = open(hang_file, "w")  # noqa: SIM115 (open for faulthandler until the process ends)
        job["_hang"] = hang
        faulthandler.dump_traceback_later(max(5, int(os.environ.get("CORPUS_TIMEOUT", "300")) - 5), exit=True,
                                          file=hang)
    result = run_model(job)
    Path(job["result"]).write_text(json.dumps(result, indent=1, default=str))


def run_model(job: dict) -> dict:
    """Every stage of one model in this process; the result (JSON-ready) says how far it got and why not.

    job: original (the import root of the torch package), converted (the directory holding the converted
    package), deps (import roots of other distributions), shims, cls, kwargs, inputs, seed."""
    import numpy as np

    result = {"stage": "original", "passed": False, "failure": None, "imported": [], "check": None}
    converted_root = Path(job["converted"]).resolve()
    for shim in job.get("shims", []):
        SHIMS[shim]()
    sys.path[:0] = job.get("deps", [])
    module_name, _, class_name = job["cls"].partition(":")
    top = module_name.split(".")[0]
    seed = job.get("seed", 0)
    stage = _Stage(result, job.get("_hang"))
    try:
        with stage("original"):
            import torch

            sys.path.insert(0, job["original"])
            torch_module = __import__(module_name, fromlist=["_"])
            kwargs = _resolve(job["kwargs"], torch_side=True)
            torch.manual_seed(seed)
            torch_model = getattr(torch_module, class_name)(**kwargs).eval()
            args, kw = make_inputs(job["inputs"], seed)
            with torch.no_grad():
                torch_model(*map(torch.from_numpy, args), **{k: torch.from_numpy(v) for k, v in kw.items()})
            state_dict = torch_model.state_dict()
            sys.path.remove(job["original"])
            for name in [n for n in sys.modules if n == top or n.startswith(top + ".")]:
                del sys.modules[name]
        sys.path.insert(0, str(converted_root))
        with stage("import"):
            import jax.numpy as jnp
            from flax import nnx

            flax_module = __import__(module_name, fromlist=["_"])
            flax_class = getattr(flax_module, class_name)
        with stage("construct"):
            from porter.check.modelspec import takes_keyword  # a class that builds nothing random takes no rngs
            rngs = {"rngs": nnx.Rngs(seed)} if takes_keyword(flax_class, "rngs") else {}
            flax_model = flax_class(**_resolve(job["kwargs"], torch_side=False, seed=seed), **rngs)
        with stage("load"):
            from porter import load_torch_state_dict

            load_torch_state_dict(flax_model, state_dict, strict=True)
        jax_args, jax_kw = [jnp.asarray(a) for a in args], {k: jnp.asarray(v) for k, v in kw.items()}
        with stage("eager"):
            flax_model.eval()
            eager = flax_model(*jax_args, **jax_kw)
        try:
            with stage("jit"):
                jitted = nnx.jit(lambda model, a, k: model(*a, **k))(flax_model, jax_args, jax_kw)
                _same(eager, jitted)
        except _Failed:  # the class is decided; whether the eager numbers are right is worth knowing
            result["eager_check"] = _eager_check(torch_model, flax_model, args, kw, seed)
            raise
        with stage("check"):
            from porter.check import check_equivalence

            report = check_equivalence(torch_model, flax_model, *args, kw_inputs=kw, seed=seed, mode="eval")
            result["check"] = _check_summary(report)
            if not report.passed:
                if all(r.kind.startswith("grad ") for r in report.failures):
                    result["original_gradient_wrong"] = torch_gradient_wrong(torch_model, args, kw)
                first = report.failures[0] if report.failures else None
                raise StageFailed(f"{len(report.failures)} of {len(report.rows)} arrays differ"
                                  + (f", first {first.kind} {first.name} rel {first.rel:.3g}" if first else "")
                                  + (f"; first diverging module {result['check']['divergence']}"
                                     if result["check"]["divergence"] else ""))
        result["stage"], result["passed"] = "done", True
    except _Failed:
        pass
    finally:
        result["imported"] = sorted({str(Path(m.__file__).resolve()) for m in list(sys.modules.values())
                                     if getattr(m, "__file__", None)
                                     and _inside(Path(m.__file__).resolve(), converted_root)})
    return result


class _Failed(Exception):
    pass


class _Stage:
    """`with stage(name):` records the stage reached and turns an exception into the result's failure."""

    def __init__(self, result: dict, hang_file=None):
        self.result, self.hang_file, self.name = result, hang_file, None

    def __call__(self, name: str) -> "_Stage":
        self.name = name
        self.result["stage"] = name
        if self.hang_file is not None:
            self.hang_file.seek(0)
            self.hang_file.write(f"stage: {name}\n")
            self.hang_file.flush()
        return self

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None:
            return False
        if isinstance(exc, KeyboardInterrupt):
            return False
        self.result["failure"] = describe(exc)
        raise _Failed from exc


def describe(exc: BaseException) -> dict:
    """Type, one-line message and the frames (outermost first) of an exception and of what caused it."""
    frames, seen, current = [], set(), exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        frames = [{"file": f.filename, "line": f.lineno, "function": f.name, "source": (f.line or "").strip()}
                  for f in traceback.extract_tb(current.__traceback__)] + frames
        current = current.__cause__ or current.__context__
    message = " ".join(str(exc).split())
    load = getattr(exc, "report", None)  # porter's StateDictMismatch: the keys that did not fit
    keys = [] if load is None else [*getattr(load, "missing", []), *getattr(load, "unexpected", []),
                                    *(m.key for m in getattr(load, "mismatched", []))]
    return {"type": type(exc).__name__, "message": message[:500], "frames": frames, "keys": keys,
            "missing_module": getattr(exc, "name", None) if isinstance(exc, ImportError) else None}


def _check_summary(report) -> dict:
    first = report.first_divergence
    return {"passed": report.passed, "text": report.format(),
            "failures": [f"{r.kind} {r.name} max_abs {r.max_abs:.3g} rel {r.rel:.3g}" for r in report.failures],
            "divergence": _divergence(report),
            "divergence_path": None if first is None else first.row.path,
            "divergence_class": None if first is None else first.row.torch_class}


def _eager_check(torch_model, flax_model, args, kw, seed) -> dict:
    """porter's check without jit, for a model that runs eagerly only (information, not the class)."""
    from porter.check import check_equivalence

    try:
        report = check_equivalence(torch_model, flax_model, *args, kw_inputs=kw, seed=seed, mode="eval", jit=False)
        failed_grads = [r for r in report.failures if r.kind == "grad"]  # gradients trace the model too
        if not failed_grads:
            return _check_summary(report)
        error = f"{failed_grads[0].name}: {failed_grads[0].note}"[:300]
    except Exception as exc:  # outputs alone then
        error = one_line(describe(exc))
    try:
        return {**_check_summary(check_equivalence(torch_model, flax_model, *args, kw_inputs=kw, seed=seed,
                                                   mode="eval", jit=False, grads=False)),
                "outputs_only": error}
    except Exception as exc:
        return {"passed": False, "error": one_line(describe(exc))}


def _divergence(report) -> str | None:
    first = report.first_divergence
    return None if first is None else first.row.label


def _same(eager, jitted) -> None:
    import jax
    import numpy as np

    for a, b in zip(jax.tree_util.tree_leaves(eager), jax.tree_util.tree_leaves(jitted)):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            raise StageFailed(f"under jit an output has shape {b.shape}, eagerly {a.shape}")
        if a.dtype.kind == "f" and not np.allclose(a, b, rtol=1e-4, atol=1e-5, equal_nan=True):
            raise StageFailed(f"under jit an output differs from the eager one by {np.max(np.abs(a - b)):.3g}")


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def _resolve(value, *, torch_side: bool, seed: int = 0):
    """kwargs values: {ref = "module:Name"} and {call = "module:Name", kwargs = {...}} built on this side."""
    if isinstance(value, dict) and "ref" in value:
        module, _, name = value["ref"].partition(":")
        return getattr(__import__(module, fromlist=["_"]), name)
    if isinstance(value, dict) and "call" in value:
        target = _resolve({"ref": value["call"]}, torch_side=torch_side)
        kwargs = _resolve(value.get("kwargs", {}), torch_side=torch_side, seed=seed)
        if torch_side:
            return target(**kwargs)
        from flax import nnx
        from porter.check.modelspec import takes_keyword  # a class that builds nothing random takes no rngs

        return target(**kwargs, **({"rngs": nnx.Rngs(seed)} if takes_keyword(target, "rngs") else {}))
    if isinstance(value, dict):
        return {k: _resolve(v, torch_side=torch_side, seed=seed) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, torch_side=torch_side, seed=seed) for v in value]
    return value


def make_inputs(specs: list[dict], seed: int):
    """(positional arrays, keyword arrays) as numpy, drawn from default_rng(seed)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    args, kwargs = [], {}
    for spec in specs:
        shape, dtype = tuple(spec["shape"]), spec.get("dtype", "float32")
        if dtype == "bool":
            array = rng.integers(0, 2, size=shape).astype(bool)
        elif dtype.startswith("int"):
            array = rng.integers(spec.get("low", 0), spec["high"], size=shape).astype(dtype)
        else:
            array = rng.standard_normal(shape).astype(dtype)
        if "name" in spec:
            kwargs[spec["name"]] = array
        else:
            args.append(array)
    return args, kwargs


# ------------------------------------------------------------------------------------------ classifying

@dataclass
class Verdict:
    cls: str
    path: list[str]  # converted files (relative to the converted package) on the failing path
    errors: list[dict]  # error-level diagnostics in those files
    innermost: dict | None = None  # the innermost frame inside the converted tree
    # those of the errors on a failing statement or on a binding it uses (a few steps back)
    at_spot: list[dict] = field(default_factory=list)

    @property
    def label(self) -> str:
        """The class; REPORTED* where no error is on a failing statement or the bindings it uses."""
        return f"{self.cls}*" if self.cls == REPORTED and not self.at_spot else self.cls


def converted_relative(file: str, converted_package: Path) -> str | None:
    path = Path(file).resolve()
    root = converted_package.resolve()
    if root.is_file():
        return root.name if path == root else None
    return path.relative_to(root).as_posix() if _inside(path, root) else None


def _original_raised_in_check(failure: dict) -> bool:
    """porter check runs the original with gradients (inputs and weights requiring grad); an original that
    raises only there (an in-place add to a view of a parameter) never ran as the check needs: its fault."""
    return failure.get("type") == "ModelRunError" and failure.get("message", "").startswith("the original model raised")


def torch_gradient_wrong(torch_model, args, kw) -> str | None:
    """Why torch's own gradient of the original cannot be the reference, or None: torch.autograd.gradcheck
    (float64, fast mode) of the original's outputs against its floating inputs. A torch bug (seen: BatchNorm2d
    in eval mode given a non-contiguous incoming gradient, torch 2.13 CPU) is not a difference porter made."""
    import copy

    import numpy as np
    import torch

    model = copy.deepcopy(torch_model).double()
    arrays = [np.asarray(a) for a in args]
    floating = [i for i, a in enumerate(arrays) if np.issubdtype(a.dtype, np.floating)]
    if not floating:
        return None
    tensors = [torch.tensor(a, dtype=torch.float64 if i in floating else None) for i, a in enumerate(arrays)]

    def outputs(*xs):
        full = list(tensors)
        for i, x in zip(floating, xs):
            full[i] = x
        out = model(*full, **kw)
        leaves = out if isinstance(out, (tuple, list)) else [out]
        return tuple(t for t in leaves if isinstance(t, torch.Tensor) and t.is_floating_point())

    inputs = tuple(tensors[i].clone().requires_grad_() for i in floating)
    ok = torch.autograd.gradcheck(outputs, inputs, fast_mode=True, raise_exception=False)
    return None if ok else "the original's own gradient fails torch.autograd.gradcheck (float64): torch's is wrong"


def classify(result: dict, report: dict | None, converted_package: Path,
             original_package: Path | None = None) -> Verdict:
    """PASS / REPORTED / SILENT / BROKEN for one model's result and its package's porter report.

    With the original package, the errors on a statement of the traceback (mapped back to the
    original's lines) are told apart from those elsewhere in the same files (Verdict.at_spot)."""
    if result.get("passed"):
        return Verdict(PASS, [], [])
    failure = result.get("failure") or {}
    if result.get("stage") == "original" or _original_raised_in_check(failure) \
            or result.get("original_gradient_wrong"):
        return Verdict(BROKEN, [], [])
    inside = [(f, converted_relative(f["file"], converted_package)) for f in failure.get("frames", [])]
    inside = [(f, rel) for f, rel in inside if rel is not None]
    path = list(dict.fromkeys(rel for _, rel in inside))
    missing = failure.get("missing_module")
    if missing:  # importing a converted module porter could not write: that file is on the path
        path += [rel for rel in _module_files(missing, converted_package) if rel not in path]
    if not path:  # a load failure or a numerical difference: what the model imported
        path = list(dict.fromkeys(rel for rel in (converted_relative(f, converted_package)
                                                  for f in result.get("imported", [])) if rel))
    files = {f["relative"]: f for f in (report or {}).get("files", [])}
    errors = [{**d, "relative": rel} for rel in path for d in files.get(rel, {}).get("diagnostics", [])
              if d["severity"] == "error"]
    innermost = inside[-1][0] if inside else None
    at_spot = []
    if original_package is not None and errors:
        keys = failure.get("keys") or re.findall(r"([A-Za-z_][\w.]*\.\w+) \(", failure.get("message", ""))
        check = result.get("check") or {}
        diverging = [] if inside else [check.get("divergence_path") or ""]
        attributes = [] if inside else _attributes(keys) + _attributes([f"{p}.output" for p in diverging if p])
        classes = [check["divergence_class"]] if not inside and check.get("divergence_class") else []
        spans = explaining_spans(inside, attributes, path, converted_package, original_package, classes)
        at_spot = [d for d in errors if any(d["relative"] == file and first <= d["line"] <= last
                                            for file, first, last in spans)]
    if innermost:
        innermost = {**innermost, "file": inside[-1][1]}
        if original_package is not None:
            innermost["original_line"] = original_line(innermost, converted_package, original_package)
    return Verdict(REPORTED if errors else SILENT, path, errors, innermost, at_spot)


def _attributes(keys: list[str]) -> list[str]:
    """The attributes that hold the state_dict entries named: 'blocks.0.res_conv.weight' -> 'res_conv'."""
    parts = [key.split(".") for key in keys]
    return list(dict.fromkeys(p[-2] for p in parts if len(p) >= 2 and not p[-2].isdigit()))


def _pair(converted_package: Path, original_package: Path, relative: str) -> tuple[Path, Path]:
    original = original_package / relative if original_package.is_dir() else original_package
    converted = converted_package / relative if converted_package.is_dir() else converted_package
    return original, converted


def original_line(frame: dict, converted_package: Path, original_package: Path) -> int | None:
    """The original's line number for a frame in a converted file (relative path in frame['file'])."""
    original, converted = _pair(converted_package, original_package, frame["file"])
    try:
        return _map_line(original.read_text().splitlines(), converted.read_text().splitlines(), frame["line"])
    except OSError:
        return None


class SourceIndex:
    """One original file's statements: which holds a line, what each binds and uses, in which function."""

    def __init__(self, text: str):
        self.tree = ast.parse(text)
        self.function_of: dict[int, ast.AST | None] = {}  # id(statement) -> enclosing function (None: module)
        self.bindings: dict[str, list[ast.stmt]] = {}
        self._index(self.tree, None)

    def _index(self, node: ast.AST, function: ast.AST | None) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.stmt):
                self.function_of[id(child)] = function
                for name in _bound(child):
                    self.bindings.setdefault(name, []).append(child)
            inner = child if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) else function
            self._index(child, inner)

    def statement_at(self, line: int) -> ast.stmt | None:
        """The smallest statement holding the line (a compound statement only for its header's lines)."""
        best = None
        for node in ast.walk(self.tree):
            if isinstance(node, ast.stmt) and _span(node)[0] <= line <= _span(node)[1]:
                if best is None or _span(node)[1] - _span(node)[0] < _span(best)[1] - _span(best)[0]:
                    best = node
        return best

    def explaining(self, seeds: list[ast.stmt], names: set[str] = frozenset(), depth: int = 3) -> list[tuple[int, int]]:
        """Spans of the seed statements and of the statements binding what they use, `depth` steps back.

        A name used in a function is looked up among that function's bindings and the module's (and
        `self.X` in the whole file), so that a common local name elsewhere does not count."""
        chosen = {id(s): s for s in seeds}
        wanted = [(name, None) for name in names] + [(n, self.function_of.get(id(s))) for s in seeds for n in _used(s)]
        for _ in range(depth):
            found = []
            for name, function in wanted:
                for binding in self.bindings.get(name, []):
                    scope = self.function_of.get(id(binding))
                    if id(binding) not in chosen and (name.startswith("self.") or scope is None or scope is function
                                                      or function is None):
                        chosen[id(binding)] = binding
                        found.append(binding)
            wanted = [(n, self.function_of.get(id(b))) for b in found for n in _used(b)]
        return [_span(s) for s in chosen.values()]


def _span(node: ast.stmt) -> tuple[int, int]:
    """A statement's lines; a compound statement's header only."""
    body = getattr(node, "body", None)
    if isinstance(body, list) and body and isinstance(body[0], ast.stmt):
        return node.lineno, max(node.lineno, body[0].lineno - 1)
    return node.lineno, node.end_lineno or node.lineno


def _header(node: ast.stmt) -> list[ast.AST]:
    """What a statement evaluates itself: for a compound statement, not its body."""
    skip = {"body", "orelse", "handlers", "finalbody"}
    return [value for name, value in ast.iter_fields(node) if name not in skip
            for value in (value if isinstance(value, list) else [value]) if isinstance(value, ast.AST)]


def _name_of(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
        return f"self.{node.attr}"
    return None


def _used(statement: ast.stmt) -> set[str]:
    return {name for part in _header(statement) for node in ast.walk(part)
            if isinstance(getattr(node, "ctx", None), ast.Load) and (name := _name_of(node)) and name != "self"}


def _bound(statement: ast.stmt) -> list[str]:
    targets: list[ast.AST] = []
    if isinstance(statement, ast.Assign):
        targets = statement.targets
    elif isinstance(statement, (ast.AnnAssign, ast.AugAssign, ast.For, ast.AsyncFor)):
        targets = [statement.target]
    elif isinstance(statement, (ast.With, ast.AsyncWith)):
        targets = [item.optional_vars for item in statement.items if item.optional_vars is not None]
    elif isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [statement.name]
    elif isinstance(statement, (ast.Import, ast.ImportFrom)):
        return [(alias.asname or alias.name).split(".")[0] for alias in statement.names]
    return [name for target in targets for node in ast.walk(target) if (name := _name_of(node))
            and isinstance(getattr(node, "ctx", None), ast.Store)]


def explaining_spans(frames: list[tuple[dict, str]], attributes: list[str], path: list[str],
                     converted_package: Path, original_package: Path,
                     classes: list[str] = ()) -> list[tuple[str, int, int]]:
    """(file, first, last) of the original's statements that explain a failure: the statement each
    converted frame was running and the bindings of the names it uses; for a failure with no frame
    (a state_dict mismatch, a numerical difference), the bindings of the attributes named
    (`self.res_conv` for 'layers.0.res_conv.weight', or for the first diverging module) and the
    whole class of that module, in the files on the path."""
    spans = []
    for relative in dict.fromkeys([rel for _, rel in frames] + (path if attributes or classes else [])):
        original, converted = _pair(converted_package, original_package, relative)
        try:
            original_text, converted_text = original.read_text(), converted.read_text()
            index = SourceIndex(original_text)
        except (OSError, SyntaxError, ValueError):
            continue
        seeds = []
        for frame, rel in frames:
            if rel == relative:
                line = _map_line(original_text.splitlines(), converted_text.splitlines(), frame["line"])
                statement = index.statement_at(line)
                if statement is not None:
                    seeds.append(statement)
        names = {f"self.{a}" for a in attributes}
        spans += [(relative, first, last) for first, last in index.explaining(seeds, names)]
        spans += [(relative, node.lineno, node.end_lineno) for node in ast.walk(index.tree)
                  if isinstance(node, ast.ClassDef) and node.name in classes]
    return spans


def _map_line(original: list[str], converted: list[str], line: int) -> int:
    """The original's line (1-based) for a converted line, through a diff of the two files."""
    index = line - 1
    matcher = difflib.SequenceMatcher(None, original, converted, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if j1 <= index < j2 or (tag == "delete" and index == j1):
            if tag == "equal":
                return i1 + (index - j1) + 1
            return i1 + min(index - j1, max(i2 - i1 - 1, 0)) + 1
    return line


def _module_files(dotted: str, converted_package: Path) -> list[str]:
    """The converted package's files a dotted module name may mean (pkg.sub -> sub.py, sub/__init__.py)."""
    parts = dotted.split(".")
    if parts[0] != converted_package.name.removesuffix(".py"):
        return []
    inner = "/".join(parts[1:])
    return [inner + ".py", (inner + "/" if inner else "") + "__init__.py"]


# ------------------------------------------------------------------------------------------------ main

@dataclass
class Row:
    package: str
    version: str
    model: str
    stage: str
    cls: str
    label: str = ""  # the class, REPORTED* where the errors are only elsewhere in the files on the path
    failure: str = ""
    where: str = ""
    errors: list[str] = field(default_factory=list)
    path: list[str] = field(default_factory=list)
    check: str | None = None
    eager_check: str | None = None  # a model that fails under jit only: porter check run eagerly
    convert_seconds: float | None = None
    detail: dict = field(default_factory=dict)


def one_line(failure: dict | None) -> str:
    if not failure:
        return ""
    return f"{failure['type']}: {failure['message']}"[:300]


def measure(packages: dict[str, Package], models: list[Model], *, cache: Path, work: Path, timeout: int,
            convert_timeout: int, seed: int = 0, porter: Path = ROOT, log=print) -> list[Row]:
    rows, conversions = [], {}
    for model in models:
        package = packages[model.package]
        started = time.perf_counter()
        try:
            if package.name not in conversions:
                root = fetch(f"{package.name}=={package.version}", cache)
                deps = [str(fetch(dep, cache)) for dep in package.deps]
                source = module_path(root, package.module)
                out = work / package.name / "converted" / source.name
                conversions[package.name] = (root, deps, source, out,
                                             convert(source, out, work / package.name, convert_timeout, porter, deps))
            root, deps, source, out, conversion = conversions[package.name]
        except Exception as exc:  # the registry or the archive: nothing measured
            rows.append(Row(package.name, package.version, model.cls, "fetch", BROKEN, failure=f"{exc}"[:300]))
            log(f"{model.key}: fetch failed: {exc}")
            continue
        if not conversion["ok"]:
            rows.append(Row(package.name, package.version, model.cls, "convert", SILENT,
                            failure=(conversion["error"] or "")[:300]))
            log(f"{model.key}: conversion failed: {conversion['error'][:300]}")
            continue
        result_file = work / package.name / f"{model.cls.replace(':', '.')}.result.json"
        result_file.unlink(missing_ok=True)
        job = {"original": str(root), "converted": str(out.parent), "deps": deps, "shims": package.shims,
               "cls": model.cls, "kwargs": model.kwargs, "inputs": model.inputs, "seed": seed,
               "result": str(result_file)}
        result = run_job(job, timeout, porter)
        rows.append(row_of(package, model, result, conversion, source, out))
        log(f"{model.key}: {rows[-1].label} at {result['stage']} ({time.perf_counter() - started:.0f}s)"
            + (f"  {rows[-1].failure[:160]}" if rows[-1].cls != PASS else ""))
    return rows


def row_of(package: Package, model: Model, result: dict, conversion: dict, source: Path, out: Path) -> Row:
    verdict = classify(result, conversion["report"], out, source)
    where = ""
    if verdict.innermost:
        frame = verdict.innermost
        was = f" (original line {frame['original_line']})" if frame.get("original_line") else ""
        where = f"{frame['file']}:{frame['line']}{was}: {frame['source']}"
    spot = [d for d in verdict.errors if d in verdict.at_spot]
    shown = spot + [d for d in verdict.errors if d not in verdict.at_spot]
    return Row(package.name, package.version, model.cls, result["stage"], verdict.cls, verdict.label,
               failure=one_line(result.get("failure")), where=where,
               errors=[f"{d['relative']}:{d['line']}:{d['col']} {d['code']} {d['message']}"[:240]
                       + (" (on the failing statement or a binding it uses)" if d in spot else "") for d in shown],
               path=verdict.path, check=(result.get("check") or {}).get("text"),
               eager_check=_eager_line(result.get("eager_check")),
               convert_seconds=conversion.get("seconds"),
               detail={"failure": result.get("failure"), "imported": result.get("imported"),
                       "check_failures": (result.get("check") or {}).get("failures")})


def _eager_line(check: dict | None) -> str | None:
    if check is None:
        return None
    if "error" in check:
        return f"raised {check['error']}"
    verdict = "PASS" if check["passed"] else f"FAIL ({'; '.join(check['failures'][:2])})"
    return verdict + (f" (outputs only: with gradients it raised {check['outputs_only'][:120]})"
                      if check.get("outputs_only") else "")


def reclassify(packages: dict[str, Package], models: list[Model], kept: Path) -> list[Row]:
    """The rows again from a --keep directory's results and reports, running nothing."""
    rows = []
    for model in models:
        package = packages[model.package]
        result_file = kept / package.name / f"{model.cls.replace(':', '.')}.result.json"
        job_file = result_file.with_suffix(".job.json")
        report_file = kept / package.name / "porter_report.json"
        if not (result_file.exists() and job_file.exists() and report_file.exists()):
            continue
        job = json.loads(job_file.read_text())
        source = module_path(Path(job["original"]), package.module)
        conversion = {"report": json.loads(report_file.read_text())}
        rows.append(row_of(package, model, json.loads(result_file.read_text()), conversion, source,
                           Path(job["converted"]) / source.name))
    return rows


def table(rows: list[Row]) -> str:
    header = ("package", "version", "model", "stage", "class")
    body = [(r.package, r.version, r.model.rpartition(":")[2], r.stage if r.cls != PASS else "all",
             r.label or r.cls) for r in rows]
    widths = [max(len(x[i]) for x in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in [header, *body]]
    details = []
    for r in rows:
        if r.cls == PASS:
            continue
        details.append(f"{r.package} {r.model} [{r.label or r.cls} at {r.stage}]")
        details.append(f"    {r.failure}")
        if r.where:
            details.append(f"    at {r.where}")
        if r.eager_check is not None:
            details.append(f"    eagerly, porter check: {r.eager_check}")
        for error in r.errors[:6]:
            details.append(f"    porter error: {error}")
        if len(r.errors) > 6:
            details.append(f"    ... {len(r.errors) - 6} more error(s) on the failing path")
    return "\n".join(lines + (["", "Failures", "--------", *details] if details else []))


def totals(rows: list[Row]) -> dict:
    counted = [r for r in rows if r.cls != BROKEN]
    count = {c: sum(r.cls == c for r in counted) for c in (PASS, REPORTED, SILENT)}
    elsewhere = sum(r.label == REPORTED + "*" for r in counted)
    return {**count, "reported_elsewhere": elsewhere, "measured": len(counted), "broken": len(rows) - len(counted),
            "pass_percent": round(100 * count[PASS] / len(counted), 1) if counted else 0.0}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="packages (or package:Class) to run")
    parser.add_argument("--table", type=Path, default=TABLE, help="the corpus table (TOML)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                        help=f"where downloads are kept (default {DEFAULT_CACHE})")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="keep the converted trees, reports and results in DIR (emptied first)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the full results as JSON")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per model (default 300)")
    parser.add_argument("--convert-timeout", type=int, default=900, help="seconds per package conversion")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--porter", type=Path, default=ROOT, metavar="CHECKOUT",
                        help="measure the porter of another checkout (a worktree); default this one")
    parser.add_argument("--reclassify", type=Path, metavar="DIR",
                        help="run nothing: classify again the results kept in DIR by an earlier --keep run")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args.worker)
        return 0
    packages, models = load_table(args.table)
    models = select(models, args.only)
    if args.reclassify:
        return report(reclassify(packages, models, args.reclassify), args.json)
    if args.keep:
        shutil.rmtree(args.keep, ignore_errors=True)
        work = args.keep
        work.mkdir(parents=True)
    else:
        import tempfile

        work = Path(tempfile.mkdtemp(prefix="porter-corpus-"))
    try:
        rows = measure(packages, models, cache=args.cache, work=work.resolve(), timeout=args.timeout,
                       convert_timeout=args.convert_timeout, seed=args.seed, porter=args.porter.resolve(),
                       log=lambda text: print(text, file=sys.stderr, flush=True))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return report(rows, args.json)


def report(rows: list[Row], json_path: Path | None) -> int:
    summary = totals(rows)
    print(table(rows))
    print()
    print(f"PASS {summary['PASS']}  REPORTED {summary['REPORTED']}"
          + (f" ({summary['reported_elsewhere']} REPORTED*: no error on a failing statement or the bindings it "
             f"uses, only elsewhere in its files)" if summary["reported_elsewhere"] else "")
          + f"  SILENT {summary['SILENT']}  "
          f"of {summary['measured']} measured ({summary['pass_percent']}% PASS)"
          + (f"; {summary['broken']} not measured (BROKEN: the original failed with the table's config)"
             if summary["broken"] else ""))
    if json_path:
        json_path.write_text(json.dumps({"totals": summary, "rows": [asdict(r) for r in rows]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
