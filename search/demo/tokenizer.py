"""The demo world's character-level tokenizer: one token per printable ASCII character.

Built with `tokenizers` (a BPE model with no merges, so every character is its own token) and saved as a
fast tokenizer that ``AutoTokenizer.from_pretrained(folder)`` loads offline. It adds no special tokens when
encoding, so what lm-eval encodes is exactly what training saw.

>>> tok = build_tokenizer()
>>> ids = tok("Q: 2+3 A: 5\\n")["input_ids"]
>>> tok.decode(ids)
'Q: 2+3 A: 5\\n'
>>> len(ids)
12
"""

from __future__ import annotations

import json
import string
from pathlib import Path

from tokenizers import Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, UNK)
#: Every character the demo world writes: newline, space and the printable ASCII range.
CHARACTERS: tuple[str, ...] = ("\n", " ") + tuple(
    c for c in string.printable if c not in string.whitespace
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Return the character-level fast tokenizer (deterministic: same vocabulary every time)."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    core.decoder = decoders.Fuse()
    core.add_special_tokens(list(SPECIAL_TOKENS))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        padding_side="left",
        model_max_length=128,
        clean_up_tokenization_spaces=False,
    )
    return tok


def save_tokenizer(folder: Path) -> list[Path]:
    """Write tokenizer.json and tokenizer_config.json (special tokens included) into ``folder``.

    The config names the generic ``PreTrainedTokenizerFast`` class so that transformers 4 and 5 both load it.
    Returns the files written.
    """
    folder.mkdir(parents=True, exist_ok=True)
    written = [Path(p) for p in build_tokenizer().save_pretrained(str(folder))]
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return sorted({p for p in written if p.is_file()})
