"""PEFT LoRA adapters as parents: read lazily, checked against the base, kept as low-rank factors.

An adapter folder holds ``adapter_config.json`` and ``adapter_model.safetensors``. Its tensors are named as PEFT
saves them (``base_model.model.<module>.lora_A.weight``, ``...lora_B.weight``, ``...lora_embedding_A/B``, and
for ``modules_to_save`` the module's full tensors ``base_model.model.<module>.weight``). Each touched base tensor
gets, exactly as PEFT's ``get_delta_weight`` computes it,

    delta = scale * B @ A                  (Linear; transposed when fan_in_fan_out, e.g. GPT-2's Conv1D)
    delta = scale * (B @ A)^T              (Embedding: lora_embedding_B @ lora_embedding_A)
    scale = alpha / r   (alpha / sqrt(r) with use_rslora), r and alpha per module from rank_pattern/alpha_pattern

kept as the factors ``up = scale * B`` / ``down = A`` (a rank-16 LoRA of a 7B model is tens of MB; its dense delta
14 GB in bf16). ``modules_to_save`` tensors (and an embedding's saved ``base_layer`` weight) replace the base's
tensor: they are full values, turned into dense deltas by the caller. On a base with tied embeddings a LoRA on the
output embedding lands on the shared matrix, as ``merge_and_unload`` does.

Other PEFT types (IA3, prompt tuning, ...) and LoRA variants (DoRA, aLoRA, ...) are refused naming the type;
a pickled ``adapter_model.bin`` is refused unless ``allow_pickle``.

>>> adapter = LoraAdapter.open("adapters/code")                       # doctest: +SKIP
>>> adapter.check_against(base_checkpoint)                            # shapes and target modules  # doctest: +SKIP
>>> up, down = adapter.factors("model.layers.0.self_attn.q_proj.weight")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from search.errors import UserError

CONFIG = "adapter_config.json"
SAFE_WEIGHTS = "adapter_model.safetensors"
PICKLE_WEIGHTS = "adapter_model.bin"
PREFIX = "base_model.model."
SUPPORTED = ("LoRA (lora_alpha/r scaling, use_rslora, rank_pattern/alpha_pattern, fan_in_fan_out, "
             "modules_to_save) on Linear, Conv1D and Embedding modules")
# LoraConfig fields that change what a LoRA computes beyond scale * B @ A: refused, named.
_UNSUPPORTED_FIELDS = ("lora_bias", "trainable_token_indices", "target_parameters", "layer_replication",
                       "use_qalora")
_SHOW = 3

FactorKind = Literal["linear", "linear_t", "embedding"]


def is_adapter(path: str | Path) -> bool:
    """A folder holding ``adapter_config.json`` (a PEFT adapter, whatever its type)."""
    return (Path(path) / CONFIG).is_file()


@dataclass(frozen=True)
class LoraModule:
    """One LoRA'd module: where its factors are stored, how they combine, and the scale PEFT applies."""

    module: str
    a_key: str
    b_key: str
    kind: FactorKind
    rank: int
    alpha: float
    scale: float

    @property
    def tensor(self) -> str:
        return f"{self.module}.weight"


