"""Before/after metrics for short Chinese captions: chrF, ROUGE-L, repetition, perplexity.

The comparison notebook asks one question: did fine-tuning move the model's
answers towards the reference captions? Captions are Chinese and 10-30
characters long, so every text metric here works on *characters* with
whitespace removed (no word segmenter needed):

* :func:`chrf` / :func:`corpus_chrf`: character n-gram F-score (Popović 2015),
  computed the way sacrebleu's chrF is (precision and recall averaged over the
  orders 1..n, then the F-beta score, beta = 2 weighting recall), 0..100;
* :func:`rouge_l_chars`: ROUGE-L F1 from the longest common subsequence, 0..1;
* :func:`distinct_n` and :func:`repetition_rate`: a random or degenerate model
  repeats itself ("哈哈哈哈哈") or says the same thing for every image;
* :func:`length_stats`: how long the answers are;
* :func:`perplexity_on_references`: how surprised the model is by the
  reference caption itself, with no sampling involved.

:func:`compare_answers` scores every record before and after,
:func:`summary_table` averages the scores, and :func:`report_markdown` writes
both as a Markdown report.

With a few dozen held-out images a difference of a few chrF points can be
luck. :func:`bootstrap_interval` resamples the records to put a confidence
interval around corpus chrF or mean ROUGE-L; :func:`score_arm` gives one
system's ("arm's") overlap with intervals and its diversity (distinct-1/2,
repetition), and :func:`arms_table` / :func:`arms_markdown` set several arms
side by side (notebook 07: the base model with the course prompt, the base
model with a stronger prompt, the fine-tuned model).
"""

from __future__ import annotations

import html
import math
import random
import re
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from .env import Table
from .errors import BookError
from .internvl import IMAGE_TOKEN, IMG_CONTEXT, XTUNER_SYSTEM, build_prompt

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "METRICS",
    "chrf",
    "chrf_statistics",
    "corpus_chrf",
    "rouge_l_chars",
    "distinct_n",
    "repetition_rate",
    "length_stats",
    "exact_match",
    "perplexity_on_references",
    "answers_by_id",
    "compare_answers",
    "summary_table",
    "report_markdown",
    "Interval",
    "BOOTSTRAP_METRICS",
    "bootstrap_interval",
    "score_arm",
    "arms_table",
    "arms_markdown",
]

#: The per-answer metrics :func:`compare_answers` computes, with what they measure.
METRICS = {
    "chrf": "character n-gram F-score against the reference (0-100, higher is closer)",
    "rouge_l": "ROUGE-L F1 on characters (0-1, higher is closer)",
    "length": "characters in the answer, whitespace removed",
    "repetition": "fraction of repeated character bigrams within the answer (0 = none)",
    "exact": "1 when the answer equals the reference after stripping, else 0",
}

_WHITESPACE = re.compile(r"\s+")


def _chars(text: str) -> str:
    """The text with all whitespace removed: what every character metric here compares."""
    return _WHITESPACE.sub("", text)


def _ngrams(text: str, n: int) -> Counter[str]:
    """Counts of the character n-grams of ``text`` (already whitespace-free)."""
    return Counter(text[i : i + n] for i in range(len(text) - n + 1))


# --------------------------------------------------------------------------------------------
# chrF


def chrf_statistics(hypothesis: str, reference: str, n: int = 6) -> list[tuple[int, int, int]]:
    """Per order 1..n: (hypothesis n-grams, reference n-grams, matched n-grams), whitespace removed.

    Matches are clipped: an n-gram counts as often as it occurs in *both* texts.
    These are the sufficient statistics that :func:`corpus_chrf` sums over pairs.

    >>> chrf_statistics("猫猫", "猫狗", n=2)
    [(2, 2, 1), (1, 1, 0)]
    """
    if n < 1:
        raise BookError(f"chrF needs n >= 1 (the highest n-gram order), got n={n}; the usual value is 6.")
    hyp, ref = _chars(hypothesis), _chars(reference)
    out = []
    for order in range(1, n + 1):
        h, r = _ngrams(hyp, order), _ngrams(ref, order)
        out.append((sum(h.values()), sum(r.values()), sum((h & r).values())))
    return out


