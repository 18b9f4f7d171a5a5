"""helpers.compare: chrF, ROUGE-L, repetition, reports and perplexity against hand-worked values."""

from __future__ import annotations

import math

import pytest

from helpers import compare, internvl
from helpers.errors import BookError

# ------------------------------------------------------------------------------------------- chrF


def test_chrf_identical_is_100_and_disjoint_is_0():
    assert compare.chrf("你们不要再打了", "你们不要再打了") == pytest.approx(100.0)
    assert compare.chrf("猫猫猫", "狗狗狗") == 0.0


def test_chrf_empty_strings_score_zero():
    assert compare.chrf("", "住手") == 0.0
    assert compare.chrf("住手", "") == 0.0
    assert compare.chrf("", "") == 0.0
    assert compare.chrf("   ", "住手") == 0.0


def test_chrf_hand_worked():
    # hyp "ab", ref "abc", orders 1..6; only orders 1 and 2 exist on both sides.
    #   1-grams: hyp {a, b}, ref {a, b, c}, matches 2 -> P = 2/2, R = 2/3
    #   2-grams: hyp {ab},   ref {ab, bc},  matches 1 -> P = 1/1, R = 1/2
    #   mean P = 1, mean R = (2/3 + 1/2) / 2 = 7/12
    #   F2 = (1 + 4) P R / (4 P + R) = (35/12) / (55/12) = 7/11
    assert compare.chrf("ab", "abc") == pytest.approx(100 * 7 / 11)
    # clipping: hyp "猫猫" vs ref "猫狗": 猫 matches once (P = R = 1/2); bigrams 0 -> P = R = 1/4, F = 25
    assert compare.chrf("猫猫", "猫狗") == pytest.approx(25.0)


def test_chrf_ignores_whitespace_and_order_n():
    assert compare.chrf("住 手\n！", "住手！") == pytest.approx(100.0)
    # n = 1 is a bag of characters: any permutation is perfect
    assert compare.chrf("打了再", "再打了", n=1) == pytest.approx(100.0)
    assert compare.chrf("打了再", "再打了") < 100.0


def test_chrf_matches_sacrebleu_published_values():
    # the values the Hugging Face chrF metric card prints (sacrebleu, chrF2, 6 char orders, no whitespace)
    hyp = "The relationship between Obama and Netanyahu is not exactly friendly."
    ref = "The ties between Obama and Netanyahu are not particularly friendly."
    assert compare.chrf(hyp, ref) == pytest.approx(61.576379378113785, abs=1e-9)
    hyps = [
        "The relationship between cats and dogs is not exactly friendly.",
        "a good bookshop is just a genteel black hole that knows how to read.",
    ]
    refs = [
        "The relationship between dogs and cats is not exactly friendly.",
        "A good bookshop is just a genteel Black Hole that knows how to read.",
    ]
    assert compare.corpus_chrf(hyps, refs) == pytest.approx(84.64214891738334, abs=1e-9)


def test_corpus_chrf_of_one_pair_equals_sentence_chrf():
    for hyp, ref in [("住手！你们不要再打了", "你们不要再打了啦"), ("ab", "abc"), ("猫猫", "猫狗")]:
        assert compare.corpus_chrf([hyp], [ref]) == pytest.approx(compare.chrf(hyp, ref))


def test_corpus_chrf_sums_statistics_rather_than_averaging():
    hyps, refs = ["住手", "你们不要再打了啦啦"], ["住手", "你们别打了"]
    mean = (compare.chrf(hyps[0], refs[0]) + compare.chrf(hyps[1], refs[1])) / 2
    assert compare.corpus_chrf(hyps, refs) != pytest.approx(mean)
    with pytest.raises(BookError, match="one reference per answer"):
        compare.corpus_chrf(["a"], [])


# ---------------------------------------------------------------------------------- ROUGE-L etc.


