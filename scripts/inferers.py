"""Inferers: how a network, or a model exported from it, is run on a batch (MONAI's ``Inferer`` interface).

* :class:`AutocastInferer`: the eager network under ``torch.autocast`` (training, validation, inference).
* :class:`AffineTTAInferer`: test-time augmentation around another inferer: heatmaps averaged over small
  affine perturbations of the input, each warped back onto the unperturbed grid (``--tta true``).
* :class:`OnnxRuntimeInferer`: runs ``models/model.onnx`` (exported with ``python -m monai.bundle
  onnx_export``, see docs/README.md, or :func:`export_onnx`) with ONNX Runtime on the CPU (or the
  providers given); ``configs/inference.json`` with ``--backend onnxruntime``. ``onnxruntime`` and ``onnx``
  are imported only when used: the bundle imports without them (e.g. in the MONAI Label environment).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from monai.inferers import Inferer

from scripts.coords import centred_affine_matrix

__all__ = ["AutocastInferer", "AffineTTAInferer", "DEFAULT_TTA_PERTURBATIONS", "OnnxRuntimeInferer", "export_onnx", "ONNX_EXPORT_COMMAND"]

PathLike = str | os.PathLike

#: how to write ``models/model.onnx`` from ``models/model.pt`` (the contract's spatial size; the batch axis is dynamic)
ONNX_EXPORT_COMMAND = (
    "python -m monai.bundle onnx_export --net_id network_def --filepath models/model.onnx --ckpt_file models/model.pt "
    "--meta_file configs/metadata.json --config_file configs/inference.json --input_shape \"[1, 1, H, W]\" "
    "--use_trace true --converter_kwargs \"{'dynamic_axes': {'x': {0: 'batch'}}, 'input_names': ['x'], 'dynamo': False}\" "
    "(H, W: the contract's spatial_size, e.g. 128 128 for configs/train.json's demo hand; with a data overlay pass "
    "--config_file \"['configs/inference.json','configs/hand.json']\" and the overrides the checkpoint was trained with)"
)


class AutocastInferer(Inferer):
    """Runs the network under ``torch.autocast`` and returns float32 heatmaps.

    MONAI's ``amp`` flag is CUDA-only; this inferer also gives bf16 autocast on CPUs with AMX.

    Args:
        device_type: ``"cpu"`` or ``"cuda"``.
        dtype: autocast dtype name, ``"bfloat16"`` or ``"float16"``.
        enabled: False runs plain fp32.
    """

    def __init__(self, device_type: str = "cpu", dtype: str = "bfloat16", enabled: bool = True) -> None:
        super().__init__()
        self.device_type = str(device_type).split(":")[0]
        self.dtype = getattr(torch, dtype)
        self.enabled = bool(enabled)

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=self.dtype, enabled=self.enabled):
            out = network(inputs, *args, **kwargs)
        return out.float()


#: (rotation in degrees, scale, shift x, shift y in input px) of each pass; the identity comes first
DEFAULT_TTA_PERTURBATIONS = (
    (0.0, 1.0, 0.0, 0.0),
    (3.0, 1.0, 0.0, 0.0),
    (-3.0, 1.0, 0.0, 0.0),
    (0.0, 1.04, 0.0, 0.0),
    (0.0, 0.96, 0.0, 0.0),
)


def _pixel_to_normalised(height: int, width: int) -> torch.Tensor:
    """3x3 matrix from (x, y, 1) in pixels (centres at integers) to ``grid_sample``'s [-1, 1] (``align_corners=False``):
    the matrix form of ``scripts.transforms.utils.pixel_to_grid``, needed here to conjugate a map."""
    return torch.tensor([[2.0 / width, 0.0, 1.0 / width - 1.0],
                         [0.0, 2.0 / height, 1.0 / height - 1.0],
                         [0.0, 0.0, 1.0]], dtype=torch.float64)


def perturbation_matrix(angle_deg: float, scale: float, shift_x: float, shift_y: float, height: int, width: int) -> torch.Tensor:
    """3x3 map (float64) from (x, y, 1) of the unperturbed grid to the perturbed grid, in pixels.

    Rotation by ``angle_deg`` (counter-clockwise as displayed, y pointing down) and scaling about the
    grid centre, then a shift of ``(shift_x, shift_y)`` px.
    """
    # scripts.coords turns from +x towards +y (clockwise as displayed): counter-clockwise is the negative angle
    matrix = centred_affine_matrix((height, width), -np.deg2rad(float(angle_deg)), float(scale),
                                   (float(shift_x), float(shift_y)))
    return torch.from_numpy(matrix)


def _warp(images: torch.Tensor, sample_from: torch.Tensor, padding_mode: str) -> torch.Tensor:
    """``out[p] = images[sample_from @ p]``, bicubic, with ``sample_from`` a 3x3 map in normalised coordinates.

    Bicubic rather than bilinear: two bilinear resamplings of a sigma 2-3 px Gaussian move its decoded peak by
    about 0.1 px, two bicubic ones by about 0.04 px (``tests/test_inferers.py``).
    """
    theta = sample_from[:2].to(images.dtype).unsqueeze(0).expand(images.shape[0], 2, 3)
    grid = torch.nn.functional.affine_grid(theta.to(images.device), list(images.shape), align_corners=False)
    return torch.nn.functional.grid_sample(images, grid, mode="bicubic", padding_mode=padding_mode, align_corners=False)


class AffineTTAInferer(Inferer):
    """Test-time augmentation: the mean of ``inferer``'s heatmaps over small affine perturbations of the input.

    Each pass warps the input ``(B, C, H, W)`` by one perturbation (:func:`perturbation_matrix`, about the grid
    centre, bicubic, border padding), runs ``inferer`` and warps its heatmaps ``(B, N, H', W')`` back onto the
    unperturbed grid (bicubic, zero padding); the result is the mean over passes, float32. Heatmaps may be on a
    coarser grid than the input (e.g. the hourglass's 1/4): they cover the same field of view, so the maps are
    applied in ``grid_sample``'s normalised coordinates. Costs one forward pass per perturbation.

    Args:
        inferer: the inferer run on each perturbed input (e.g. :class:`AutocastInferer`).
        perturbations: ``(angle_deg, scale, shift_x_px, shift_y_px)`` per pass.
    """

    def __init__(self, inferer: Inferer, perturbations: Sequence[Sequence[float]] = DEFAULT_TTA_PERTURBATIONS) -> None:
        super().__init__()
        self.inferer = inferer
        self.perturbations = [tuple(float(v) for v in p) for p in perturbations]
        if not self.perturbations or any(len(p) != 4 for p in self.perturbations):
            raise ValueError("perturbations must be a non-empty list of (angle_deg, scale, shift_x, shift_y), "
                             f"got {perturbations!r}.")
        self.uses_network = getattr(inferer, "uses_network", True)

    def __call__(self, inputs: torch.Tensor, network=None, *args, **kwargs) -> torch.Tensor:
        height, width = inputs.shape[-2:]
        to_norm = _pixel_to_normalised(height, width)
        total = None
        for perturbation in self.perturbations:
            forward = to_norm @ perturbation_matrix(*perturbation, height, width) @ torch.linalg.inv(to_norm)
            identity = torch.allclose(forward, torch.eye(3, dtype=torch.float64))
            warped = inputs if identity else _warp(inputs, torch.linalg.inv(forward), "border")
            heatmaps = self.inferer(warped, network, *args, **kwargs).float()
            if not identity:
                heatmaps = _warp(heatmaps, forward, "zeros")
            total = heatmaps if total is None else total + heatmaps
        return total / len(self.perturbations)


class OnnxRuntimeInferer(Inferer):
    """Runs an ONNX model with ONNX Runtime: ``inputs`` ``(B, C, H, W)`` -> ``(B, N, H', W')`` float32 tensor.

    The model's first input gets the inputs (float32, moved to the CPU); its first output is returned
    on the device of ``inputs``. A model exported with a fixed batch of 1 is run one image at a time.
    The session is created on first use (so that a config can be parsed without the file).

    Args:
        model_path: the ``.onnx`` file.
        providers: ONNX Runtime execution providers, in order of preference.
        intra_op_num_threads: threads of one operator; ``None``: ``torch.get_num_threads()``, the same
            count as the PyTorch backend.

    Attributes:
        uses_network: ``False``: the runner need not load a checkpoint into the eager network.
    """

    uses_network = False

    def __init__(
        self,
        model_path: PathLike,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        intra_op_num_threads: int | None = None,
    ) -> None:
        super().__init__()
        self.model_path = os.fspath(model_path)
        self.providers = list(providers)
        self.intra_op_num_threads = intra_op_num_threads
        self._session = None

    def load(self):
        """The ``onnxruntime.InferenceSession``, created on the first call.

        Raises:
            FileNotFoundError: no model file (the message gives the export command).
            ImportError: ``onnxruntime`` is not installed.
        """
        if self._session is None:
            if not os.path.isfile(self.model_path):
                raise FileNotFoundError(
                    f"ONNX model {self.model_path} not found: export it first with\n  {ONNX_EXPORT_COMMAND}\n"
                    "or run with --backend torch."
                )
            try:
                import onnxruntime
            except ImportError as err:
                raise ImportError(
                    "--backend onnxruntime needs the onnxruntime package (pip install onnxruntime, pinned in "
                    "requirements.txt), or run with --backend torch."
                ) from err
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = int(self.intra_op_num_threads or torch.get_num_threads())
            options.inter_op_num_threads = 1
            options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
            self._session = onnxruntime.InferenceSession(self.model_path, options, providers=self.providers)
        return self._session

    def __call__(self, inputs: torch.Tensor, network=None, *args, **kwargs) -> torch.Tensor:
        """``network`` is ignored (the ONNX model is run)."""
        session = self.load()
        model_input = session.get_inputs()[0]
        array = np.ascontiguousarray(inputs.detach().to("cpu", torch.float32).numpy())
        fixed_batch = model_input.shape[0] if isinstance(model_input.shape[0], int) else None
        if fixed_batch is not None and fixed_batch != array.shape[0]:
            if fixed_batch != 1:
                raise ValueError(f"{self.model_path}: the model takes batches of {fixed_batch}, got {array.shape[0]}.")
            outputs = [session.run(None, {model_input.name: array[i : i + 1]})[0] for i in range(array.shape[0])]
            out = np.concatenate(outputs)
        else:
            out = session.run(None, {model_input.name: array})[0]
        return torch.from_numpy(np.asarray(out, dtype=np.float32)).to(inputs.device)


def export_onnx(network: torch.nn.Module, path: PathLike, input_hw: Sequence[int], in_channels: int = 1) -> str:
    """Export ``network`` (eval mode, fp32) to ONNX at ``path`` with a dynamic batch axis; returns the path.

    MONAI's ``convert_to_onnx`` as ``monai.bundle onnx_export`` runs it with the options of
    :data:`ONNX_EXPORT_COMMAND`, for code that holds the network (benchmarks, tests). The file is
    written atomically (:func:`scripts.writers.atomic_write`).
    """
    from monai.networks.utils import convert_to_onnx

    from scripts.writers import atomic_write

    example = torch.zeros(1, int(in_channels), int(input_hw[0]), int(input_hw[1]))

    def write(temporary: str) -> None:
        convert_to_onnx(
            network.eval(), [example], input_names=["x"], output_names=["output_0"], filename=temporary,
            dynamic_axes={"x": {0: "batch"}, "output_0": {0: "batch"}}, use_trace=True, dynamo=False,
        )

    atomic_write(path, write)
    return os.fspath(path)
