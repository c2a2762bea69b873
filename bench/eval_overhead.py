"""Claim: scoring a candidate through lm-eval costs at most 1.5x the bare model calls of the same requests.

For each task it times, on the same model and the same documents:

- ``lm-eval``: one ``evaluator.score(model, tokenizer, "search")`` call (the search's per-candidate cost);
- ``bare``: the same requests run by hand: ``model.generate`` on the same prompts, batched and stopped the same
  way, for generative tasks; one forward pass per batch of (context + continuation) for loglikelihood tasks;

prints their ratio, then a cProfile breakdown of one lm-eval call (model calls, request construction,
tokenization, post-processing, metric aggregation, the rest) and the one-off cost of building the evaluator.
It ends with an estimate for a 7B model: lm-eval's overhead is CPU work per request, while the model's time
grows with its size.

Uses the demo fine-tunes and tasks (``search/demo/models``, ``evaluators/tasks``) when they exist, else a tiny
random Llama and two local tasks built on the fly. Run from the repository root:

    .venv/bin/python bench/eval_overhead.py                 # demo world if present, else the tiny fixture
    .venv/bin/python bench/eval_overhead.py --tiny --repeats 5
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import tempfile
import time
from pathlib import Path
from typing import Any

from common import ROOT, library_log  # noqa: E402  (the checkout on sys.path, offline hubs)

import torch  # noqa: E402

from evaluators import build_evaluator  # noqa: E402

# cProfile buckets: (label, file suffix, function names). Disjoint, except the stop-sequence checks, which
# run inside generate and are taken out of the model calls' time below.
MODEL = "model calls (generate / forward)"
STOPS = "stop-sequence checks (decode per step)"
BUCKETS = [
    (MODEL, "lm_eval/models/huggingface.py", {"_model_generate", "_model_call"}),
    (STOPS, "lm_eval/models/utils_hf.py", {"__call__"}),
    ("request construction (prompts)", "lm_eval/api/task.py", {"build_all_requests"}),
    ("tokenization", "lm_eval/models/huggingface.py", {"tok_batch_encode", "tok_encode", "tok_decode"}),
    ("tokenization", "lm_eval/api/model.py", {"_encode_pair"}),
    ("post-processing (filters, per-doc metrics)", "lm_eval/api/task.py", {"apply_filters", "process_results"}),
    ("metric aggregation", "lm_eval/evaluator_utils.py", {"_process_results"}),
]


# ------------------------------------------------------------------------------------------------ worlds


def tiny_world(folder: Path) -> tuple[Any, Any, list[dict[str, Any]]]:
    """A tiny random Llama, a character tokenizer and two local tasks (generative, loglikelihood)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    chars = list("abcdefghijklmnopqrstuvwxyz0123456789 +=?:.\n")
    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    core = Tokenizer(models.WordLevel({t: i for i, t in enumerate(specials + chars)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(specials) + len(chars), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256, bos_token_id=1,
        eos_token_id=2, pad_token_id=0)).eval()
    rows = [{"question": f"q: {a}+{b} a:", "answer": f" {a + b}"} for a in range(10, 30) for b in range(10, 20)]
    (folder / "add.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # Field names, not Jinja templates: lm-eval compiles a template string anew for every document
    # (utils.apply_template -> Environment.from_string), ~0.5 ms each; a field name is a dict lookup.
    common = (f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {folder / 'add.jsonl'}\n"
              "test_split: test\ndoc_to_text: question\ndoc_to_target: answer\n")
    (folder / "bench_gen.yaml").write_text(
        "task: bench_gen\n" + common + "output_type: generate_until\n"
        "generation_kwargs:\n  until: ['\\n']\n  max_gen_toks: 8\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n")
    (folder / "bench_ll.yaml").write_text(
        "task: bench_ll\n" + common + "output_type: loglikelihood\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
    specs = [{"type": "lm_eval", "task": name, "include_path": str(folder), "batch_size": 16}
             for name in ("bench_gen", "bench_ll")]
    return model, tok, specs


def demo_world(model_dir: Path | None = None) -> tuple[Any, Any, list[dict[str, Any]]] | None:
    """A demo fine-tune (or ``model_dir``) and every demo task, or None while they are not built yet."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    models_dir, tasks_dir = ROOT / "search" / "demo" / "models", ROOT / "evaluators" / "tasks"
    folders = sorted(p.parent for p in models_dir.glob("*/config.json")) if models_dir.is_dir() else []
    yamls = sorted(tasks_dir.rglob("*.yaml")) if tasks_dir.is_dir() else []
    if not yamls or not (folders or model_dir):
        return None
    from lm_eval.tasks import TaskManager

    names = [n for n in TaskManager(include_path=str(tasks_dir), include_defaults=False).all_subtasks]
    model_dir = model_dir or next((f for f in folders if "base" not in f.name), folders[0])
    print(f"demo world: model {model_dir}, tasks {names}")
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    return model, tok, [{"type": "lm_eval", "task": n, "include_path": str(tasks_dir), "batch_size": 16}
                        for n in names]


# ------------------------------------------------------------------------------------------------ bare runs


def bare_generate(model: Any, tok: Any, instances: list[Any], batch_size: int) -> list[str]:
    """``model.generate`` on the instances' prompts: sorted longest first, left-padded, greedy, same stops."""
    prompts = sorted((inst.args[0] for inst in instances), key=lambda p: -len(tok(p).input_ids))
    kwargs = instances[0].args[1]
    until = list(kwargs.get("until") or []) + [tok.eos_token]
    # The cheapest stop HF offers: token ids when every stop string is one token, else its string matcher.
    stop_ids = [tok.convert_tokens_to_ids(s) if s in tok.get_vocab() else None for s in until]
    stopping: dict[str, Any] = ({"eos_token_id": stop_ids} if None not in stop_ids
                            else {"stop_strings": until, "tokenizer": tok})
    out = []
    for b in range(0, len(prompts), batch_size):
        enc = tok(prompts[b: b + batch_size], return_tensors="pt", padding=True, padding_side="left")
        with torch.no_grad():
            gen = model.generate(**enc, max_new_tokens=kwargs.get("max_gen_toks", 256), do_sample=False,
                                 pad_token_id=tok.pad_token_id, **stopping)
        for row in gen[:, enc.input_ids.shape[1]:].tolist():
            text = tok.decode(row, skip_special_tokens=True)
            for stop in until:
                text = text.split(stop)[0]
            out.append(text)
    return out


def bare_loglikelihood(model: Any, tok: Any, instances: list[Any], batch_size: int) -> list[float]:
    """Log-probability of each continuation given its context (of each whole text, for rolling requests):
    one right-padded forward pass per batch."""
    pairs = []
    for inst in instances:
        if inst.request_type == "loglikelihood_rolling":  # the whole text, after BOS (documents < context)
            c, k = [tok.bos_token_id], tok(inst.args[0]).input_ids
        else:
            c, k = tok(inst.args[0]).input_ids, tok(inst.args[1]).input_ids
        pairs.append((c + k, len(k)))
    pairs.sort(key=lambda p: -len(p[0]))
    out = []
    for b in range(0, len(pairs), batch_size):
        batch = pairs[b: b + batch_size]
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), width), tok.pad_token_id)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, (seq, _) in enumerate(batch):
            ids[r, : len(seq)], mask[r, : len(seq)] = torch.tensor(seq), 1
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
        for r, (seq, n) in enumerate(batch):
            pos = torch.arange(len(seq) - n - 1, len(seq) - 1)
            out.append(float(logp[r, pos, torch.tensor(seq[-n:])].sum()))
    return out


