"""Knowledge distillation: a smaller student trained on the teacher's softened outputs.

Loss (Hinton et al., 2015): ``alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) +
(1 - alpha) * cross_entropy(student, labels)``; the T^2 keeps the soft term's gradients on the
scale of the hard term's. The teacher runs in eval mode (no dropout) on data without
augmentation, so its logits are computed once per training sample, not once per epoch.

The same student is also trained from labels alone (``teacher_logits=None``) with the same seed,
initial weights, batches, epochs and learning rate, so the teacher's benefit is measured.
"""
from __future__ import annotations

import torch
from torch import nn

from pipeline.config import ParamsError, TrainCfg
from pipeline.models.factory import ModelSpec, build_model
from pipeline.models.family import get_family
from pipeline.models.profile import count_parameters
from pipeline.training.module import Classifier


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, y: torch.Tensor,
                      temperature: float, alpha: float) -> torch.Tensor:
    hard = nn.functional.cross_entropy(student_logits, y)
    if teacher_logits is None:
        return hard
    t = temperature
    soft = nn.functional.kl_div(nn.functional.log_softmax(student_logits / t, dim=1),
                                nn.functional.log_softmax(teacher_logits / t, dim=1),
                                reduction="batchmean", log_target=True) * (t * t)
    return alpha * soft + (1 - alpha) * hard


class DistillClassifier(Classifier):
    """The train stage's Classifier with the distillation loss; batches are (x, y, teacher
    logits) or (x, y) for the labels-only student."""

    def __init__(self, model: nn.Module, num_classes: int, cfg: TrainCfg, temperature: float, alpha: float):
        super().__init__(model, num_classes, cfg)
        self.temperature, self.alpha = temperature, alpha

    def loss(self, logits, y, extra):
        return distillation_loss(logits, extra[0] if extra else None, y, self.temperature, self.alpha)


def student_name(family: str, overrides: dict) -> str:
    """A short, file-safe name: the family, then each override as key and value
    (``<family>_width64``; a decimal point becomes ``p``)."""
    parts = [family] + [f"{k}{v}" for k, v in overrides.items()]
    return "_".join(str(p) for p in parts).replace(".", "p")


def student_spec(teacher: ModelSpec, student_family: str, overrides: dict, teacher_params: int) -> ModelSpec:
    """The student: the teacher's hyperparameters (same family) or the family's defaults (another
    family), with the overrides; it must have fewer parameters than the teacher."""
    family = teacher.family if student_family == "same" else student_family
    cfg_cls = get_family(family).Params
    base = dict(teacher.hparams) if family == teacher.family else cfg_cls().model_dump()
    key = f"compress.distill.student.{family}"
    try:
        hparams = cfg_cls.model_validate({**base, **overrides}).model_dump()
    except Exception as err:
        raise ParamsError(f"{key}: the student's hyperparameters {overrides} do not fit the teacher's "
                          f"{teacher.hparams}: {err}") from None
    spec = ModelSpec(family, teacher.input_shape, teacher.num_classes, hparams)
    n = count_parameters(build_model(spec)).total
    if n >= teacher_params:
        raise ParamsError(f"{key}: the student ({hparams}) has {n:,} parameters, not fewer than the "
                          f"teacher's {teacher_params:,}; choose smaller overrides")
    return spec
