"""The data sources, declared once: every ``data.source`` a spec may name, with its number of
classes and how it is obtained. Plain data, no torch: the spec checker imports `DATA_SOURCES`
from here at no cost; the families' ``sources`` and the loaders read `SOURCE_TABLE`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class DataSource:
    """One ``data.source`` value.

    Args:
        name: the value a spec names.
        classes: the number of classes (None: from ``data.classes_file``).
        kind: ``bundled`` (shipped with the package), ``download`` (fetched once into
            ``data.root``), ``folder`` (the user's own class-folder copy under ``data.root``).
        doc: one line for the docs.
    """

    name: str
    classes: int | None
    kind: Literal["bundled", "download", "folder"]
    doc: str


SOURCE_TABLE: dict[str, DataSource] = {
    s.name: s
    for s in (
        DataSource("mnist", 10, "download", "MNIST (torchvision), 60,000 + 10,000 grey 28 x 28 digits"),
        DataSource("mnist-5k", 10, "bundled", "5,000 MNIST digits bundled with the package: offline stand-in"),
        DataSource("cifar10", 10, "download", "CIFAR-10, 50,000 + 10,000 colour 32 x 32 images"),
        DataSource("cifar100", 100, "download", "CIFAR-100 (fine labels), 50,000 + 10,000 colour 32 x 32 images"),
        DataSource("svhn", 10, "download", "SVHN cropped digits, 73,257 + 26,032 colour 32 x 32 images"),
        DataSource("imagenet", 1000, "folder", "ILSVRC-2012 from your copy: root/train/<class>/*, root/val/<class>/*"),
        DataSource("imagenet-subset", None, "folder", "the classes of ILSVRC-2012 listed in data.classes_file"),
    )
}
DATA_SOURCES: tuple[str, ...] = tuple(SOURCE_TABLE)  # every data.source value (the spec checker's list)
MNIST_SOURCES: tuple[str, ...] = ("mnist", "mnist-5k")
