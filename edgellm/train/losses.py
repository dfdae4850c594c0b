"""Distillation losses: soft targets (KL at temperature T), hidden-state MSE, attention-map KL, embedding loss.

Every loss is computed in float32 (also under bf16 autocast) and is the mean over rows (tokens, query rows).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["kd_loss", "hidden_mse", "attention_kl", "embedding_loss", "mean_pool", "layer_map"]


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over rows (Hinton et al. 2015).

    The T^2 factor keeps the gradient scale independent of T, so the weight next to the hard-label CE means
    the same at any temperature.
    """
    t = float(temperature)
    log_p_s = F.log_softmax(student_logits.float() / t, dim=-1)  # (B, K)
    log_p_t = F.log_softmax(teacher_logits.float() / t, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)  # (B,)
    return kl.mean() * (t * t)


def hidden_mse(student_states: Sequence[torch.Tensor], teacher_states: Sequence[torch.Tensor],
               attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error between paired hidden states (B, T, H), over real tokens only, averaged over pairs."""
    mask = attention_mask.unsqueeze(-1).float()  # (B, T, 1)
    denom = mask.sum() * student_states[0].shape[-1]
    losses = [(((s.float() - t.float()) ** 2) * mask).sum() / denom for s, t in zip(student_states, teacher_states)]
    return torch.stack(losses).mean()


def attention_kl(student_maps: Sequence[torch.Tensor], teacher_maps: Sequence[torch.Tensor],
                 attention_mask: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) between attention distributions (B, heads, T, T), per query row of a real token,
    averaged over heads, rows and layer pairs (MiniLM's self-attention distribution transfer)."""
    query = attention_mask.float()[:, None, :]  # (B, 1, T)
    losses = []
    for s, t in zip(student_maps, teacher_maps):
        t32 = t.float()
        kl = (torch.xlogy(t32, t32) - t32 * torch.log(s.float().clamp_min(1e-12))).sum(-1)  # (B, heads, T)
        losses.append((kl * query).sum() / (query.sum() * kl.shape[1]))
    return torch.stack(losses).mean()


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token vectors of real tokens: (B, T, H) -> (B, H)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)


def embedding_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str = "mse+cosine") -> torch.Tensor:
    """Loss between pooled sentence vectors (B, H): mse, cosine (1 - cos), or their sum."""
    s, t = student.float(), teacher.float()
    out = s.new_zeros(())
    if "mse" in kind:
        out = out + F.mse_loss(s, t)
    if "cosine" in kind:
        out = out + (1.0 - F.cosine_similarity(s, t, dim=-1)).mean()
    return out


def layer_map(student_layers: int, teacher_layers: int, chosen: Sequence[int] | None = None) -> list[int]:
    """Teacher layer paired with each student layer: the chosen layers when known, else evenly spaced
    (the top student layer with the top teacher layer)."""
    if chosen is not None and len(chosen) == student_layers:
        return [int(c) for c in chosen]
    if student_layers == teacher_layers:
        return list(range(teacher_layers))
    return [round((i + 1) * teacher_layers / student_layers) - 1 for i in range(student_layers)]
