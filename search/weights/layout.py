"""Which layer and which kind of module each tensor of a model belongs to.

The answer comes from the model itself, not from a regex per family: the architecture named by ``config.json`` is
built on the ``meta`` device (no memory, no weights), and each parameter is classified by the module that owns it:

- ``embedding``: owned by an ``nn.Embedding`` (token and position embeddings);
- ``lm_head``: owned by the output-embedding module (``model.get_output_embeddings()``);
- ``norm``: owned by a module whose class is a normalisation layer (``LlamaRMSNorm``, ``nn.LayerNorm``, ...);
- ``attention`` / ``mlp``: inside a decoder layer, under a module whose class name says attention / MLP;
- ``other``: anything else (kept, merged like the rest, matched only by name filters).

The layer index is the position in the decoder's layer list (the ``nn.ModuleList`` of ``num_hidden_layers``
blocks). This works for Llama, Mistral, Qwen2, Gemma, GPT-2, GPT-NeoX, Phi and any transformers decoder laid out
the same way.

>>> layout = ModelLayout.from_config(config)           # doctest: +SKIP
>>> layout.role("model.layers.3.self_attn.q_proj.weight")  # doctest: +SKIP
TensorRole(layer=3, kind='attention')
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from search.errors import UserError

ModuleKind = Literal["embedding", "attention", "mlp", "norm", "lm_head", "other"]
MODULE_KINDS: tuple[ModuleKind, ...] = ("embedding", "attention", "mlp", "norm", "lm_head", "other")

_ATTENTION_WORDS = ("attention", "attn")
_MLP_WORDS = ("mlp", "feedforward", "ffn")
_NORM_WORDS = ("norm",)


@dataclass(frozen=True)
class TensorRole:
    """Where a tensor sits: its decoder layer (None outside the layer stack) and its module kind."""

    layer: int | None
    kind: ModuleKind


@dataclass(frozen=True)
class ModelLayout:
    """Tensor name → :class:`TensorRole` for one architecture, plus the number of decoder layers."""

    num_layers: int
    roles: dict[str, TensorRole] = field(default_factory=dict)
    layers_prefix: str = ""

    @classmethod
    def from_config(cls, config: object) -> ModelLayout:
        """Build the layout of the architecture a transformers ``PretrainedConfig`` describes."""
        import torch
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        return cls.from_model(model, num_layers=_num_layers(config))

    @classmethod
    def from_model(cls, model: object, *, num_layers: int) -> ModelLayout:
        """Classify every entry of ``model.state_dict()`` (a real or meta-device ``nn.Module``)."""
        from torch import nn

        assert isinstance(model, nn.Module)
        layers_prefix = _find_layer_list(model, num_layers)
        output_embeddings = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        modules = dict(model.named_modules())
        roles: dict[str, TensorRole] = {}
        for name in model.state_dict():
            owner_path, _, _ = name.rpartition(".")
            owner = modules.get(owner_path)
            layer, inner_path = _layer_of(owner_path, layers_prefix)
            kind = _kind_of(owner, owner_path, inner_path, modules, output_embeddings, layer)
            roles[name] = TensorRole(layer=layer, kind=kind)
        return cls(num_layers=num_layers, roles=roles, layers_prefix=layers_prefix)

    def role(self, name: str) -> TensorRole:
        """The role of a tensor; names the model does not have get a role from their path alone."""
        found = self.roles.get(name)
        if found is not None:
            return found
        layer, _ = _layer_of(name.rpartition(".")[0], self.layers_prefix)
        return TensorRole(layer=layer, kind="other")

    def gradient_position(self, name: str) -> float:
        """Where a tensor sits along the layer stack, in [0, 1], as mergekit's gradients see it.

        Layer ``i`` of ``L`` is at ``i / (L - 1)``; tensors outside the stack (embeddings, final norm, lm_head)
        are at 0, as in mergekit's planner.
        """
        layer = self.role(name).layer
        if layer is None:
            return 0.0
        return layer / (self.num_layers - 1) if self.num_layers > 1 else 1.0


def _num_layers(config: object) -> int:
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for attr in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(text_config, attr, None)
        if isinstance(value, int):
            return value
    raise ValueError(f"config of model_type {getattr(config, 'model_type', '?')!r} names no layer count")


def _find_layer_list(model: object, num_layers: int) -> str:
    """The dotted path of the ModuleList holding the decoder blocks (the longest list of ``num_layers``)."""
    from torch import nn

    candidates = [
        path for path, module in model.named_modules()  # type: ignore[attr-defined]
        if isinstance(module, nn.ModuleList) and len(module) == num_layers and path
    ]
    if not candidates:
        return ""
    # The decoder stack is the outermost such list (shortest path): nested lists inside a block are smaller parts.
    return min(candidates, key=lambda p: p.count("."))


def _layer_of(owner_path: str, layers_prefix: str) -> tuple[int | None, str]:
    if not layers_prefix or not owner_path.startswith(layers_prefix + "."):
        return None, owner_path
    rest = owner_path[len(layers_prefix) + 1:]
    index, _, inner = rest.partition(".")
    return (int(index), inner) if index.isdigit() else (None, owner_path)


def _kind_of(owner: object, owner_path: str, inner_path: str, modules: dict[str, object],
             output_embeddings: object, layer: int | None) -> ModuleKind:
    from torch import nn

    if owner is not None and owner is output_embeddings:
        return "lm_head"
    if isinstance(owner, nn.Embedding):
        return "embedding"
    if owner is not None and _class_says(owner, _NORM_WORDS):
        return "norm"
    if layer is None:
        return "other"
    # Inside a block: the nearest enclosing module whose class says attention or MLP decides.
    parts = owner_path.split(".")
    for depth in range(len(parts), 0, -1):
        module = modules.get(".".join(parts[:depth]))
        if module is None:
            continue
        if _class_says(module, _ATTENTION_WORDS):
            return "attention"
        if _class_says(module, _MLP_WORDS):
            return "mlp"
    return "other"


def _class_says(module: object, words: Iterable[str]) -> bool:
    name = type(module).__name__.lower()
    return any(w in name for w in words)


def tied_aliases(config: object) -> dict[str, str]:
    """Parameter names that share another's storage (tied embeddings) -> the name a checkpoint stores.

    ``save_pretrained`` writes a tied matrix once, under its first name (``model.embed_tokens.weight``); PEFT
    adapters may still name the alias (``lm_head.weight``). Built on the ``meta`` device: no memory.
    """
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        stored = first.setdefault(id(param), name)
        if stored != name:
            aliases[name] = stored
    return aliases


def load_layout(path: Path, *, trust_remote_code: bool = False, source: str | None = None) -> ModelLayout:
    """The layout of the architecture in ``path/config.json`` (custom code only with ``trust_remote_code``)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except (ValueError, KeyError, OSError) as exc:
        raise UserError(f"transformers cannot read the config of '{path}' ({exc})", file=source, field="base_model",
                        fix="use a transformers model type, or pass --trust-remote-code if the model "
                            "ships its own code and you trust it") from exc
    return ModelLayout.from_config(config)
