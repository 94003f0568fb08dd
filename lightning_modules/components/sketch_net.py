"""The zero-shot SBIR network (docs/method.md §B, S2), pure torch/timm.

``SketchNet``: one timm backbone shared by sketches and photos → pooled features ``g`` (``C`` wide)
→ embedding ``f = E g + e`` (``C → d``, ``d = 512``) → two heads on ``f``:

- ``classifier``: the seen classes (``d → num_seen``, PyTorch's default init): ``nn.Linear`` (SAKE), or
  :class:`CosineClassifier` (``classifier="cosine"``: logits ``cos(f, w_k) / T``, normalised softmax);
- ``imagenet_head``: ``d → 1000`` for distillation.

ImageNet head initialisation (``head_init="svd"``, as SAKE's ``initialize_pretrained_model_hashing``
in ``src/senet.py``): factor the backbone's ImageNet classifier ``W_in ∈ R^{1000×C}`` by a thin SVD
``W_in = U S Vᵀ`` and keep the top ``r = min(d, rank)`` singular triplets:

- embedding weight ``E = S_r V_rᵀ`` (``d×C``; SAKE's ``second_last_linear``), embedding bias ``e = 0``;
- ImageNet-head weight ``H = U_r`` (``1000×d``; SAKE's ``last_linear``), head bias = ``W_in``'s bias.

So at initialisation ``imagenet_head(embedding(g)) = U_r S_r V_rᵀ g + b_in``: the best rank-``d``
approximation of the ImageNet classifier, exact when ``d ≥ rank(W_in)`` (e.g. ``d = C ≤ 1000``).
Rows ``r+1 … d`` of ``E`` (when ``d`` exceeds the rank) keep PyTorch's default init and the matching
head columns are zero, so they do not change the product. Where SAKE differs: it drops ``W_in``'s
bias and leaves both new biases at PyTorch's random default; here the embedding bias is 0 and the
head bias is ``b_in`` so the reconstruction is exact. ``head_init="auto"`` uses the SVD when the
backbone carries a loaded ImageNet classifier and falls back to ``"random"`` (PyTorch default init
for both layers) otherwise, e.g. ``weights="none"``.

The distillation teacher (:meth:`SketchNet.make_teacher` / :func:`make_teacher`) is a frozen copy of
the ImageNet-initialised backbone *with its original 1000-way classifier*; ``teacher(x)`` returns
ImageNet logits.
"""

from __future__ import annotations

import contextlib
import copy
import os
import warnings
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from sketchquant.lightning_modules.components.backbones import (
    BackboneInfo,
    create_backbone,
    get_backbone_info,
)

__all__ = [
    "CosineClassifier",
    "FrozenTeacher",
    "SketchNet",
    "SketchNetOutput",
    "make_teacher",
    "svd_split_classifier",
]

IMAGENET_CLASSES = 1000


class SketchNetOutput(NamedTuple):
    """``features``: ``B×d`` embedding ``f`` (before any normalisation; retrieval features);
    ``logits``: ``B×num_seen`` seen-class logits; ``imagenet_logits``: ``B×1000`` ImageNet-head logits
    (``None`` when the net was built with ``imagenet_head=False``)."""

    features: Tensor
    logits: Tensor
    imagenet_logits: Tensor | None


class FrozenTeacher(nn.Module):
    """Wraps a module in eval mode with no gradients: ``train()`` keeps it in eval mode and
    ``forward`` runs under ``torch.no_grad()``."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.net.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> FrozenTeacher:  # always eval, whatever ``mode``
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def make_teacher(backbone_module: nn.Module) -> FrozenTeacher:
    """A frozen deep copy of ``backbone_module`` (a classifier such as ``create_backbone(name)`` with its
    1000-way ImageNet head): eval mode, ``requires_grad=False``; ``teacher(x)`` = ImageNet logits."""
    return FrozenTeacher(copy.deepcopy(backbone_module))


class CosineClassifier(nn.Module):
    """Normalised softmax (Zhai & Wu, "Classification is a strong baseline for deep metric learning",
    BMVC 2019): ``logits[i, k] = cos(f_i, w_k) / T``, no bias. Retrieval ranks by the distance between
    L2-normalised features, so a classifier that sees only directions trains the features in that metric;
    a linear head can also lower its loss by growing ``‖f‖``, which retrieval throws away. ``weight``
    (``num_classes × d``) starts as ``nn.Linear``'s."""

    def __init__(self, in_features: int, out_features: int, temperature: float = 0.05) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"model.classifier_temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.weight = nn.Parameter(nn.Linear(in_features, out_features, bias=False).weight.detach().clone())

    def forward(self, f: Tensor) -> Tensor:
        w = nn.functional.normalize(self.weight, dim=-1)
        return nn.functional.normalize(f, dim=-1) @ w.T / self.temperature

    def extra_repr(self) -> str:
        return (
            f"in_features={self.weight.shape[1]}, out_features={self.weight.shape[0]}, T={self.temperature}"
        )


