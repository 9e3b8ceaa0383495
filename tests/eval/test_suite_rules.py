"""Suite grading rules on hand-made replies: the reference column (the suite harness's rules, quirks
included) and the lenient column (our extraction), one expected verdict per reply; and the
property that no reply without a standalone option letter is graded as a letter."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openchat_cli.eval.grade import extract_option, grade_answer
from openchat_cli.eval.questions import Question
from openchat_cli.eval.suite_rules import lenient_grade, reference_grade

LETTER_OPTIONS = ["A", "B", "C", "D", "E"]
PAREN_OPTIONS = ["(A)", "(B)", "(C)", "(D)"]
MATH_META = {"_metadata": {"solution": "So the ratio is $\\boxed{\\frac{1}{2}}$."}, "label": [True], "options": None}


def meta(task_type: str, **fields) -> dict:
    return {"format": "suite", "task_type": task_type, "task_name": f"{task_type}/t", **fields}


# (task type, record fields, reply, reference (matched, correct), lenient verdict or None)
CASES = [
    # zs/agieval: the first capital A-F anywhere, as AGIEval's own post-processing
    ("zs/agieval", {"options": LETTER_OPTIONS, "label": ["B"]}, "B", (True, True), "correct"),
    ("zs/agieval", {"options": LETTER_OPTIONS, "label": ["B"]}, "The answer is (B).", (True, True), "correct"),
    ("zs/agieval", {"options": LETTER_OPTIONS, "label": ["B"]}, " C", (True, False), "incorrect"),
    ("zs/agieval", {"options": LETTER_OPTIONS, "label": ["B"]}, "I do not know.", (False, False), "error"),
    ("zs/agieval", {"options": LETTER_OPTIONS, "label": ["B"]}, "The answer is 731", (False, False), "error"),
    # quirk: the B of "Based" is the reference's answer; our extraction finds no standalone letter
    (
        "zs/agieval",
        {"options": LETTER_OPTIONS, "label": ["B"]},
        "Based on it, the passage says so",
        (True, True),
        "error",
    ),
    # zs/bbh_mc_orca and zs/truthfulqa_orca: the first character equal to an option letter
    ("zs/bbh_mc_orca", {"options": ["A", "B"], "label": ["B"]}, "(B) False.", (True, True), "correct"),
    ("zs/bbh_mc_orca", {"options": ["A", "B"], "label": ["B"]}, "I do not know.", (False, False), "error"),
    (
        "zs/bbh_mc_orca",
        {"options": ["A", "B"], "label": ["B"]},
        "A: Among A through B, the answer is B",
        (True, False),
        "correct",
    ),
    ("zs/truthfulqa_orca", {"options": ["A", "B", "C", "D"], "label": ["D"]}, "D", (True, True), "correct"),
    (
        "zs/truthfulqa_orca",
        {"options": ["A", "B", "C", "D"], "label": ["D"]},
        "The answer is 731",
        (False, False),
        "error",
    ),
    # zs/gpqa: letters after the first "The correct answer is"; "C" when unmatched, still scored
    (
        "zs/gpqa",
        {"options": ["A", "B", "C", "D"], "label": ["B"]},
        "The correct answer is (B)",
        (True, True),
        "correct",
    ),
    (
        "zs/gpqa",
        {"options": ["A", "B", "C", "D"], "label": ["B"]},
        "The correct answer is (A). On reflection the correct answer is (B).",
        (True, False),
        "correct",
    ),
    ("zs/gpqa", {"options": ["A", "B", "C", "D"], "label": ["B"]}, "I do not know.", (False, False), "error"),
    ("zs/gpqa", {"options": ["A", "B", "C", "D"], "label": ["C"]}, "I do not know.", (False, True), "error"),
    # fs_cothub/bbh with options: the alphabetically first (X) after the last "answer is "
    ("fs_cothub/bbh", {"options": PAREN_OPTIONS, "label": ["(B)"]}, "So the answer is (B).", (True, True), "correct"),
    (
        "fs_cothub/bbh",
        {"options": PAREN_OPTIONS, "label": ["(B)"]},
        "So the answer is (C) or (B).",
        (True, True),
        "incorrect",
    ),
    ("fs_cothub/bbh", {"options": PAREN_OPTIONS, "label": ["(B)"]}, "So the answer is B.", (False, False), "correct"),
    ("fs_cothub/bbh", {"options": PAREN_OPTIONS, "label": ["(B)"]}, "I do not know.", (False, False), "error"),
    # fs_cothub/bbh free form: the text after the last "answer is ", one trailing period dropped
    ("fs_cothub/bbh", {"options": None, "label": ["False"]}, "So the answer is False.", (True, True), "correct"),
    ("fs_cothub/bbh", {"options": None, "label": ["False"]}, "So the answer is false.", (True, False), "correct"),
    # quirk: unmatched, the whole reply is the answer, so a bare "False" still scores
    ("fs_cothub/bbh", {"options": None, "label": ["False"]}, "False", (False, True), "correct"),
    ("fs_cothub/bbh", {"options": None, "label": ["False"]}, "It is False, clearly", (False, False), "error"),
    # fs_cothub/gsm8k: the last number, compared as text
    ("fs_cothub/gsm8k", {"options": None, "label": ["18"]}, "9 * 2 = 18. The answer is 18", (True, True), "correct"),
    ("fs_cothub/gsm8k", {"options": None, "label": ["18"]}, "The answer is 18.0", (True, False), "correct"),
    ("fs_cothub/gsm8k", {"options": None, "label": ["18"]}, "The answer is 731", (True, False), "incorrect"),
    ("fs_cothub/gsm8k", {"options": None, "label": ["18"]}, "I do not know.", (False, False), "error"),
    # fs_cothub/mmlu: (A)-(D) after the last "answer is"; "(C)" when unmatched, still scored
    ("fs_cothub/mmlu", {"options": PAREN_OPTIONS, "label": "(C)"}, "The answer is (C).", (True, True), "correct"),
    ("fs_cothub/mmlu", {"options": PAREN_OPTIONS, "label": "(C)"}, "The answer is (B).", (True, False), "incorrect"),
    ("fs_cothub/mmlu", {"options": PAREN_OPTIONS, "label": "(C)"}, "I do not know.", (False, True), "error"),
    ("fs_cothub/mmlu", {"options": PAREN_OPTIONS, "label": "(A)"}, "The answer is 731", (False, False), "error"),
    # fs_cothub/math: "The answer is", else the last \boxed{}, else the whole reply; value equivalence
    ("fs_cothub/math", MATH_META, "The answer is $\\frac{1}{2}$", (True, True), "correct"),
    ("fs_cothub/math", MATH_META, "The answer is 0.5", (True, True), "correct"),
    ("fs_cothub/math", MATH_META, "so it is \\boxed{\\dfrac12}.", (True, True), "correct"),
    ("fs_cothub/math", MATH_META, "The answer is $\\frac{1}{3}$", (True, False), "incorrect"),
    ("fs_cothub/math", MATH_META, "The answer is $\\frac{1}{2}$. I hope it is correct.", (True, False), "correct"),
    ("fs_cothub/math", MATH_META, "1/2", (False, True), "error"),
    ("fs_cothub/math", MATH_META, "We get 1/2 in the end", (False, False), "error"),
    ("fs_cothub/math", MATH_META, "I do not know.", (False, False), "error"),
]


@pytest.mark.parametrize(
    "task_type, fields, reply, reference, lenient", CASES, ids=[f"{c[0]}:{c[2][:30]}" for c in CASES]
)
def test_rule_verdicts(task_type, fields, reply, reference, lenient):
    m = meta(task_type, **fields)
    got = reference_grade(m, reply)
    assert (got.matched, got.correct) == reference
    graded = lenient_grade(m, reply)
    assert ("error" if not graded.matched else "correct" if graded.correct else "incorrect") == lenient
    # grade_answer routes suite questions to the same rules and keeps both columns
    row = grade_answer(Question("q", None, ["?"], None, m), reply)
    assert (row["matched"], row["verdict"] == "correct", row["lenient"]) == (*reference, lenient)


def test_reference_answers_keep_the_quirks():
    gpqa = meta("zs/gpqa", options=["A", "B", "C", "D"], label=["C"])
    assert reference_grade(gpqa, "No idea").answer == "C"
    mmlu = meta("fs_cothub/mmlu", options=PAREN_OPTIONS, label="(C)")
    assert reference_grade(mmlu, "No idea").answer == "(C)"
    # one leading space is dropped before matching, as the harness does
    orca = meta("zs/bbh_mc_orca", options=["A", "B"], label=["A"])
    assert reference_grade(orca, " A").answer == "A"


# -- standalone letters only ----------------------------------------------------------------------

WORDS = (
    "the answer is would be option correct choice do not know among through based on passage question "
    "we can see that this it its and or but because so therefore think maybe likely none all above below "
    "first second last true false yes no about around after before cannot decide clear evidence suggests "
    "each every value number result final step let us check again reason data table row column "
    "Answer Option Do Is IT OK ABC Dear Bob Eve Cat Fig Hat Ice Jam Key"
).split()
SEPARATORS = [" ", " ", ", ", ". ", ": ", " (", ") ", " **", "** ", " - ", "\n", "? ", "! "]


@st.composite
def sentences(draw) -> str:
    words = draw(st.lists(st.sampled_from(WORDS), min_size=1, max_size=25))
    out = []
    for word in words:
        style = draw(st.sampled_from(["lower", "title", "upper", "asis", "boxed", "paren"]))
        word = {
            "lower": word.lower(),
            "title": word.title(),
            "upper": word.upper(),
            "asis": word,
            "boxed": f"\\boxed{{{word}}}",
            "paren": f"({word})",
        }[style]
        out.append(word + draw(st.sampled_from(SEPARATORS)))
    if draw(st.booleans()):
        out.append(str(draw(st.integers(0, 10_000))))
    return "".join(out)


@settings(max_examples=400, deadline=None)
@given(sentences(), st.sampled_from([LETTER_OPTIONS, PAREN_OPTIONS, ["A", "B"], list("ABCDEFGHIJKLMNOPQR")]))
def test_no_standalone_letter_no_letter(sentence, options):
    assert extract_option(sentence, options) is None
    plain = Question("q", None, ["?"], None, {"format": "choice", "options": options, "label": ["A"]})
    assert grade_answer(plain, sentence)["verdict"] == "error"
    for task_type in ("zs/agieval", "zs/gpqa", "fs_cothub/mmlu", "fs_cothub/bbh"):
        assert lenient_grade(meta(task_type, options=options, label=["A"]), sentence).answer is None


@pytest.mark.parametrize(
    "reply, letter",
    [
        ("B", "B"),
        ("(B)", "B"),
        ("B.", "B"),
        ("**B**", "B"),
        ("The answer is B", "B"),
        ("answer: (b)", "B"),
        ("Among A through D, the answer is C", "C"),
        ("\\boxed{D}", "D"),
        ("I do not know.", None),
        ("The answer is 731", None),
        ("A car is faster", None),
        ("The answer is Bob", None),
        ("Do it", None),
    ],
)
def test_letter_options_need_a_standalone_letter(reply, letter):
    assert extract_option(reply, ["A", "B", "C", "D"]) == letter


def test_option_text_counts_as_whole_words_only():
    options = ["do", "cat", "Rome"]
    assert extract_option("I do not know.", options) == "A"  # "do" is a whole word here
    assert extract_option("Doing nothing", options) is None
    assert extract_option("A concatenation", options) is None
    assert extract_option("It is Rome.", options) == "C"