def test_rouge_l_hand_worked():
    # LCS("ace", "abcde") = 3: P = 3/3, R = 3/5, F1 = 2 * 0.6 / 1.6 = 0.75
    assert compare.rouge_l_chars("ace", "abcde") == pytest.approx(0.75)
    assert compare.rouge_l_chars("abcde", "ace") == pytest.approx(0.75)
    assert compare.rouge_l_chars("住手", "住手") == pytest.approx(1.0)
    assert compare.rouge_l_chars("猫", "狗") == 0.0
    assert compare.rouge_l_chars("", "") == 0.0
    # LCS("你们别打了", "你们不要再打了") = 你们打了 = 4: P = 4/5, R = 4/7
    assert compare.rouge_l_chars("你们别打了", "你们不要再打了") == pytest.approx(
        2 * (4 / 5) * (4 / 7) / (4 / 5 + 4 / 7)
    )


def test_repetition_and_distinct():
    assert compare.repetition_rate("哈哈哈哈") == pytest.approx(2 / 3)
    assert compare.repetition_rate("哈哈哈哈哈哈哈哈哈哈") > 0.85
    assert compare.repetition_rate("你们不要再打了") == 0.0
    assert compare.repetition_rate("哈") == 0.0
    assert compare.distinct_n(["你们不要再打了"] * 5, 2) == pytest.approx(1 / 5)
    assert compare.distinct_n(["住手", "别打"], 1) == 1.0
    assert compare.distinct_n([], 2) == 0.0


def test_length_stats():
    assert compare.length_stats(["住手", "你们 不要再打了", "好"]) == {
        "count": 3,
        "mean": pytest.approx(10 / 3),
        "median": 2.0,
        "min": 1,
        "max": 7,
    }
    assert compare.length_stats([])["count"] == 0


# ------------------------------------------------------------------------------- before / after

RECORDS = [
    {"id": "a", "split": "eval", "reference": "住手！你们不要再打了"},
    {"id": "b", "split": "eval", "reference": "我太难了"},
    {"id": "c", "split": "eval", "reference": "这是一个 | 竖线"},
]
BEFORE = {"a": "哈哈哈哈哈哈", "b": "图片里有一只猫", "c": "哈哈哈哈哈哈"}
AFTER = {"a": "住手！你们别打了", "b": "我太难了", "c": "这是一个竖线\n第二行"}


def test_compare_answers_rows():
    rows = compare.compare_answers(RECORDS, BEFORE, AFTER)
    assert [r["id"] for r in rows] == ["a", "b", "c"]
    assert rows[0]["split"] == "eval"
    b = rows[1]
    assert (b["exact_before"], b["exact_after"]) == (0, 1)
    assert b["chrf_after"] == pytest.approx(100.0) and b["chrf_before"] == 0.0
    assert rows[0]["repetition_before"] > 0.5 and rows[0]["repetition_after"] == 0.0
    assert rows[0]["length_after"] == 8


def test_summary_table():
    s = compare.summary_table(compare.compare_answers(RECORDS, BEFORE, AFTER))
    assert s["n"] == 3
    assert s["after"]["exact_match"] == pytest.approx(1 / 3) and s["before"]["exact_match"] == 0.0
    assert s["after"]["chrf"] > s["before"]["chrf"]
    assert s["after"]["rouge_l"] > s["before"]["rouge_l"]
    assert s["before"]["repetition"] > s["after"]["repetition"]
    assert s["before"]["distinct_2"] < s["after"]["distinct_2"]
    assert s["after"]["corpus_chrf"] == pytest.approx(
        compare.corpus_chrf([AFTER[k] for k in "abc"], [r["reference"] for r in RECORDS])
    )
    assert s["reference_length"] == pytest.approx((10 + 4 + 7) / 3)
    with pytest.raises(BookError, match="no rows"):
        compare.summary_table([])


def test_missing_ids_are_named():
    with pytest.raises(BookError) as exc:
        compare.compare_answers(RECORDS, {"a": "x"}, {"a": "x", "b": "y", "c": "z"})
    msg = str(exc.value)
    assert "'before'" in msg and "b, c" in msg and "'after'" not in msg
    with pytest.raises(BookError, match="no 'id' or no 'reference'"):
        compare.compare_answers([{"id": "a"}], BEFORE, AFTER)


def test_answers_by_id():
    rows = [{"id": "a", "answer": "住手"}, {"id": "b", "answer": "好"}]
    assert compare.answers_by_id(rows) == {"a": "住手", "b": "好"}
    assert compare.answers_by_id({"answers": rows}) == {"a": "住手", "b": "好"}
    with pytest.raises(BookError):
        compare.answers_by_id([{"id": "a"}])


