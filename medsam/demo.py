"""``make demo``: segment the liver in the bundled sample CT from one box, in 3D.

Loads ``sample_data/totalsegmentator/example_ct_sm.nii.gz`` (a real abdominal CT,
TotalSegmentator test data), draws one box around the liver on the slice where the
reference liver is largest (what a user would do), propagates it through the volume with
the bundled LiteMedSAM weights, prints the Dice against the reference label, and writes
the mask (NIfTI, input geometry) and an overlay PNG of three slices to ``out/``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "totalsegmentator"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("out"))
    parser.add_argument("--data", type=Path, default=SAMPLE, help="folder with example_ct_sm.nii.gz")
    parser.add_argument("--organ", default="liver", choices=["liver", "spleen", "kidney_right", "aorta"])
    parser.add_argument("--device", default=None)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from medsam.errors import MedsamError
    from medsam.intensity import resolve_window
    from medsam.io import load_volume, save_mask
    from medsam.metrics import dice
    from medsam.overlay import overlay_slices, save_overlay_png
    from medsam.pipeline import segment_volume, summarize
    from medsam.prompts import ObjectPrompts, PromptSet, SlicePrompt, box_from_mask

    label_ids = {"liver": 5, "spleen": 1, "kidney_right": 2, "aorta": 52}
    try:
        ct = load_volume(args.data / "example_ct_sm.nii.gz")
        ref_vol = load_volume(args.data / "example_seg.nii.gz")
        if not ct.same_geometry(ref_vol):
            raise SystemExit("reference labels are not on the CT grid")
        ref = ref_vol.array == label_ids[args.organ]
        k = int(ref.reshape(ref.shape[0], -1).sum(1).argmax())
        box = box_from_mask(ref[k])
        print(f"input   {ct.source} {ct.grid_shape} (Z, Y, X), spacing {ct.spacing} mm, {ct.modality}")
        print(f"prompt  one box on slice {k}: {[int(v) for v in box]} (x0, y0, x1, y1) -> {args.organ}")
        prompts = PromptSet((ObjectPrompts(1, args.organ, (SlicePrompt(k, box=box),)),))
        window = resolve_window(ct, "soft_tissue")
        result = segment_volume(ct, prompts, window=window, device=args.device)
        mask_path = save_mask(result.labels, ct, args.out / f"{args.organ}_mask.nii.gz", overwrite=args.overwrite)
        ks = sorted({max(0, k - 6), k, min(ct.n_slices - 1, k + 6)})
        png = overlay_slices(ct, result.labels, ks, window, reference=ref.astype(np.uint8))
        png_path = save_overlay_png(png, args.out / f"{args.organ}_overlay.png", overwrite=args.overwrite)
    except MedsamError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 2
    row = summarize(result, ct)[0]
    d = dice(result.labels == 1, ref)
    print(
        f"result  {row['name']}: slices {row['slices'][0]}-{row['slices'][1]} ({row['n_slices']} slices), "
        f"{row['volume_ml']} mL, {result.seconds:.1f} s"
    )
    print(f"dice    {d:.3f} against the TotalSegmentator reference {args.organ}")
    print(f"wrote   {mask_path}")
    print(f"wrote   {png_path}  (slices {ks}; filled: medsam, white outline: reference)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
