"""The ground-truth benchmark's pieces: key positions from a prompt's construction, the criterion and its control,
and the rank correlation (against hand-worked values)."""

from __future__ import annotations

import random

import pytest
import torch

from benchmarks.ground_truth import Key, control, criterion, key_positions, spearman
from tracer.bundle.planted import Task
from tracer.models import DEFAULT_MODEL
from tracer.models.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def tok():
    t = load_tokenizer(DEFAULT_MODEL, 0)  # the bundled model's tokenizer
    assert t is not None
    return t


def positions(tok, prompt: str) -> tuple[list[int], list[tuple[int, int]]]:
    enc = tok.inner.encode(prompt, add_special_tokens=False)
    return [0, *enc.ids], list(enc.offsets)


@pytest.mark.parametrize(
    ("task", "prompt", "answer", "words"),
    [
        (Task.FACTS, "In fact, the capital of France is", " Paris", [" France"]),
        (Task.OPPOSITES, "The opposite of the word small is", " large", [" small"]),
        (Task.TWO_HOP, "The Eiffel Tower is in the country whose capital is", " Paris", [" Eiffel", " Tower"]),
        (Task.TWO_HOP, "Iguazu Falls sits in the country whose capital is", " Buenos", ["I", "guazu", " Falls"]),
    ],
)
def test_key_is_the_subject_span(tok, task, prompt, answer, words):
    ids, offsets = positions(tok, prompt)
    k = key_positions(task, prompt, answer, ids, offsets)
    assert [tok.token_str(ids[p]) for p in k.span] == words and not k.others and k.minus is None


def test_ioi_key_is_the_indirect_object_and_subject_mentions(tok):
    prompt = "When Mary and John went to the store, John gave a drink to"
    ids, offsets = positions(tok, prompt)
    k = key_positions(Task.IOI, prompt, " Mary", ids, offsets)
    assert [tok.token_str(ids[p]) for p in k.span] == [" Mary"] and k.minus == " John"
    assert [tok.token_str(ids[p]) for p in k.others] == [" John", " John"]


def test_induction_key_follows_the_earlier_occurrence():
    ids = [0, 11, 12, 13, 14, 99, 11, 12]  # ... 11 12 13 ... 11 12 -> 13
    assert key_positions(Task.INDUCTION_RANDOM, "", "", ids, []).span == (3,)
    # the last token (12, a common sub-word) also follows 50 later on: the longer match 11 12 still decides
    ids = [0, 11, 12, 13, 14, 50, 12, 15, 99, 11, 12]
    assert key_positions(Task.INDUCTION, "", "", ids, []).span == (3,)
    ids = [0, 11, 12, 13, 50, 11, 12, 16, 99, 11, 12]  # two equal matches: the latest
    assert key_positions(Task.INDUCTION, "", "", ids, []).span == (7,)


def test_criterion_and_controls():
    infl = torch.tensor([9.0, 0.1, 0.7, 0.2, 5.0])  # BOS and the last position are never candidates
    assert criterion(infl, (2,), ()) and not criterion(infl, (1,), ())
    assert control(infl, Key((2,)), random.Random(0)) is False  # any other middle position loses to the key
    assert criterion(infl, (2,), (1, 3)) and control(infl, Key((2,), (1, 3)), random.Random(0)) is False
    assert control(infl, Key((1,), (2,)), random.Random(0)) is True  # labels swapped wins when the key loses


def test_span_criterion_and_its_control():
    infl = torch.tensor([9.0, 0.1, 0.2, 0.7, 0.3, 0.1, 0.2, 5.0])
    assert criterion(infl, (2, 3), ()) and not criterion(infl, (4, 5), ())
    # the control's span has the key's length, lies among the middle positions and misses the key span
    assert all(control(infl, Key((2, 3)), random.Random(s)) is False for s in range(20))
    assert all(control(infl, Key((4, 5)), random.Random(s)) is not None for s in range(20))
    assert control(torch.ones(5), Key((1, 2, 3)), random.Random(0)) is None  # no room for another span
    # a wrong key span passes its control whenever the control's span lands on the real maximum
    assert any(control(infl, Key((5, 6)), random.Random(s)) for s in range(20))


def test_spearman_against_hand_ranks():
    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert spearman(a, a * 10) == pytest.approx(1.0) and spearman(a, -a) == pytest.approx(-1.0)
    # ranks (0, 1, 2, 3) vs (1, 0, 3, 2): 1 - 6 * 4 / (4 * 15) = 0.6
    assert spearman(a, torch.tensor([2.0, 1.0, 4.0, 3.0])) == pytest.approx(0.6)
