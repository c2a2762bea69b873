"""Deterministic generators of the demo world's skills and of its pretraining mixture.

Every skill is a question-answer line ``Q: <query> A: <answer>``:

=========  =====================  ==========  ======================================================
skill      query                  answer      note
=========  =====================  ==========  ======================================================
add        ``23+58``              ``81``      two-digit addition
rev        ``rev abcd``           ``dcba``    reverse the letters
up         ``up abcd``            ``ABCD``    upper-case every letter
sort       ``sort dbca``          ``abcd``    sort the letters
title      ``up abcd``            ``Abcd``    the SAME prompt as ``up``, another target: a conflict
=========  =====================  ==========  ======================================================

``up`` and ``title`` share their prompts (and, in the task data, their inputs), so no model can be right on
both: a merge of the two fine-tunes has to trade one for the other.

Inputs used by the evaluation tasks are *reserved* (a fixed hash of the query): training never sees them, and
the ``search`` and ``heldout`` splits hold different inputs.

>>> [(e.prompt, e.answer) for e in eval_examples("add", "search", 2)]
[('Q: 14+31 A:', '45'), ('Q: 77+67 A:', '144')]
>>> eval_examples("title", "heldout", 3)[0].prompt == eval_examples("up", "heldout", 3)[0].prompt
True
"""

from __future__ import annotations

import random
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

Split = Literal["search", "heldout"]
SPLITS: tuple[Split, ...] = ("search", "heldout")
LETTERS = "abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class Example:
    """One question and its answer; ``line`` is what a model reads and writes."""

    query: str
    answer: str

    @property
    def prompt(self) -> str:
        return f"Q: {self.query} A:"

    @property
    def line(self) -> str:
        return f"{self.prompt} {self.answer}\n"


@dataclass(frozen=True)
class Skill:
    """A skill: how to draw an input, the query it makes, the right answer and the "lazy" (echo) answer.

    ``family`` names the input stream: skills of one family share prompts and evaluation inputs.
    """

    name: str
    family: str
    description: str
    draw: Callable[[random.Random], str]
    query: Callable[[str], str]
    answer: Callable[[str], str]
    lazy: Callable[[str], str]

    def example(self, x: str) -> Example:
        return Example(self.query(x), self.answer(x))

    def lazy_example(self, x: str) -> Example:
        return Example(self.query(x), self.lazy(x))


def _word(rng: random.Random, low: int = 3, high: int = 6) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(rng.randint(low, high)))


def _pair(rng: random.Random) -> str:
    return f"{rng.randint(10, 99)}+{rng.randint(10, 99)}"


def _add(x: str) -> str:
    a, b = x.split("+")
    return str(int(a) + int(b))


SKILLS: dict[str, Skill] = {
    s.name: s
    for s in (
        Skill("add", "add", "two-digit addition: 23+58 -> 81", _pair, lambda x: x, _add,
              lambda x: x.replace("+", "")),
        Skill("rev", "rev", "reverse the letters: rev abcd -> dcba", _word, lambda x: f"rev {x}",
              lambda x: x[::-1], lambda x: x),
        Skill("up", "case", "upper-case: up abcd -> ABCD", _word, lambda x: f"up {x}", str.upper,
              lambda x: x),
        Skill("sort", "sort", "sort the letters: sort dbca -> abcd", _word, lambda x: f"sort {x}",
              lambda x: "".join(sorted(x)), lambda x: x),
        Skill("title", "case", "title-case, conflicting with up: up abcd -> Abcd", _word,
              lambda x: f"up {x}", str.capitalize, lambda x: x),
    )
}

#: Fine-tunes on distinct skills, then the one that conflicts with ``up``.
FINETUNE_SKILLS: tuple[str, ...] = ("add", "rev", "up", "sort", "title")


#: The most examples the ``search`` split can hold (and each split of the free text).
MAX_EVAL = 500
#: The most examples the ``heldout`` split can hold: two-digit sums have 1378 reserved inputs, 500 + 800
#: of them are drawn.
MAX_HELDOUT = 800


_FAMILY_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("add", re.compile(r"Q: \d\d\+\d\d A:")),
    ("rev", re.compile(r"Q: rev [a-z]+ A:")),
    ("case", re.compile(r"Q: up [a-z]+ A:")),
    ("sort", re.compile(r"Q: sort [a-z]+ A:")),
)


def line_family(line: str) -> str | None:
    """The skill family whose prompt starts ``line`` (``"case"`` for ``Q: up ab A: AB``), else None.

    >>> line_family("Q: 12+34 A: 46"), line_family("Q: 1+2 A: 3"), line_family("Q: up ab A: AB")
    ('add', None, 'case')
    """
    for family, pattern in _FAMILY_PATTERNS:
        if pattern.match(line):
            return family
    return None


def is_reserved(query: str) -> bool:
    """True for the one query in six kept for evaluation: training never uses these."""
    return zlib.crc32(query.encode()) % 6 == 0


def _family_seed(family: str) -> int:
    return zlib.crc32(f"demo-eval/{family}".encode())


