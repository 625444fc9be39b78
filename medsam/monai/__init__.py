"""MONAI integration: a network, an inferer, dictionary transforms and a bundle.

Importing this package imports MONAI (``import medsam`` alone does not).

==========================  ===================================================================
:class:`SamNetwork`         any registry model as an ``nn.Module``: ``[N, C, H, W]`` + prompts
                            -> ``[N, K, H, W]`` logits (trainable)
:class:`SamSliceInferer`    slice-wise promptable inference on ``[B, C, H, W, D]`` MetaTensors,
                            with propagation by the project's ``VolumePredictor``
``LoadVolume(d)``           ``LoadImage`` through :func:`medsam.io.load_volume` (its input checks)
``SamIntensity(d)``         the project's intensity windows -> float32 [0, 1]
``LoadPrompts(d)``          a ``medsam segment`` prompts JSON file -> dict
``PromptsFromLabel(d)``     simulated box/point prompts on key slices of a reference label
``SamInference(d)``         the inferer inside a transform chain
``LabelMetrics(d)``         per-label Dice and NSD (MONAI metrics); :func:`write_metrics_csv`
:func:`bundle_path`         the bundle shipped with medsam (``configs/inference.json``, ...)
==========================  ===================================================================

Axis conventions are in :mod:`medsam.monai.geometry`: MONAI's ``[C, H, W, D]`` spatial axes
are the file's ``(i, j, k)``; medsam's Volume is ``(k, j, i)`` with LPS geometry.
"""

from __future__ import annotations

from medsam.monai.bundle import bundle_path, find_cases, run_cases
from medsam.monai.geometry import labels_to_metatensor, volume_from_metatensor
from medsam.monai.inferer import PREWINDOWED, SamSliceInferer
from medsam.monai.metrics import (
    LabelMetrics,
    LabelMetricsD,
    LabelMetricsd,
    LabelMetricsDict,
    write_metrics_csv,
)
from medsam.monai.network import SamNetwork, SamNetworkOutput
from medsam.monai.prompts import read_prompts, resolve_prompts
from medsam.monai.reader import LoadVolume, LoadVolumeD, LoadVolumed, LoadVolumeDict, MedsamReader
from medsam.monai.simulate import simulate_prompts
from medsam.monai.transforms import (
    LoadPrompts,
    LoadPromptsD,
    LoadPromptsd,
    LoadPromptsDict,
    PromptsFromLabel,
    PromptsFromLabelD,
    PromptsFromLabeld,
    PromptsFromLabelDict,
    SamInference,
    SamInferenceD,
    SamInferenced,
    SamInferenceDict,
    SamIntensity,
    SamIntensityD,
    SamIntensityd,
    SamIntensityDict,
)

__all__ = [
    "PREWINDOWED",
    "LabelMetrics",
    "LoadVolume",
    "LoadVolumed",
    "LoadVolumeD",
    "LoadVolumeDict",
    "MedsamReader",
    "LabelMetricsd",
    "LabelMetricsD",
    "LabelMetricsDict",
    "LoadPrompts",
    "LoadPromptsd",
    "LoadPromptsD",
    "LoadPromptsDict",
    "PromptsFromLabel",
    "PromptsFromLabeld",
    "PromptsFromLabelD",
    "PromptsFromLabelDict",
    "SamInference",
    "SamInferenced",
    "SamInferenceD",
    "SamInferenceDict",
    "SamIntensity",
    "SamIntensityd",
    "SamIntensityD",
    "SamIntensityDict",
    "SamNetwork",
    "SamNetworkOutput",
    "SamSliceInferer",
    "bundle_path",
    "find_cases",
    "labels_to_metatensor",
    "read_prompts",
    "resolve_prompts",
    "run_cases",
    "simulate_prompts",
    "volume_from_metatensor",
    "write_metrics_csv",
]
