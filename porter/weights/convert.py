"""Stream a torch checkpoint into a Flax NNX checkpoint, one tensor at a time (and back).

`convert_checkpoint(CKPT, OUT, model=...)` is what `porter weights` runs:

1. open the checkpoint (readers.open_checkpoint): names, shapes and dtypes
   of every tensor, no data;
2. plan (plan.plan_load): every key matched to a variable of the model
   (exactly, through its structure; the model may be abstract, built under
   `nnx.eval_shape`, so no parameter memory is allocated) or, without a model,
   to a guessed flax name and layout (guess.guess_targets); in strict mode any
   missing, unexpected or mis-shaped key stops here, before anything is written;
3. for each tensor: read it (safetensors and torch zip entries: from the file
   into a reused buffer; else a memory-mapped view whose pages are given back),
   lay it out (a transposed view), write it; so the peak memory is about two
   tensors, not the checkpoint.

Outputs are written under a temporary name beside OUT and renamed into place
at the end: OUT is the complete result or untouched, never half written. An
OUT overlapping the input is refused; an existing OUT is replaced only with
force=True, and only if it is porter's kind of output (outputs.check_output).

- safetensors: keyed by the dotted flax path (`layers.0.kernel`); the header is
  written first (all shapes and dtypes are known), then each tensor, laid out
  by torch's blocked copy straight into the writer's buffer
  (safetensors_io.SafetensorsWriter: O_DIRECT writes, one fsync at the end). The
  metadata records each flax key's torch key and layout (`porter.torch_keys`),
  which `porter weights --to-torch` uses to go back without the model.
- Orbax: the same tree `nnx.state(model, nnx.Not(nnx.RngState))` gives, saved
  with Orbax's partial saving (`orbax.checkpoint.experimental.v1.partial`) in
  batches of at least 64 MB (or one larger tensor), then finalized; the pytree it writes is
  moved to OUT, so OUT restores with `StandardCheckpointer().restore(OUT,
  abstract_state)` as any Orbax checkpoint of an NNX state does. Where that
  API is missing (older orbax), one `StandardCheckpointer.save` writes it all
  (memory: about three times the checkpoint; the result says so).

`convert_to_torch(FLAX_CKPT, OUT, model=None)` goes back: a flax-keyed
safetensors file (porter's, whose metadata names the torch keys, or any with
`model=`) or an Orbax checkpoint (with `model=`) into a torch state_dict file
(`.safetensors` streamed, or `.pt` through torch.save, which holds it whole).
"""

from __future__ import annotations

import contextlib
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from porter.weights import safetensors_io
from porter.weights.outputs import (OutputError, check_output, orbax_temp, remove, remove_stale_temporaries,
                                     replace_into, temp_sibling)
from porter.weights.plan import KeyMeta, Plan, PlanItem, plan_load, rename_keys
from porter.weights.progress import Progress
from porter.weights.readers import CheckpointError, Extent, ReadInfo, Source, TensorMeta, open_checkpoint
from porter.weights.report import LoadReport, StateDictMismatch

FORMATS = ("orbax", "safetensors")
METADATA_TORCH_KEYS = "porter.torch_keys"
METADATA_TIED = "porter.tied"
METADATA_INITIAL = "porter.initial"


class ConversionError(ValueError):
    """Writing the output failed, or the input cannot be converted; the message says what and where."""


@dataclass
class ConversionResult:
    output: Path
    format: str
    report: LoadReport
    info: ReadInfo
    tensors: int = 0  # every tensor written, `filled` included
    nbytes: int = 0
    filled: int = 0  # of those, the model's variables the checkpoint did not fill: its initial values
    notes: list[str] = field(default_factory=list)


