"""Distributed-training helpers that porter copies, as source text, into
converted files: torch.distributed's process group, DistributedDataParallel,
FullyShardedDataParallel, a process's share of the batch and torch.save of a
sharded state, in terms of JAX's own runtime (``jax.distributed``, a device
``Mesh`` made current with ``jax.set_mesh``, ``NamedSharding``) and Orbax.

Same contract as ``porter/emitted.py``: each helper is a self-contained
top-level definition that uses only the module-level imports below (the
converter adds them to the converted file as it needs them) and the helpers
``DEPENDS`` names. Converted code never imports porter.
"""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.experimental import multihost_utils


def initialize_distributed():
    """What ``torch.distributed.init_process_group`` did: joins this process to the others of the job.

    JAX's usual layout is one process per host driving all of that host's
    devices: on a single host nothing needs to start and this does nothing.
    With several processes it calls ``jax.distributed.initialize``, reading a
    torchrun-style launch from the environment (MASTER_ADDR, MASTER_PORT,
    WORLD_SIZE, RANK; under torchrun itself the coordinator takes the port
    after MASTER_PORT, or JAX_COORDINATOR_PORT; with LOCAL_WORLD_SIZE > 1 each
    process takes the device LOCAL_RANK) and leaving SLURM and Open MPI
    launches to JAX's own detection. It must run before anything else uses JAX.
    """
    env = os.environ
    if jax.distributed.is_initialized():
        return
    if int(env.get("WORLD_SIZE", "1")) > 1:
        port = int(env["MASTER_PORT"])
        if env.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            port += 1  # torchrun's agent holds MASTER_PORT itself
        local_device_ids = None
        if int(env.get("LOCAL_WORLD_SIZE", "1")) > 1:
            local_device_ids = [int(env["LOCAL_RANK"])]
        jax.distributed.initialize(
            coordinator_address=f"{env['MASTER_ADDR']}:{env.get('JAX_COORDINATOR_PORT', port)}",
            num_processes=int(env["WORLD_SIZE"]),
            process_id=int(env["RANK"]),
            local_device_ids=local_device_ids,
        )
    elif int(env.get("SLURM_NTASKS", "1")) > 1 or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        jax.distributed.initialize()


def replicate_params(model):
    """``DistributedDataParallel(model)``: every variable of the model copied to every device of the current mesh.

    The mesh is the one ``jax.set_mesh`` made current. With several processes
    all start from process 0's values, as DDP's broadcast at construction
    does. Returns the model itself: a jitted step over a batch split along the
    mesh then averages the gradients over the devices, as DDP's all-reduce does.
    """
    if jax.process_count() > 1:
        nnx.update(model, multihost_utils.broadcast_one_to_all(nnx.state(model, nnx.Not(nnx.RngState))))
    state = nnx.state(model)
    replicated = jax.sharding.NamedSharding(jax.sharding.get_mesh(), jax.sharding.PartitionSpec())
    nnx.update(model, jax.device_put(state, jax.tree.map(lambda _: replicated, state)))
    return model


def shard_params(model, axis="fsdp"):
    """``FullyShardedDataParallel(model)``: each variable split over the mesh axis ``axis``.

    A variable is split along its largest dimension that the axis size
    divides; one that no dimension fits (a scalar, a short bias) is
    replicated. Each variable is annotated with its partition (nnx's
    ``out_sharding`` metadata, so ``nnx.get_partition_spec`` reads it) and
    placed on the current mesh (``jax.set_mesh``). An optimizer built from the
    model afterwards holds its state split the same way; a jitted step keeps
    the placements from step to step. With several processes all start from
    process 0's values, as FSDP's ``sync_module_states`` does. Returns the model.
    """
    if jax.process_count() > 1:
        nnx.update(model, multihost_utils.broadcast_one_to_all(nnx.state(model, nnx.Not(nnx.RngState))))
    mesh = jax.sharding.get_mesh()
    size = mesh.shape[axis]

    def partition(shape):
        for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
            if shape[dim] % size == 0:
                return tuple(axis if d == dim else None for d in range(len(shape)))
        return (None,) * len(shape)

    for _, variable in nnx.iter_graph(model):
        if isinstance(variable, nnx.Variable) and not isinstance(variable, nnx.RngState):
            variable.set_metadata(out_sharding=partition(variable.shape))
    state = nnx.state(model)
    specs = nnx.get_partition_spec(state)
    shardings = jax.tree.map(lambda spec: jax.sharding.NamedSharding(mesh, spec), specs)
    nnx.update(model, jax.device_put(state, shardings))
    return model


def shard_batch(x, axes="data"):
    """This process's part of a batch -> the global batch, one array split along its first axis over ``axes``.

    ``axes`` names mesh axes of the current mesh (``jax.set_mesh``). With one
    process the part is the whole batch; with several, each passes the rows
    its own sampler loaded and the global batch holds them all
    (``jax.make_array_from_process_local_data``). The rows must divide evenly
    among this process's devices. With no mesh made current (the script's
    single-process branch: torchrun's RANK unset) the batch goes to the
    default device as it is (a jax array stays where it is: copying it to the host and back would wait for
    it).
    """
    if jax.sharding.get_mesh().empty:
        return x if isinstance(x, jax.Array) else jax.device_put(np.asarray(x))
    sharding = jax.sharding.NamedSharding(jax.sharding.get_mesh(), jax.sharding.PartitionSpec(axes))
    return jax.make_array_from_process_local_data(sharding, np.asarray(x))


def save_checkpoint(path, state):
    """``torch.save(state, path)`` for JAX arrays: an Orbax checkpoint, a directory at ``path``.

    ``state`` is a pytree of arrays, numbers, strings and None (a checkpoint
    dict: a model's state as ``nnx.to_pure_dict(nnx.state(model, ...))``, the
    step, the config), saved with its keys. Every process calls it: each
    writes the pieces of the arrays it holds and process 0 the metadata, so a
    sharded state is saved without gathering it. ``load_checkpoint`` reads it.
    """
    checkpointer = ocp.PyTreeCheckpointer()
    checkpointer.save(os.path.abspath(path), state, force=True)


def load_checkpoint(path, weights_only=True):
    """``torch.load(path)`` for a checkpoint a converted script wrote: a directory ``save_checkpoint``
    wrote (Orbax) gives back the same dict, its arrays as numpy arrays on the host (they go to the devices
    when loaded into a model or optimizer), numbers and strings as they were, dict keys as strings (a
    layer list's ``0`` is ``"0"``); a file is a pickle ``save_pickle`` wrote (``load_pickle``)."""
    if not os.path.isdir(path):
        return load_pickle(path, weights_only=weights_only)
    checkpointer = ocp.PyTreeCheckpointer()
    path = os.path.abspath(path)
    saved = checkpointer.metadata(path).item_metadata.tree
    to_host = jax.tree.map(lambda leaf: ocp.RestoreArgs(restore_type=np.ndarray)
                           if type(leaf) is ocp.metadata.ArrayMetadata else ocp.RestoreArgs(), saved)
    return checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=to_host))


DEPENDS: dict[str, tuple[str, ...]] = {
    "initialize_distributed": (),
    "replicate_params": (),
    "shard_params": (),
    "shard_batch": (),
    "save_checkpoint": (),
    "load_checkpoint": ("load_pickle",),
}
