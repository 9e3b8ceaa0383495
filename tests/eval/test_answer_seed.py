"""`eval answer --seed`: sampled answers from the real server repeat exactly, whatever the order
and concurrency the questions are asked in, and a different seed draws differently."""

import pytest

from openchat_cli.eval.answer import request_seed
from store.catalog import open_catalog


def test_request_seed_depends_on_seed_question_and_turn_only():
    assert request_seed(None, "q1", 0) is None
    seeds = {request_seed(s, q, t) for s in (1, 2) for q in ("q1", "q2") for t in (0, 1)}
    assert len(seeds) == 8 and all(0 <= s < 2**63 for s in seeds)
    assert request_seed(1, "q1", 0) == request_seed(1, "q1", 0)


@pytest.mark.slow
def test_seeded_answers_repeat_across_concurrency(cli, tiny_server, mtbench_file):
    def answers(seed: str, concurrency: str) -> dict:
        out = cli(
            "eval", "answer", mtbench_file, "-e", tiny_server.base_url, "-t", "1.0", "--max-tokens", "8",
            "--seed", seed, "-c", concurrency, "--new", "--json",
        ).json()  # fmt: skip
        assert out["status"] == "completed"
        assert open_catalog().get(out["run_id"])["config"]["seed"] == int(seed)
        return {a["question_id"]: a["turns"] for a in open_catalog().answers(out["run_id"])}

    first, again, other = answers("7", "1"), answers("7", "4"), answers("8", "4")
    assert first == again and len(first) == 4 and all(len(t) == 2 for t in first.values())
    assert first != other  # 8 sampled replies of 8 tokens from a random tiny model: a new seed changes some