@dataclass
class LoraAdapter:
    """A LoRA adapter folder, read lazily. Use :meth:`open`; tensor names are the base model's."""

    path: Path
    config: dict[str, Any]
    modules: dict[str, list[LoraModule]]           # base tensor name -> LoRA'd modules landing on it
    replacements: dict[str, str]                   # base tensor name -> stored full tensor (modules_to_save)
    source: str | None = None
    field_name: str | None = None
    _weights: dict[str, torch.Tensor] | None = field(default=None, repr=False)  # pickle only
    _stack: ExitStack = field(default_factory=ExitStack, repr=False)
    _handle: Any = field(default=None, repr=False)

    @classmethod
    def open(cls, path: str | Path, *, allow_pickle: bool = False, source: str | None = None,
             field_name: str | None = None) -> LoraAdapter:
        """Read the config and tensor headers; refuse what is not plain LoRA."""
        folder = Path(path)
        config = _read_config(folder, source, field_name)
        lora = _lora_config(folder, config, source, field_name)
        adapter = cls(path=folder, config=config, modules={}, replacements={}, source=source,
                      field_name=field_name)
        try:
            adapter._index(adapter._open_weights(allow_pickle), lora)
        except BaseException:
            adapter.close()
            raise
        return adapter

    # -- reading -----------------------------------------------------------------------------------------

    def _open_weights(self, allow_pickle: bool) -> dict[str, tuple[int, ...]]:
        safe, pickled = self.path / SAFE_WEIGHTS, self.path / PICKLE_WEIGHTS
        if safe.exists():
            from safetensors import safe_open

            self._handle = self._stack.enter_context(safe_open(str(safe), framework="pt", device="cpu"))
            return {k: tuple(self._handle.get_slice(k).get_shape()) for k in self._handle.keys()}
        if pickled.exists() and not allow_pickle:
            raise UserError(f"adapter '{self.path}' has only a pickled {PICKLE_WEIGHTS}, which can run code when "
                            "loaded", file=self.source, field=self.field_name,
                            fix="re-save it with safetensors (peft_model.save_pretrained(dir)), or pass "
                                "--allow-pickle (allow_pickle: true in a space) if you trust it")
        if pickled.exists():
            self._weights = torch.load(pickled, map_location="cpu", weights_only=True)
            return {k: tuple(v.shape) for k, v in self._weights.items()}
        raise UserError(f"adapter '{self.path}' has no {SAFE_WEIGHTS}", file=self.source, field=self.field_name,
                        fix="save the adapter with peft_model.save_pretrained(dir) (it writes safetensors)")

    def _index(self, shapes: dict[str, tuple[int, ...]], lora: Any) -> None:
        from peft.utils.other import get_pattern_key

        factors: dict[str, dict[str, str]] = {}
        for key in shapes:
            if not key.startswith(PREFIX):
                raise UserError(f"adapter '{self.path}' holds '{key}', not a PEFT model's tensor name "
                                f"('{PREFIX}...')", file=self.source, field=self.field_name,
                                fix="save the adapter with peft_model.save_pretrained(dir)")
            name = key[len(PREFIX):]
            for suffix, part in ((".lora_A.weight", "A"), (".lora_B.weight", "B"),
                                 (".lora_embedding_A", "EA"), (".lora_embedding_B", "EB")):
                if name.endswith(suffix):
                    factors.setdefault(name[: -len(suffix)], {})[part] = key
                    break
            else:
                if ".lora_" in name or "lora_magnitude_vector" in name:
                    raise UserError(f"adapter '{self.path}' holds '{key}', which plain LoRA does not have",
                                    file=self.source, field=self.field_name, fix=f"use a plain LoRA: {SUPPORTED}")
                # modules_to_save, and the base_layer weights PEFT saves with an embedding target
                self.replacements[name.replace(".base_layer.", ".")] = key
        for module, parts in factors.items():
            if set(parts) in ({"A", "B"}, {"EA", "EB"}):
                embedding = "EA" in parts
                a_key, b_key = (parts["EA"], parts["EB"]) if embedding else (parts["A"], parts["B"])
            else:
                raise UserError(f"adapter '{self.path}' has an incomplete LoRA pair for '{module}' "
                                f"({', '.join(sorted(parts.values()))})", file=self.source, field=self.field_name,
                                fix="re-save the adapter with peft_model.save_pretrained(dir)")
            rank = shapes[a_key][0]
            r = lora.rank_pattern.get(get_pattern_key(lora.rank_pattern.keys(), module), lora.r)
            alpha = lora.alpha_pattern.get(get_pattern_key(lora.alpha_pattern.keys(), module), lora.lora_alpha)
            if rank != r or shapes[b_key][-1] != r:
                raise UserError(f"adapter '{self.path}': '{module}' has rank {rank} in its weights but r={r} in "
                                f"{CONFIG}", file=self.source, field=self.field_name,
                                fix="use the adapter_config.json saved with these weights")
            scale = alpha / math.sqrt(r) if lora.use_rslora else alpha / r
            kind: FactorKind = "embedding" if embedding else ("linear_t" if lora.fan_in_fan_out else "linear")
            entry = LoraModule(module=module, a_key=a_key, b_key=b_key, kind=kind, rank=r, alpha=float(alpha),
                               scale=float(scale))
            self.modules.setdefault(entry.tensor, []).append(entry)

    def resolve_names(self, stored: set[str], aliases: Callable[[], dict[str, str]]) -> None:
        """Map tensor names the base stores under another name (tied embeddings) onto the stored one;
        ``aliases`` (alias -> stored name) is called only when some name is not stored."""
        unknown = [n for n in list(self.modules) + list(self.replacements) if n not in stored]
        if not unknown:
            return
        stored_name = aliases()
        for name in unknown:
            target = stored_name.get(name)
            if target is None or target not in stored:
                continue
            if name in self.modules:
                self.modules.setdefault(target, []).extend(self.modules.pop(name))
            if name in self.replacements:
                if target in self.replacements:
                    # PEFT saves the tied base_layer weights of both modules; they are one matrix.
                    self.replacements.pop(name)
                else:
                    self.replacements[target] = self.replacements.pop(name)

    # -- checks ------------------------------------------------------------------------------------------

    def check_against(self, shape_of: Callable[[str], tuple[int, ...] | None], base_label: str = "base_model") -> None:
        """Every module the adapter touches exists in the base with the shape its factors imply."""
        missing, wrong = [], []
        for name, entries in self.modules.items():
            base_shape = shape_of(name)
            for m in entries:
                if base_shape is None:
                    missing.append(m.module)
                    continue
                expected = self._delta_shape(m)
                if tuple(base_shape) != expected:
                    wrong.append(f"{m.module} {list(expected)} vs {list(base_shape)}")
        for name, key in self.replacements.items():
            base_shape = shape_of(name)
            if base_shape is None:
                missing.append(name)
            elif tuple(base_shape) != self._shape(key):
                wrong.append(f"{name} {list(self._shape(key))} vs {list(base_shape)}")
        if missing:
            raise UserError(f"adapter '{self.path}' targets {len(missing)} module(s) that {base_label} lacks: "
                            f"{', '.join(missing[:_SHOW])}", file=self.source, field=self.field_name,
                            fix=f"use an adapter trained on this base (its {CONFIG} names "
                                f"'{self.config.get('base_model_name_or_path')}')")
        if wrong:
            raise UserError(f"adapter '{self.path}' does not fit {base_label}: {len(wrong)} module(s) differ in "
                            f"shape: {', '.join(wrong[:_SHOW])}", file=self.source, field=self.field_name,
                            fix=f"use an adapter trained on this base (its {CONFIG} names "
                                f"'{self.config.get('base_model_name_or_path')}')")

    def _shape(self, key: str) -> tuple[int, ...]:
        if self._weights is not None:
            return tuple(self._weights[key].shape)
        return tuple(self._handle.get_slice(key).get_shape())

    def _delta_shape(self, m: LoraModule) -> tuple[int, ...]:
        a, b = self._shape(m.a_key), self._shape(m.b_key)
        if m.kind == "linear":
            return (b[0], a[1])
        return (a[1], b[0])  # linear_t and embedding: (B @ A)^T

    # -- tensors -----------------------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        """Base tensor names this adapter changes."""
        return list(dict.fromkeys(list(self.modules) + list(self.replacements)))

    def get(self, key: str, *, dtype: torch.dtype | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
        tensor = self._weights[key] if self._weights is not None else self._handle.get_tensor(key)
        return tensor.to(device=device, dtype=dtype or tensor.dtype)

    def factors(self, name: str, *, dtype: torch.dtype = torch.float32,
                device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(up, down)`` with ``delta(name) = up @ down`` (scale folded into ``up``), or None if untouched.

        Several modules landing on one tensor (tied embeddings) are concatenated along the rank.
        """
        entries = self.modules.get(name)
        if not entries:
            return None
        ups, downs = [], []
        for m in entries:
            a = self.get(m.a_key, dtype=dtype, device=device)
            b = self.get(m.b_key, dtype=dtype, device=device)
            if m.kind == "linear":
                up, down = b, a
            else:  # (B @ A)^T = A^T @ B^T
                up, down = a.T, b.T
            ups.append(up * m.scale)
            downs.append(down.contiguous())
        return torch.cat(ups, dim=1).contiguous(), torch.cat(downs, dim=0).contiguous()

    def replacement(self, name: str, *, dtype: torch.dtype | None = None,
                    device: torch.device | str = "cpu") -> torch.Tensor | None:
        """The full value this adapter gives ``name`` (modules_to_save), or None."""
        key = self.replacements.get(name)
        return None if key is None else self.get(key, dtype=dtype, device=device)

    def factor_nbytes(self, itemsize: int) -> int:
        """Bytes of all LoRA factors at ``itemsize`` bytes per element, from the headers (the memory plan's
        count; ``search.weights.sizes`` counts a whole folder without opening it)."""
        return sum((math.prod(self._shape(m.a_key)) + math.prod(self._shape(m.b_key))) * itemsize
                   for entries in self.modules.values() for m in entries)

    def close(self) -> None:
        self._stack.close()
        self._handle = None

    def __enter__(self) -> LoraAdapter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_config(folder: Path, source: str | None, field_name: str | None) -> dict[str, Any]:
    file = folder / CONFIG
    try:
        config = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"'{file}' is not valid JSON ({exc})", file=source, field=field_name,
                        fix="re-save the adapter with peft_model.save_pretrained(dir)") from None
    if not isinstance(config, dict):
        raise UserError(f"'{file}' is not a JSON object", file=source, field=field_name,
                        fix="re-save the adapter with peft_model.save_pretrained(dir)")
    return config


def _lora_config(folder: Path, config: dict[str, Any], source: str | None, field_name: str | None) -> Any:
    """PEFT's own LoraConfig of the folder, after refusing other PEFT types and LoRA variants by name."""
    import dataclasses

    from peft import LoraConfig

    peft_type = str(config.get("peft_type", "?"))
    if peft_type != "LORA":
        raise UserError(f"adapter '{folder}' is a {peft_type} adapter; only LoRA adapters can be merged",
                        file=source, field=field_name,
                        fix=f"merge it into its base first (model.merge_and_unload()), or use a {SUPPORTED}")
    try:
        lora = LoraConfig.from_pretrained(str(folder))
    except (TypeError, ValueError) as exc:
        raise UserError(f"PEFT cannot read '{folder / CONFIG}' ({exc})", file=source, field=field_name,
                        fix="re-save the adapter with the installed peft version") from None
    used: list[str] = []
    for f in dataclasses.fields(lora):
        value = getattr(lora, f.name)
        if f.metadata.get("is_lora_variant") and value:
            used.append(f.name)
        elif f.name == "init_lora_weights" and value in (f.metadata.get("lora_variants") or ()):
            used.append(f"init_lora_weights={value}")
        elif f.name in _UNSUPPORTED_FIELDS and value:
            used.append(f.name)
    if used:
        what = "DoRA" if used == ["use_dora"] else "a LoRA variant"
        raise UserError(f"adapter '{folder}' uses {what} ({', '.join(used)}), whose delta is not scale * B @ A",
                        file=source, field=field_name,
                        fix=f"merge it into its base first (model.merge_and_unload()) and give that folder; "
                            f"supported: {SUPPORTED}")
    return lora
