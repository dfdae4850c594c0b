"""Distillation losses: soft targets (KL at temperature T), hidden-state MSE, attention-map KL, embedding loss.

Every loss is computed in float32 (also under bf16 autocast) and is the mean over rows (tokens, query rows).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

__all__ = ["kd_loss", "token_kd_loss", "hidden_mse", "attention_kl", "embedding_loss", "mean_pool", "layer_map"]


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


class _TokenKD(torch.autograd.Function):
    """alpha_kd * KD + alpha_ce * CE over the rows of (N, V) logits that either term uses, `chunk` rows at a time, as
    (loss, [kd, ce]); each term is its rows' values summed with their weights (1 / rows averaged over, 0 off the
    term). Each chunk takes the student's log-softmax once for both terms (twice when the temperature is not 1 and
    CE is on), in place in its own float32 copy (the caller's logits are never written), which then becomes its
    gradient (softmax minus target, per term), so autograd keeps no (N, V) intermediate; a chunk of consecutive
    rows is a slice, not a gather. 32 rows of a 49k
    vocabulary stay in a core's L2 cache: a 2,048 x 49,152 loss took 0.55-0.65 s here against 1.0 s in chunks
    of 64 with out-of-place maths."""

    @staticmethod
    def forward(ctx, student: torch.Tensor, teacher: torch.Tensor, kd_weight: torch.Tensor,  # type: ignore[override]
                ce_weight: torch.Tensor, targets: torch.Tensor, temperature: float, alpha_kd: float,
                alpha_ce: float, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
        t = float(temperature)
        want_grad = ctx.needs_input_grad[0]
        grad = torch.zeros_like(student) if want_grad else student.new_zeros(())  # (N, V), the student's dtype
        parts = student.new_zeros(2, dtype=torch.float32)  # [kd, ce]
        use_kd, use_ce = alpha_kd > 0, alpha_ce > 0
        used = (((kd_weight > 0) & use_kd) | ((ce_weight > 0) & use_ce)).nonzero().squeeze(1)
        for start in range(0, used.numel(), chunk):
            rows = used[start:start + chunk]
            first, last = int(rows[0]), int(rows[-1]) + 1
            rows = slice(first, last) if last - first == rows.numel() else rows  # a slice is a view, not a gather
            w_kd, w_ce = kd_weight[rows, None], ce_weight[rows, None]  # (n, 1)
            # log-softmax of the student at T = 1: the CE's, and the KD's when T is 1
            log_q = _log_softmax_(_own_float(student[rows], 1.0)) if use_ce or t == 1.0 else None
            coef = torch.zeros_like(w_kd)  # (n, 1): the weight of softmax(student) in the gradient
            g_kd = None
            if use_kd:
                log_qt = log_q if t == 1.0 else _log_softmax_(_own_float(student[rows], t))
                log_p = _log_softmax_(_own_float(teacher[rows], t))
                p = log_p.exp()
                parts[0] += ((p * (log_p - log_qt)).sum(-1, keepdim=True) * w_kd).sum() * (t * t)
                if want_grad:  # d(T^2 KL) / d student = T (q_T - p)
                    coef_kd = w_kd * (alpha_kd * t)
                    if t == 1.0:  # q_T is q: its share joins coef, p's is added below
                        coef = coef + coef_kd
                        g_kd = p.mul_(-coef_kd)
                    else:
                        g_kd = log_qt.exp_().sub_(p).mul_(coef_kd)
            if use_ce:  # d CE / d student = q - one-hot
                parts[1] -= (log_q.gather(1, targets[rows, None]) * w_ce).sum()
                coef = coef + w_ce * alpha_ce
            if want_grad:
                if log_q is None:  # KD alone at T != 1: its term is the whole gradient
                    g = g_kd
                else:
                    g = log_q.exp_().mul_(coef)  # log_q's storage becomes the gradient
                    if g_kd is not None:
                        g.add_(g_kd)
                if use_ce:
                    g.scatter_add_(1, targets[rows, None], -w_ce * alpha_ce)
                grad[rows] = g.to(grad.dtype)
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(parts)
        return alpha_kd * parts[0] + alpha_ce * parts[1], parts

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor, _: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        if grad_loss.numel() == 1 and float(grad_loss) == 1.0:  # loss.backward(): no (N, V) pass to scale by 1
            return (grad,) + (None,) * 8
        return (grad * grad_loss.to(grad.dtype),) + (None,) * 8


def _own_float(x: torch.Tensor, temperature: float) -> torch.Tensor:
    """x / temperature as a new float32 tensor, never a view of x (float32 rows sliced from the caller's logits would
    be one): the maths after it works in place."""
    out = x.to(torch.float32, copy=True)
    return out if temperature == 1.0 else out.div_(temperature)


def _log_softmax_(x: torch.Tensor) -> torch.Tensor:
    """log_softmax over the last dimension, in place (x must be a tensor the caller owns: `_own_float`)."""
    return x.sub_(torch.logsumexp(x, dim=-1, keepdim=True))


def token_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, attention_mask: torch.Tensor,
                  input_ids: torch.Tensor, *, temperature: float, alpha_kd: float = 1.0, alpha_ce: float = 0.0,
                  chunk: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """A causal LM's token-level distillation loss, as (loss, parts = [kd, ce] detached).

    kd: T^2 * KL(softmax(teacher / T) || softmax(student / T)), the mean over real positions; ce: next-token
    cross-entropy, the mean over positions whose next token is real; loss = alpha_kd * kd + alpha_ce * ce.
    Logits are (B, T, V) in any float dtype; both terms are computed in float32, `chunk` rows at a time, and the
    gradient is formed in the same pass, so only one more (B, T, V) tensor (the gradient, in the student's dtype)
    is held: the plain form keeps several float32 copies of the logits and spent most of a CPU step in them.
    """
    b, n, v = student_logits.shape
    real = attention_mask.bool()
    nxt = torch.zeros_like(real)
    nxt[:, :-1] = real[:, 1:]
    is_kd, is_ce = real.reshape(-1).float(), nxt.reshape(-1).float()
    # each row's weight in its term's mean (0: not in the term)
    kd_weight, ce_weight = is_kd / max(float(is_kd.sum()), 1.0), is_ce / max(float(is_ce.sum()), 1.0)
    targets = input_ids.roll(-1, dims=1).reshape(-1)
    return _TokenKD.apply(student_logits.reshape(b * n, v), teacher_logits.detach().reshape(b * n, v), kd_weight,
                          ce_weight, targets, float(temperature), float(alpha_kd), float(alpha_ce), int(chunk))


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
