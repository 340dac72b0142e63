"""The local Hugging Face cache: which folder is the cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
`~/.cache/huggingface/hub`), and circuit-tracer's short transcoder names (each documented one resolves to its
repository; an unknown one is one line). Fake caches in tmp_path only: nothing is downloaded."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from tests.conftest import hf_snapshot
from tests.transcoders.conftest import random_transcoder
from tracer.cli import main
from tracer.errors import TranscoderLoadError
from tracer.hub import TRANSCODER_SHORT_NAMES, NotInCacheError, cache_root, resolve_model, resolve_transcoders
from transcoders import TranscoderFormat, TranscoderKind, load_transcoders, save_transcoders

README = Path(__file__).resolve().parents[2] / "README.md"
REPO = "org/tiny"

# circuit-tracer's short names and the repositories they load (its README and loaders); `gemma` also accepts the
# mntss mirror when mwhanna's is not cached
DOCUMENTED = {
    "gemma": "mwhanna/gemma-scope-transcoders", "llama": "mntss/transcoder-Llama-3.2-1B",
    "gemma-clt-426k": "mntss/clt-gemma-2-2b-426k", "gemma-clt-2.5m": "mntss/clt-gemma-2-2b-2.5M",
    "llama-clt": "mntss/clt-llama-3.2-1b-524k", "qwen3-0.6b": "mwhanna/qwen3-0.6b-transcoders-lowl0",
    "qwen3-1.7b": "mwhanna/qwen3-1.7b-transcoders-lowl0", "qwen3-4b": "mwhanna/qwen3-4b-transcoders",
    "qwen3-8b": "mwhanna/qwen3-8b-transcoders", "qwen3-14b": "mwhanna/qwen3-14b-transcoders-lowl0",
}  # fmt: skip




# ---- which folder is the cache -------------------------------------------------------------------------------


@pytest.fixture
def caches(tmp_path, monkeypatch):
    """Three caches holding org/tiny at different commits: $HF_HUB_CACHE (1...), $HF_HOME/hub (2...) and
    $HOME/.cache/huggingface/hub (3...); every variable set."""
    home = tmp_path / "home"
    roots = {"hub_cache": tmp_path / "hub_cache", "hf_home": tmp_path / "hf_home" / "hub",
             "home": home / ".cache" / "huggingface" / "hub"}  # fmt: skip
    for i, root in enumerate(roots.values(), 1):
        hf_snapshot(root, REPO, str(i) * 40)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(roots["hub_cache"]))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    for name in ("HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME"):  # the machine's own must not leak in
        monkeypatch.delenv(name, raising=False)
    return roots


def test_older_name_and_xdg_follow_huggingface_hubs_order(caches, monkeypatch, tmp_path):
    """HF_HUB_CACHE > HUGGINGFACE_HUB_CACHE > HF_HOME/hub > XDG_CACHE_HOME/huggingface/hub > ~/.cache/..."""
    monkeypatch.setenv("HUGGINGFACE_HUB_CACHE", str(tmp_path / "old_name"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == caches["hub_cache"]
    monkeypatch.delenv("HF_HUB_CACHE")
    assert cache_root() == tmp_path / "old_name"
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE")
    assert cache_root() == caches["hf_home"]
    monkeypatch.delenv("HF_HOME")
    assert cache_root() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("XDG_CACHE_HOME", "~/xdg")
    assert cache_root() == tmp_path / "home" / "xdg" / "huggingface" / "hub"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root() == caches["home"]


def test_hf_hub_cache_then_hf_home_then_home(caches, monkeypatch):
    for dropped, root, commit in [(None, "hub_cache", "1"), ("HF_HUB_CACHE", "hf_home", "2"), ("HF_HOME", "home", "3")]:
        if dropped:
            monkeypatch.delenv(dropped)
        assert cache_root() == caches[root]
        assert resolve_model(REPO) == caches[root] / f"models--org--tiny/snapshots/{commit * 40}"


def test_empty_variables_count_as_unset(caches, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", "")
    assert resolve_model(REPO) == caches["hf_home"] / "models--org--tiny/snapshots" / ("2" * 40)
    monkeypatch.setenv("HF_HOME", "")
    assert resolve_model(REPO) == caches["home"] / "models--org--tiny/snapshots" / ("3" * 40)


def test_hf_home_with_tilde_is_under_home(caches, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", "~/elsewhere")
    assert cache_root() == tmp_path / "home" / "elsewhere" / "hub"


@pytest.mark.parametrize("drop,where", [((), "hub_cache"), (("HF_HUB_CACHE",), "hf_home"),
                                        (("HF_HUB_CACHE", "HF_HOME"), "home")])  # fmt: skip
def test_the_chosen_cache_is_the_only_one_searched(caches, monkeypatch, capsys, tmp_path, drop, where):
    """A repository missing from the chosen cache is not looked for in the next one; the one-line error names the
    folder it would be in, there."""
    for name in drop:
        monkeypatch.delenv(name)
    other = "hf_home" if where != "hf_home" else "home"
    hf_snapshot(caches[other], "org/only-elsewhere", "4" * 40)
    with pytest.raises(NotInCacheError, match=re.escape(str(caches[where] / "models--org--only-elsewhere"))):
        resolve_model("org/only-elsewhere")
    assert main(["trace", "the cat", "--model", "org/only-elsewhere", "-o", str(tmp_path / "g.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "org/only-elsewhere" in err and f"HF_HUB_CACHE={caches[where]}" in err
    assert str(caches[other]) not in err


# ---- short transcoder names ----------------------------------------------------------------------------------


def test_readme_short_names_are_the_known_ones():
    text = README.read_text()
    m = re.search(r"Short names, as in circuit-tracer:(.*?)or any", text, re.S)
    assert m is not None
    assert re.findall(r"`([^`]+)`", m.group(1)) == list(DOCUMENTED)
    assert set(TRANSCODER_SHORT_NAMES) == set(DOCUMENTED)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


@pytest.mark.parametrize("name", list(DOCUMENTED))
def test_short_name_loads_its_repository(hub, name):
    """Every documented repository is cached with a different tiny set: the short name loads its own."""
    sets = {}
    for seed, (short, repo) in enumerate(DOCUMENTED.items()):
        kind = TranscoderKind.CLT if "clt" in short else TranscoderKind.PLT
        sets[short] = random_transcoder(kind, n_features=4 + seed, seed=seed)
        save_transcoders(sets[short], hf_snapshot(hub, repo, f"{seed:040d}"), TranscoderFormat.CIRCUIT_TRACER)
    snap = hub / ("models--" + DOCUMENTED[name].replace("/", "--")) / "snapshots"
    assert resolve_transcoders(name) == next(snap.iterdir())
    tc, want = load_transcoders(name), sets[name]
    assert tc.cfg.kind == want.cfg.kind and tc.cfg.n_features == want.cfg.n_features
    assert torch.equal(tc.W_enc, want.W_enc) and torch.equal(tc.decoder(0), want.decoder(0))


def test_gemma_falls_back_to_the_mntss_mirror(hub):
    mirror = hf_snapshot(hub, "mntss/gemma-scope-transcoders", "b" * 40)
    assert resolve_transcoders("gemma") == mirror
    first = hf_snapshot(hub, "mwhanna/gemma-scope-transcoders", "a" * 40)
    assert resolve_transcoders("gemma") == first  # the first candidate wins when both are cached


@pytest.mark.parametrize("name", ["qwen3-32b", "gemma-clt", "Llama"])
def test_unknown_short_name_is_one_line(hub, name, capsys, tmp_path):
    for repo in DOCUMENTED.values():  # every known release cached: the unknown name must still not match one
        save_transcoders(random_transcoder(), hf_snapshot(hub, repo, "c" * 40), TranscoderFormat.CIRCUIT_TRACER)
    with pytest.raises(TranscoderLoadError) as e:
        load_transcoders(name)
    assert str(e.value).startswith(f"transcoder directory {name} does not exist")
    out = tmp_path / "g.json"
    assert main(["trace", "the cat", "--transcoders", name, "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and name in err and not out.exists()
    assert "short name" in err and all(known in err for known in DOCUMENTED)