def _f_score(stats: Sequence[tuple[int, int, int]], beta: float) -> float:
    """chrF from summed statistics: mean precision and recall over the orders both sides have, then F-beta.

    Orders where the hypothesis or the reference is too short to have any
    n-gram are left out of the averages, as in sacrebleu (whose epsilons for
    them are below 1e-15).
    """
    precisions = [m / h for h, r, m in stats if h > 0 and r > 0]
    recalls = [m / r for h, r, m in stats if h > 0 and r > 0]
    if not precisions:
        return 0.0
    p, r = sum(precisions) / len(precisions), sum(recalls) / len(recalls)
    if p + r == 0:
        return 0.0
    b2 = beta**2
    return 100.0 * (1 + b2) * p * r / (b2 * p + r)


def chrf(hypothesis: str, reference: str, n: int = 6, beta: float = 2.0) -> float:
    """Sentence chrF (0-100) of one answer against its reference caption, on characters.

    Whitespace is removed first; precision and recall are averaged over the
    n-gram orders 1..n, then combined into an F-beta score (beta = 2: recall
    counts twice as much). Empty texts score 0.

    >>> chrf("住手！", "住手！"), chrf("猫猫", "猫狗")
    (100.0, 25.0)
    """
    return _f_score(chrf_statistics(hypothesis, reference, n), beta)


def corpus_chrf(hyps: Sequence[str], refs: Sequence[str], n: int = 6, beta: float = 2.0) -> float:
    """Corpus chrF (0-100): n-gram counts summed over all pairs, then one F-score (as sacrebleu does).

    Unlike the mean of sentence scores, long answers weigh more and a pair of
    short texts cannot swing the result.

    >>> corpus_chrf(["住手！"], ["住手！"]) == chrf("住手！", "住手！")
    True
    """
    if len(hyps) != len(refs):
        raise BookError(
            f"corpus_chrf got {len(hyps)} hypotheses but {len(refs)} references; "
            "pass one reference per answer, in the same order."
        )
    totals = [[0, 0, 0] for _ in range(n)]
    for hyp, ref in zip(hyps, refs):
        for total, stat in zip(totals, chrf_statistics(hyp, ref, n)):
            for i in range(3):
                total[i] += stat[i]
    return _f_score([tuple(t) for t in totals], beta)  # type: ignore[misc]


# --------------------------------------------------------------------------------------------
# ROUGE-L, diversity, length


def _lcs_length(a: str, b: str) -> int:
    """Length of the longest common subsequence of two strings (dynamic programming, one row)."""
    if len(a) < len(b):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for ch in a:
        diagonal = 0  # row[j - 1] of the previous pass
        for j, other in enumerate(b, start=1):
            above = row[j]
            row[j] = diagonal + 1 if ch == other else max(above, row[j - 1])
            diagonal = above
    return row[-1]


def rouge_l_chars(hypothesis: str, reference: str) -> float:
    """ROUGE-L F1 (0-1) on characters: the longest common subsequence over both lengths.

    Precision is LCS / answer length and recall LCS / reference length, so word
    order matters but gaps do not. Empty texts score 0.

    >>> rouge_l_chars("ace", "abcde")   # LCS 3: P = 3/3, R = 3/5
    0.75
    """
    hyp, ref = _chars(hypothesis), _chars(reference)
    lcs = _lcs_length(hyp, ref)
    # F1 = 2PR / (P + R) with P = lcs/|hyp|, R = lcs/|ref| simplifies to 2 lcs / (|hyp| + |ref|)
    return 2 * lcs / (len(hyp) + len(ref)) if lcs else 0.0


def distinct_n(texts: Iterable[str], n: int = 2) -> float:
    """Distinct-n (0-1): unique character n-grams over all n-grams of all the texts together.

    A model that gives every image the same answer, or repeats itself, scores
    low; 0.0 when the texts have no n-gram at all.

    >>> distinct_n(["你好", "你好"], n=1)   # 4 unigrams, 2 different
    0.5
    """
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(_ngrams(_chars(text), n))
    total = sum(counts.values())
    return len(counts) / total if total else 0.0


