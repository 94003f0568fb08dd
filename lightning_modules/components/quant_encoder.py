"""Method A's network (docs/method.md §A, S100–S500): timm backbone → window pooling → per-window FC + ReLU → iReLU.

Pure torch/timm, no Lightning. Shapes (``B`` images, ``P`` windows, ``d`` dims per window, ``K`` classes):

- ``continuous``  ``v``  ``B×P×d`` float, ``v_p = ReLU(W_p g_p + b_p)`` with ``g_p`` the window mean;
- ``codes``       ``B×P×d`` float, ``iReLU(v)`` (integers in ``0..2**bits-1``, straight-through gradient);
- ``logits``      ``B×P×K`` from the classification layer applied to each *continuous* ``v_p``
  ("each local continuous vector v_p goes into a classification layer"). **[decision]** By default the
  classification layer is one ``Linear(d, K)`` shared by all windows; ``per_window_classifier=True``
  gives every window its own weights (one grouped conv, like :class:`PerWindowLinear`).

The image's target feature is ``[q_1, …, q_P]``: :meth:`QuantizationEncoder.encode` returns it as
``uint8`` ``B×(P·d)`` (window-major: ``P`` blocks of ``d`` codes), i.e. ``P·d`` bytes per image.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import timm
import torch
import torch.nn.functional as F
from torch import nn

from .backbones import create_backbone
from .irelu import check_bits, irelu, to_codes
from .windows import PerWindowLinear, WindowPooling


class QuantOutput(NamedTuple):
    continuous: torch.Tensor  # B×P×d float, v = ReLU(W_p g_p + b_p)
    codes: torch.Tensor  # B×P×d float, iReLU(v) (differentiable through the STE)
    logits: torch.Tensor  # B×P×num_classes, classification of each continuous v_p


class _Trunk(nn.Module):
    """Calls a timm backbone and returns one ``B×C×H×W`` feature map.

    ``how``: ``"list"`` (features-only net returning a list/tuple/dict: take item ``index``),
    ``"intermediates"`` (classification net: ``forward_intermediates(indices=[stage])``) or
    ``"tensor"`` (module already returns a 4-D map).
    """

    def __init__(self, module: nn.Module, how: str, index: int):
        super().__init__()
        self.module = module
        self.how = how
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.how == "intermediates":
            return self.module.forward_intermediates(x, indices=[self.index], intermediates_only=True)[0]
        out = self.module(x)
        if self.how == "tensor":
            return out
        if isinstance(out, dict):
            out = list(out.values())
        return out[self.index]


def _probe(module: nn.Module, x: torch.Tensor):
    was_training = module.training
    module.eval()  # a dummy forward must not update BatchNorm running statistics
    try:
        with torch.no_grad():
            return module(x)
    finally:
        module.train(was_training)


def make_trunk(module: nn.Module, feature_stage: int, probe_input: torch.Tensor, prune: bool) -> _Trunk:
    out = _probe(module, probe_input)
    if isinstance(out, list | tuple | dict):
        return _Trunk(module, "list", feature_stage)
    if torch.is_tensor(out) and out.dim() == 4:
        if feature_stage != -1:
            raise ValueError(
                f"backbone_module returns a single feature map; feature_stage must be -1, got {feature_stage}"
            )
        return _Trunk(module, "tensor", 0)
    if hasattr(module, "forward_intermediates"):
        index = feature_stage
        if prune and hasattr(module, "prune_intermediate_layers"):
            # drop the stages after the chosen one and the classifier head: they would be parameters that
            # never get a gradient (DDP's unused-parameter error); returns the absolute stage index
            index = int(module.prune_intermediate_layers([feature_stage], prune_head=True)[0])
        return _Trunk(module, "intermediates", index)
    raise ValueError(
        "backbone_module must be a timm features_only model (returns a list of feature maps), "
        "a model returning one B×C×H×W map, or a timm model with forward_intermediates; "
        f"got {type(module).__name__} returning {type(out).__name__}"
    )


class QuantizationEncoder(nn.Module):
    """Backbone → :class:`WindowPooling` → :class:`PerWindowLinear` (+ReLU) → iReLU, plus a classifier.

    All arguments are keyword-only; ``num_classes`` is required.

    Args:
        num_classes: classes of the classification layer.
        backbone: timm model name, built with ``features_only=True, out_indices=(feature_stage,)``.
        pretrained: passed to ``timm.create_model`` (set ``HF_HUB_OFFLINE=1`` when offline).
        backbone_module: a pre-built timm model used instead of ``backbone``/``pretrained`` — either a
            ``features_only`` model (its outputs are indexed with ``feature_stage``, so ``-1`` = the last
            one it returns), a classification model (``forward_intermediates(indices=[feature_stage])``,
            see ``prune_backbone``), or a module returning one ``B×C×H×W`` map (``feature_stage=-1``).
        feature_stage: which backbone stage's feature map to pool (``-1`` = last, the default of docs/method.md §A).
        window, kernel, stride, num_stripes: see :class:`WindowPooling`.
        dim: ``d``, dimensions per window.
        bytes_per_image: when given, ``d = bytes_per_image / P`` instead of ``dim`` (it must divide exactly):
            window layouts with different ``P`` then compare at equal bytes.
        bits: code width, ``1..8``.
        image_size: input size (int or ``(H, W)``) used for a dummy forward at construction to find the
            feature map's ``C×H×W`` and thus ``P``; inputs of another size that change ``P`` raise.
        per_window_classifier: ``False`` (default) = one ``Linear(d, K)`` shared by all windows; ``True``
            = each window its own classifier.
        in_chans: input channels (passed to timm; 3 for RGB and for 3-channel sketches).
        prune_backbone: when ``backbone_module`` is a classification model, remove (in place, with timm's
            ``prune_intermediate_layers``) the stages after ``feature_stage`` and the classifier head, so
            every parameter gets a gradient (DDP) and no compute is wasted.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        backbone: str = "resnet18",
        pretrained: bool = False,
        backbone_module: nn.Module | None = None,
        feature_stage: int = -1,
        window: str = "sliding",
        kernel=(2, 2),
        stride=(1, 1),
        num_stripes: int = 4,
        dim: int = 64,
        bytes_per_image: int | None = None,
        bits: int = 8,
        image_size=64,
        per_window_classifier: bool = False,
        in_chans: int = 3,
        prune_backbone: bool = True,
    ):
        super().__init__()
        self.bits = check_bits(bits)
        if int(dim) < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        self.dim = int(dim)
        self.num_classes = int(num_classes)
        self.feature_stage = int(feature_stage)
        self.per_window_classifier = bool(per_window_classifier)
        img_hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.image_size = img_hw
        probe_input = torch.zeros(1, in_chans, *img_hw)
        if backbone_module is not None:
            first = next(iter(backbone_module.parameters()), None)
            if first is not None:
                probe_input = probe_input.to(device=first.device, dtype=first.dtype)

        if backbone_module is None:
            backbone_module = timm.create_model(
                backbone,
                pretrained=pretrained,
                features_only=True,
                out_indices=(self.feature_stage,),
                in_chans=in_chans,
            )
            self.backbone_name = backbone
            # the model returns exactly the one requested stage
            self.trunk = _Trunk(backbone_module, "list", 0)
        else:
            self.backbone_name = type(backbone_module).__name__
            self.trunk = make_trunk(backbone_module, self.feature_stage, probe_input, prune_backbone)

        fmap = _probe(self.trunk, probe_input)
        if not torch.is_tensor(fmap) or fmap.dim() != 4:
            raise ValueError(f"backbone did not return a B×C×H×W feature map (got {type(fmap).__name__})")
        self.feature_channels = int(fmap.shape[1])
        self.feature_hw = (int(fmap.shape[2]), int(fmap.shape[3]))

        self.pool = WindowPooling(window, kernel=kernel, stride=stride, num_stripes=num_stripes)
        self.num_windows = self.pool.num_windows(self.feature_hw)  # raises if the window does not fit
        if bytes_per_image is not None:
            if int(bytes_per_image) < 1 or int(bytes_per_image) % self.num_windows:
                raise ValueError(
                    f"bytes_per_image={bytes_per_image} is not a positive multiple of the {self.num_windows} "
                    f"windows of a {self.feature_hw[0]}×{self.feature_hw[1]} feature map"
                )
            self.dim = int(bytes_per_image) // self.num_windows
        self.fc = PerWindowLinear(self.num_windows, self.feature_channels, self.dim, relu=True)
        if self.per_window_classifier:
            self.classifier = PerWindowLinear(self.num_windows, self.dim, self.num_classes, relu=False)
        else:
            self.classifier = nn.Linear(self.dim, self.num_classes)

    # ----------------------------------------------------------------------------------------- sizes
    @property
    def feature_dim(self) -> int:
        """``P·d``: length of an image's target feature."""
        return self.num_windows * self.dim

    @property
    def code_bytes(self) -> int:
        """Bytes per image as stored by :meth:`encode`: ``P·d`` (one ``uint8`` per code for any ``bits``;
        codes are not bit-packed)."""
        return self.num_windows * self.dim

    @property
    def code_bits(self) -> int:
        """Information bits per image, ``P·d·bits`` (the size if codes were bit-packed)."""
        return self.num_windows * self.dim * self.bits

    def window_boxes(self) -> list[tuple[int, int, int, int]]:
        """The ``P`` windows in feature-map cells ``(top, left, bottom, right)``, bottom/right exclusive."""
        return self.pool.window_boxes(self.feature_hw)

    # ----------------------------------------------------------------------------------------- forward
    def continuous(self, x: torch.Tensor) -> torch.Tensor:
        """``v``: ``B×P×d`` continuous (post-ReLU) per-window features."""
        g = self.pool(self.trunk(x))  # B×C×P
        if g.shape[-1] != self.num_windows:
            raise ValueError(
                f"input of size {tuple(x.shape[-2:])} gives {g.shape[-1]} windows but the encoder was built "
                f"for {self.num_windows} (image_size={self.image_size}); build it with the input size"
            )
        return self.fc(g.transpose(1, 2))  # B×P×C -> B×P×d

    def forward(self, x: torch.Tensor) -> QuantOutput:
        v = self.continuous(x)
        codes = irelu(v, self.bits)
        logits = self.classifier(v)  # shared Linear or PerWindowLinear: both map B×P×d -> B×P×K
        return QuantOutput(continuous=v, codes=codes, logits=logits)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The image's target feature ``[q_1, …, q_P]`` as ``uint8`` ``B×(P·d)`` (window-major).

        Does not change train/eval mode: call ``.eval()`` first for deterministic BatchNorm."""
        return to_codes(self.continuous(x), self.bits).flatten(1)

    @torch.no_grad()
    def float_features(self, x: torch.Tensor) -> torch.Tensor:
        """The continuous features ``[v_1, …, v_P]`` as float ``B×(P·d)`` (window-major)."""
        return self.continuous(x).flatten(1)


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """``L_cls``: the per-window classification loss averaged over windows ``p`` (and the batch).

    ``logits``: ``B×P×K`` (a ``B×K`` tensor is treated as ``P = 1``).

    - ``multi_label=True``: sigmoid binary cross-entropy, ``labels`` multi-hot ``B×K`` (cast to float);
      **[decision]** the mean is taken over batch, windows *and* classes (PyTorch's default
      ``reduction="mean"`` of ``binary_cross_entropy_with_logits``).
    - ``multi_label=False``: softmax cross-entropy, ``labels`` int class ids ``B`` (or class
      probabilities ``B×K``); mean over batch and windows.
    """
    if logits.dim() == 2:
        logits = logits.unsqueeze(1)
    if logits.dim() != 3:
        raise ValueError(f"logits must be B×P×K (or B×K), got shape {tuple(logits.shape)}")
    b, p, k = logits.shape
    if multi_label:
        if labels.shape != (b, k):
            raise ValueError(
                f"multi-label targets must be multi-hot B×K = {(b, k)}, got {tuple(labels.shape)}"
            )
        target = labels.to(logits.dtype).unsqueeze(1).expand(b, p, k)
        return F.binary_cross_entropy_with_logits(logits, target)
    flat = logits.reshape(b * p, k)
    if labels.dim() == 1:
        return F.cross_entropy(flat, labels.long().repeat_interleave(p))
    if labels.shape != (b, k):
        raise ValueError(
            f"single-label targets must be B ids or B×K probabilities, got {tuple(labels.shape)}"
        )
    return F.cross_entropy(flat, labels.to(logits.dtype).repeat_interleave(p, dim=0))


def build_code_encoder(
    config: Any, num_classes: int, image_size: Any, weights: str | None = None
) -> QuantizationEncoder:
    """The method-A network of a model config (the fields of ``QuantModelConfig``); ``weights``
    overrides ``config.weights`` (``"none"`` when a checkpoint's state dict replaces every tensor)."""
    trunk = create_backbone(
        config.backbone, weights=config.weights if weights is None else weights, num_classes=None
    )
    return QuantizationEncoder(
        num_classes=num_classes,
        backbone_module=trunk,
        feature_stage=config.feature_stage,
        window=config.window,
        kernel=tuple(config.kernel),
        stride=tuple(config.stride),
        num_stripes=config.num_stripes,
        dim=config.dim,
        bytes_per_image=config.bytes_per_image,
        bits=config.bits,
        image_size=image_size,
        per_window_classifier=config.per_window_classifier,
    )


class CodeEncoder(nn.Module):
    """Search with a method-A network: an image batch → its uint8 codes ``B×(P·d)``. Its state-dict keys
    are the LightningModule's (``encoder.…``), so a checkpoint's ``state_dict`` loads into it directly."""

    def __init__(self, encoder: QuantizationEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder.encode(x)


def code_encoder(config: Any, facts: dict[str, Any]) -> CodeEncoder:
    """The search network of a method-A checkpoint (``facts``: its ``num_classes`` and ``image_size``),
    without pretrained weights: the checkpoint's state dict fills it."""
    return CodeEncoder(
        build_code_encoder(config, int(facts["num_classes"]), facts["image_size"], weights="none")
    )