def test_report_markdown_tables_and_escaping():
    rows = compare.compare_answers(RECORDS, BEFORE, AFTER)
    md = compare.report_markdown(rows, compare.summary_table(rows), "Eval split")
    lines = md.splitlines()
    assert lines[0] == "## Eval split"
    assert any(line.startswith("| chrF (corpus) |") for line in lines)
    assert any(line.startswith("| exact match | 0.0% | 33.3% | +33.3% |") for line in lines)
    sample_lines = [line for line in lines if line.startswith("| c |")]
    assert len(sample_lines) == 1
    row = sample_lines[0]
    assert "这是一个 \\| 竖线" in row and "竖线<br>第二行" in row
    # escaped pipes do not add columns: 6 columns -> 7 unescaped pipes
    assert row.replace("\\|", "").count("|") == 7
    short = compare.report_markdown(rows, compare.summary_table(rows), "t", max_rows=1)
    assert "| b |" not in short and "2 more samples" in short


# ------------------------------------------------------------------------- intervals and arms

# answers of mixed quality against their references: some close, some not
HYPS = [
    "住手！你们不要再打了",
    "我没胖",
    "哈哈哈哈哈",
    "今天也要加油",
    "猫在思考猫生",
    "我去太空了妈",
    "好",
    "这是什么",
]
REFS = ["住手！别打了", "我没有胖", "你好", "今天也要加油鸭", "我在思考猫生", "妈我去太空了", "好的", "这是谁"]


@pytest.mark.parametrize("metric", sorted(compare.BOOTSTRAP_METRICS))
def test_bootstrap_interval_contains_the_estimate_and_is_reproducible(metric):
    iv = compare.bootstrap_interval(HYPS, REFS, metric, seed=3)
    assert iv.low <= iv.estimate <= iv.high and iv.low < iv.high
    expected = (
        compare.corpus_chrf(HYPS, REFS)
        if metric == "corpus_chrf"
        else (sum(compare.rouge_l_chars(h, r) for h, r in zip(HYPS, REFS)) / len(HYPS))
    )
    assert iv.estimate == pytest.approx(expected)
    assert compare.bootstrap_interval(HYPS, REFS, metric, seed=3) == iv, "same seed, same interval"
    assert compare.bootstrap_interval(HYPS, REFS, metric, seed=4) != iv, "another seed resamples differently"
    assert (iv.confidence, iv.resamples) == (0.95, 1000)


@pytest.mark.parametrize("metric", sorted(compare.BOOTSTRAP_METRICS))
def test_bootstrap_interval_narrows_with_more_samples_and_widens_with_confidence(metric):
    small = compare.bootstrap_interval(HYPS, REFS, metric, seed=0)
    large = compare.bootstrap_interval(HYPS * 9, REFS * 9, metric, seed=0)  # same mix, 9x the records
    assert large.estimate == pytest.approx(small.estimate)
    assert large.width < small.width / 2  # about 1/sqrt(9) = 1/3 of the width
    wider = compare.bootstrap_interval(HYPS, REFS, metric, seed=0, confidence=0.99)
    assert wider.low <= small.low and wider.high >= small.high


def test_bootstrap_interval_edge_cases():
    same = compare.bootstrap_interval(["住手！"] * 5, ["住手！"] * 5)
    assert (same.low, same.estimate, same.high) == (100.0, 100.0, 100.0)  # nothing varies, nothing to resample
    with pytest.raises(BookError, match="one reference per answer"):
        compare.bootstrap_interval(["a"], [])
    with pytest.raises(BookError, match="no records"):
        compare.bootstrap_interval([], [])
    with pytest.raises(BookError, match="unknown metric"):
        compare.bootstrap_interval(["a"], ["a"], "bleu")
    with pytest.raises(BookError, match="confidence"):
        compare.bootstrap_interval(["a"], ["a"], confidence=95)