def output_format(output: str | Path, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, not {fmt!r}")
        return fmt
    return "safetensors" if str(output).lower().endswith(".safetensors") else "orbax"


# ---------------------------------------------------------------- sinks


class SafetensorsSink:
    """A safetensors file written tensor by tensor under a temporary name.

    A tensor whose bytes lie in a file as they are (Source.extent) is read from that file straight
    into the writer's buffer when it needs no layout or cast, else into one reused staging buffer
    and laid out from there (no memory map, whose page faults cost more than the reads).
    """

    def __init__(self, output: Path, declared: dict[str, tuple[np.dtype, tuple[int, ...]]],
                 metadata: dict[str, str]):
        largest = max((int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
                       for dtype, shape in declared.values()), default=0)
        from porter.weights.arrays import Scratch

        self.output = output
        self.temp = temp_sibling(output)
        self.file = safetensors_io.open_output(self.temp)
        self.writer = safetensors_io.SafetensorsWriter(self.file, declared, metadata,
                                                       buffer_bytes=max(largest, 16 << 20))
        self.staging = Scratch()
        self.inputs: dict[str, Any] = {}  # path -> open file, for extents

    def add(self, name: str, path: tuple, array: np.ndarray, dtype: np.dtype, release) -> None:
        self.writer.write(name, array, dtype=dtype)
        release()

    def add_extent(self, name: str, extent: Extent, meta: TensorMeta, layout: Any, dtype: np.dtype) -> None:
        source = self.inputs.get(extent.path)
        if source is None:
            source = self.inputs[extent.path] = open(extent.path, "rb", buffering=0)
        check = (lambda crc: extent.check(crc, meta.key)) if extent.crc32 is not None else None
        try:
            if layout.name == "same" and np.dtype(dtype) == meta.dtype:
                self.writer.copy(name, source, extent.offset, extent.nbytes, check=check)
                return
            self.writer.checks.settle()  # the staging buffer is read by no check when it is refilled
            staged = self.staging.take(meta.shape, meta.dtype)
            raw = memoryview(staged.reshape(-1).view(np.uint8))
            safetensors_io.read_exactly(source, extent.offset, raw)
        except EOFError as exc:
            raise CheckpointError(f"{extent.path}: tensor {meta.key!r}: {exc} (the file changed or is truncated)"
                                  ) from None
        if check is not None:  # checked while it is laid out
            self.writer.checks.submit(lambda: check(zlib.crc32(raw)))
        self.writer.write(name, layout.to_flax(staged), dtype=dtype)

    def commit(self, *, force: bool) -> None:
        self.writer.close()
        self._close()
        replace_into(self.temp, self.output, force=force)

    def abort(self) -> None:
        self.writer.abort()
        self._close()
        remove(self.temp)

    def _close(self) -> None:
        self.file.close()
        for source in self.inputs.values():
            source.close()


def _nest(items: Iterable[tuple[tuple, np.ndarray]]) -> dict:
    """{path: array} -> the nested tree nnx.State gives Orbax (each Variable a {"value": array} node)."""
    tree: dict = {}
    for path, array in items:
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = {"value": array}
    return tree


# Each partial save costs about 0.18 s beyond its bytes (a commit, metadata merged and rewritten): 2 GB
# in 16 MB batches took 16 s, in 64 MB batches 13.5 s, in 128 MB batches 9.4 s. Orbax holds about 2.5
# batches in memory: from a .pt, 128 MB batches peaked at 887 MB, 64 MB ones at 650 MB (the bound of
# benchmarks/weights.py for that checkpoint is 744 MB).
ORBAX_BATCH_BYTES = 64 << 20


class OrbaxSink:
    """An Orbax checkpoint of the NNX state tree, saved in batches (see module docstring)."""

    def __init__(self, output: Path, batch_bytes: int):
        self.output = output.absolute()
        self.temp = orbax_temp(self.output)
        self.batch_bytes = batch_bytes
        self.batch: list[tuple[tuple, np.ndarray]] = []
        self.releases: list[Any] = []
        self.pending = 0
        self.everything: list[tuple[tuple, np.ndarray]] = []
        try:
            from orbax.checkpoint.experimental.v1 import partial  # noqa: F401

            self.partial = True
        except ImportError:
            self.partial = False
        self.started = False

    @property
    def note(self) -> str | None:
        if self.partial:
            return None
        return ("this orbax-checkpoint has no partial saving (orbax.checkpoint.experimental.v1.partial): the "
                "Orbax checkpoint was written in one save, holding every tensor in memory")

    def add(self, name: str, path: tuple, array: np.ndarray, dtype: np.dtype, release) -> None:
        # a transposed view goes to Orbax as it is: Orbax copies every array it is given anyway (in
        # memory order, fast), and tensorstore writes any strides; a copy here would be a third one
        if np.dtype(array.dtype) != dtype:
            array = array.astype(dtype)
        if not self.partial:
            self.everything.append((path, np.array(array, copy=True)))
            release()
            return
        if self.batch and self.pending + array.nbytes > self.batch_bytes:
            self._flush()  # a batch holds at most batch_bytes, or one larger tensor alone
        self.batch.append((path, array))
        self.releases.append(release)
        self.pending += array.nbytes

    def _flush(self) -> None:
        if not self.batch:
            return
        from orbax.checkpoint.experimental.v1 import partial

        partial.save(self.temp, _nest(self.batch))
        self.started = True
        for release in self.releases:
            release()
        self.batch, self.releases, self.pending = [], [], 0

    def commit(self, *, force: bool) -> None:
        if not self.partial:
            self._save_whole(force=force)
            return
        from orbax.checkpoint.experimental.v1 import partial

        self._flush()
        if not self.started:  # an empty state: nothing to save partially
            self._save_whole(force=force)
            return
        partial.finalize(self.temp)
        pytree = self.temp / "state"
        if not (pytree / "_METADATA").exists():
            raise ConversionError(f"{self.temp}: Orbax's partial save left no pytree at {pytree.name}/ "
                                  f"(an orbax-checkpoint version porter does not know)")
        replace_into(pytree, self.output, force=force)
        remove(self.temp)

    def _save_whole(self, *, force: bool) -> None:
        import orbax.checkpoint as ocp

        checkpointer = ocp.StandardCheckpointer()
        try:
            checkpointer.save(self.temp, _nest(self.everything))
            checkpointer.wait_until_finished()
        finally:
            checkpointer.close()
        replace_into(self.temp, self.output, force=force)

    def abort(self) -> None:
        for path in (self.temp, self.temp.with_name(self.temp.name + ".partial_save")):
            remove(path)
        for candidate in self.temp.parent.glob(self.temp.name + "*"):
            remove(candidate)


# ---------------------------------------------------------------- torch -> flax


def _metas(source: Source) -> dict[str, KeyMeta]:
    return {k: KeyMeta(m.shape, m.dtype, m.alias_of) for k, m in source.tensors.items()}


def make_plan(source: Source, *, model: Any = None, strip_prefix: Iterable[str] | None = None,
              add_prefix: str | None = None) -> Plan:
    """The plan for converting `source` into `model` (None: by names and shapes)."""
    metas = _metas(source)
    if model is not None:
        from porter.weights.plan import targets_from_model

        targets, ignored = targets_from_model(model)
        return plan_load(targets, ignored, metas, model_name=type(model).__name__, strip=strip_prefix,
                         add=add_prefix)
    from porter.weights.guess import guess_targets, sequential_note

    names, notes = rename_keys(metas, strip=strip_prefix, add=add_prefix, targets=None)
    renamed = {names[k]: KeyMeta(m.shape, m.dtype, names[m.alias_of] if m.alias_of else None)
               for k, m in metas.items()}
    targets, ignored = guess_targets(renamed)
    plan = plan_load(targets, ignored, renamed, model_name="(no model)", strip=[], with_model=False)
    original = {v: k for k, v in names.items()}
    for item in plan.items:
        item.source_key = original[item.key]
        item.tied_keys = [original[k] for k in item.tied_keys]
    plan.renamed = names
    plan.report.prefix = notes
    note = sequential_note(targets)
    if note:
        plan.report.prefix.append(note)
    return plan


def resolve_model(model: Any) -> tuple[Any, Any, str | None]:
    """(model or None, zero-argument builder or None, note) from a module, a builder, or None.

    A builder (a function that constructs the model) is run under nnx.eval_shape: an abstract
    model, no parameter memory. If its constructor cannot be traced, it is built concretely.
    """
    if model is None:
        return None, None, None
    from flax import nnx

    if isinstance(model, nnx.Module):
        return model, None, None
    if not callable(model):
        raise TypeError(f"model must be an nnx.Module or a function that builds one, not {type(model).__name__}")
    try:
        return nnx.eval_shape(model), model, None
    except Exception:  # a constructor jax cannot trace: build it for real
        built = model()
        return built, None, (f"{type(built).__name__} could not be built abstractly (nnx.eval_shape); built "
                             f"concretely, so its parameters take memory during the conversion")


def _uncovered(model: Any, plan: Plan) -> list[tuple[tuple, Any]]:
    """(path, abstract value) of the model's state that the checkpoint does not fill."""
    from flax import nnx

    from porter.weights.writers import STATE_FILTER

    written = {item.target.flax_path for item in plan.items}
    return [(tuple(path), var.get_raw_value()) for path, var in nnx.to_flat_state(nnx.state(model, STATE_FILTER))
            if tuple(path) not in written]


def _initial_values(model: Any, builder: Any, paths: list[tuple]) -> dict[tuple, np.ndarray] | None:
    """The model's initial values at `paths`: read from a concrete model, or computed under jax.jit from the
    builder (XLA computes only what is returned, so the other parameters take no memory). None if neither."""
    import jax
    from flax import nnx

    from porter.weights.writers import STATE_FILTER

    if not paths:
        return {}
    raw = {tuple(p): v.get_raw_value() for p, v in nnx.to_flat_state(nnx.state(model, STATE_FILTER))}
    if all(isinstance(raw[p], (jax.Array, np.ndarray)) for p in paths):
        return {p: np.asarray(raw[p]) for p in paths}
    if builder is None:
        return None

    def initial():
        flat = {tuple(p): v.get_raw_value() for p, v in nnx.to_flat_state(nnx.state(builder(), STATE_FILTER))}
        return [flat[p] for p in paths]

    try:
        values = jax.jit(initial)()
    except Exception:
        concrete = builder()
        flat = {tuple(p): v.get_raw_value() for p, v in nnx.to_flat_state(nnx.state(concrete, STATE_FILTER))}
        values = [flat[p] for p in paths]
    return {p: np.asarray(v) for p, v in zip(paths, values)}


def convert_checkpoint(checkpoint: str | Path | Source, output: str | Path, *, model: Any = None, fmt: str | None = None,
                       key: str | None = None, strict: bool = True, dtype: str = "checkpoint",
                       strip_prefix: Iterable[str] | None = None, add_prefix: str | None = None,
                       force: bool = False, progress: bool | None = None,
                       batch_bytes: int | None = None) -> ConversionResult:
    """Convert a torch checkpoint into a Flax NNX checkpoint at `output`, streaming (see module docstring).

    Raises CheckpointError (unreadable or unsafe input), StateDictMismatch
    (strict mode: the report names every problem; nothing written),
    FileExistsError (output exists, force=False), ConversionError (writing).
    """
    if dtype not in ("checkpoint", "model"):
        raise ValueError(f"dtype must be 'checkpoint' or 'model', not {dtype!r}")
    if dtype == "model" and model is None:
        raise ValueError("dtype='model' needs the model (its variables' dtypes)")
    model, builder, build_note = resolve_model(model)
    output = Path(output)
    fmt = output_format(output, fmt)
    if (output.exists() or output.is_symlink()) and not force:
        raise FileExistsError(f"{output} exists; use --force (force=True) to replace it")
    if isinstance(checkpoint, Source):  # already open (the CLI vets the file before importing the model)
        source_cm: Any = contextlib.nullcontext(checkpoint)
    else:
        source_cm = open_checkpoint(checkpoint, key)
    with source_cm as source:
        check_output(output, fmt, source.files(), force=force)
        stale = remove_stale_temporaries(output)
        name = Path(source.info.path).name
        try:
            plan = make_plan(source, model=model, strip_prefix=strip_prefix, add_prefix=add_prefix)
        except ValueError as exc:
            if isinstance(exc, StateDictMismatch):
                raise
            raise ConversionError(f"{source.info.path}: {exc}") from None
        report = plan.report
        if strict and not report.ok:
            raise StateDictMismatch(report)
        result = ConversionResult(output, fmt, report, source.info)
        result.notes += _stale_note(stale)
        if build_note:
            result.notes.append(build_note)
        extra: dict[tuple, np.ndarray] = {}
        if model is not None:
            uncovered = _uncovered(model, plan)
            values = _initial_values(model, builder, [p for p, _ in uncovered])
            if values is None:
                result.notes.append("not written (the model is abstract and no builder was given): "
                                    + ", ".join(".".join(map(str, p)) for p, _ in uncovered))
            else:
                extra = values
                report.initial = [".".join(map(str, p)) for p in values]
        total = sum(item.meta.nbytes for item in plan.items)
        largest = max((item.meta.nbytes for item in plan.items), default=0)
        if fmt == "safetensors":
            declared = {".".join(map(str, p)): (v.dtype, v.shape) for p, v in extra.items()}
            declared.update({item.target.flax_key: (item.out_dtype(dtype), item.flax_shape) for item in plan.items})
            metadata = {"format": "flax-nnx",
                        METADATA_TORCH_KEYS: json.dumps({item.target.flax_key: [item.key, item.target.layout.name]
                                                         for item in plan.items}, separators=(",", ":"))}
            if report.tied:
                metadata[METADATA_TIED] = json.dumps(report.tied, separators=(",", ":"))
            if report.initial:
                metadata[METADATA_INITIAL] = json.dumps(report.initial, separators=(",", ":"))
            sink: Any = SafetensorsSink(output, declared, metadata)
        else:
            sink = OrbaxSink(output, batch_bytes if batch_bytes is not None else max(largest, ORBAX_BATCH_BYTES))
            if sink.note:
                result.notes.append(sink.note)
        try:
            with Progress(len(plan.items), total, description=f"{name} -> {output.name}",
                          enabled=progress) as bar:
                for path, value in extra.items():
                    sink.add(".".join(map(str, path)), path, value, value.dtype, lambda: None)
                    result.tensors += 1
                    result.filled += 1
                    result.nbytes += value.nbytes
                for item in plan.items:
                    _convert_one(source, plan, item, sink, dtype, report)
                    result.tensors += 1
                    result.nbytes += item.meta.nbytes
                    bar.advance(item.meta.nbytes)
            if strict and not report.ok:  # tied keys with different values, found while reading
                raise StateDictMismatch(report)
            sink.commit(force=force)
        except BaseException:
            sink.abort()
            raise
    return result


def _stale_note(removed: list[str]) -> list[str]:
    if not removed:
        return []
    return [f"removed {len(removed)} temporary file(s) an interrupted earlier run left beside the output: "
            f"{', '.join(removed)}"]


def _convert_one(source: Source, plan: Plan, item: PlanItem, sink: Any, policy: str, report: LoadReport) -> None:
    _check_tied(source, plan, item, report)
    out_dtype = item.out_dtype(policy)
    if out_dtype != np.dtype(item.meta.dtype):
        report.cast[item.key] = (str(item.meta.dtype), str(out_dtype))
    extent = source.extent(item.source_key) if isinstance(sink, SafetensorsSink) else None
    if extent is not None:  # the sink reads the file itself, into its own buffer
        sink.add_extent(item.target.flax_key, extent, source.tensors[item.source_key], item.target.layout,
                        out_dtype)
        source.release(item.source_key)
        return
    laid_out = item.target.layout.to_flax(source.read(item.source_key))
    sink.add(item.target.flax_key, item.target.flax_path, laid_out, out_dtype,
             lambda: source.release(item.source_key))


def _check_tied(source: Source, plan: Plan, item: PlanItem, report: LoadReport) -> None:
    """Keys loaded into the same variable as item.key must hold the same values (a conflict is reported)."""
    from porter.weights.loader import _same_values

    if not item.tied_keys:
        return
    array = source.read(item.source_key)
    for other in item.tied_keys:
        other_array = source.read(other)
        if not _same_values(np.asarray(array), np.asarray(other_array)):
            report.tied_conflicts.append(f"{plan.renamed.get(other, other)} differs from {item.key} (one variable "
                                         f"{item.target.flax_key} in the model); {item.key} is loaded")
        del other_array
        source.release(other)


# ---------------------------------------------------------------- flax -> torch


def convert_to_torch(checkpoint: str | Path, output: str | Path, *, model: Any = None, force: bool = False,
                     progress: bool | None = None) -> ConversionResult:
    """A flax-keyed checkpoint (porter's safetensors, or Orbax/any safetensors with `model`) -> torch state_dict.

    `output` ending in `.safetensors` is streamed; anything else is written with
    torch.save (a zip .pt; it holds every tensor in memory). Tied keys are
    written as one tensor under each name (shared storage in a .pt).
    """
    output = Path(output)
    checkpoint = Path(checkpoint)
    if (output.exists() or output.is_symlink()) and not force:
        raise FileExistsError(f"{output} exists; use --force (force=True) to replace it")
    to_pt = output.suffix.lower() != ".safetensors"
    if checkpoint.is_dir() and (checkpoint / "_METADATA").exists():
        arrays = _restore_orbax_flat(checkpoint, model)
        info = ReadInfo(str(checkpoint), "orbax")
        source: Source = _DictSource(arrays, info)
    else:
        source = open_checkpoint(checkpoint)
    with source:
        check_output(output, "torch" if to_pt else "safetensors", [checkpoint, *source.files()], force=force)
        stale = remove_stale_temporaries(output)
        routes = _torch_routes(source, model, checkpoint)
        _one_tensor_per_torch_key(routes, checkpoint)
        report = LoadReport(model=type(model).__name__ if model is not None else "(from the file's metadata)",
                            mapped_by="model" if model is not None else "metadata")
        missing = [flax_key for flax_key, outs in routes.items() if outs and flax_key not in source.tensors]
        unexpected = [k for k in source.tensors if k not in routes]
        if missing or unexpected:
            report.missing = missing
            report.unexpected = unexpected
            raise StateDictMismatch(report)
        result = ConversionResult(output, "torch", report, source.info, notes=_stale_note(stale))
        order = [(flax_key, torch_key, layout) for flax_key, outs in routes.items() for torch_key, layout in outs]
        shapes = {}
        for flax_key, torch_key, layout in order:
            shape = source.tensors[flax_key].shape
            try:
                shapes[torch_key] = tuple(layout.to_torch(np.empty(shape, dtype=np.int8)).shape)
            except (ValueError, IndexError, np.exceptions.AxisError):
                raise ConversionError(f"{checkpoint}: {flax_key} has shape {shape}, which the {layout.name} "
                                      f"layout cannot take back to torch's") from None
        total = sum(source.tensors[f].nbytes for f, _, _ in order)
        temp = temp_sibling(output)
        try:
            with Progress(len(order), total, description=f"{checkpoint.name} -> {output.name}",
                          enabled=progress) as bar:
                if to_pt:
                    _write_pt(source, order, temp, bar)
                else:
                    declared = {t: (source.tensors[f].dtype, shapes[t]) for f, t, _ in order}
                    with safetensors_io.open_output(temp) as f:
                        largest = max((source.tensors[f].nbytes for f, _, _ in order), default=0)
                        writer = safetensors_io.SafetensorsWriter(f, declared, {"format": "pt"},
                                                                  buffer_bytes=max(largest, 16 << 20))
                        try:
                            for flax_key, torch_key, layout in order:
                                writer.write(torch_key, layout.to_torch(source.read(flax_key)))
                                source.release(flax_key)
                                bar.advance(source.tensors[flax_key].nbytes)
                            writer.close()
                        except BaseException:
                            writer.abort()
                            raise
            replace_into(temp, output, force=force)
        except BaseException:
            remove(temp)
            raise
        for flax_key, torch_key, layout in order:
            report.loaded.append(torch_key)
            if layout.name != "same":
                report.transposed[torch_key] = layout.name
        result.tensors = len(order)
        result.nbytes = total
    return result


def _write_pt(source: Source, order: list, temp: Path, bar: Progress) -> None:
    import torch

    from porter.weights.arrays import _bit_views

    views = {np.dtype(np_type): (torch_type, int_type) for torch_type, (int_type, np_type) in _bit_views().items()}
    state_dict = {}
    made: dict[str, Any] = {}
    for flax_key, torch_key, layout in order:
        if flax_key not in made or layout.name != made[flax_key][1]:
            array = np.require(layout.to_torch(np.asarray(source.read(flax_key))), requirements="C")
            if array.dtype in views:
                torch_type, int_type = views[array.dtype]
                int_np = {torch.int16: np.int16, torch.uint8: np.uint8}[int_type]
                tensor = torch.from_numpy(array.view(int_np).copy()).view(torch_type)
            else:
                tensor = torch.from_numpy(array.copy())
            made[flax_key] = (tensor, layout.name)
            source.release(flax_key)
        state_dict[torch_key] = made[flax_key][0]
        bar.advance(source.tensors[flax_key].nbytes)
    torch.save(state_dict, temp)


def _torch_routes(source: Source, model: Any, checkpoint: Path) -> dict[str, list[tuple[str, Any]]]:
    """{flax key: [(torch key, layout), ...]} from the model, else from porter's metadata."""
    routes: dict[str, list[tuple[str, Any]]] = {}
    if model is not None:
        from porter.weights.plan import targets_from_model

        from flax import nnx

        from porter.weights.writers import STATE_FILTER

        targets, _ = targets_from_model(model)
        for key, target in targets.items():
            outs = routes.setdefault(target.flax_key, [])  # a non-persistent buffer: known, not written
            if target.persistent:
                outs.append((key, target.layout))
        for path, _ in nnx.to_flat_state(nnx.state(model, STATE_FILTER)):  # state torch has no name for
            routes.setdefault(".".join(map(str, path)), [])
        return routes
    if METADATA_TORCH_KEYS not in source.info.metadata:
        raise ConversionError(f"{checkpoint}: no {METADATA_TORCH_KEYS} metadata (not written by porter weights); "
                              f"pass --model (model=) to name the torch keys")
    return _routes_from_metadata(source.info.metadata, checkpoint)


def _routes_from_metadata(metadata: dict[str, str], checkpoint: Path) -> dict[str, list[tuple[str, Any]]]:
    """{flax key: [(torch key, layout), ...]} from porter's metadata, every entry checked."""
    from porter.weights.layouts import LAYOUTS

    def bad(what: str) -> ConversionError:
        return ConversionError(f"{checkpoint}: malformed porter metadata: {what}. Convert the torch checkpoint "
                               f"again with porter weights, or pass --model (model=) to name the torch keys")

    def parsed(name: str, default: str, kind: type) -> Any:
        try:
            value = json.loads(metadata.get(name, default))
        except (ValueError, RecursionError) as exc:
            raise bad(f"{name} is not JSON ({exc})") from None
        if not isinstance(value, kind):
            raise bad(f"{name} is a JSON {type(value).__name__}, not {'an object' if kind is dict else 'a list'}")
        return value

    routes: dict[str, list[tuple[str, Any]]] = {}
    for flax_key, entry in parsed(METADATA_TORCH_KEYS, "{}", dict).items():
        if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(x, str) for x in entry)):
            raise bad(f"{METADATA_TORCH_KEYS}[{flax_key!r}] is {entry!r}, not [torch key, layout]")
        torch_key, layout = entry
        if layout not in LAYOUTS:
            raise bad(f"{METADATA_TORCH_KEYS}[{flax_key!r}] names the layout {layout!r}; porter knows "
                      f"{', '.join(sorted(LAYOUTS))}")
        routes.setdefault(flax_key, []).append((torch_key, LAYOUTS[layout]))
    for flax_key in parsed(METADATA_INITIAL, "[]", list):  # the model's initial values, not from the torch checkpoint
        if not isinstance(flax_key, str):
            raise bad(f"{METADATA_INITIAL} holds {flax_key!r}, not a key")
        routes.setdefault(flax_key, [])
    by_torch_key = {torch_key: outs for outs in routes.values() for torch_key, _ in outs}
    for torch_key, loaded in parsed(METADATA_TIED, "{}", dict).items():
        if not isinstance(loaded, str) or loaded not in by_torch_key:
            raise bad(f"{METADATA_TIED} ties {torch_key!r} to {loaded!r}, which no tensor of the file is")
        outs = by_torch_key[loaded]
        outs.append((torch_key, next(layout for k, layout in outs if k == loaded)))
    return routes