def repetition_rate(text: str, n: int = 2) -> float:
    """Fraction (0-1) of one answer's character n-grams that repeat an earlier one: 1 - unique/total.

    0 for an answer without repeats (or too short to have an n-gram); close to 1
    for "哈哈哈哈哈哈", the typical output of a degenerate model.

    >>> round(repetition_rate("哈哈哈哈"), 3)   # bigrams 哈哈 x 3, one of them unique
    0.667
    """
    grams = _ngrams(_chars(text), n)
    total = sum(grams.values())
    return 1.0 - len(grams) / total if total else 0.0


def length_stats(texts: Iterable[str]) -> dict[str, float]:
    """Count, mean, median, min and max length in characters (whitespace removed); zeros when empty.

    >>> length_stats(["住手！", "你们不要再打了"])
    {'count': 2, 'mean': 5.0, 'median': 5.0, 'min': 3, 'max': 7}
    """
    lengths = [len(_chars(t)) for t in texts]
    if not lengths:
        return {"count": 0, "mean": 0.0, "median": 0.0, "min": 0, "max": 0}
    return {
        "count": len(lengths),
        "mean": statistics.fmean(lengths),
        "median": float(statistics.median(lengths)),
        "min": min(lengths),
        "max": max(lengths),
    }


def exact_match(hypothesis: str, reference: str) -> bool:
    """True when the answer equals the reference after stripping surrounding whitespace.

    >>> exact_match(" 住手！\\n", "住手！")
    True
    """
    return hypothesis.strip() == reference.strip()


# --------------------------------------------------------------------------------------------
# perplexity on the references


def _core_model(model: Any) -> Any:
    """The InternVLChatModel itself, unwrapping a PEFT wrapper if there is one."""
    unwrap = getattr(model, "get_base_model", None)
    return unwrap() if callable(unwrap) else model


def _reference_ids(
    tokenizer: Any, question: str, reference: str, num_patches: Sequence[int], num_image_token: int, system: str
) -> tuple[list[int], list[int]]:
    """``input_ids`` and ``labels`` of one question and its reference answer, as XTuner encodes them."""
    if IMAGE_TOKEN not in question:
        question = f"{IMAGE_TOKEN}\n{question}"
    prompt = build_prompt(
        [(question, reference)], tiles=list(num_patches), num_image_token=num_image_token, system=system
    )
    return prompt.ids(tokenizer)


def perplexity_on_references(
    model: Any,
    tokenizer: Any,
    pixel_values_list: Sequence[torch.Tensor],
    questions: Sequence[str],
    references: Sequence[str],
    num_patches_list: Sequence[int | Sequence[int]] | None = None,
    device: str = "cpu",
    system: str = XTUNER_SYSTEM,
) -> list[float]:
    """Perplexity of each reference caption under an InternVL2 model, given its image and question.

    For each sample the conversation is rendered by
    :func:`helpers.internvl.build_prompt` and encoded exactly as XTuner's
    training encodes it (system turn with ``system``, by default XTuner's
    training system message; user turn with ``<img>`` + ``<IMG_CONTEXT>`` x
    ``num_image_token`` x tiles + ``</img>`` and the question; the assistant
    header; then the reference and ``<|im_end|>``, tokenised apart). Labels
    are -100 everywhere but on those answer tokens, one forward pass runs under ``torch.no_grad`` (in eval
    mode, restored afterwards), and the result is exp(mean negative
    log-likelihood of the answer tokens). ``num_patches_list`` gives each
    sample's tiles per image (an int, or a list for several ``<image>``
    placeholders); by default each sample is one image of
    ``pixel_values.shape[0]`` tiles. A random model scores near its vocabulary
    size; a model that learned the captions scores low.

    >>> perplexity_on_references(None, None, [], [], [])
    []
    """
    import torch

    n = len(pixel_values_list)
    if not (len(questions) == len(references) == n) or (num_patches_list is not None and len(num_patches_list) != n):
        raise BookError(
            f"perplexity_on_references got {n} pixel_values, {len(questions)} questions, "
            f"{len(references)} references"
            + ("" if num_patches_list is None else f" and {len(num_patches_list)} num_patches")
            + "; pass one of each per sample, in the same order."
        )
    if n == 0:
        return []
    core = _core_model(model)
    core.img_context_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT)
    dtype = getattr(core, "dtype", torch.float32)
    was_training = core.training
    core.eval()
    out: list[float] = []
    try:
        for i, (pixels, question, reference) in enumerate(zip(pixel_values_list, questions, references)):
            patches = num_patches_list[i] if num_patches_list is not None else pixels.shape[0]
            patches = [patches] if isinstance(patches, int) else list(patches)
            if sum(patches) != pixels.shape[0]:
                raise BookError(
                    f"sample {i}: pixel_values has {pixels.shape[0]} tiles but num_patches says "
                    f"{patches}; pass the tile counts that image_to_pixel_values produced."
                )
            if not reference.strip():
                raise BookError(f"sample {i}: the reference caption is empty; drop the sample or fix its caption.")
            ids, label_ids = _reference_ids(tokenizer, question, reference, patches, core.num_image_token, system)
            input_ids = torch.tensor([ids], device=device)
            labels = torch.tensor([label_ids], device=device)
            with torch.no_grad():
                logits = core(
                    pixel_values=pixels.to(device=device, dtype=dtype),
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    image_flags=torch.ones(pixels.shape[0], 1, dtype=torch.long, device=device),
                    return_dict=True,
                ).logits
                nll = torch.nn.functional.cross_entropy(logits[0, :-1].float(), labels[0, 1:], ignore_index=-100)
            out.append(math.exp(nll.item()))
    finally:
        core.train(was_training)
    return out


