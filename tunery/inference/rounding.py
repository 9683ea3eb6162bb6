"""Int4 group rounding: each group's (scale, min) fitted to minimise the group's error, weighted by how
strongly a calibration set drives each input (activation-aware, as llama.cpp's importance matrix and
AWQ weigh it), and kept as the exact fp16 numbers the fast lane reads.

Knows tensors only: nothing about layers, models or where the importance came from.
"""

from __future__ import annotations

import torch

# Candidate inverse scales (15 + t) / (max - min) for t in [-1, 1] (llama.cpp's make_qkx2_quants
# search), each followed by a weighted least-squares fit of scale and min to the codes it gives.
SEARCH_STEPS = 21
# A group whose min/max rounding is already exact (a decoder stored as Q4_1, like the default
# model's) keeps it: its error is at most this share of its weighted energy (float noise).
EXACT_SHARE = 1e-10


def fit_int4_groups(weight: torch.Tensor, importance: torch.Tensor | None = None, group_size: int = 32,
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes uint8 [n, k] in 0..15, scales fp16 [n, k/g], mins fp16 [n, k/g]) with w ≈ code * scale + min.

    `importance` [k] (> 0) weighs input i's error (its mean squared activation); None weighs all alike.
    Each group starts from min/max rounding and takes a searched fit only where it lowers the
    weighted error, so a group already on an int4 grid keeps exactly its codes, scale and min.
    """
    n, k = weight.shape
    w = weight.detach().float().reshape(-1, group_size)
    h = torch.ones(k) if importance is None else importance.detach().float().clamp(min=0)
    h = (h + 1e-6 * h.mean() + 1e-30).view(1, k // group_size, group_size).expand(n, -1, -1).reshape(-1, group_size)
    low, high = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
    scale, base = _half((high - low) / 15), _half(low)
    _, error = _round(w, h, scale, base)
    todo = (error > EXACT_SHARE * (h * w.square()).sum(-1, keepdim=True)).squeeze(-1).nonzero().squeeze(-1)
    if todo.numel():
        scale[todo], base[todo] = _search(w[todo], h[todo], low[todo], high[todo] - low[todo], scale[todo],
                                          base[todo], error[todo])
    codes, _ = _round(w, h, scale, base)
    return (codes.to(torch.uint8).view(n, k), scale.view(n, -1).half(), base.view(n, -1).half())


def _search(w, h, low, span, scale, base, error):
    """The best (scale, min) per group over the candidate inverse scales, each refitted by least squares."""
    span = span.clamp(min=1e-30)
    for t in torch.linspace(-1.0, 1.0, SEARCH_STEPS).tolist():
        codes = torch.round((w - low) * ((15 + t) / span)).clamp(0, 15)
        fit_scale, fit_base = _least_squares(w, h, codes)
        fit_scale, fit_base = _half(fit_scale), _half(fit_base)
        _, fit_error = _round(w, h, fit_scale, fit_base)
        better = fit_error < error
        scale, base, error = (torch.where(better, fit_scale, scale), torch.where(better, fit_base, base),
                              torch.where(better, fit_error, error))
    return scale, base


def _least_squares(w, h, codes):
    """The (scale, min) minimising sum h (codes * scale + min - w)^2 per group (0, 0 where degenerate)."""
    sh, sq, sqq = h.sum(-1, keepdim=True), (h * codes).sum(-1, keepdim=True), (h * codes.square()).sum(-1, keepdim=True)
    sw, sqw = (h * w).sum(-1, keepdim=True), (h * codes * w).sum(-1, keepdim=True)
    det = sh * sqq - sq.square()
    ok = det > 1e-12 * sh * sqq
    safe = torch.where(ok, det, torch.ones_like(det))
    return (torch.where(ok, (sh * sqw - sq * sw) / safe, torch.zeros_like(det)),
            torch.where(ok, (sqq * sw - sq * sqw) / safe, torch.zeros_like(det)))


def _round(w, h, scale, base):
    """Nearest codes for (scale, min) and the weighted squared error they leave, per group."""
    inverse = torch.where(scale > 0, 1 / scale.clamp(min=1e-30), torch.zeros_like(scale))
    codes = torch.round((w - base) * inverse).clamp(0, 15)
    return codes, (h * (codes * scale + base - w).square()).sum(-1, keepdim=True)


def _half(x: torch.Tensor) -> torch.Tensor:
    """x as the fp16 number the kernels will read, back in fp32 (finite: clamped to fp16's range)."""
    return x.clamp(-65504.0, 65504.0).half().float()