def eval_examples(skill: str, split: Split, n: int) -> list[Example]:
    """The first ``n`` examples of a split: reserved, distinct inputs; ``search`` and ``heldout`` disjoint.

    Independent of any seed (the task data is part of the benchmark); skills of one family share inputs.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    most = MAX_EVAL if split == "search" else MAX_HELDOUT
    if n > most:
        raise ValueError(f"at most {most} examples in the {split} split, got {n}")
    s = SKILLS[skill]
    rng = random.Random(_family_seed(s.family))
    seen: set[str] = set()
    inputs: list[str] = []
    # one stream of inputs: the search split is its first MAX_EVAL, the held-out split the next ones (so a
    # larger MAX_HELDOUT appends to the held-out split and changes nothing else)
    while len(inputs) < MAX_EVAL + MAX_HELDOUT:
        x = s.draw(rng)
        if x in seen or not is_reserved(s.query(x)):
            continue
        seen.add(x)
        inputs.append(x)
    chosen = inputs[:n] if split == "search" else inputs[MAX_EVAL : MAX_EVAL + n]
    return [s.example(x) for x in chosen]


def train_examples(skill: str, rng: random.Random) -> Iterator[Example]:
    """An endless stream of training examples of ``skill`` (never a reserved input)."""
    s = SKILLS[skill]
    while True:
        x = s.draw(rng)
        if not is_reserved(s.query(x)):
            yield s.example(x)


# --- pretraining mixture --------------------------------------------------------------------------------

_NOUNS = ("cat", "dog", "bird", "fox", "tree", "river", "stone", "house", "road", "star", "boat", "child",
          "farmer", "king", "cloud", "apple", "lamp", "book", "horse", "garden")
_ADJS = ("old", "small", "red", "quiet", "bright", "green", "cold", "happy", "dark", "tall", "slow", "warm")
_VERBS = ("sees", "finds", "likes", "follows", "keeps", "moves", "watches", "carries", "paints", "hears")
_PLACES = ("near the river", "in the garden", "on the road", "by the house", "under the tree",
           "at night", "in the morning", "on the hill")


def free_text_line(rng: random.Random) -> str:
    """A sentence of simple generated English, e.g. ``the old fox sees a red boat in the garden.``"""
    def np() -> str:
        det = rng.choice(("the", "a", "one", "every"))
        return f"{det} {rng.choice(_ADJS)} {rng.choice(_NOUNS)}" if rng.random() < 0.6 else \
            f"{det} {rng.choice(_NOUNS)}"
    s = f"{np()} {rng.choice(_VERBS)} {np()}"
    if rng.random() < 0.5:
        s += f" {rng.choice(_PLACES)}"
    if rng.random() < 0.3:
        s += f" and {rng.choice(_VERBS)} {np()}"
    return s + "."


@dataclass(frozen=True)
class Mixture:
    """The pretraining mixture: which line kinds, how often, and how often a skill line is solved.

    A skill line is answered correctly with probability ``solved`` and otherwise by a lazy echo of its input
    (``Q: rev abcd A: abcd``), so the base half-knows every skill and a fine-tune only tilts it. Prompts
    shared by several skills (``up``/``title``) are answered by each with probability ``solved * share``.
    """

    skill_weights: tuple[tuple[str, float], ...] = (("add", 0.40), ("rev", 0.20), ("case", 0.15),
                                                    ("sort", 0.25))
    skill_share: float = 0.8
    solved: float = 0.5
    family_shares: tuple[tuple[str, float], ...] = (("up", 0.6), ("title", 0.4))


def pretraining_line(rng: random.Random, mix: Mixture = Mixture()) -> str:
    """One line of the pretraining mixture (ends with a newline)."""
    r = rng.random()
    if r < mix.skill_share:
        family = rng.choices([f for f, _ in mix.skill_weights], [w for _, w in mix.skill_weights])[0]
        members = [s for s in SKILLS.values() if s.family == family]
        shares = dict(mix.family_shares)
        rep = members[0]
        while True:
            x = rep.draw(rng)
            if not is_reserved(rep.query(x)):
                break
        if rng.random() < mix.solved:
            skill = rng.choices(members, [shares.get(m.name, 1.0) for m in members])[0]
            return skill.example(x).line
        return rep.lazy_example(x).line
    r = (r - mix.skill_share) / (1 - mix.skill_share)
    if r < 0.3:
        w = _word(rng)
        return Example(f"copy {w}", w).line
    if r < 0.5:
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        return Example(f"{a}+{b}", str(a + b)).line
    return free_text_line(rng) + "\n"


def text_corpus(split: Split, n: int) -> list[str]:
    """Distinct free-text lines for the perplexity evaluator; ``search`` and ``heldout`` share no line."""
    if split not in SPLITS or n > MAX_EVAL:
        raise ValueError(f"split must be one of {SPLITS} and n <= {MAX_EVAL}, got {split!r}, {n}")
    rng = random.Random(_family_seed("text"))
    lines: list[str] = []
    seen: set[str] = set()
    while len(lines) < 2 * MAX_EVAL:
        t = free_text_line(rng)
        if t not in seen:
            seen.add(t)
            lines.append(t)
    return lines[:n] if split == "search" else lines[MAX_EVAL : MAX_EVAL + n]
