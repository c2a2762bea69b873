"""GGUF parents: dequantized once through transformers' GGUF loader, cached as a safetensors HF folder.

A base or fine-tune given as a ``.gguf`` file (or a folder holding exactly one) is read with
``AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)`` (it needs the ``gguf`` package: the ``gguf``
extra), converted to ``dtype`` and saved with its tokenizer and chat template under
``CACHE/gguf/<sha256 of the file>-<dtype>/``. A resumed or repeated run finds the folder and reads it like any
HF checkpoint; the file is never dequantized twice.

>>> folder = dequantized_folder("SmolLM2-135M-Instruct.Q4_1.gguf", cache_dir=".cache")    # doctest: +SKIP
>>> sorted(p.name for p in folder.iterdir())[:3]                                          # doctest: +SKIP
['chat_template.jinja', 'config.json', 'generation_config.json']
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from search.errors import UserError

GGUF_MAGIC = b"GGUF"
_DONE = "merge-search-gguf.done"  # written last: a folder without it is an interrupted conversion


def default_cache_dir() -> Path:
    """Where dequantized GGUF parents are kept: ``$MERGE_SEARCH_CACHE`` or ``~/.cache/merge-search``."""
    return Path(os.environ.get("MERGE_SEARCH_CACHE", Path.home() / ".cache" / "merge-search"))


def is_gguf(path: str | Path) -> bool:
    """A ``.gguf`` file, or a folder holding one and no ``config.json``."""
    p = Path(path)
    if p.is_file():
        return p.suffix == ".gguf"
    return p.is_dir() and not (p / "config.json").exists() and any(p.glob("*.gguf"))


def gguf_file(path: str | Path, *, file: str | Path | None = None, field: str | None = None) -> Path:
    """The one ``.gguf`` file that ``path`` names (itself, or the only one in the folder)."""
    p = Path(path)
    if p.is_dir():
        found = sorted(p.glob("*.gguf"))
        if len(found) != 1:
            raise UserError(f"the folder '{p}' holds {len(found)} .gguf files", file=file, field=field,
                            fix="name the .gguf file itself")
        p = found[0]
    with open(p, "rb") as handle:
        if handle.read(4) != GGUF_MAGIC:
            raise UserError(f"'{p}' is not a GGUF file (it does not start with 'GGUF')", file=file, field=field,
                            fix="give a .gguf file written by llama.cpp or the gguf package")
    return p


def model_folder(path: str | Path, *, dtype: str | None = None, file: str | Path | None = None,
                 field: str | None = None) -> Path:
    """``path`` itself, or for a GGUF file (or a folder holding one) its dequantized, cached HF folder.

    ``dtype``: a storage dtype name (float32, bfloat16, float16); anything else (None, auto) keeps float32, exact
    for every GGUF quantisation.
    """
    if not is_gguf(path):
        return Path(path)
    name = dtype if dtype in ("float32", "bfloat16", "float16") else "float32"
    return dequantized_folder(path, dtype=name, file=file, field=field)


def file_hash(path: Path, *, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_gguf(source: Path, *, file: str | Path | None = None, field: str | None = None) -> None:
    """Read the GGUF's header and tensor table as transformers does (no tensor data): a truncated or corrupt
    file, or an architecture transformers cannot dequantize, is refused before any work."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES, load_gguf_checkpoint

    readable = sorted(a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer"))
    try:
        load_gguf_checkpoint(str(source), return_tensors=False)
    except ValueError as exc:
        if "not supported" in str(exc):
            raise UserError(f"transformers cannot dequantize '{source}': {exc}", file=file, field=field,
                            fix=f"give a GGUF of an architecture transformers reads "
                                f"({', '.join(readable)}), or convert it "
                                "to a safetensors HF folder first") from None
        raise _corrupt(source, exc, file, field) from None
    except Exception as exc:  # noqa: BLE001 - the gguf reader fails in many ways on a damaged file
        raise _corrupt(source, exc, file, field) from None


def _corrupt(source: Path, exc: BaseException, file: str | Path | None, field: str | None) -> UserError:
    detail = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
    return UserError(f"'{source}' is a truncated or corrupt GGUF file ({type(exc).__name__}: {detail})",
                     file=file, field=field, fix="download or copy the .gguf file again and check its size/hash")


def dequantized_folder(path: str | Path, *, dtype: str = "float32", cache_dir: str | Path | None = None,
                       file: str | Path | None = None, field: str | None = None) -> Path:
    """The HF folder of the GGUF model at ``path`` in ``dtype``, converting it on the first call only."""
    source = gguf_file(path, file=file, field=field)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / "gguf" / f"{file_hash(source)[:24]}-{dtype}-v2"
    if (target / _DONE).exists():
        return target
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise UserError(f"'{source}' is a GGUF file and the 'gguf' package is not installed", file=file,
                        field=field, fix="pip install 'merge-search[gguf]'") from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_gguf(source, file=file, field=field)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        try:
            model = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name,
                                                         dtype=getattr(torch, dtype))
            tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
        except (ValueError, KeyError, OSError, RuntimeError) as exc:
            raise UserError(f"transformers cannot dequantize '{source}' ({str(exc).splitlines()[0][:200]})",
                            file=file, field=field,
                            fix="give a GGUF of an architecture transformers supports (llama, mistral, qwen2, "
                                "gemma, phi3, ...), or convert it to a safetensors HF folder first") from None
        model.hf_quantizer = None  # a GGUF-loaded model refuses save_pretrained until this is cleared
        # the saved folder holds plain weights: without this entry a model loaded from it counts as quantized
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.dtype = dtype
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _DONE).write_text(f"{source}\n")
        if target.exists():  # an interrupted earlier conversion
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