# --------------------------------------------------------------------------------------------
# before/after tables


def answers_by_id(rows: Iterable[Mapping[str, Any]] | Mapping[str, Any], field: str = "answer") -> dict[str, str]:
    """``{id: answer}`` from answer rows (``helpers.infer.answer_dataset``) or a file dict (``load_answers``).

    >>> answers_by_id({"answers": [{"id": "a", "answer": "住手！"}]})
    {'a': '住手！'}
    """
    if isinstance(rows, Mapping):
        if "answers" not in rows:
            raise BookError(
                "answers_by_id got a dict without an 'answers' list; pass what "
                "helpers.infer.load_answers returns, or the list of answer rows itself."
            )
        rows = rows["answers"]
    out = {}
    for i, row in enumerate(rows):
        if "id" not in row or field not in row:
            raise BookError(
                f"answer row {i} has no 'id' or no {field!r} field (keys: {sorted(row)}); "
                "pass rows written by helpers.infer.answer_dataset."
            )
        out[str(row["id"])] = str(row[field])
    return out


def _missing(ids: Sequence[str], answers: Mapping[str, str]) -> list[str]:
    return [i for i in ids if i not in answers]


def compare_answers(
    records: Sequence[Mapping[str, Any]], before: Mapping[str, str], after: Mapping[str, str]
) -> list[dict[str, Any]]:
    """One row per record: the reference, both answers and every metric of :data:`METRICS` for each.

    ``records`` are dicts with at least ``id`` and ``reference`` (a ``split``
    is carried over when present); ``before`` and ``after`` map id -> answer
    text (see :func:`answers_by_id`). Row keys are ``id, reference, before,
    after`` plus ``<metric>_before`` / ``<metric>_after``.

    >>> row = compare_answers([{"id": "a", "reference": "住手！"}], {"a": "哈哈哈"}, {"a": "住手！"})[0]
    >>> row["chrf_before"], row["chrf_after"], row["exact_after"]
    (0.0, 100.0, 1)
    """
    for i, rec in enumerate(records):
        if "id" not in rec or "reference" not in rec:
            raise BookError(
                f"record {i} has no 'id' or no 'reference' (keys: {sorted(rec)}); build records "
                "as {'id': r.id, 'reference': r.caption} or use the rows of helpers.infer."
            )
    ids = [str(rec["id"]) for rec in records]
    problems = []
    for name, answers in (("before", before), ("after", after)):
        if missing := _missing(ids, answers):
            shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            problems.append(f"{len(missing)} id(s) have no {name!r} answer: {shown}")
    if problems:
        raise BookError(
            "; ".join(problems) + ". Answer the same records with both models (same split, "
            "same dataset file) or drop those records before comparing."
        )
    rows = []
    for rec, rid in zip(records, ids):
        ref = str(rec["reference"])
        row: dict[str, Any] = {"id": rid}
        if "split" in rec:
            row["split"] = rec["split"]
        row.update(reference=ref, before=before[rid], after=after[rid])
        for side in ("before", "after"):
            ans = row[side]
            row[f"chrf_{side}"] = chrf(ans, ref)
            row[f"rouge_l_{side}"] = rouge_l_chars(ans, ref)
            row[f"length_{side}"] = len(_chars(ans))
            row[f"repetition_{side}"] = repetition_rate(ans)
            row[f"exact_{side}"] = int(exact_match(ans, ref))
        rows.append(row)
    return rows


