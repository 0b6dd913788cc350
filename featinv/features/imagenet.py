"""ImageNet-1k class names and WordNet superclasses, for the class-prompt baseline (paper Table 3).

The paper prompts the plain diffusion model with "a high-quality, detailed, and professional image
of a CLASS, which is a kind of SUPERCLASS" (e.g. "... of a tench, which is a kind of cyprinid").
The table shipped in ``resources/imagenet_classes.json`` has, for each of the 1000 classes in the
standard index order, the WordNet id, the class name (first lemma of timm's bundled
``imagenet_synset_to_lemma.txt``) and the superclass (first lemma of the synset's immediate WordNet
3.0 hypernym). timm ships no hierarchy and nltk is not a dependency, so the hypernyms were read
offline from WordNet 3.0's ``data.noun`` (Debian package ``wordnet-base``) by
:func:`build_class_table`; ImageNet ids are ``"n"`` + the synset's byte offset in that file.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

from featinv.errors import FeatinvError

__all__ = ["CLASS_PROMPT", "ImageNetClass", "build_class_table", "class_prompt", "imagenet_classes"]

CLASS_PROMPT = "a high-quality, detailed, and professional image of a {name}, which is a kind of {superclass}"
RESOURCE = Path(__file__).parent.parent / "resources" / "imagenet_classes.json"
WORDNET_NOTICE = (
    "Superclasses from WordNet 3.0. WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved. "
    "THIS SOFTWARE AND DATABASE IS PROVIDED \"AS IS\" AND PRINCETON UNIVERSITY MAKES NO REPRESENTATIONS OR "
    "WARRANTIES, EXPRESS OR IMPLIED. The name of Princeton University or Princeton may not be used in advertising "
    "or publicity pertaining to distribution of the software and/or database."
)


@dataclass(frozen=True)
class ImageNetClass:
    """One ImageNet-1k class: index in the classifier output, WordNet id, name, immediate hypernym."""

    index: int
    wnid: str
    name: str
    superclass: str

    @property
    def prompt(self) -> str:
        return CLASS_PROMPT.format(name=self.name, superclass=self.superclass)


@functools.cache
def imagenet_classes() -> tuple[ImageNetClass, ...]:
    """The 1000 classes in classifier-index order, from the bundled table."""
    if not RESOURCE.is_file():
        raise FeatinvError(f"class table {RESOURCE} is missing; reinstall featinv")
    data = json.loads(RESOURCE.read_text(encoding="utf-8"))
    return tuple(ImageNetClass(i, c["wnid"], c["name"], c["superclass"]) for i, c in enumerate(data["classes"]))


def class_prompt(index: int) -> str:
    """The paper's class prompt for ImageNet class ``index`` (0..999)."""
    classes = imagenet_classes()
    if not 0 <= index < len(classes):
        raise FeatinvError(f"class index {index} is out of range; use 0..{len(classes) - 1}")
    return classes[index].prompt


def _first_lemma(text: str) -> str:
    return text.split(",")[0].strip()


def _parse_data_noun(path: Path) -> dict[str, tuple[list[str], list[str]]]:
    """offset -> (lemmas, hypernym offsets) from WordNet's ``data.noun`` (wndb(5WN) format)."""
    table: dict[str, tuple[list[str], list[str]]] = {}
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if line.startswith(" "):  # licence header
                continue
            fields = line.split(" | ")[0].split()
            offset, n_words = fields[0], int(fields[3], 16)
            words = [fields[4 + 2 * i].replace("_", " ") for i in range(n_words)]
            pos = 4 + 2 * n_words
            n_ptrs = int(fields[pos])
            ptrs = fields[pos + 1 : pos + 1 + 4 * n_ptrs]
            hypers = [ptrs[4 * i + 1] for i in range(n_ptrs) if ptrs[4 * i] == "@"]
            hypers += [ptrs[4 * i + 1] for i in range(n_ptrs) if ptrs[4 * i] == "@i"]
            table[offset] = (words, hypers)
    return table


def build_class_table(data_noun: str | os.PathLike[str], out: str | os.PathLike[str] = RESOURCE) -> Path:
    """Rebuild ``imagenet_classes.json`` from WordNet 3.0's ``data.noun`` and timm's bundled lemmas.

    Run once by the maintainers (``dpkg-deb -x wordnet-base_*.deb`` gives
    ``usr/share/wordnet/data.noun``); users only read the shipped result.
    """
    from timm.data import ImageNetInfo

    from featinv.io import write_json

    info = ImageNetInfo()
    wordnet = _parse_data_noun(Path(data_noun))
    classes = []
    for index in range(info.num_classes()):
        wnid = info.index_to_label_name(index)
        entry = wordnet.get(wnid[1:])
        if entry is None or not entry[1]:
            raise FeatinvError(f"{data_noun} has no hypernym for {wnid}; pass WordNet 3.0's data.noun")
        superclass = wordnet[entry[1][0]][0][0]
        classes.append({"wnid": wnid, "name": _first_lemma(info.index_to_description(index)), "superclass": superclass})
    write_json(out, {
        "source": "names: timm imagenet_synset_to_lemma.txt (first lemma); superclass: first lemma of the "
                  "immediate hypernym in WordNet 3.0 data.noun",
        "notice": WORDNET_NOTICE,
        "classes": classes,
    })
    return Path(out)
