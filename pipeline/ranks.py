"""This process's place in a distributed run (DDP): its rank, and what every rank shares.

Lightning's launcher starts the ranks of one node by running the same command again with
``LOCAL_RANK``, ``NODE_RANK`` and ``WORLD_SIZE`` set; ``torchrun`` sets ``RANK``. Only global
rank 0 logs and writes; the others compute and measure. Importable without torch.
"""
from __future__ import annotations

import os
from typing import Any


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK") or 0)


def is_global_zero() -> bool:
    """True in the process that logs and writes: the only one of a single-process run, rank 0
    of a distributed one (Lightning's launcher sets LOCAL_RANK and NODE_RANK in the processes it
    starts; ``torchrun`` sets RANK)."""
    if os.environ.get("RANK"):
        return int(os.environ["RANK"]) == 0
    return local_rank() == 0 and int(os.environ.get("NODE_RANK") or 0) == 0


def gather(obj: Any) -> list[Any]:
    """``obj`` from every rank of the running ``torch.distributed`` group, in rank order (a
    process outside any group: ``[obj]``). Every rank must call it at the same point."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out

