"""ReActNet's distribution loss for knowledge distillation.

``L = -sum_c softmax(t)_c * log_softmax(s)_c``, averaged over the batch: the student matches
the teacher's whole output distribution and sees no hard labels (liuzechun/ReActNet
``utils/KD_loss.py``; prior-work.md section 2.1).
"""

import torch
import torch.nn.functional as F

__all__ = ["distribution_loss"]


def distribution_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    target = F.softmax(teacher_logits.float().detach(), dim=1)
    return -(target * F.log_softmax(student_logits.float(), dim=1)).sum(1).mean()
