"""Model adapters: find a model's embeddings (stem), ordered blocks and head.

Supported out of the box:

* Hugging Face BERT-family models (BERT, RoBERTa, XLM-R, ELECTRA, MiniLM-style, DistilBERT),
  bare or with a task head: ``embeddings`` + ``encoder.layer`` (``transformer.layer`` for
  DistilBERT).
* torchvision-style ResNets: stem ``conv1``/``bn1``, blocks ``layer1..layer4``, head ``fc``.
* Anything else, by passing the blocks yourself::

      FreezeController(model, opt, blocks=model.layers, embeddings=[model.embed])
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Sequence, Union

from torch import nn

ModuleOrList = Union[nn.Module, Sequence[nn.Module], None]


class UnsupportedModelError(ValueError):
    """The model's blocks could not be found automatically."""


@dataclass
class BlockLayout:
    """A model seen as ``embeddings -> blocks[0] -> ... -> blocks[-1] -> head``.

    ``embeddings`` (the stem) freeze together with ``blocks[0]``; the head is never frozen.
    """

    blocks: List[nn.Module]
    embeddings: List[nn.Module] = field(default_factory=list)
    head: List[nn.Module] = field(default_factory=list)
    kind: str = "explicit"

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)


def _as_list(m: ModuleOrList) -> List[nn.Module]:
    if m is None:
        return []
    if isinstance(m, nn.Module) and not isinstance(m, (nn.ModuleList, nn.Sequential)):
        return [m]
    return list(m)


def _head_of(model: nn.Module, used: Iterable[nn.Module]) -> List[nn.Module]:
    """Top-level children that hold parameters and are not part of the frozen-able trunk."""
    used_ids = {id(x) for m in used for x in m.modules()}
    head = []
    for _, child in model.named_children():
        if id(child) in used_ids:
            continue
        own = [p for p in child.parameters() if not any(p is q for u in used for q in u.parameters())]
        if own:
            head.append(child)
    return head


def hf_layout(model: nn.Module) -> Optional[BlockLayout]:
    """Layout of a Hugging Face BERT-family model, or None if it is not one."""
    base = getattr(model, "base_model", None)
    candidates = [c for c in (base, model) if isinstance(c, nn.Module)]
    for c in candidates:
        emb = getattr(c, "embeddings", None)
        enc = getattr(c, "encoder", None) or getattr(c, "transformer", None)
        layers = getattr(enc, "layer", None) if enc is not None else None
        if isinstance(emb, nn.Module) and isinstance(layers, nn.ModuleList) and len(layers) > 0:
            ids = [id(p) for blk in layers for p in blk.parameters()]
            if len(ids) != len(set(ids)):
                raise UnsupportedModelError(
                    f"{type(model).__name__} shares parameters between its layers (ALBERT-style); "
                    "freezing a prefix of shared layers is not defined")
            # ELECTRA projects the embeddings to the hidden size before the first layer: that
            # projection belongs to the stem (frozen with it), not to the head
            proj = getattr(c, "embeddings_project", None)
            stem = [emb, *([proj] if isinstance(proj, nn.Module) else [])]
            trunk = [*stem, *layers]
            head = [m for m in _head_of(c, trunk)]
            if c is not model:
                head += _head_of(model, [c])
            return BlockLayout(blocks=list(layers), embeddings=stem, head=head, kind=f"huggingface:{type(c).__name__}")
    return None


def resnet_layout(model: nn.Module) -> Optional[BlockLayout]:
    """Layout of a torchvision-style ResNet (stem + 4 stages + fc), or None."""
    names = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc")
    if not all(isinstance(getattr(model, n, None), nn.Module) for n in names):
        return None
    blocks = [model.layer1, model.layer2, model.layer3, model.layer4]
    return BlockLayout(blocks=blocks, embeddings=[model.conv1, model.bn1], head=[model.fc], kind="resnet")


def resolve_layout(model: nn.Module, blocks: ModuleOrList = None, embeddings: ModuleOrList = None,
                   head: ModuleOrList = None) -> BlockLayout:
    """Find the layout of ``model``: explicit ``blocks`` win, then the known families."""
    if blocks is not None:
        layout = BlockLayout(blocks=_as_list(blocks), embeddings=_as_list(embeddings), head=_as_list(head))
    else:
        if embeddings is not None:
            raise ValueError("embeddings= was given without blocks=: pass both, or neither for auto-detection")
        layout = hf_layout(model) or resnet_layout(model)
        if layout is None:
            raise UnsupportedModelError(
                f"cannot find the blocks of {type(model).__name__}: it is neither a Hugging Face BERT-family "
                "model nor a torchvision ResNet. Pass them in forward order, e.g. "
                "FreezeController(model, optimizer, blocks=model.layers, embeddings=[model.embed])")
    _check_layout(model, layout)
    return layout


def _check_layout(model: nn.Module, layout: BlockLayout) -> None:
    if not layout.blocks:
        raise ValueError("the block list is empty")
    model_params = {id(p) for p in model.parameters()}
    seen = {}
    for i, m in enumerate([*layout.embeddings, *layout.blocks]):
        if not isinstance(m, nn.Module):
            raise TypeError(f"blocks and embeddings must be nn.Module, got {type(m).__name__} at position {i}")
        for p in m.parameters():
            if id(p) not in model_params:
                raise ValueError(f"{type(m).__name__} at position {i} holds parameters that are not the model's")
            if id(p) in seen and seen[id(p)] != i:
                raise ValueError(f"a parameter of shape {tuple(p.shape)} belongs to two blocks "
                                 f"(positions {seen[id(p)]} and {i}): blocks must not share parameters")
            seen[id(p)] = i