def test_score_arm_and_the_arms_tables():
    arm = compare.score_arm(HYPS, REFS, resamples=200, seed=1)
    assert arm["n"] == len(HYPS)
    assert arm["corpus_chrf"] == compare.bootstrap_interval(HYPS, REFS, resamples=200, seed=1).to_dict()
    assert arm["distinct_1"] == compare.distinct_n(HYPS, 1) and arm["distinct_2"] == compare.distinct_n(HYPS, 2)
    assert arm["repetition"] == pytest.approx(sum(map(compare.repetition_rate, HYPS)) / len(HYPS))
    parrot = compare.score_arm(["住手！"] * len(REFS), REFS, resamples=200, seed=1)  # one answer for every image
    assert parrot["distinct_2"] < arm["distinct_2"]
    arms = {"a | b": arm, "parrot": parrot}
    table = compare.arms_table(arms, caption="eval")
    assert [row[0] for row in table.rows] == ["a | b", "parrot"] and table.caption == "eval"
    assert table.rows[0][2] == compare.Interval(**arm["corpus_chrf"]).format(1)
    md = compare.arms_markdown(arms).splitlines()
    assert md[0].startswith("| arm | n | chrF (corpus) [95% CI] |") and len(md) == 4
    assert md[2].startswith("| a \\| b |")  # the arm's name is escaped, the columns stay put
    with pytest.raises(BookError, match="no arms"):
        compare.arms_table({})


# ------------------------------------------------------------------------------------ perplexity


def _hand_loss(model, tok, pixels, question, reference):
    """exp(loss) from model.forward(labels=...) on a prompt built independently of helpers.compare."""
    import torch

    model.img_context_token_id = tok.convert_tokens_to_ids("<IMG_CONTEXT>")
    query, _ = model._build_query("<image>\n" + question, [], [pixels.shape[0]], "<img>", "</img>", "<IMG_CONTEXT>")
    assert query.endswith("<|im_start|>assistant\n") and query.count("<IMG_CONTEXT>") == model.num_image_token
    prompt = tok(query).input_ids
    answer = tok.encode(reference + "<|im_end|>", add_special_tokens=False)
    ids = torch.tensor([prompt + answer])
    labels = torch.tensor([[-100] * len(prompt) + answer])
    with torch.no_grad():
        out = model(
            pixel_values=pixels,
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            labels=labels,
            image_flags=torch.ones(pixels.shape[0], 1, dtype=torch.long),
        )
    return math.exp(out.loss.item())


def test_perplexity_on_references(tiny_model):
    from PIL import Image

    from helpers.tiling import image_to_pixel_values

    model, tok = tiny_model
    pixels = [
        image_to_pixel_values(Image.new("RGB", (448, 448), (200, 30, 30)), max_num=1),
        image_to_pixel_values(Image.new("RGB", (300, 600), (10, 90, 200)), max_num=2),
    ]
    questions = ["请你根据这张图片，讲一个脑洞大开的梗", "<image>\n这是什么？"]
    refs = ["住手！你们不要再打了", "我太难了"]
    # the hand-built prompt is the remote code's chat() prompt, so score with its system message
    ppl = compare.perplexity_on_references(model, tok, pixels, questions, refs, system=internvl.INTERNVL_SYSTEM)
    assert len(ppl) == 2
    assert all(math.isfinite(p) and p > 1 for p in ppl)
    assert ppl[0] == pytest.approx(_hand_loss(model, tok, pixels[0], questions[0], refs[0]), rel=1e-4)
    # a random model is about as unsure as a uniform guess over its vocabulary
    assert 10 < ppl[0] < 20 * len(tok)
    assert not model.training
    # explicit tile counts give the same result
    again = compare.perplexity_on_references(
        model,
        tok,
        pixels[:1],
        questions[:1],
        refs[:1],
        num_patches_list=[pixels[0].shape[0]],
        system=internvl.INTERNVL_SYSTEM,
    )
    assert again[0] == pytest.approx(ppl[0], rel=1e-6)
    with pytest.raises(BookError, match="tiles"):
        compare.perplexity_on_references(model, tok, pixels[:1], questions[:1], refs[:1], num_patches_list=[5])
    with pytest.raises(BookError, match="one of each per sample"):
        compare.perplexity_on_references(model, tok, pixels, questions[:1], refs)
