"""Size and compute of a variant; its test-split figures come from the evaluate stage's own
``measure_inference`` (same batches, latency and energy protocol as the originals)."""
from __future__ import annotations

import copy
import gzip
import io
from pathlib import Path

import torch
from torch import nn

from pipeline.models.factory import ModelSpec
from pipeline.models.profile import profile_model


def state_size_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())``, as the stages write model.pt."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


def gzip_size_bytes(path: Path) -> int:
    """Size after gzip: zeros left by unstructured pruning only save space once compressed."""
    return len(gzip.compress(Path(path).read_bytes(), compresslevel=6))


def inference_flops(model: nn.Module, spec: ModelSpec, quantized: bool) -> tuple[int | None, str]:
    """FLOPs per sample of a forward pass, counted by torch's FlopCounterMode on a copy (profiling
    runs a training step, which would move BatchNorm statistics). Int8 kernels are invisible to
    the counter: quantized models get None, never a partial count. Dense kernels multiply
    pruned zeros too, so a pruned model's count is its dense count."""
    if quantized:
        return None, "not countable: torch's FLOP counter has no formula for int8 kernels"
    profile = profile_model(copy.deepcopy(model), spec.input_shape, spec.num_classes, batch_size=2)
    return profile.flops_per_sample_inference, profile.flops_note
