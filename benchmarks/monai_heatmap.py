"""MONAI's ``GenerateHeatmap`` against this bundle's sub-pixel targets (:func:`scripts.heatmap.gaussian_heatmaps`).

``monai.transforms.GenerateHeatmap`` (MONAI 1.6) takes float ``(Y, X)`` points; this script draws
heatmaps for the same random sub-pixel points with both (MONAI's normalised to peak 1, ours with
``gamma = 1``), and prints the largest absolute difference of the maps and the distance between the
positions that :func:`scripts.heatmap.decode_heatmaps` finds in each, for sub-pixel points and for
points on pixel centres. Deterministic (``--seed``); takes a second.

Example::

    python benchmarks/monai_heatmap.py --sigma 2 --size 64 --count 200
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monai.transforms import GenerateHeatmap  # noqa: E402

from scripts.heatmap import decode_heatmaps, gaussian_heatmaps  # noqa: E402


def compare(points_xy: torch.Tensor, size: int, sigma: float) -> tuple[float, float]:
    """``(max |MONAI - ours|, max decoded distance px)`` for points ``(N, 2)`` ``(x, y)`` on a ``size`` grid."""
    ours = gaussian_heatmaps(points_xy.double(), (size, size), sigma, gamma=1.0).float()
    monai_maps = GenerateHeatmap(sigma=sigma, spatial_shape=(size, size), normalize=True)(points_xy.flip(-1).float())
    monai_maps = torch.as_tensor(monai_maps).float()
    diff = float((monai_maps - ours).abs().max())
    moved = (decode_heatmaps(monai_maps[None])[0] - decode_heatmaps(ours[None])[0]).norm(dim=-1).max()
    return diff, float(moved)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sigma", type=float, default=2.0, help="Gaussian std, grid px")
    parser.add_argument("--size", type=int, default=64, help="grid side, px")
    parser.add_argument("--count", type=int, default=200, help="landmarks drawn")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    gen = torch.Generator().manual_seed(args.seed)
    margin = 4 * args.sigma
    sub_pixel = margin + torch.rand(args.count, 2, generator=gen) * (args.size - 1 - 2 * margin)
    for name, points in (("sub-pixel points", sub_pixel), ("pixel-centre points", sub_pixel.round())):
        diff, moved = compare(points, args.size, args.sigma)
        print(f"{name:20s} sigma {args.sigma:g} px, {args.size}x{args.size}: max |MONAI - ours| = {diff:.2e} "
              f"(peak 1), decoded positions differ by up to {moved:.3f} px")


if __name__ == "__main__":
    main()
