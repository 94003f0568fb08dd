"""The one shared definition of a batch.

DataModules yield, and LightningModules / callbacks consume, plain ``dict`` batches with these keys:

- ``image``  float tensor ``B×3×H×W`` (sketches are 3-channel too)
- ``label``  ``int64`` ``B`` class ids (single-label) or ``float32`` ``B×C`` multi-hot (multi-label)
- ``domain`` ``int64`` ``B``: :data:`PHOTO` (gallery / database) or :data:`SKETCH` (query)
- ``index``  ``int64`` ``B``: unique over the whole dataset, so evaluation can drop the duplicates a
  ``DistributedSampler`` adds when it pads the last batch.

For method A's image sets the query split uses :data:`QUERY` and the database :data:`GALLERY`, which
are the same numbers as sketch and photo: the retrieval callback treats every dataset the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

IMAGE = "image"
LABEL = "label"
DOMAIN = "domain"
INDEX = "index"
KEYS = (IMAGE, LABEL, DOMAIN, INDEX)

PHOTO = 0
SKETCH = 1
GALLERY = PHOTO
QUERY = SKETCH
DOMAIN_NAMES = {PHOTO: "photo", SKETCH: "sketch"}


def make_sample(image, label, domain: int, index: int) -> dict:
    """One sample as the default collate function turns it into a batch."""
    return {IMAGE: image, LABEL: label, DOMAIN: domain, INDEX: index}


# --------------------------------------------------------------------------------------------------
# step outputs: the features a method reports and stores


@dataclass(frozen=True)
class FeatureSets:
    """The names of a method's features, handed by the method registry to the evaluator and the gallery.

    - ``embeddings``: what the module's validation / test step returns under ``"embeddings"``;
    - ``unnamed``: the embedding logged without its name (``test/map_all``; the others are
      ``test/<name>/map_all``);
    - ``derived``: gallery variants made from the ``unnamed`` embedding at test (method B's PQ
      ``proto`` and ``fused``; off with ``eval.prototypes=false``);
    - ``gallery``: what a search gallery stores and searches (default: ``unnamed`` + ``derived``), and
      ``gallery_default`` the one it searches unless told otherwise;
    - ``codes``: the embeddings that are integer codes (the dashboard draws their histogram).
    """

    embeddings: tuple[str, ...]
    unnamed: str | None = None
    derived: tuple[str, ...] = ()
    gallery: tuple[str, ...] = ()
    gallery_default: str = ""
    codes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.gallery:
            object.__setattr__(self, "gallery", tuple(x for x in (self.unnamed, *self.derived) if x))
        if not self.gallery_default:
            object.__setattr__(self, "gallery_default", self.gallery[0])

    def prefix(self, stage: str, name: str) -> str:
        """The logged-name prefix of feature ``name``: ``"test/"`` or ``"test/<name>/"``."""
        return f"{stage}/" if name == self.unnamed else f"{stage}/{name}/"

    def stored(self, prototypes: bool) -> tuple[str, ...]:
        """The gallery features of a gallery built with or without prototypes."""
        return self.gallery if prototypes else tuple(f for f in self.gallery if f not in self.derived)
