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
