"""Training helpers that porter copies, as source text, into converted files:
losses with torch's semantics, the few optimizers whose optax alias does not
follow torch's update rule, gradient clipping, parameter groups,
learning-rate schedulers that step like torch's, and checkpoints of model and
optimizer state (torch.save / torch.load of state dicts).

Same contract as ``porter/emitted.py`` (which re-exports every name in
``DEPENDS``): each helper is a self-contained top-level definition that uses
only the module-level imports below and the helpers ``DEPENDS`` names.
Converted code never imports porter.
"""

import functools
import math
import pickle
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

# ---------------------------------------------------------------------------
# Losses: torch.nn.functional / torch.nn loss semantics (reductions, weights,
# ignore_index, label smoothing) on jax arrays.


def reduce_loss(losses, reduction):
    """torch's loss reduction: 'mean', 'sum' or 'none'."""
    if reduction == "mean":
        return jnp.mean(losses)
    if reduction == "sum":
        return jnp.sum(losses)
    if reduction == "none":
        return losses
    raise ValueError(f"{reduction!r} is not a valid value for reduction")


def cross_entropy_loss(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """torch's ``F.cross_entropy`` / ``nn.CrossEntropyLoss`` on logits (N, C, *d), or (C,) unbatched.

    ``target`` holds class indices (integers, shape (N, *d)) or class
    probabilities (floats, the shape of ``input``). With indices, targets equal
    to ``ignore_index`` count for nothing and 'mean' divides by the summed
    weights of the targets kept, as torch does; label smoothing mixes in the
    mean over classes of the (weighted) log-probabilities.
    """
    target = jnp.asarray(target)
    axis = 0 if input.ndim == 1 else 1
    n_classes = input.shape[axis]
    log_probs = jax.nn.log_softmax(input, axis=axis)
    class_shape = [1] * input.ndim
    class_shape[axis] = n_classes
    if jnp.issubdtype(target.dtype, jnp.floating):  # class probabilities
        if label_smoothing > 0:
            target = target * (1 - label_smoothing) + label_smoothing / n_classes
        if weight is not None:
            target = target * jnp.reshape(weight, class_shape)
        return reduce_loss(-jnp.sum(log_probs * target, axis=axis), reduction)
    keep = target != ignore_index
    safe_target = jnp.where(keep, target, 0)
    picked = jnp.take_along_axis(log_probs, jnp.expand_dims(safe_target, axis), axis=axis)
    class_weight = jnp.ones(n_classes, log_probs.dtype) if weight is None else jnp.asarray(weight, log_probs.dtype)
    target_weight = jnp.where(keep, class_weight[safe_target], 0)
    losses = -jnp.squeeze(picked, axis) * target_weight
    if label_smoothing > 0:
        smooth = -jnp.sum(log_probs * jnp.reshape(class_weight, class_shape), axis=axis)
        losses = (1 - label_smoothing) * losses + label_smoothing / n_classes * jnp.where(keep, smooth, 0)
    if reduction == "mean":  # torch: NaN when no weight is kept, and then zero gradients
        total = jnp.sum(target_weight)
        return jnp.where(total == 0, jnp.nan, jnp.sum(losses) / jnp.where(total == 0, 1, total))
    return reduce_loss(losses, reduction)


def nll_loss(input, target, weight=None, ignore_index=-100, reduction="mean"):
    """torch's ``F.nll_loss`` / ``nn.NLLLoss`` on log-probabilities (N, C, *d), or (C,) unbatched.

    Targets equal to ``ignore_index`` count for nothing; 'mean' divides by the
    summed class weights of the targets kept.
    """
    target = jnp.asarray(target)
    axis = 0 if input.ndim == 1 else 1
    keep = target != ignore_index
    safe_target = jnp.where(keep, target, 0)
    picked = jnp.take_along_axis(input, jnp.expand_dims(safe_target, axis), axis=axis)
    class_weight = jnp.ones(input.shape[axis], input.dtype) if weight is None else jnp.asarray(weight, input.dtype)
    target_weight = jnp.where(keep, class_weight[safe_target], 0)
    losses = -jnp.squeeze(picked, axis) * target_weight
    if reduction == "mean":  # torch: NaN when no weight is kept, and then zero gradients
        total = jnp.sum(target_weight)
        return jnp.where(total == 0, jnp.nan, jnp.sum(losses) / jnp.where(total == 0, 1, total))
    return reduce_loss(losses, reduction)


def mse_loss(input, target, reduction="mean", weight=None):
    """torch's ``F.mse_loss`` / ``nn.MSELoss``; with ``weight`` (input's shape), 'mean' is sum(w * e) / sum(w)."""
    errors = optax.squared_error(*jnp.broadcast_arrays(input, target))
    if weight is None:
        return reduce_loss(errors, reduction)
    if reduction == "mean":
        return jnp.sum(errors * weight) / jnp.sum(weight)
    return reduce_loss(errors * weight, reduction)


def l1_loss(input, target, reduction="mean", weight=None):
    """torch's ``F.l1_loss`` / ``nn.L1Loss``; with ``weight`` (input's shape), 'mean' is sum(w * e) / sum(w)."""
    errors = jnp.abs(input - target)
    if weight is None:
        return reduce_loss(errors, reduction)
    if reduction == "mean":
        return jnp.sum(errors * weight) / jnp.sum(weight)
    return reduce_loss(errors * weight, reduction)


def smooth_l1_loss(input, target, reduction="mean", beta=1.0):
    """torch's ``F.smooth_l1_loss`` / ``nn.SmoothL1Loss``: 0.5 d² / beta where |d| < beta, else |d| - beta / 2."""
    errors = jnp.abs(input - target)
    if beta == 0:
        return reduce_loss(errors, reduction)
    return reduce_loss(jnp.where(errors < beta, 0.5 * errors**2 / beta, errors - 0.5 * beta), reduction)


def huber_loss(input, target, reduction="mean", delta=1.0, weight=None):
    """torch's ``F.huber_loss`` / ``nn.HuberLoss`` (optax.huber_loss, reduced); ``weight`` multiplies each element."""
    losses = optax.huber_loss(*jnp.broadcast_arrays(input, target), delta=delta)
    return reduce_loss(losses if weight is None else losses * weight, reduction)


def binary_cross_entropy(input, target, weight=None, reduction="mean"):
    """torch's ``F.binary_cross_entropy`` / ``nn.BCELoss`` on probabilities; each log is clamped at -100 as in torch."""
    log_p = jnp.maximum(jnp.log(input), -100.0)
    log_not_p = jnp.maximum(jnp.log1p(-input), -100.0)
    losses = (target - 1) * log_not_p - target * log_p
    return reduce_loss(losses if weight is None else losses * weight, reduction)


def binary_cross_entropy_with_logits(input, target, weight=None, reduction="mean", pos_weight=None):
    """torch's ``F.binary_cross_entropy_with_logits`` / ``nn.BCEWithLogitsLoss``.

    ``pos_weight`` (broadcast along the last axis, the classes) weighs the
    positive term, ``weight`` every element.
    """
    log_sigmoid = jax.nn.log_sigmoid(input)
    if pos_weight is None:
        losses = (1 - target) * input - log_sigmoid
    else:
        losses = (1 - target) * input - ((pos_weight - 1) * target + 1) * log_sigmoid
    return reduce_loss(losses if weight is None else losses * weight, reduction)


def kl_div(input, target, reduction="mean", log_target=False):
    """torch's ``F.kl_div`` / ``nn.KLDivLoss``: ``input`` is log-probabilities; 'batchmean' divides the sum by N.

    torch's default 'mean' averages over every element (not the batch), as here.
    """
    if log_target:
        losses = jnp.exp(target) * (target - input)
    else:  # xlogy(target, target): 0 where target is 0
        losses = jnp.where(target == 0, 0.0, target * jnp.log(jnp.where(target == 0, 1.0, target))) - target * input
    if reduction == "batchmean":
        return jnp.sum(losses) / (input.shape[0] if input.ndim else 1)
    return reduce_loss(losses, reduction)


def cosine_embedding_loss(input1, input2, target, margin=0.0, reduction="mean"):
    """torch's ``F.cosine_embedding_loss`` / ``nn.CosineEmbeddingLoss``: inputs (N, D) or (D,), target ±1.

    1 - cos where target is 1, max(0, cos - margin) where it is -1; torch adds
    1e-12 to each squared norm.
    """
    axis = jnp.ndim(target)
    dot = jnp.sum(input1 * input2, axis=axis)
    squared_norms = (jnp.sum(input1 * input1, axis=axis) + 1e-12) * (jnp.sum(input2 * input2, axis=axis) + 1e-12)
    cos = dot / jnp.sqrt(squared_norms)
    losses = jnp.where(target == 1, 1 - cos, 0.0) + jnp.where(target == -1, jnp.maximum(cos - margin, 0.0), 0.0)
    return reduce_loss(losses, reduction)


# ---------------------------------------------------------------------------
# Optimizers whose optax alias differs from torch's update rule. Each is an
# optax optimizer factory (learning_rate first), so optax.inject_hyperparams
# can wrap it when a scheduler sets the learning rate.


def adagrad_torch(learning_rate, initial_accumulator_value=0.0, eps=1e-10):
    """torch.optim.Adagrad's update: g / (sqrt(sum of g²) + eps), then the learning rate.

    optax.adagrad puts eps inside the square root (and starts the sum at 0.1),
    which changes small-gradient updates by up to about eps / (2 sum g²).
    """

    def init(params):
        return optax.ScaleByRssState(
            sum_of_squares=jax.tree.map(lambda p: jnp.full_like(p, initial_accumulator_value), params))

    def update(updates, state, params=None):
        sums = jax.tree.map(lambda g, s: s + g * g, updates, state.sum_of_squares)
        updates = jax.tree.map(lambda g, s: g / (jnp.sqrt(s) + eps), updates, sums)
        return updates, optax.ScaleByRssState(sum_of_squares=sums)

    return optax.chain(optax.GradientTransformation(init, update), optax.scale_by_learning_rate(learning_rate))


def nadam_torch(learning_rate, b1=0.9, b2=0.999, eps=1e-8, momentum_decay=4e-3, weight_decay=0.0):
    """torch.optim.NAdam's update, with its momentum schedule mu_t = b1 (1 - 0.96^(t momentum_decay) / 2).

    optax.nadam is Adam with a Nesterov step and no momentum schedule, so it
    differs from torch's. ``weight_decay`` here is decoupled (torch's
    ``decoupled_weight_decay=True``); torch's default L2 form is
    ``optax.add_decayed_weights`` chained before this.
    """

    def init(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return {"count": jnp.zeros([], jnp.int32), "mu_product": jnp.ones([], jnp.float32), "mu": zeros, "nu": zeros}

    def update(updates, state, params=None):
        count = state["count"] + 1
        step = count.astype(jnp.float32)
        momentum = b1 * (1 - 0.5 * 0.96 ** (step * momentum_decay))
        momentum_next = b1 * (1 - 0.5 * 0.96 ** ((step + 1) * momentum_decay))
        mu_product = state["mu_product"] * momentum
        mu_product_next = mu_product * momentum_next
        mu = jax.tree.map(lambda g, m: b1 * m + (1 - b1) * g, updates, state["mu"])
        nu = jax.tree.map(lambda g, v: b2 * v + (1 - b2) * g * g, updates, state["nu"])
        bias_correction2 = 1 - b2**step

        def direction(g, m, v):
            denom = jnp.sqrt(v / bias_correction2) + eps
            return ((1 - momentum) / (1 - mu_product)) * g / denom + (momentum_next / (1 - mu_product_next)) * m / denom

        updates = jax.tree.map(direction, updates, mu, nu)
        return updates, {"count": count, "mu_product": mu_product, "mu": mu, "nu": nu}

    return optax.chain(
        optax.GradientTransformation(init, update),
        optax.add_decayed_weights(weight_decay),
        optax.scale_by_learning_rate(learning_rate),
    )


def radam_torch(learning_rate, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0):
    """torch.optim.RAdam's update: eps is added to sqrt(nu) before the bias correction, as torch does.

    optax.radam adds eps after it, which differs in the first steps. The
    variance-rectification term rho_t is computed from running sums (no
    cancellation in float32). ``weight_decay`` here is decoupled (torch's
    ``decoupled_weight_decay=True``); torch's default L2 form is
    ``optax.add_decayed_weights`` chained before this.
    """

    def init(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return {"count": jnp.zeros([], jnp.int32), "mu": zeros, "nu": zeros,
                # 1 - b2^t and sum_k<t (b2^k - b2^t), updated step by step
                "bias_correction2": jnp.zeros([], jnp.float32), "rho_sum": jnp.zeros([], jnp.float32)}

    def update(updates, state, params=None):
        count = state["count"] + 1
        step = count.astype(jnp.float32)
        bias_correction2 = (1 - b2) + b2 * state["bias_correction2"]
        rho_sum = bias_correction2 + b2 * state["rho_sum"]
        rho_inf = 2 / (1 - b2) - 1
        rho = 2 * rho_sum / bias_correction2 - 1  # = rho_inf - 2 t b2^t / (1 - b2^t)
        rect = jnp.sqrt(jnp.maximum((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho), 0.0))
        bias_correction1 = 1 - b1**step
        mu = jax.tree.map(lambda g, m: b1 * m + (1 - b1) * g, updates, state["mu"])
        nu = jax.tree.map(lambda g, v: b2 * v + (1 - b2) * g * g, updates, state["nu"])

        def direction(m, v):
            adaptive = jnp.sqrt(bias_correction2) / (jnp.sqrt(v) + eps)
            return jnp.where(rho > 5, m / bias_correction1 * adaptive * rect, m / bias_correction1)

        new_state = {"count": count, "mu": mu, "nu": nu, "bias_correction2": bias_correction2, "rho_sum": rho_sum}
        return jax.tree.map(direction, mu, nu), new_state

    return optax.chain(
        optax.GradientTransformation(init, update),
        optax.add_decayed_weights(weight_decay),
        optax.scale_by_learning_rate(learning_rate),
    )


def clip_by_global_norm_torch(max_norm):
    """torch's ``clip_grad_norm_(params, max_norm)`` as an optax transformation.

    Scales the gradients by min(1, max_norm / (norm + 1e-6)) as torch does;
    optax.clip_by_global_norm divides by the norm itself, which differs by
    about 1e-6 / max_norm (relative) when clipping.
    """

    def update(updates, state, params=None):
        scale = jnp.minimum(max_norm / (optax.tree.norm(updates) + 1e-6), 1.0)
        return jax.tree.map(lambda g: g * scale.astype(g.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def param_group_labels(*prefixes):
    """optax.multi_transform labels for torch's parameter groups, given as submodule paths.

    A parameter under the i-th path ("features", "encoder.layer1") gets the
    label "i" (zero-padded when there are ten groups or more), so the groups
    sort in torch's order; any other parameter gets "frozen" (torch does not
    update parameters that are in no group).
    """
    width = len(str(len(prefixes) - 1))

    def labels(params):
        def label(path, _):
            keys = [str(getattr(key, "key", getattr(key, "name", getattr(key, "idx", key)))) for key in path]
            for index, prefix in enumerate(prefixes):
                parts = prefix.split(".")
                if keys[: len(parts)] == parts:
                    return str(index).zfill(width)
            return "frozen"

        return jax.tree_util.tree_map_with_path(label, params)

    return labels


def grad_scaler(inner, init_scale=2.0**16, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000,
                enabled=True):
    """torch's ``torch.amp.GradScaler`` (dynamic loss scaling for float16) around an optax optimizer.

    Differentiate the scaled loss, ``loss * opt_state["scale"]`` (torch's ``scaler.scale(loss)``), and
    pass its gradients to this transformation: it does ``scaler.unscale_``, ``scaler.step`` and
    ``scaler.update`` with torch's rule. When any scaled gradient is inf or nan, the step is skipped
    (zero updates, ``inner``'s state kept) and the scale multiplied by ``backoff_factor``; after
    ``growth_interval`` finite steps in a row it is multiplied by ``growth_factor`` (unless that
    overflows). Wrap a chain to clip after unscaling, as torch's ``unscale_`` then ``clip_grad_norm_``.
    ``enabled=False``: scale 1, ``inner`` unchanged.
    """

    def init(params):
        scale = init_scale if enabled else 1.0
        return {"inner": inner.init(params), "scale": jnp.asarray(scale, jnp.float32),
                "growth_tracker": jnp.asarray(0, jnp.int32)}

    def update(scaled_grads, state, params=None):
        if not enabled:
            updates, inner_state = inner.update(scaled_grads, state["inner"], params)
            return updates, {**state, "inner": inner_state}
        scale, tracker = state["scale"], state["growth_tracker"]
        finite = jnp.all(jnp.array([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(scaled_grads)]))
        grads = jax.tree.map(lambda g: g * (1.0 / scale).astype(g.dtype), scaled_grads)
        updates, inner_state = inner.update(grads, state["inner"], params)
        updates = jax.tree.map(lambda u: jnp.where(finite, u, jnp.zeros_like(u)), updates)
        inner_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), inner_state, state["inner"])
        tracker = jnp.where(finite, tracker + 1, 0)
        grown = scale * growth_factor
        grow = tracker == growth_interval
        scale = jnp.where(finite, jnp.where(grow & jnp.isfinite(grown), grown, scale), scale * backoff_factor)
        tracker = jnp.where(grow, 0, tracker)
        return updates, {"inner": inner_state, "scale": scale, "growth_tracker": tracker}

    return optax.GradientTransformation(init, update)


def injected_hyperparameters(optimizer, name):
    """The variables holding hyperparameter `name` of an nnx.Optimizer built with optax.inject_hyperparams:
    one per torch parameter group, in group order (wherever they sit in a chain or a multi_transform)."""
    found = []

    def visit(node):
        if hasattr(node, "hyperparams") and hasattr(node, "inner_state"):
            if name in node.hyperparams:
                found.append(node.hyperparams[name])
            return True
        return False

    jax.tree_util.tree_flatten(optimizer.opt_state, is_leaf=visit)
    if not found and name == "learning_rate":
        raise ValueError(
            "the optimizer's learning rate is not state a scheduler can set: build its transformation "
            "with optax.inject_hyperparams, e.g. optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)")
    return found


def set_learning_rate(optimizer, lr):
    """torch's ``for group in optimizer.param_groups: group["lr"] = lr``: every parameter group's rate,
    for the optimizer's next updates (its transformation built with optax.inject_hyperparams)."""
    for variable in injected_hyperparameters(optimizer, "learning_rate"):
        variable[...] = jnp.asarray(lr, variable[...].dtype)


def autocast(dtype=None, enabled=True):
    """torch's ``torch.autocast`` as a mixed-precision policy: inside the context, matrix multiplications
    and convolutions take bfloat16 (or float16) operands and accumulate in float32; parameters, optimizer
    state and every other operation stay float32. torch's autocast also rounds those products' outputs to
    the low precision and runs some other operations in it: the same policy, not the same bits. Without a
    dtype, torch's default for the device JAX computes on: float16 on a GPU, bfloat16 elsewhere. XLA:CPU
    computes in float32 whatever the setting (float16 it refuses). A jitted step traced inside the context
    keeps its precision; like torch's, it also decorates a function.
    """
    if dtype is None:
        dtype = jnp.float16 if jax.default_backend() == "gpu" else jnp.bfloat16
    if not enabled or jnp.dtype(dtype) == jnp.float32:
        return jax.default_matmul_precision(jax.config.jax_default_matmul_precision)  # unchanged
    presets = {jnp.dtype(jnp.bfloat16): "BF16_BF16_F32", jnp.dtype(jnp.float16): "F16_F16_F32"}
    return jax.default_matmul_precision(presets[jnp.dtype(dtype)])


# ---------------------------------------------------------------------------
# Jitted steps bound to the objects they update (the training pass's train_step_fast).


def fast_partial(step, *objects, static_argnames=(), _compiled={}):
    """``nnx.cached_partial(step, *objects)`` at the per-call cost of ``jax.jit``.

    ``step`` (``@nnx.jit``-decorated or not) takes the objects (model, optimizer, Rngs) first. They are split
    once, here; each call hands their Variables' values to one ``jax.jit`` function that merges them, runs
    ``step`` and returns the values it changed, which are written back into the same Variables, so the objects
    are current after every call, as with nnx.jit. nnx.jit walks the object graph in Python at every call
    (about 2 ms on a two-layer GPT on a CPU, several times the step itself). As with cached_partial, ``step``
    must not add or remove Variables or submodules of the objects. ``static_argnames``: arguments, passed by
    keyword, that are compiled in (a new value compiles again), as ``jax.jit``'s. A second fast_partial of the
    same step over objects of the same structure (a generate() called again) reuses the compiled function
    (``_compiled``, shared by all calls, holds them).
    """
    graphdef, state = nnx.split(objects)
    structure = jax.tree.structure(state)
    variables = jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    compiled = _compiled.setdefault((step, tuple(static_argnames)), [])  # [(graphdef, run)]: graphdefs
    run = next((run for known, run in compiled if known == graphdef), None)  # may hold unhashable configs
    if run is None:
        def pure(values, *args, **kwargs):
            inside = nnx.merge(graphdef, jax.tree.unflatten(structure, jax.tree.leaves(values)))
            out = step(*inside, *args, **kwargs)
            after = nnx.state(inside)
            if jax.tree.structure(after) != structure:
                raise ValueError(f"{step.__name__} added or removed Variables of the objects bound to it by "
                                 "fast_partial")
            new = [v.get_raw_value() for v in jax.tree.leaves(after, is_leaf=lambda x: isinstance(x, nnx.Variable))]
            return out, {i: x for i, (x, old) in enumerate(zip(new, values)) if x is not old}

        run = jax.jit(pure, static_argnames=static_argnames)
        compiled.append((graphdef, run))

    @functools.wraps(step)
    def call(*args, **kwargs):
        out, changed = run([v.get_raw_value() for v in variables], *args, **kwargs)
        for i, value in changed.items():
            variables[i].set_raw_value(value)
        return out

    return call


# ---------------------------------------------------------------------------
# Learning-rate schedulers. torch's scheduler is stepped by the training code
# (per epoch or per batch, wherever scheduler.step() sits); so are these. Each
# step writes the learning rate into the optimizer's optax.inject_hyperparams
# state, one per torch parameter group.


class LRScheduler:
    """Base of the torch-style learning-rate schedulers: ``step()``, ``get_last_lr()``, ``last_epoch``.

    A subclass gives ``schedule(base_lr, group)``: the learning rate of one
    parameter group as a function of the step count (an optax schedule or a
    plain function). The optimizer's transformation must be built with
    ``optax.inject_hyperparams`` so the learning rate is state a scheduler can
    set. As in torch, every scheduler of an optimizer starts from the learning
    rates it had when its first scheduler was built.
    """

    _optimizers = None  # optimizer -> {"initial_lrs": [...], "stepping": weak reference to its scheduler}
    follows_current_lr = True  # torch's version goes on from the optimizer's current learning rate

    def __init__(self, optimizer):
        self.optimizer = optimizer
        lrs = [float(lr[...]) for lr in self.hyperparameters("learning_rate")]
        self.base_lrs = list(self.record(optimizer).setdefault("initial_lrs", lrs))
        # Built after another scheduler changed the rates, torch's would go on from those rates
        # (fine inside SequentialLR, which restarts each part from base_lrs).
        self._after_another = self.follows_current_lr and lrs != self.base_lrs
        self.last_epoch = 0
        self._schedules = [self.schedule(base_lr, group) for group, base_lr in enumerate(self.base_lrs)]
        self._set_lrs([float(schedule(0)) for schedule in self._schedules])

    def schedule(self, base_lr, group):
        raise NotImplementedError

    def step(self):
        self.claim()
        if self._after_another:
            raise NotImplementedError(
                f"{type(self).__name__} was built after another scheduler changed the learning rate; torch's "
                "would go on from the changed rate, this one starts from the initial rate")
        self.last_epoch += 1
        self._set_lrs([float(schedule(self.last_epoch)) for schedule in self._schedules])

    def get_last_lr(self):
        return list(self._last_lr)

    @staticmethod
    def record(optimizer):
        """What the schedulers of `optimizer` share (torch keeps it in the optimizer's param_groups)."""
        if LRScheduler._optimizers is None:
            LRScheduler._optimizers = weakref.WeakKeyDictionary()
        return LRScheduler._optimizers.setdefault(optimizer, {})

    def claim(self):
        """Only one live scheduler may step an optimizer: torch would compound two, these do not."""
        record = self.record(self.optimizer)
        stepping = record.get("stepping")
        if stepping is None or stepping() is None:
            record["stepping"] = weakref.ref(self)
        elif stepping() is not self:
            raise NotImplementedError(
                "two learning-rate schedulers step the same optimizer; torch compounds their effects, "
                "these schedulers do not: combine them with SequentialLR, or into one LambdaLR")

    def hyperparameters(self, name):
        """The optimizer's injected hyperparameter `name`: one variable per parameter group, in group order."""
        return injected_hyperparameters(self.optimizer, name)

    def _set_lrs(self, lrs):
        for variable, lr in zip(self.hyperparameters("learning_rate"), lrs, strict=True):
            variable[...] = jnp.asarray(lr, variable[...].dtype)
        self._last_lr = lrs


class StepLR(LRScheduler):
    """torch's ``StepLR``: the learning rate times gamma every ``step_size`` steps."""

    def __init__(self, optimizer, step_size, gamma=0.1):
        self.step_size, self.gamma = step_size, gamma
        super().__init__(optimizer)

    def schedule(self, base_lr, group):
        return optax.exponential_decay(base_lr, transition_steps=self.step_size, decay_rate=self.gamma, staircase=True)


class MultiStepLR(LRScheduler):
    """torch's ``MultiStepLR``: the learning rate times gamma at each milestone (a repeated one compounds)."""

    def __init__(self, optimizer, milestones, gamma=0.1):
        self.milestones, self.gamma = list(milestones), gamma
        super().__init__(optimizer)

    def schedule(self, base_lr, group):
        scales = {m: self.gamma ** self.milestones.count(m) for m in self.milestones}
        return optax.piecewise_constant_schedule(base_lr, scales)


class ExponentialLR(LRScheduler):
    """torch's ``ExponentialLR``: the learning rate times gamma every step."""

    def __init__(self, optimizer, gamma):
        self.gamma = gamma
        super().__init__(optimizer)

    def schedule(self, base_lr, group):
        return optax.exponential_decay(base_lr, transition_steps=1, decay_rate=self.gamma)


class LinearLR(LRScheduler):
    """torch's ``LinearLR``: the factor goes linearly from start_factor to end_factor over total_iters steps."""

    def __init__(self, optimizer, start_factor=1.0 / 3, end_factor=1.0, total_iters=5):
        self.start_factor, self.end_factor, self.total_iters = start_factor, end_factor, total_iters
        super().__init__(optimizer)

    def schedule(self, base_lr, group):
        return optax.linear_schedule(base_lr * self.start_factor, base_lr * self.end_factor, self.total_iters)


class ConstantLR(LRScheduler):
    """torch's ``ConstantLR``: the learning rate times factor for the first total_iters steps."""

    def __init__(self, optimizer, factor=1.0 / 3, total_iters=5):
        self.factor, self.total_iters = factor, total_iters
        super().__init__(optimizer)

    def schedule(self, base_lr, group):
        return lambda count: base_lr * self.factor if count < self.total_iters else base_lr


class PolynomialLR(LRScheduler):
    """torch's ``PolynomialLR``: base_lr (1 - t / total_iters)^power, then 0."""

    def __init__(self, optimizer, total_iters=5, power=1.0):
        self.total_iters, self.power = total_iters, power
        super().__init__(optimizer)

    def schedule(self, base_lr, group):
        return optax.polynomial_schedule(base_lr, 0.0, self.power, self.total_iters)


class CosineAnnealingLR(LRScheduler):
    """torch's ``CosineAnnealingLR``: eta_min + (base_lr - eta_min) (1 + cos(pi t / T_max)) / 2.

    Up to T_max this is optax.cosine_decay_schedule(base_lr, T_max,
    alpha=eta_min / base_lr); after T_max torch's cosine goes on (back up),
    and so does this one.
    """

    def __init__(self, optimizer, T_max, eta_min=0.0):
        self.T_max, self.eta_min = T_max, eta_min
        super().__init__(optimizer)

    def schedule(self, base_lr, group):
        eta_min, t_max = self.eta_min, self.T_max
        return lambda count: eta_min + (base_lr - eta_min) * (1 + math.cos(math.pi * count / t_max)) / 2


class CosineAnnealingWarmRestarts(LRScheduler):
    """torch's ``CosineAnnealingWarmRestarts``: a cosine over T_i steps, then a restart; T_i grows by T_mult."""

    follows_current_lr = False

    def __init__(self, optimizer, T_0, T_mult=1, eta_min=0.0):
        self.T_0, self.T_mult, self.eta_min = T_0, T_mult, eta_min
        super().__init__(optimizer)

    def schedule(self, base_lr, group):
        eta_min, t_0, t_mult = self.eta_min, self.T_0, self.T_mult

        def warm_restarts(count):
            t_cur, t_i = count, t_0
            while t_cur >= t_i:
                t_cur, t_i = t_cur - t_i, t_i * t_mult
            return eta_min + (base_lr - eta_min) * (1 + math.cos(math.pi * t_cur / t_i)) / 2

        return warm_restarts


class LambdaLR(LRScheduler):
    """torch's ``LambdaLR``: base_lr times lr_lambda(step); one function, or a list with one per parameter group."""

    follows_current_lr = False

    def __init__(self, optimizer, lr_lambda):
        self.lr_lambda = lr_lambda
        super().__init__(optimizer)

    def schedule(self, base_lr, group):
        function = self.lr_lambda[group] if isinstance(self.lr_lambda, (list, tuple)) else self.lr_lambda
        return lambda count: base_lr * function(count)


class MultiplicativeLR(LRScheduler):
    """torch's ``MultiplicativeLR``: each step multiplies the learning rate by lr_lambda(step)."""

    def __init__(self, optimizer, lr_lambda):
        self.lr_lambda = lr_lambda
        super().__init__(optimizer)

    def schedule(self, base_lr, group):
        function = self.lr_lambda[group] if isinstance(self.lr_lambda, (list, tuple)) else self.lr_lambda
        values = [base_lr]

        def multiplied(count):
            while len(values) <= count:
                values.append(values[-1] * function(len(values)))
            return values[count]

        return multiplied


class SequentialLR(LRScheduler):
    """torch's ``SequentialLR``: schedulers[i] runs from milestones[i - 1] on, from its own step 0."""

    follows_current_lr = False

    def __init__(self, optimizer, schedulers, milestones):
        self.schedulers, self.milestones = list(schedulers), list(milestones)
        if len(self.milestones) != len(self.schedulers) - 1:
            raise ValueError("SequentialLR expects one milestone fewer than schedulers")
        if any(getattr(scheduler, "cycle_momentum", False) for scheduler in self.schedulers):
            raise NotImplementedError("SequentialLR over a OneCycleLR that cycles momentum")
        super().__init__(optimizer)

    def schedule(self, base_lr, group):
        parts = [scheduler.schedule(base_lr, group) for scheduler in self.schedulers]
        milestones = self.milestones

        def sequential(count):
            index = sum(milestone <= count for milestone in milestones)
            return parts[index](count - (milestones[index - 1] if index else 0))

        return sequential


class OneCycleLR(LRScheduler):
    """torch's ``OneCycleLR``, phase ends at pct_start * total_steps - 1 and total_steps - 1 as in torch.

    (optax.cosine_onecycle_schedule places the peak and the end one step
    later.) With ``cycle_momentum``, the optimizer's momentum (SGD, RMSprop) or
    b1 (the Adam family) moves against the learning rate, as in torch; the
    optimizer must have it injected too.
    """

    follows_current_lr = False

    def __init__(self, optimizer, max_lr, total_steps=None, epochs=None, steps_per_epoch=None, pct_start=0.3,
                 anneal_strategy="cos", cycle_momentum=True, base_momentum=0.85, max_momentum=0.95,
                 div_factor=25.0, final_div_factor=1e4, three_phase=False):
        if total_steps is None:
            if epochs is None or steps_per_epoch is None:
                raise ValueError("You must define either total_steps OR (epochs AND steps_per_epoch)")
            total_steps = epochs * steps_per_epoch
        self.optimizer, self.total_steps, self.anneal_strategy = optimizer, total_steps, anneal_strategy
        groups = len(self.hyperparameters("learning_rate"))

        def per_group(value):
            return list(value) if isinstance(value, (list, tuple)) else [value] * groups

        self.max_lrs = per_group(max_lr)
        initial_lrs = [lr / div_factor for lr in self.max_lrs]
        self.lr_points = [[initial, lr, initial / final_div_factor] for initial, lr in zip(initial_lrs, self.max_lrs)]
        if three_phase:
            self.phase_ends = [float(pct_start * total_steps) - 1, float(2 * pct_start * total_steps) - 2,
                               total_steps - 1]
            self.lr_points = [[initial, lr, initial, low] for initial, lr, low in self.lr_points]
        else:
            self.phase_ends = [float(pct_start * total_steps) - 1, total_steps - 1]
        self.cycle_momentum = cycle_momentum
        if cycle_momentum:
            self.momentum_name = "momentum" if self.hyperparameters("momentum") else "b1"
            if not self.hyperparameters(self.momentum_name):
                raise ValueError(
                    "OneCycleLR(cycle_momentum=True) sets the optimizer's momentum (or b1), as torch's does, "
                    "but the optimizer has none injected: give it a momentum (torch overrides SGD's momentum=0 "
                    "here too) or pass cycle_momentum=False")
            points = [[high, low, high] + ([high] if three_phase else [])
                      for low, high in zip(per_group(base_momentum), per_group(max_momentum))]
            self.momentum_points = points
        self.record(optimizer)["initial_lrs"] = initial_lrs  # torch resets the groups' initial_lr
        super().__init__(optimizer)

    def anneal(self, points, count):
        start = 0.0
        for i, end in enumerate(self.phase_ends):
            if count <= end or i == len(self.phase_ends) - 1:
                pct = (count - start) / (end - start)
                low, high = points[i], points[i + 1]
                if self.anneal_strategy == "cos":
                    return high + (low - high) / 2.0 * (math.cos(math.pi * pct) + 1)
                return (high - low) * pct + low
            start = end

    def schedule(self, base_lr, group):
        def one_cycle(count):
            if count > self.total_steps:
                raise ValueError(f"Tried to step {count} times. The specified number of total steps is "
                                 f"{self.total_steps}")
            return self.anneal(self.lr_points[group], count)

        return one_cycle

    def _set_lrs(self, lrs):
        super()._set_lrs(lrs)
        if self.cycle_momentum:
            variables = self.hyperparameters(self.momentum_name)
            for variable, points in zip(variables, self.momentum_points, strict=True):
                variable[...] = jnp.asarray(self.anneal(points, self.last_epoch), variable[...].dtype)


class ReduceLROnPlateau(LRScheduler):
    """torch's ``ReduceLROnPlateau``: ``step(metric)`` multiplies the learning rates by ``factor`` once
    the metric has not improved for more than ``patience`` steps, then waits ``cooldown`` steps.
    """

    def __init__(self, optimizer, mode="min", factor=0.1, patience=10, threshold=1e-4, threshold_mode="rel",
                 cooldown=0, min_lr=0, eps=1e-8):
        if factor >= 1.0:
            raise ValueError("Factor should be < 1.0.")
        if mode not in ("min", "max") or threshold_mode not in ("rel", "abs"):
            raise ValueError(f"unknown mode {mode!r} or threshold_mode {threshold_mode!r}")
        self.optimizer = optimizer
        self.mode, self.factor, self.patience, self.threshold = mode, factor, patience, threshold
        self.threshold_mode, self.cooldown, self.eps = threshold_mode, cooldown, eps
        self._last_lr = [float(lr[...]) for lr in self.hyperparameters("learning_rate")]
        self.min_lrs = list(min_lr) if isinstance(min_lr, (list, tuple)) else [min_lr] * len(self._last_lr)
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        self.last_epoch = 0

    def is_better(self, current):
        if self.mode == "min" and self.threshold_mode == "rel":
            return current < self.best * (1.0 - self.threshold)
        if self.mode == "min":
            return current < self.best - self.threshold
        if self.threshold_mode == "rel":
            return current > self.best * (self.threshold + 1.0)
        return current > self.best + self.threshold

    def step(self, metrics):
        self.claim()
        current = float(metrics)
        self.last_epoch += 1
        if self.is_better(current):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            lrs = [max(lr * self.factor, min_lr) for lr, min_lr in zip(self._last_lr, self.min_lrs)]
            self._set_lrs([new if old - new > self.eps else old for old, new in zip(self._last_lr, lrs)])
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0


# ---------------------------------------------------------------------------
# Checkpoints: what torch.save / torch.load do with state dicts, as a pickle of
# numpy arrays (nnx.state as a pure dict), the format flax's own guides use.


def numpy_state(module):
    """torch's ``model.state_dict()`` / ``optimizer.state_dict()`` for an nnx.Module or nnx.Optimizer:
    its ``nnx.state`` as a nested dict of numpy arrays, copied to the host (a snapshot, picklable).
    Random-number state is left out, as torch's state_dict leaves its generator out."""
    return jax.device_get(nnx.to_pure_dict(nnx.state(module, nnx.Not(nnx.RngState))))


def load_numpy_state(module, state):
    """torch's ``model.load_state_dict(state)`` (strict) for a dict ``numpy_state`` made (or the same dict
    read back by ``load_checkpoint``): every entry must be there with its shape, and nothing else."""
    current = nnx.state(module, nnx.Not(nnx.RngState))

    def shapes(tree):  # (by "0/kernel": an Orbax checkpoint gives its dict keys back as strings)
        return {jax.tree_util.keystr(path, simple=True, separator="/"): np.shape(leaf)
                for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}

    expected, given = shapes(nnx.to_pure_dict(current)), shapes(state)
    if expected != given:
        missing = sorted(set(expected) - set(given))
        unexpected = sorted(set(given) - set(expected))
        resized = sorted(k for k in set(expected) & set(given) if expected[k] != given[k])
        raise ValueError(f"state does not fit {type(module).__name__}: missing {missing}, unexpected {unexpected}, "
                         f"other shapes {resized} (a torch state_dict loads with porter.load_torch_state_dict)")
    nnx.replace_by_pure_dict(current, jax.tree.map(jnp.asarray, state))
    nnx.update(module, current)


def save_pickle(obj, f):
    """``torch.save(obj, f)`` for checkpoints of converted code: ``obj`` (dicts of ``numpy_state``
    results, numbers, strings, ...) pickled, JAX arrays in it copied to numpy. The file is not a torch
    checkpoint: ``load_pickle`` reads it, torch.load does not."""
    obj = jax.device_get(obj)
    if hasattr(f, "write"):
        pickle.dump(obj, f)
        return
    with open(f, "wb") as file:
        pickle.dump(obj, file)


class NumpyUnpickler(pickle.Unpickler):
    """Unpickles containers, numbers, strings and numpy arrays only: torch.load's ``weights_only=True``."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
               ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "scalar")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED or module in ("numpy.dtypes", "ml_dtypes"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not loaded with weights_only=True (only containers, "
                                     "numbers, strings and arrays are): pass weights_only=False for a file you trust")


def load_pickle(f, weights_only=True):
    """``torch.load(f)`` for a file ``save_pickle`` wrote. A torch checkpoint is not one: convert it with
    ``porter weights`` (or load its state_dict with porter.load_torch_state_dict)."""
    file = f if hasattr(f, "read") else open(f, "rb")
    try:
        if file.read(4) == b"PK\x03\x04":
            raise ValueError(f"{f} is a torch checkpoint (torch.save's zip format), not a pickle save_pickle wrote: "
                             "convert it with `porter weights`")
        file.seek(0)
        return (NumpyUnpickler(file) if weights_only else pickle.Unpickler(file)).load()
    finally:
        if file is not f:
            file.close()


__all__ = [
    "reduce_loss", "cross_entropy_loss", "nll_loss", "mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss",
    "binary_cross_entropy", "binary_cross_entropy_with_logits", "kl_div", "cosine_embedding_loss",
    "adagrad_torch", "nadam_torch", "radam_torch", "clip_by_global_norm_torch", "param_group_labels",
    "grad_scaler", "injected_hyperparameters", "set_learning_rate", "autocast", "fast_partial",
    "LRScheduler", "StepLR", "MultiStepLR", "ExponentialLR", "LinearLR", "ConstantLR", "PolynomialLR",
    "CosineAnnealingLR", "LambdaLR", "MultiplicativeLR", "SequentialLR", "CosineAnnealingWarmRestarts",
    "OneCycleLR", "ReduceLROnPlateau", "numpy_state", "load_numpy_state", "save_pickle", "NumpyUnpickler",
    "load_pickle",
]

_SCHEDULERS = ("StepLR", "MultiStepLR", "ExponentialLR", "LinearLR", "ConstantLR", "PolynomialLR",
               "CosineAnnealingLR", "LambdaLR", "MultiplicativeLR", "SequentialLR", "CosineAnnealingWarmRestarts",
               "OneCycleLR")

DEPENDS: dict[str, tuple[str, ...]] = {
    "reduce_loss": (),
    "cross_entropy_loss": ("reduce_loss",),
    "nll_loss": ("reduce_loss",),
    "mse_loss": ("reduce_loss",),
    "l1_loss": ("reduce_loss",),
    "smooth_l1_loss": ("reduce_loss",),
    "huber_loss": ("reduce_loss",),
    "binary_cross_entropy": ("reduce_loss",),
    "binary_cross_entropy_with_logits": ("reduce_loss",),
    "kl_div": ("reduce_loss",),
    "cosine_embedding_loss": ("reduce_loss",),
    "adagrad_torch": (),
    "nadam_torch": (),
    "radam_torch": (),
    "clip_by_global_norm_torch": (),
    "param_group_labels": (),
    "grad_scaler": (),
    "injected_hyperparameters": (),
    "set_learning_rate": ("injected_hyperparameters",),
    "autocast": (),
    "fast_partial": (),
    "LRScheduler": ("injected_hyperparameters",),
    **{name: ("LRScheduler",) for name in _SCHEDULERS},
    "ReduceLROnPlateau": ("LRScheduler",),
    "numpy_state": (),
    "load_numpy_state": (),
    "save_pickle": (),
    "NumpyUnpickler": (),
    "load_pickle": ("NumpyUnpickler",),
}