def timed_pair(a: Any, b: Any, repeats: int) -> tuple[float, float]:
    """Fastest of ``repeats`` runs of each, interleaved (a, b, a, b, ...) so load from other processes
    falls on both alike; the minimum is the least disturbed run."""
    a(), b()  # warm-up
    times_a, times_b = [], []
    for _ in range(repeats):
        for fn, times in ((a, times_a), (b, times_b)):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return min(times_a), min(times_b)


def breakdown(ev: Any, model: Any, tok: Any) -> tuple[float, dict[str, float]]:
    profile = cProfile.Profile()
    t = time.perf_counter()
    profile.runcall(ev.score, model, tok, "search")
    total = time.perf_counter() - t
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    parts: dict[str, float] = {}
    for (file, _, func), (_, _, _, cumulative, _) in stats.items():
        for label, suffix, funcs in BUCKETS:
            if file.endswith(suffix) and func in funcs:
                parts[label] = parts.get(label, 0.0) + cumulative
    if STOPS in parts:
        parts[MODEL] = parts.get(MODEL, 0.0) - parts[STOPS]
    parts["the rest (batching, sorting, glue)"] = max(0.0, total - sum(parts.values()))
    return total, parts


# ------------------------------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="use the tiny fixture even if the demo exists")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the machine is shared)")
    parser.add_argument("--model", type=Path, default=None, help="an HF folder to score the demo tasks with")
    parser.add_argument("--task", action="append", default=None, help="only these tasks (repeatable)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    transformers.logging.set_verbosity_error()  # one warning per generate call otherwise, on some models
    tmp = tempfile.TemporaryDirectory()
    world = None if args.tiny else demo_world(args.model)
    if world is None:
        print("tiny fixture world (demo models/tasks absent or --tiny)")
        world = tiny_world(Path(tmp.name))
    model, tok, specs = world
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {type(model).__name__}, {n_params / 1e6:.2f} M parameters, {torch.get_num_threads()} thread(s)\n")

    for spec in specs:
        if args.task and spec["task"] not in args.task:
            continue
        t = time.perf_counter()
        ev = build_evaluator(spec, device="cpu")
        build_s = time.perf_counter() - t
        ev.score(model, tok, "search")  # builds the requests, which the bare runs replay
        ((task_name, task),) = ev.tasks("search").items()
        instances = list(task.instances)
        kind = instances[0].request_type
        batch = int(spec["batch_size"])
        bare = bare_generate if kind == "generate_until" else bare_loglikelihood
        t_eval, t_bare = timed_pair(lambda: ev.score(model, tok, "search"),
                                    lambda: bare(model, tok, instances, batch), args.repeats)
        total, parts = breakdown(ev, model, tok)
        # lm-eval's own CPU work per request: everything of a profiled call outside the model calls. An upper
        # bound (cProfile slows Python code, not the model's kernels); the unprofiled extra is the lower one.
        per_request_overhead = (total - parts.get(MODEL, 0.0)) / len(instances)
        extra = max(0.0, t_eval - t_bare) / len(instances)
        print(f"== {task_name} ({kind}, {ev.num_docs('search')} docs, {len(instances)} requests, batch {batch})")
        print(f"   build once per worker: {build_s:.2f} s")
        print(f"   lm-eval score: {t_eval * 1e3:8.1f} ms   bare: {t_bare * 1e3:8.1f} ms (fastest of {args.repeats})  "
              f"ratio {t_eval / t_bare:.2f}x   (target <= 1.5x)")
        print(f"   one profiled call, {total * 1e3:.1f} ms (cProfile inflates the Python parts):")
        for label, seconds in sorted(parts.items(), key=lambda kv: -kv[1]):
            print(f"     {label:45s} {seconds * 1e3:8.1f} ms  {100 * seconds / total:5.1f}%")
        print(f"   lm-eval's work outside the model: {extra * 1e3:.2f} (unprofiled extra over bare) to "
              f"{per_request_overhead * 1e3:.2f} ms (profiled) per request")
        estimate_7b(kind, extra, per_request_overhead, instances, batch)
        print()


def estimate_7b(kind: str, low_s: float, high_s: float, instances: list[Any], batch: int) -> None:
    """The ratio for a 7B model, if the per-request CPU overhead stays what it is here and model time grows.

    Assumed 7B bf16 times on one data-centre GPU with HF transformers (eager, KV cache): ~25 ms per decode step
    of a batch (launch-bound at small batch), ~25 ms per forward pass of a batch of short sequences. Rough: the
    point is the order of magnitude of model time per request against the measured overhead per request.
    """
    step_s = forward_s = 0.025
    if kind == "generate_until":
        new_tokens = instances[0].args[1].get("max_gen_toks", 256)
        model_per_request = new_tokens * step_s / batch  # at most: generation may stop earlier
    else:
        model_per_request = forward_s / batch
    print(f"   7B estimate: model ~{model_per_request * 1e3:.1f} ms per request (assumed), overhead "
          f"{low_s * 1e3:.2f}-{high_s * 1e3:.2f} ms -> ratio ~{1 + low_s / model_per_request:.2f}x-"
          f"{1 + high_s / model_per_request:.2f}x")


if __name__ == "__main__":
    with library_log("eval_overhead"):
        main()
