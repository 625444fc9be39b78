"""Meta's SAM ViT-B/L/H and MedSAM ViT-B: architectures from ``segment_anything``, user-supplied weights."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from medsam.models.base import SAM_PIXEL_MEAN, SAM_PIXEL_STD, Preprocessing

__all__ = [
    "MEDSAM_PREPROCESSING",
    "SAM_PREPROCESSING",
    "build_sam_vit_b",
    "build_sam_vit_h",
    "build_sam_vit_l",
    "sam_builder",
]

#: As ``SamPredictor``: 0..255, longest side to 1024, ImageNet mean/std, zero-pad to 1024.
SAM_PREPROCESSING = Preprocessing(
    image_size=1024,
    resize="longest_side",
    intensity="sam",
    pixel_mean=SAM_PIXEL_MEAN,
    pixel_std=SAM_PIXEL_STD,
)
#: As MedSAM's official inference: stretch to 1024x1024, per-image min-max to [0, 1].
MEDSAM_PREPROCESSING = Preprocessing(image_size=1024, resize="square", intensity="minmax")


def sam_builder(variant: str) -> Callable[[], nn.Module]:
    """A function building ``segment_anything``'s ``variant`` (``"vit_b"``, ``"vit_l"``, ``"vit_h"``) with random weights."""

    def build() -> nn.Module:
        from segment_anything import sam_model_registry

        return sam_model_registry[variant](checkpoint=None)

    build.__name__ = f"build_sam_{variant}"
    build.__doc__ = (
        f"SAM {variant} architecture (random weights), via segment_anything.sam_model_registry."
    )
    return build


build_sam_vit_b = sam_builder("vit_b")
build_sam_vit_l = sam_builder("vit_l")
build_sam_vit_h = sam_builder("vit_h")