def _one_tensor_per_torch_key(routes: dict[str, list[tuple[str, Any]]], checkpoint: Path) -> None:
    """Two flax tensors going to one torch key would leave one of them out: refused."""
    seen: dict[str, str] = {}
    for flax_key, outs in routes.items():
        for torch_key, _ in outs:
            if torch_key in seen:
                sources = f"twice from {flax_key!r}" if seen[torch_key] == flax_key else \
                    f"from both {seen[torch_key]!r} and {flax_key!r}"
                raise ConversionError(f"{checkpoint}: the torch key {torch_key!r} comes {sources}: one tensor would "
                                      f"be dropped, so nothing is written. Fix the file's porter metadata (or pass "
                                      f"--model)")
            seen[torch_key] = flax_key


class _DictSource(Source):
    def __init__(self, arrays: dict[str, np.ndarray], info: ReadInfo):
        from porter.weights.readers import TensorMeta

        self.arrays = arrays
        self.info = info
        self.tensors = {k: TensorMeta(k, tuple(a.shape), a.dtype, info.path) for k, a in arrays.items()}

    def read(self, key: str) -> np.ndarray:
        return self.arrays[key]


def _restore_orbax_flat(path: Path, model: Any) -> dict[str, np.ndarray]:
    if model is None:
        raise ConversionError(f"{path}: going back from an Orbax checkpoint needs the model (--model / model=), "
                              f"whose structure names the torch keys")
    import jax
    import orbax.checkpoint as ocp
    from flax import nnx

    from porter.weights.writers import STATE_FILTER

    abstract = nnx.state(model, STATE_FILTER)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype) if hasattr(x, "shape") else x,
                            abstract)
    checkpointer = ocp.StandardCheckpointer()
    try:
        state = checkpointer.restore(path.absolute(), abstract)
    except Exception as exc:  # orbax raises many kinds; the message names the tree mismatch
        raise ConversionError(f"{path}: cannot restore it into {type(model).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    finally:
        checkpointer.close()
    return {".".join(map(str, p)): np.asarray(v.get_raw_value()) for p, v in nnx.to_flat_state(state)}


__all__ = ["convert_checkpoint", "convert_to_torch", "ConversionError", "ConversionResult", "CheckpointError",
           "OutputError", "make_plan", "output_format"]
