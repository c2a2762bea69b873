"""GGUF parents: dequantized once through transformers into a cached HF folder; bad files exit 2, write nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from gguf_world import smollm2_file, write_llama_gguf, write_unsupported_gguf
from lora_world import make_adapter, make_base, peft_merged_state
from tiny import load_state, snapshot

from search.cli import main
from search.study.candidate import read_record
from search.weights.gguf import dequantized_folder


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("gguf")
    base = make_base(root / "base", layers=2)
    (root / "files").mkdir()
    return base, write_llama_gguf(base, root / "files" / "tiny.gguf")


def tree(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_tiny_f32_gguf_dequantizes_exactly_once(tiny_gguf: tuple[Path, Path], tmp_path: Path) -> None:
    base, file = tiny_gguf
    folder = dequantized_folder(file, cache_dir=tmp_path / "cache")
    assert {"config.json", "tokenizer.json", "model.safetensors"} <= {p.name for p in folder.iterdir()}
    ours, theirs = load_state(folder), load_state(base)
    assert set(ours) == set(theirs) and all(torch.equal(ours[n], theirs[n]) for n in ours)
    before = tree(tmp_path / "cache")
    assert dequantized_folder(file.parent, cache_dir=tmp_path / "cache") == folder   # the folder holding it
    assert tree(tmp_path / "cache") == before, "the second call converted again"
    assert dequantized_folder(file, dtype="bfloat16", cache_dir=tmp_path / "cache") != folder


def test_gguf_base_with_adapters_in_a_recipe(tiny_gguf: tuple[Path, Path], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MERGE_SEARCH_CACHE", str(tmp_path / "cache"))
    base, file = tiny_gguf
    adapter = make_adapter(base, tmp_path / "ad", seed=3, target_modules=["q_proj", "down_proj"])
    recipe = {"merge_method": "task_arithmetic", "base_model": str(file), "dtype": "float32",
              "models": [{"model": f"{file}+{adapter}", "parameters": {"weight": 1.0}}]}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    main(["merge", str(tmp_path / "r.yaml"), str(tmp_path / "out")])
    ours, expected = load_state(tmp_path / "out"), peft_merged_state(base, adapter)
    assert max((ours[n] - expected[n]).abs().max().item() for n in ours) <= 1e-6
    assert (tmp_path / "out" / "tokenizer.json").exists()


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, " ".join((captured.err + captured.out).split())


def bad_file(kind: str, tiny: Path, folder: Path) -> Path:
    out = folder / f"{kind}.gguf"
    if kind == "truncated":
        data = tiny.read_bytes()
        out.write_bytes(data[: len(data) // 2])
    elif kind == "corrupt":
        data = bytearray(tiny.read_bytes())
        data[8:24] = b"\xff" * 16            # the tensor and metadata counts
        out.write_bytes(bytes(data))
    elif kind == "not_gguf":
        out.write_bytes(b"PK\x03\x04 not a gguf at all")
    else:
        write_unsupported_gguf(out)
    return out


@pytest.mark.parametrize("kind, words", [
    ("truncated", ["truncated or corrupt", "download or copy"]),
    ("corrupt", ["truncated or corrupt"]),
    ("not_gguf", ["not a GGUF file"]),
    ("unsupported", ["cannot dequantize", "rwkv7", "llama"]),
])
def test_bad_gguf_is_refused(kind: str, words: list[str], tiny_gguf: tuple[Path, Path], tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MERGE_SEARCH_CACHE", str(tmp_path / "cache"))
    file = bad_file(kind, tiny_gguf[1], tmp_path)
    recipe = {"merge_method": "linear", "base_model": str(file), "models": [{"model": str(file),
                                                                              "parameters": {"weight": 1.0}}]}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    before = snapshot(tmp_path)
    code, text = run(["merge", str(tmp_path / "r.yaml"), str(tmp_path / "out")], capsys)
    assert code == 2, text
    assert "base_model" in text and "Fix:" in text
    for word in words:
        assert word in text, (word, text)
    assert {p for p in snapshot(tmp_path) if not p[0].startswith("cache")} == before
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()], "a partial conversion was left"


def test_gguf_without_the_gguf_package(tiny_gguf: tuple[Path, Path], tmp_path: Path) -> None:
    """Run where ``import gguf`` fails (as without the extra): exit 2 naming the extra to install."""
    (tmp_path / "docs.jsonl").write_text('{"i": 0}\n')
    (tmp_path / "ev.py").write_text("def score(model, tokenizer, docs):\n    return {'s': 0.0}\n")
    space = {"base_model": str(tiny_gguf[1]), "models": {"a": str(tiny_gguf[0])},
             "methods": {"task_arithmetic": {"weight": [0.0, 1.0]}},
             "objectives": [{"name": "s", "evaluator": {"type": "python", "function": "ev.py:score",
                                                        "data": "docs.jsonl"}, "metric": "s"}],
             "budget": {"trials": 1}, "output": "run"}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space, sort_keys=False))
    code = ("import sys; sys.modules['gguf'] = None\n"     # what a missing package looks like to `import gguf`
            f"from search.cli import main; main(['start', {str(tmp_path / 'space.yaml')!r}, '--quiet'])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "MERGE_SEARCH_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    text = " ".join((proc.stderr + proc.stdout).split())
    assert "'gguf' package is not installed" in text and "merge-search[gguf]" in text and "base_model" in text
    assert not (tmp_path / "run").exists()


# -- the real SmolLM2-135M-Instruct GGUF ---------------------------------------------------------------------

ROLLING = ("task: t_text\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
           "test_split: test\noutput_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: text\n"
           "metric_list:\n  - metric: bits_per_byte\n")
LINES = ["The cat sat on the mat and looked out of the window.", "Paris is the capital city of France.",
         "Water boils at one hundred degrees Celsius at sea level.", "She opened the door and walked inside.",
         "The sun rises in the east and sets in the west.", "He likes to read books in the evening.",
         "Two plus two equals four.", "The train leaves the station at nine in the morning."]


@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the dequantized SmolLM2 lives: $MERGE_SEARCH_CACHE when set (CI can keep it), else a session dir."""
    return Path(os.environ.get("MERGE_SEARCH_CACHE") or tmp_path_factory.mktemp("ms-cache"))


