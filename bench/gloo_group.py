"""A gloo process group built directly, outside init_process_group (shared by
the bench scripts that form a group in a thread while training goes on)."""

import torch
import torch.distributed as dist


def direct_gloo_group(store, prefix, rank, world, timeout):
    """torch 1.x: ProcessGroupGloo is a ProcessGroup. 2.x: a ProcessGroup
    with a gloo backend registered on it for the CPU."""
    ps = dist.PrefixStore(prefix, store)
    if int(torch.__version__.split(".")[0]) < 2:
        return dist.ProcessGroupGloo(ps, rank, world, timeout)
    pg = dist.ProcessGroup(ps, rank, world)
    be = dist.ProcessGroupGloo(ps, rank, world, timeout)
    pg._set_default_backend(dist.ProcessGroup.BackendType.GLOO)
    pg._register_backend(torch.device("cpu"), dist.ProcessGroup.BackendType.GLOO, be)
    return pg