def summary_table(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Means of the per-answer metrics for "before" and "after", plus corpus chrF and distinct-2.

    Returns ``{"n", "reference_length", "before": {...}, "after": {...}}`` where
    each side holds ``chrf, corpus_chrf, rouge_l, length, repetition,
    exact_match, distinct_2``.

    >>> s = summary_table(compare_answers([{"id": "a", "reference": "住手！"}], {"a": "哈哈"}, {"a": "住手！"}))
    >>> s["before"]["chrf"], s["after"]["exact_match"]
    (0.0, 1.0)
    """
    if not rows:
        raise BookError("summary_table got no rows; run compare_answers on at least one record first.")
    refs = [r["reference"] for r in rows]
    out: dict[str, Any] = {"n": len(rows), "reference_length": statistics.fmean(len(_chars(t)) for t in refs)}
    for side in ("before", "after"):
        answers = [r[side] for r in rows]
        out[side] = {
            "chrf": statistics.fmean(r[f"chrf_{side}"] for r in rows),
            "corpus_chrf": corpus_chrf(answers, refs),
            "rouge_l": statistics.fmean(r[f"rouge_l_{side}"] for r in rows),
            "length": statistics.fmean(r[f"length_{side}"] for r in rows),
            "repetition": statistics.fmean(r[f"repetition_{side}"] for r in rows),
            "exact_match": statistics.fmean(r[f"exact_{side}"] for r in rows),
            "distinct_2": distinct_n(answers, 2),
        }
    return out


_SUMMARY_ROWS = (
    ("chrf", "chrF (mean of sentences)", "{:.1f}"),
    ("corpus_chrf", "chrF (corpus)", "{:.1f}"),
    ("rouge_l", "ROUGE-L F1 (chars)", "{:.3f}"),
    ("length", "mean length (chars)", "{:.1f}"),
    ("repetition", "repetition rate (bigrams)", "{:.3f}"),
    ("distinct_2", "distinct-2", "{:.3f}"),
    ("exact_match", "exact match", "{:.1%}"),
)


def _cell(text: Any) -> str:
    """A value made safe for one Markdown table cell: HTML, Markdown marks, pipes and newlines escaped."""
    text = html.escape(str(text), quote=False)
    text = re.sub(r"([\\`*_\[\]|])", r"\\\1", text)
    return text.replace("\r\n", "\n").replace("\n", "<br>")


def report_markdown(
    rows: Sequence[Mapping[str, Any]], summary: Mapping[str, Any], title: str, max_rows: int | None = None
) -> str:
    """A Markdown report: the title, the metrics table (before, after, change), then one row per sample.

    Texts are escaped so that a ``|`` or a newline in a caption cannot break
    the tables; ``max_rows`` limits the per-sample table (the summary always
    covers every row).

    >>> rows = compare_answers([{"id": "a", "reference": "住手|"}], {"a": "哈"}, {"a": "住手|"})
    >>> "住手\\\\|" in report_markdown(rows, summary_table(rows), "Eval split")
    True
    """
    lines = [
        f"## {title}",
        "",
        f"{summary['n']} samples; references are {summary['reference_length']:.1f} characters long on average.",
        "",
        "| metric | before | after | change |",
        "|---|---:|---:|---:|",
    ]
    for key, label, fmt in _SUMMARY_ROWS:
        b, a = summary["before"][key], summary["after"][key]
        change = fmt.format(a - b)
        lines.append(f"| {label} | {fmt.format(b)} | {fmt.format(a)} | {'+' if a - b >= 0 else ''}{change} |")
    shown = rows if max_rows is None else rows[:max_rows]
    lines += ["", "| id | reference | before | after | chrF before | chrF after |", "|---|---|---|---|---:|---:|"]
    for r in shown:
        lines.append(
            f"| {_cell(r['id'])} | {_cell(r['reference'])} | {_cell(r['before'])} | {_cell(r['after'])} "
            f"| {r['chrf_before']:.1f} | {r['chrf_after']:.1f} |"
        )
    if len(shown) < len(rows):
        lines += ["", f"({len(rows) - len(shown)} more samples not shown.)"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# confidence intervals and arms


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap confidence interval ``[low, high]`` at ``confidence``.

    >>> iv = Interval(12.34, 10.0, 15.0)
    >>> str(iv), iv.format(2)
    ('12.3 [10.0, 15.0]', '12.34 [10.00, 15.00]')
    """

    estimate: float
    low: float
    high: float
    confidence: float = 0.95
    resamples: int = 1000

    def format(self, digits: int = 1) -> str:
        """``estimate [low, high]`` with ``digits`` decimals."""
        return f"{self.estimate:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"

    def __str__(self) -> str:
        return self.format(1)

    @property
    def width(self) -> float:
        """``high - low``: how uncertain the estimate is."""
        return self.high - self.low

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


#: The statistics :func:`bootstrap_interval` resamples, with what they are.
BOOTSTRAP_METRICS = {
    "corpus_chrf": "corpus chrF (0-100): n-gram counts of the resampled records summed, then one F-score",
    "rouge_l": "mean sentence ROUGE-L F1 on characters (0-1)",
}


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of already sorted values, interpolated linearly (numpy's default)."""
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def bootstrap_interval(
    hyps: Sequence[str],
    refs: Sequence[str],
    metric: str = "corpus_chrf",
    *,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """The metric on all records, with a percentile bootstrap confidence interval over the records.

    Draws ``resamples`` sets of ``len(hyps)`` records with replacement (a
    ``random.Random(seed)``, so the same seed gives the same interval),
    computes the metric of :data:`BOOTSTRAP_METRICS` on each and returns the
    ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles around the
    estimate on the original records. It measures how much the score depends
    on *which* images happened to be in the eval split; with few records the
    interval is wide, and two arms whose intervals overlap widely are not
    shown to differ.

    >>> iv = bootstrap_interval(["住手！", "哈哈", "我没胖"], ["住手！", "你好", "我胖了"], seed=0)
    >>> iv.low <= iv.estimate <= iv.high
    True
    """
    if len(hyps) != len(refs):
        raise BookError(
            f"bootstrap_interval got {len(hyps)} hypotheses but {len(refs)} references; "
            "pass one reference per answer, in the same order."
        )
    if not hyps:
        raise BookError("bootstrap_interval got no records; score at least one answer.")
    if metric not in BOOTSTRAP_METRICS:
        raise BookError(f"unknown metric {metric!r} for bootstrap_interval; use one of {sorted(BOOTSTRAP_METRICS)}.")
    if not 0 < confidence < 1 or not isinstance(resamples, int) or resamples < 1:
        raise BookError(
            f"confidence={confidence} must be between 0 and 1 and resamples={resamples!r} a positive integer "
            "(e.g. 0.95 and 1000)."
        )
    n = len(hyps)
    if metric == "corpus_chrf":
        stats = [chrf_statistics(h, r) for h, r in zip(hyps, refs)]

        def value(idx: Sequence[int]) -> float:
            totals = [tuple(sum(stats[i][order][k] for i in idx) for k in range(3)) for order in range(6)]
            return _f_score(totals, 2.0)  # type: ignore[arg-type]

    else:
        scores = [rouge_l_chars(h, r) for h, r in zip(hyps, refs)]

        def value(idx: Sequence[int]) -> float:
            return statistics.fmean(scores[i] for i in idx)

    rng = random.Random(seed)
    values = sorted(value(rng.choices(range(n), k=n)) for _ in range(resamples))
    alpha = (1 - confidence) / 2
    return Interval(value(range(n)), _percentile(values, alpha), _percentile(values, 1 - alpha), confidence, resamples)


def score_arm(
    hyps: Sequence[str], refs: Sequence[str], *, resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> dict[str, Any]:
    """One arm's scores on one split: overlap with intervals, diversity and length.

    Returns ``n``, ``corpus_chrf`` and ``rouge_l`` (as :class:`Interval` dicts,
    from :func:`bootstrap_interval`), ``distinct_1`` and ``distinct_2``
    (:func:`distinct_n` over all answers: does the arm say different things
    for different images?), ``repetition`` (mean :func:`repetition_rate`:
    does an answer repeat itself?) and ``length`` (mean characters).

    >>> s = score_arm(["住手！", "住手！"], ["住手！", "你好"], resamples=10)
    >>> s["n"], s["distinct_1"], s["corpus_chrf"]["estimate"] > 0
    (2, 0.5, True)
    """
    kw = {"resamples": resamples, "confidence": confidence, "seed": seed}
    return {
        "n": len(hyps),
        "corpus_chrf": bootstrap_interval(hyps, refs, "corpus_chrf", **kw).to_dict(),
        "rouge_l": bootstrap_interval(hyps, refs, "rouge_l", **kw).to_dict(),
        "distinct_1": distinct_n(hyps, 1),
        "distinct_2": distinct_n(hyps, 2),
        "repetition": statistics.fmean(repetition_rate(h) for h in hyps),
        "length": statistics.fmean(len(_chars(h)) for h in hyps),
    }


def _arm_rows(arms: Mapping[str, Mapping[str, Any]]) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    first = next(iter(arms.values()))
    pct = round(100 * first["corpus_chrf"]["confidence"])
    headers = (
        "arm",
        "n",
        f"chrF (corpus) [{pct}% CI]",
        f"ROUGE-L [{pct}% CI]",
        "distinct-1",
        "distinct-2",
        "repetition",
        "length",
    )
    rows = [
        (
            name,
            str(a["n"]),
            Interval(**a["corpus_chrf"]).format(1),
            Interval(**a["rouge_l"]).format(3),
            f"{a['distinct_1']:.3f}",
            f"{a['distinct_2']:.3f}",
            f"{a['repetition']:.3f}",
            f"{a['length']:.1f}",
        )
        for name, a in arms.items()
    ]
    return headers, rows


def arms_table(arms: Mapping[str, Mapping[str, Any]], caption: str = "") -> Table:
    """The arms of :func:`score_arm` as one :class:`helpers.env.Table`, a row per arm.

    >>> t = arms_table({"base": score_arm(["哈哈"], ["住手"], resamples=5)})
    >>> t.headers[2], t.rows[0][2]
    ('chrF (corpus) [95% CI]', '0.0 [0.0, 0.0]')
    """
    if not arms:
        raise BookError("arms_table got no arms; score each arm with score_arm first.")
    headers, rows = _arm_rows(arms)
    return Table(headers, rows, caption)


def arms_markdown(arms: Mapping[str, Mapping[str, Any]]) -> str:
    """The same table as :func:`arms_table`, in Markdown (for ``comparison.md``).

    >>> print(arms_markdown({"base": score_arm(["哈哈"], ["住手"], resamples=5)}).splitlines()[2])
    | base | 1 | 0.0 [0.0, 0.0] | 0.000 [0.000, 0.000] | 0.500 | 1.000 | 0.000 | 2.0 |
    """
    if not arms:
        raise BookError("arms_markdown got no arms; score each arm with score_arm first.")
    headers, rows = _arm_rows(arms)
    lines = ["| " + " | ".join(headers) + " |", "|---|" + "---:|" * (len(headers) - 1)]
    lines += ["| " + " | ".join(_cell(c) if i == 0 else c for i, c in enumerate(row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"
