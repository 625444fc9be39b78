"""LoRA for fused ``qkv`` linears: separate low-rank updates of the query and value rows.

SAM's ViT and LiteMedSAM's TinyViT compute queries, keys and values with one
``nn.Linear`` (``...attn.qkv``). PEFT's LoRA adapts a linear layer's whole output, so it
cannot give q and v their own updates inside a fused layer. :class:`QkvLoRA` does, in the
PEFT conventions: the original layer is kept as ``base_layer``, the ``B`` matrices start at
zero (the wrapped layer equals the original before training) and :meth:`QkvLoRA.merge` /
:meth:`QkvLoRA.unmerge` add and subtract the same delta.

Where q and v live in the fused output differs by architecture; :func:`qkv_rows` reads it
from the attention module that owns the layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["QkvLoRA", "qkv_rows"]


def qkv_rows(attn: nn.Module, qkv: nn.Linear) -> tuple[list[int], list[int]]:
    """Output rows of ``qkv`` that hold the queries and the values.

    Parameters
    ----------
    attn
        The attention module owning ``qkv``.
    qkv
        Its fused linear layer.

    Returns
    -------
    q_rows, v_rows
        Row indices into ``qkv.weight`` (``(out_features, in_features)``).

    Notes
    -----
    * TinyViT (LiteMedSAM): the output is viewed as ``(heads, key_dim + key_dim + d)`` and
      split per head into q, k, v, so the rows interleave head by head.
    * SAM ViT (``segment_anything``): reshaped to ``(3, heads, head_dim)``: q is the first
      third of the rows, k the second, v the last.

    Raises
    ------
    ValueError
        An attention layout this function does not know.
    """
    out = int(qkv.out_features)
    heads = getattr(attn, "num_heads", None)
    key_dim, d = getattr(attn, "key_dim", None), getattr(attn, "d", None)
    if heads and key_dim and d is not None:  # TinyViT Attention
        per_head = 2 * key_dim + d
        if per_head * heads != out:
            raise ValueError(
                f"{type(attn).__name__}: qkv has {out} outputs, expected {heads} x {per_head}"
            )
        q = [h * per_head + i for h in range(heads) for i in range(key_dim)]
        v = [h * per_head + 2 * key_dim + i for h in range(heads) for i in range(d)]
        return q, v
    if heads and out % 3 == 0 and out == 3 * int(qkv.in_features):  # SAM ViT Attention
        third = out // 3
        return list(range(third)), list(range(2 * third, out))
    raise ValueError(
        f"don't know where q and v are in the fused qkv of {type(attn).__name__}; "
        "use LoraSettings(qkv='qkv') to adapt the whole layer"
    )


class QkvLoRA(nn.Module):
    """A fused ``qkv`` linear with low-rank updates of its q and v rows.

    ``y = base_layer(x)``, then ``y[..., q_rows] += s * B_q A_q x`` and
    ``y[..., v_rows] += s * B_v A_v x`` with ``s = alpha / r``.

    Parameters
    ----------
    base_layer
        The original ``nn.Linear`` (kept, and frozen by the caller).
    q_rows, v_rows
        Output rows holding the queries and values (see :func:`qkv_rows`).
    r, alpha, dropout
        LoRA rank, scale numerator and input dropout.

    Examples
    --------
    >>> base = nn.Linear(8, 24)
    >>> layer = QkvLoRA(base, q_rows=range(8), v_rows=range(16, 24), r=2)
    >>> x = torch.randn(3, 8)
    >>> torch.equal(layer(x), base(x))  # B starts at zero
    True
    """

    def __init__(
        self,
        base_layer: nn.Linear,
        q_rows: Sequence[int],
        v_rows: Sequence[int],
        *,
        r: int = 8,
        alpha: float = 8.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"QkvLoRA wraps an nn.Linear, got {type(base_layer).__name__}")
        q = torch.as_tensor(list(q_rows), dtype=torch.long)
        v = torch.as_tensor(list(v_rows), dtype=torch.long)
        out = base_layer.out_features
        for name, rows in (("q_rows", q), ("v_rows", v)):
            if rows.numel() == 0 or int(rows.min()) < 0 or int(rows.max()) >= out:
                raise ValueError(f"{name} must be non-empty indices below {out}")
        if r < 1:
            raise ValueError(f"r must be >= 1, got {r}")
        self.base_layer = base_layer
        self.in_features, self.out_features = base_layer.in_features, out
        self.r, self.alpha = int(r), float(alpha)
        self.scaling = self.alpha / self.r
        self.register_buffer("q_rows", q, persistent=False)
        self.register_buffer("v_rows", v, persistent=False)
        factory = {"device": base_layer.weight.device, "dtype": base_layer.weight.dtype}
        self.lora_A_q = nn.Linear(self.in_features, self.r, bias=False, **factory)
        self.lora_B_q = nn.Linear(self.r, len(q), bias=False, **factory)
        self.lora_A_v = nn.Linear(self.in_features, self.r, bias=False, **factory)
        self.lora_B_v = nn.Linear(self.r, len(v), bias=False, **factory)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.reset_lora_parameters()

    def reset_lora_parameters(self) -> None:
        """``A`` as PEFT initialises it (Kaiming-uniform), ``B`` to zero."""
        for a in (self.lora_A_q, self.lora_A_v):
            nn.init.kaiming_uniform_(a.weight, a=math.sqrt(5))
        for b in (self.lora_B_q, self.lora_B_v):
            nn.init.zeros_(b.weight)

    def get_base_layer(self) -> nn.Linear:
        """The wrapped ``nn.Linear`` (PEFT's accessor name)."""
        return self.base_layer

    @property
    def weight(self) -> torch.Tensor:
        """The base layer's weight (so code reading ``module.weight`` keeps working)."""
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    def get_delta_weight(self) -> torch.Tensor:
        """``(out_features, in_features)`` update that :meth:`merge` adds to the base weight."""
        w = self.base_layer.weight
        delta = torch.zeros(self.out_features, self.in_features, device=w.device, dtype=torch.float32)
        dq = self.lora_B_q.weight.float() @ self.lora_A_q.weight.float()
        dv = self.lora_B_v.weight.float() @ self.lora_A_v.weight.float()
        delta[self.q_rows] = dq * self.scaling
        delta[self.v_rows] = dv * self.scaling
        return delta

    @torch.no_grad()
    def merge(self) -> None:
        """Add the low-rank update into ``base_layer.weight`` (no-op when merged)."""
        if not self.merged:
            w = self.base_layer.weight
            w.copy_((w.float() + self.get_delta_weight()).to(w.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the update merged by :meth:`merge` (no-op when not merged)."""
        if self.merged:
            w = self.base_layer.weight
            w.copy_((w.float() - self.get_delta_weight()).to(w.dtype))
            self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in_features)`` to ``(..., out_features)``."""
        y = self.base_layer(x)
        if self.merged:
            return y
        h = self.lora_dropout(x)
        a_dtype = self.lora_A_q.weight.dtype
        if not torch.is_autocast_enabled(h.device.type):
            h = h.to(a_dtype)
        dq = self.lora_B_q(self.lora_A_q(h)) * self.scaling
        dv = self.lora_B_v(self.lora_A_v(h)) * self.scaling
        y = y.index_add(-1, self.q_rows, dq.to(y.dtype))
        return y.index_add(-1, self.v_rows, dv.to(y.dtype))

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, q={self.q_rows.numel()}, "
            f"v={self.v_rows.numel()}, r={self.r}, alpha={self.alpha:g}, merged={self.merged}"
        )