def svd_split_classifier(
    weight: Tensor, bias: Tensor | None, dim: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Split ``W (K×C), b`` into embedding ``(E d×C, e d)`` and head ``(H K×d, h K)`` (see module doc).

    ``E = S_r V_rᵀ``, ``e = 0``, ``H = U_r``, ``h = b``, ``r = min(dim, K, C)``. When ``dim > r`` the
    extra rows of ``E`` are NaN placeholders for the caller to fill (head columns are 0 there).
    Computed in the weight's dtype (float32 for half types; pass a float64 weight for float64).
    """
    k, c = weight.shape
    w = weight.detach().to(torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    r = min(dim, s.numel())
    emb_w = torch.full((dim, c), float("nan"), dtype=w.dtype)
    emb_w[:r] = s[:r, None] * vh[:r]
    head_w = torch.zeros(k, dim, dtype=w.dtype)
    head_w[:, :r] = u[:, :r]
    emb_b = torch.zeros(dim, dtype=w.dtype)
    head_b = bias.detach().to(w.dtype) if bias is not None else torch.zeros(k, dtype=w.dtype)
    return emb_w, emb_b, head_w, head_b


def _fingerprint(module: nn.Module) -> float:
    """A cheap checksum of parameters and floating buffers (BN statistics) to detect training."""
    tensors = [*module.parameters(), *(b for b in module.buffers() if b.is_floating_point())]
    with torch.no_grad():
        return float(sum(t.detach().double().abs().sum() for t in tensors))


class SketchNet(nn.Module):
    """Backbone + embedding ``C → d`` + seen-class classifier + ImageNet head (module doc).

    Args:
        num_seen: number of seen (training) classes.
        backbone: timm model name; ``weights`` and ``backbone_kwargs`` go to
            :func:`~lightning_modules.components.backbones.create_backbone`.
        embed_dim: ``d`` (512).
        head_init: ``"auto"`` | ``"svd"`` | ``"random"`` — how embedding and ImageNet head start.
        imagenet_head: build the ``d → 1000`` head (needed for distillation).
        drop_rate: dropout on the pooled features in training (timm's ``drop_rate``); 0 as in SAKE's
            CSE-ResNet-50 (``dropout_p=None``).
        classifier: ``"linear"`` (SAKE) or ``"cosine"`` (:class:`CosineClassifier` with ``temperature``).
    """

    def __init__(
        self,
        num_seen: int,
        backbone: str = "tf_efficientnet_lite0",
        *,
        weights: str | os.PathLike = "auto",
        embed_dim: int = 512,
        head_init: str = "auto",
        imagenet_head: bool = True,
        drop_rate: float = 0.0,
        classifier: str = "linear",
        temperature: float = 0.05,
        **backbone_kwargs,
    ):
        super().__init__()
        if head_init not in ("auto", "svd", "random"):
            raise ValueError(f"head_init must be 'auto', 'svd' or 'random', got {head_init!r}")
        if classifier not in ("linear", "cosine"):
            raise ValueError(f"model.classifier must be 'linear' or 'cosine', got {classifier!r}")
        if num_seen < 1 or embed_dim < 1:
            raise ValueError(f"num_seen and embed_dim must be positive, got {num_seen}, {embed_dim}")
        net = create_backbone(
            backbone, weights=weights, num_classes=None, drop_rate=drop_rate, **backbone_kwargs
        )
        info = get_backbone_info(net)
        original_head = net.get_classifier()
        # the original 1000-way classifier, kept out of the module tree (not trained, not saved)
        self._imagenet_classifier: tuple[nn.Module, ...] = (copy.deepcopy(original_head),)
        net.reset_classifier(0)
        self.backbone = net
        self.num_features = int(net.num_features)
        self.embed_dim = embed_dim
        self.num_seen = num_seen
        self.embedding = nn.Linear(self.num_features, embed_dim)
        self.classifier = (
            CosineClassifier(embed_dim, num_seen, temperature)
            if classifier == "cosine"
            else nn.Linear(embed_dim, num_seen)
        )
        self.imagenet_head = nn.Linear(embed_dim, IMAGENET_CLASSES) if imagenet_head else None

        is_imagenet_linear = (
            isinstance(original_head, nn.Linear) and original_head.out_features == IMAGENET_CLASSES
        )
        if head_init == "svd" and not is_imagenet_linear:
            raise ValueError(
                f"head_init='svd' needs a 1000-way nn.Linear classifier; {backbone!r} has {original_head!r}"
            )
        use_svd = head_init == "svd" or (
            head_init == "auto" and info.has_imagenet_classifier and is_imagenet_linear
        )
        if use_svd:
            self._init_from_classifier(original_head)
        self.head_init = "svd" if use_svd else "random"
        self.backbone_info: BackboneInfo = info
        self._init_fingerprint = _fingerprint(self.backbone)

    @torch.no_grad()
    def _init_from_classifier(self, head: nn.Linear) -> None:
        emb_w, emb_b, head_w, head_b = svd_split_classifier(head.weight, head.bias, self.embed_dim)
        keep = ~torch.isnan(emb_w).any(dim=1)
        w = self.embedding.weight
        w[keep] = emb_w[keep].to(w.dtype)
        self.embedding.bias.copy_(emb_b)
        if self.imagenet_head is not None:
            self.imagenet_head.weight.copy_(head_w)
            self.imagenet_head.bias.copy_(head_b)

    def pool(self, x: Tensor) -> Tensor:
        """Backbone pooled features ``g`` (``B×C``)."""
        return self.backbone(x)

    def forward(self, x: Tensor, frozen_features: bool = False) -> SketchNetOutput:
        """``frozen_features``: ``f`` is computed without gradient, so only the two heads learn from this
        batch (a linear probe on the current features; ``model.head_warmup_epochs``)."""
        with torch.no_grad() if frozen_features else contextlib.nullcontext():
            f = self.embedding(self.pool(x))
        imagenet_logits = self.imagenet_head(f) if self.imagenet_head is not None else None
        return SketchNetOutput(features=f, logits=self.classifier(f), imagenet_logits=imagenet_logits)

    def extract_features(self, x: Tensor) -> Tensor:
        """Retrieval features ``f`` only (``B×d``, not normalised)."""
        return self.embedding(self.pool(x))

    @property
    def imagenet_classifier(self) -> nn.Module:
        """The backbone's original 1000-way classifier (a copy taken at construction)."""
        return self._imagenet_classifier[0]

    def make_teacher(self) -> FrozenTeacher:
        """Frozen ImageNet teacher: a copy of the backbone *as initialised* plus its original classifier.

        Call it at construction time (e.g. in the LightningModule's ``__init__``), before any training
        step: it raises ``RuntimeError`` when the backbone's weights have changed since then. Without
        ImageNet weights (``weights="none"``) it still works, with a warning, on the random backbone and
        classifier (useful for smoke tests only).
        """
        if _fingerprint(self.backbone) != self._init_fingerprint:
            raise RuntimeError(
                "make_teacher() must be called before training: the backbone has changed since "
                "SketchNet was built, so it is no longer the ImageNet-initialised network"
            )
        if not self.backbone_info.has_imagenet_classifier:
            warnings.warn(
                f"the teacher of {self.backbone_info.name!r} has no ImageNet weights "
                f"(weights source {self.backbone_info.weights_source!r}): distillation is meaningless",
                stacklevel=2,
            )
        net = nn.Sequential(copy.deepcopy(self.backbone), copy.deepcopy(self.imagenet_classifier))
        return FrozenTeacher(net).to(next(self.backbone.parameters()).device)


def build_sketch_net(config: Any, num_classes: int, weights: str | None = None) -> SketchNet:
    """The method-B network of a model config (the fields of ``ZeroShotModelConfig``); ``weights``
    overrides ``config.weights``. The ImageNet head is built only for distillation (``lambda_kd > 0``)."""
    weights = config.weights if weights is None else weights
    head_init = "random" if config.head_init == "svd" and weights == "none" else config.head_init
    return SketchNet(
        num_classes,
        config.backbone,
        weights=weights,
        embed_dim=config.embed_dim,
        head_init=head_init,
        imagenet_head=bool(config.lambda_kd),
        classifier=config.classifier,
        temperature=config.classifier_temperature,
    )


class SketchEncoder(nn.Module):
    """Search with a method-B network: a sketch or photo batch → its retrieval features ``f`` (``B×d``, not
    normalised). Its state-dict keys are the LightningModule's (``net.…``)."""

    def __init__(self, net: SketchNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net.extract_features(x)


def sketch_encoder(config: Any, facts: dict[str, Any]) -> SketchEncoder:
    """The search network of a method-B checkpoint (``facts``: its ``num_classes``), without pretrained
    weights and without a teacher: the checkpoint's state dict fills it."""
    return SketchEncoder(build_sketch_net(config, int(facts["num_classes"]), weights="none"))