@pytest.mark.slow
def test_smollm2_gguf_base_scores_through_lm_eval(smollm2_cache: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import optuna

    from search.study.storage import STUDY_NAME, open_storage

    monkeypatch.setenv("MERGE_SEARCH_CACHE", str(smollm2_cache))
    file = smollm2_file()
    folder = dequantized_folder(file)                    # once per cache; the space below finds it
    adapter = make_adapter(folder, tmp_path / "lora", seed=0, scale=0.01)
    (tmp_path / "text.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in LINES))
    (tmp_path / "t_text.yaml").write_text(ROLLING.format(data=tmp_path / "text.jsonl"))
    space = {"base_model": str(file), "models": {"lora": str(adapter)},
             "methods": {"task_arithmetic": {"weight": [0.0, 1.0]}},
             "objectives": [{"name": "text", "evaluator": {"type": "lm_eval", "task": "t_text",
                                                           "include_path": str(tmp_path), "batch_size": 4},
                             "metric": "bits_per_byte", "direction": "minimize"}],
             "pruner": {"name": "none", "slices": [1.0]}, "baselines": False, "budget": {"trials": 1},
             "output": "run"}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space, sort_keys=False))
    main(["start", str(tmp_path / "space.yaml"), "--quiet", "--no-select"])
    trials = optuna.load_study(study_name=STUDY_NAME, storage=open_storage(tmp_path / "run")).get_trials()
    assert len(trials) == 1 and trials[0].state == optuna.trial.TrialState.COMPLETE
    bits = read_record(trials[0].user_attrs).search["text"]
    # a real language model: about one bit per byte of English (a random 49k-vocabulary model: over 3)
    assert 0.3 < bits < 2.0, bits
