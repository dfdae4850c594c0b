"""Distillation losses against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

import torch.nn.functional as F

from edgellm.train.losses import (
    attention_kl,
    embedding_loss,
    hidden_mse,
    kd_loss,
    layer_map,
    mean_pool,
    token_kd_loss,
)


def test_kd_loss_equals_the_hand_computed_value() -> None:
    # Row 1: at T=2 teacher [3,2,1] -> softmax([1.5,1,0.5]), student [1,2,3] -> softmax([0.5,1,1.5]):
    #        KL = 0.3201566678 (computed by hand from the exponentials).
    # Row 2: teacher [0,0] -> [1/2,1/2]; student [2 ln 3, 0] at T=2 -> [3/4, 1/4]:
    #        KL = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3) = 0.1438410362.
    # Loss = T^2 * mean(KL) = 4 * (0.3201566678 + 0.1438410362) / 2 = 0.9279954081.
    student = torch.tensor([[1.0, 2.0, 3.0, -1e9], [2 * math.log(3.0), 0.0, -1e9, -1e9]])
    teacher = torch.tensor([[3.0, 2.0, 1.0, -1e9], [0.0, 0.0, -1e9, -1e9]])
    assert kd_loss(student, teacher, 2.0).item() == pytest.approx(0.9279954081, abs=1e-6)
    row2 = 0.5 * math.log(4.0 / 3.0)
    assert kd_loss(student[1:], teacher[1:], 2.0).item() == pytest.approx(4 * row2, abs=1e-6)


def test_kd_loss_is_zero_for_equal_logits_and_scales_with_t_squared() -> None:
    logits = torch.tensor([[0.3, -1.2, 2.0]])
    assert kd_loss(logits, logits, 3.0).item() == pytest.approx(0.0, abs=1e-7)
    s, t = torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]])
    p, q = 1 / (1 + math.exp(-1)), 1 / (1 + math.exp(1))  # T=1: teacher [p, q], student [q, p]
    expected = p * math.log(p / q) + q * math.log(q / p)
    assert kd_loss(s, t, 1.0).item() == pytest.approx(expected, abs=1e-6)


def test_kd_loss_in_bf16_is_computed_in_float32() -> None:
    s = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.bfloat16)
    t = torch.tensor([[3.0, 2.0, 1.0]], dtype=torch.bfloat16)
    out = kd_loss(s, t, 2.0)
    assert out.dtype == torch.float32 and out.item() == pytest.approx(1.2806266713, abs=1e-5)


def _plain_token_kd(s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor, ids: torch.Tensor, temperature: float,
                    alpha_kd: float, alpha_ce: float) -> torch.Tensor:
    """The same loss written the plain autograd way: the reference the fused one must equal."""
    real = mask.bool()
    kd = kd_loss(s[real], t[real], temperature)
    ce = F.cross_entropy(s[:, :-1][real[:, 1:]].float(), ids[:, 1:][real[:, 1:]])
    return alpha_kd * kd + alpha_ce * ce


# (temperature, alpha_kd, alpha_ce, chunk, dtype): one comment each
TOKEN_KD_CASES = [
    (1.0, 1.0, 0.5, 64, torch.float32),   # the recipe's setting, one chunk
    (2.0, 0.7, 2.0, 3, torch.float32),    # T^2 scaling, chunks smaller than the rows, uneven last chunk
    (1.0, 1.0, 0.0, 4, torch.float32),    # KD alone
    (1.0, 0.0, 1.0, 4, torch.float32),    # CE alone
    (2.0, 1.0, 0.0, 4, torch.float32),    # KD alone at T = 2: its own softmax, no CE share in the gradient
    (1.0, 1.0, 0.5, 5, torch.bfloat16),   # autocast's bf16 logits: float32 maths, bf16 gradient
]


@pytest.mark.parametrize("temperature,alpha_kd,alpha_ce,chunk,dtype", TOKEN_KD_CASES)
def test_token_kd_loss_equals_the_plain_loss_and_its_gradient(temperature: float, alpha_kd: float, alpha_ce: float,
                                                              chunk: int, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    s = (torch.randn(3, 6, 17) * 3).to(dtype)
    t = (torch.randn(3, 6, 17) * 3).to(dtype)
    ids = torch.randint(0, 17, (3, 6))
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]])  # right padding
    fused_s = s.clone().requires_grad_(True)
    teacher_before = t.clone()
    loss, parts = token_kd_loss(fused_s, t, mask, ids, temperature=temperature, alpha_kd=alpha_kd,
                                alpha_ce=alpha_ce, chunk=chunk)
    # the loss works in its own copies: neither model's logits are written (a float32 slice would be a view)
    assert torch.equal(fused_s.detach(), s) and torch.equal(t, teacher_before)
    (loss * 3.0).backward()  # an upstream gradient other than 1 is carried through
    plain_s = s.float().clone().requires_grad_(True)
    plain = _plain_token_kd(plain_s, t.float(), mask, ids, temperature, alpha_kd, alpha_ce)
    (plain * 3.0).backward()
    assert loss.dtype == torch.float32 and not parts.requires_grad
    assert float(loss) == pytest.approx(float(plain), rel=1e-5)
    real = mask.bool()
    kd = float(kd_loss(s[real].float(), t[real].float(), temperature)) if alpha_kd > 0 else 0.0  # skipped at 0
    assert float(parts[0]) == pytest.approx(kd, rel=1e-5)
    assert fused_s.grad is not None and fused_s.grad.dtype == dtype
    tol = {"atol": 1e-6, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2e-3, "rtol": 2e-2}
    torch.testing.assert_close(fused_s.grad.float(), plain_s.grad, **tol)
    assert float(fused_s.grad[2, 2:].abs().sum()) == 0.0  # padding gets no gradient


def test_token_kd_loss_is_zero_for_equal_logits_and_needs_no_gradient_buffer() -> None:
    logits = torch.randn(2, 4, 9)
    mask = torch.ones(2, 4, dtype=torch.long)
    loss, parts = token_kd_loss(logits, logits.clone(), mask, torch.zeros(2, 4, dtype=torch.long),
                                temperature=2.0)
    assert float(loss) == pytest.approx(0.0, abs=1e-6) and parts.tolist() == [pytest.approx(0.0, abs=1e-6), 0.0]
    assert not loss.requires_grad  # the student's logits need no gradient here, so none is formed


def test_hidden_mse_ignores_padding() -> None:
    s = torch.zeros(1, 3, 2)
    t = torch.tensor([[[1.0, 1.0], [3.0, 1.0], [100.0, 100.0]]])  # the third token is padding
    mask = torch.tensor([[1, 1, 0]])
    # squared errors of real tokens: 1+1+9+1 = 12 over 2 tokens x 2 features
    assert hidden_mse([s], [t], mask).item() == pytest.approx(3.0)
    assert hidden_mse([s, t], [t, t], mask).item() == pytest.approx(1.5)  # mean over layer pairs


def test_attention_kl_per_real_query_row() -> None:
    teacher = torch.tensor([[[[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.2, 0.2, 0.6]]]])  # (1, 1 head, 3, 3)
    student = torch.tensor([[[[0.75, 0.25, 0.0], [1.0, 0.0, 0.0], [0.6, 0.2, 0.2]]]])
    mask = torch.tensor([[1, 1, 0]])  # the third query row is padding
    row1 = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert attention_kl([student], [teacher], mask).item() == pytest.approx(row1 / 2, abs=1e-6)
    assert attention_kl([teacher], [teacher], mask).item() == pytest.approx(0.0, abs=1e-7)


def test_embedding_losses_and_mean_pool() -> None:
    s = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    t = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    assert embedding_loss(s, t, "mse").item() == pytest.approx((1 + 1 + 0 + 1) / 4)
    assert embedding_loss(s, t, "cosine").item() == pytest.approx((1.0 + 0.0) / 2)
    assert embedding_loss(s, t, "mse+cosine").item() == pytest.approx(0.75 + 0.5)
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [50.0, 50.0]]])
    assert mean_pool(hidden, torch.tensor([[1, 1, 0]])).tolist() == [[2.0, 3.0]]


@pytest.mark.parametrize("student, teacher, chosen, expected", [
    (3, 6, [0, 2, 4], [0, 2, 4]),  # the layers the student was built from
    (3, 6, None, [1, 3, 5]),       # evenly spaced, top with top
    (2, 6, None, [2, 5]),
    (4, 4, None, [0, 1, 2, 3]),    # same depth (e.g. a pruned copy): identity
])
def test_layer_map(student: int, teacher: int, chosen: list[int] | None, expected: list[int]) -> None:
    assert layer_map(student, teacher, chosen) == expected
