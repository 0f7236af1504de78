"""Inferers: how a network, or a model exported from it, is run on a batch (MONAI's ``Inferer`` interface).

* :class:`AutocastInferer`: the eager network under ``torch.autocast`` (training, validation, inference).
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

__all__ = ["AutocastInferer", "OnnxRuntimeInferer", "export_onnx", "ONNX_EXPORT_COMMAND"]

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
