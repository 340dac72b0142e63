"""Default logit targets (README "What a trace gives you"): the top tokens until their probability covers
`desired_logit_prob`, at most `max_n_logits`; and `tracer trace --desired-logit-prob / --max-n-logits` reach that rule.

The rule is checked on hand-built probabilities (boundaries included) and, through the CLI, against the tiny subject
model's own fp64 softmax with the rule written out independently here."""

from __future__ import annotations

import math

import pytest
import torch

from tests.tracer.test_trace_cli import subject, trace  # noqa: F401  (module fixture: tiny model, tokenizer, CLT)
from tracer.graphfile import load_attribution, load_graph
from tracer.layout import NodeKind
from tracer.models import load_model
from tracer.targets import select_targets

UNEMBED = torch.randn(6, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
NEG = -math.inf


def _ids(logits, max_n=10, desired=0.95) -> list[int]:
    return select_targets(torch.tensor(logits, dtype=torch.float64), UNEMBED, None, max_n, desired).token_ids.tolist()


def test_equal_probabilities_exactly_at_threshold():
    """Four tokens at p = 1/4 exactly (softmax of equal logits): mass 0.5 is reached by two tokens, not three."""
    logits = [0.0, 0.0, NEG, 0.0, 0.0, NEG]
    assert len(_ids(logits, desired=0.5)) == 2
    assert len(_ids(logits, desired=0.75)) == 3
    assert len(_ids(logits, desired=math.nextafter(0.5, 1.0))) == 3  # just above: one more token
    assert len(_ids(logits, desired=math.nextafter(0.5, 0.0))) == 2  # just below: still two
    assert sorted(_ids(logits, desired=1.0)) == [0, 1, 3, 4]  # mass 1 exactly: the four, never the p = 0 tokens


def test_distinct_probabilities_boundaries_weights_and_directions():
    """p ~ (1/2, 1/4, 1/8, 1/16, 1/32, 1/32), shuffled: targets in probability order; the threshold exactly at the
    first two's mass stops there; weights are the probabilities; directions the demeaned unembedding rows."""
    p = [1 / 8, 1 / 2, 1 / 32, 1 / 4, 1 / 32, 1 / 16]
    logits = [math.log(x) for x in p]
    probs = torch.tensor(logits, dtype=torch.float64).softmax(-1)
    torch.testing.assert_close(probs, torch.tensor(p, dtype=torch.float64), atol=1e-15, rtol=0)
    at_two = float(probs[[1, 3]].cumsum(0)[-1])  # the mass of the top two as the rule accumulates it
    assert _ids(logits, desired=at_two) == [1, 3]
    assert _ids(logits, desired=math.nextafter(at_two, 1.0)) == [1, 3, 0]
    assert _ids(logits, desired=0.7) == [1, 3]  # 0.5 < 0.7 <= 0.75
    assert _ids(logits, desired=0.8) == [1, 3, 0]  # 0.75 < 0.8 <= 0.875
    t = select_targets(torch.tensor(logits, dtype=torch.float64), UNEMBED, None, 10, 0.9)
    assert t.token_ids.tolist() == [1, 3, 0, 5] and t.labels == ["#1", "#3", "#0", "#5"]
    torch.testing.assert_close(t.weights, torch.tensor([0.5, 0.25, 0.125, 0.0625], dtype=torch.float64))
    mean = UNEMBED.sum(0) / 6
    torch.testing.assert_close(t.directions, UNEMBED[[1, 3, 0, 5]] - mean)


def test_cap_binds_and_mass_never_reached():
    p = [1 / 8, 1 / 2, 1 / 32, 1 / 4, 1 / 32, 1 / 16]
    logits = [math.log(x) for x in p]
    assert _ids(logits, max_n=2, desired=0.95) == [1, 3]  # 0.95 needs five tokens; the cap stops at two
    assert _ids(logits, max_n=1, desired=0.01) == [1]  # the first token alone already covers the mass
    every = _ids(logits, max_n=10, desired=1.0)  # mass 1 needs every token: the whole vocabulary, no more
    assert every[:4] == [1, 3, 0, 5] and sorted(every[4:]) == [2, 4]
    assert len(_ids(logits, max_n=4, desired=1.0)) == 4


def _expected_top(subject_dir, desired: float, max_n: int) -> list[int]:  # noqa: F811
    """The rule, written out on the subject model's fp64 last-position probabilities."""
    lm = load_model(subject_dir / "model", dtype=torch.float64)
    assert lm.tokenizer is not None
    ids = lm.tokenizer.encode_prompt("the cat sat on", lm.cfg.n_ctx, lm.cfg.bos_token_id)
    with torch.no_grad():
        probs = lm.model(torch.tensor(ids)[None])[0, -1].softmax(-1)
    order = sorted(range(len(probs)), key=lambda i: -float(probs[i]))
    out, mass = [], 0.0
    for i in order[:max_n]:
        out.append(i)
        mass += float(probs[i])
        if mass >= desired:
            break
    return out


@pytest.mark.parametrize(("flags", "desired", "max_n", "n"), [
    ([], 0.95, 10, 10),  # defaults: the subject's top ten cover ~0.77 < 0.95, so the cap of ten binds
    (["--desired-logit-prob", "0.4"], 0.4, 10, 3),  # 0.27, 0.37 < 0.4 <= 0.46: three tokens
    (["--max-n-logits", "4"], 0.95, 4, 4),
    (["--max-n-logits", "2", "--desired-logit-prob", "0.3"], 0.3, 2, 2),
    (["--max-n-logits", "5", "--desired-logit-prob", "0.2"], 0.2, 5, 1),
])  # fmt: skip
def test_cli_flags_choose_the_logit_nodes(subject, tmp_path, capsys, flags, desired, max_n, n):  # noqa: F811
    want = _expected_top(subject, desired, max_n)
    assert len(want) == n
    out = tmp_path / "g.json"
    assert trace(subject, "the cat sat on", "-o", str(out), "--json", *flags) == 0
    capsys.readouterr()
    graph = load_graph(out)
    logits = [x for x in graph.nodes if x.kind is NodeKind.LOGIT]
    assert [x.token_id for x in logits] == want
    assert graph.metadata.settings["max_n_logits"] == max_n
    assert graph.metadata.settings["desired_logit_prob"] == desired
    attr = load_attribution(out)  # the unpruned graph has exactly these logit rows too
    assert attr.layout.count(NodeKind.LOGIT) == n
    assert [attr.layout.node(int(r)).index for r in attr.layout.logit_rows()] == want
