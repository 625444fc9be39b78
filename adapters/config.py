"""What an adapter changes in a model: the method (LoRA, mask decoder, full) and its settings.

A method is one of ``"lora"``, ``"decoder"``, ``"full"`` or a ``+``-joined combination of
``"lora"`` and ``"decoder"`` (``"lora+decoder"``). ``"full"`` already trains everything and
combines with nothing.

Examples
--------
>>> cfg = AdapterConfig("decoder+lora")
>>> cfg.method, cfg.parts
('lora+decoder', ('lora', 'decoder'))
>>> AdapterConfig.from_dict(cfg.to_dict()) == cfg
True
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = ["METHOD_PARTS", "AdapterConfig", "LoraSettings", "parse_method"]

#: The building blocks of a method, in canonical order.
METHOD_PARTS: tuple[str, ...] = ("lora", "decoder", "full")

QkvMode = Literal["qv", "qkv", "none"]


def parse_method(method: str) -> tuple[str, ...]:
    """Split ``"lora+decoder"`` into its parts in canonical order.

    Raises
    ------
    ValueError
        Unknown parts, an empty method, or ``"full"`` combined with anything.
    """
    if not isinstance(method, str):
        raise ValueError(f"method must be a string such as 'lora+decoder', got {method!r}")
    parts = {p.strip().lower() for p in method.replace(",", "+").split("+") if p.strip()}
    unknown = sorted(parts - set(METHOD_PARTS))
    if unknown or not parts:
        raise ValueError(
            f"unknown fine-tuning method {method!r}; choose lora, decoder, full or lora+decoder"
        )
    if "full" in parts and len(parts) > 1:
        raise ValueError(f"method {method!r}: 'full' already trains every weight; use it alone")
    return tuple(p for p in METHOD_PARTS if p in parts)


@dataclass(frozen=True)
class LoraSettings:
    """LoRA on the image encoder's attention blocks.

    Parameters
    ----------
    r
        Rank of each low-rank update.
    alpha
        Scale numerator: updates are multiplied by ``alpha / r``.
    dropout
        Dropout on the LoRA input branch (0 disables it).
    qkv
        What to adapt in fused ``qkv`` linears (``...attn.qkv`` in TinyViT and SAM ViT):
        ``"qv"``: separate updates for the query and value rows
        (:class:`~adapters.qkv_lora.QkvLoRA`); ``"qkv"``: one PEFT LoRA update of the whole
        fused layer; ``"none"``: leave them alone.
    targets
        Names of further ``nn.Linear`` modules inside the encoder's attention blocks
        (``...attn.<name>``) that get a PEFT LoRA update, e.g. ``("proj",)``.
    """

    r: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    qkv: QkvMode = "qv"
    targets: tuple[str, ...] = ("proj",)

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"LoRA rank r must be a positive integer, got {self.r!r}")
        if not self.alpha > 0:
            raise ValueError(f"LoRA alpha must be positive, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        if self.qkv not in ("qv", "qkv", "none"):
            raise ValueError(f"LoRA qkv must be 'qv', 'qkv' or 'none', got {self.qkv!r}")
        targets = tuple(str(t) for t in self.targets)
        bad = [t for t in targets if not t.isidentifier() or t == "qkv"]
        if bad:
            raise ValueError(
                f"LoRA targets must be attention sub-module names other than qkv (e.g. 'proj'), got {bad}"
            )
        object.__setattr__(self, "targets", targets)
        if self.qkv == "none" and not targets:
            raise ValueError("LoRA has nothing to adapt: qkv='none' and no targets")

    @property
    def scaling(self) -> float:
        """``alpha / r``, the factor applied to every low-rank update."""
        return float(self.alpha) / self.r


@dataclass(frozen=True)
class AdapterConfig:
    """Which weights a fine-tuning run trains.

    Parameters
    ----------
    method
        ``"lora"``, ``"decoder"``, ``"full"`` or ``"lora+decoder"`` (normalised to the
        canonical order).
    lora
        LoRA settings (used when the method includes ``"lora"``).
    train_prompt_encoder
        Also train the prompt encoder with ``"decoder"`` (frozen by default: the prompt
        embeddings are shared by every structure and prompt type).
    """

    method: str = "lora+decoder"
    lora: LoraSettings = field(default_factory=LoraSettings)
    train_prompt_encoder: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", "+".join(parse_method(self.method)))
        if not isinstance(self.lora, LoraSettings):
            raise TypeError(f"lora must be a LoraSettings, got {type(self.lora).__name__}")

    @property
    def parts(self) -> tuple[str, ...]:
        """The method's parts, e.g. ``("lora", "decoder")``."""
        return tuple(self.method.split("+"))

    @property
    def uses_lora(self) -> bool:
        return "lora" in self.parts

    @property
    def trains_encoder(self) -> bool:
        """Whether any image-encoder computation depends on trained weights."""
        return self.uses_lora or "full" in self.parts

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (for the adapter sidecar and run config)."""
        d = asdict(self)
        d["lora"]["targets"] = list(self.lora.targets)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdapterConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        data = dict(data)
        lora = dict(data.pop("lora", {}) or {})
        known = {"method", "train_prompt_encoder"}
        extra = sorted(set(data) - known)
        if extra:
            raise ValueError(f"unknown adapter config keys {extra}")
        if "targets" in lora:
            lora["targets"] = tuple(lora["targets"])
        try:
            settings = LoraSettings(**lora)
        except TypeError as exc:
            raise ValueError(f"invalid LoRA settings {lora}: {exc}") from None
        return cls(lora=settings, **data)
