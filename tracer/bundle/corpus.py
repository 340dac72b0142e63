"""Natural-text corpus from Debian packages (offline apart from the package registry).

Algorithm:
1. Fetch: `apt-get download` each package of `PACKAGES` into `<cache>/debs/`, `dpkg-deb -x` into `<cache>/root/`
   (skipped when already unpacked).
2. Extract clean text per source:
   - Bible (sword-text-web, SWORD zText): `.bzs` = 12-byte little-endian (offset, size, usize) block records,
     `.bzz` = zlib blocks; drop `<note>` footnotes, turn paragraph/chapter markers into newlines, strip the
     remaining OSIS tags; one document per paragraph group.
   - WordNet (wordnet-base `data.*`): "lemma: gloss" per synset, gloss after " | ".
   - Fortunes (fortunes, fortunes-min): `%`-separated quotes, ascii-art files skipped.
3. Split: documents are shuffled with a fixed seed; every `heldout_every`-th document goes to the held-out
   shard (validation + `corpus_sample.txt.gz`), the rest to training; both are text files whose documents
   are separated by `DOC_SEP` (a form-feed line), so documents stay whole.
"""

from __future__ import annotations

import html
import random
import re
import struct
import subprocess
import zlib
from pathlib import Path
from typing import NamedTuple

from tracer.errors import ConfigError
from tracer.io import atomic_write_text

PACKAGES = ("sword-text-web", "wordnet-base", "fortunes", "fortunes-min")
DOC_SEP = "\n\f\n"
DEFAULT_CACHE = Path(".cache/corpus")


class CorpusFiles(NamedTuple):
    train: Path
    heldout: Path
    n_train_chars: int
    n_heldout_chars: int


# ---- 1. fetch ---------------------------------------------------------------------------------------------
def fetch(cache: Path) -> Path:
    """Download and unpack the packages; returns the unpacked root."""
    debs, root = cache / "debs", cache / "root"
    done = root / ".unpacked"
    if done.exists():
        return root
    debs.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(["apt-get", "download", *PACKAGES], cwd=debs, check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as e:
        raise ConfigError(f"apt-get download of {' '.join(PACKAGES)} failed: {e}") from e
    for deb in sorted(debs.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    done.write_text("ok\n")
    return root


# ---- 2. extract -------------------------------------------------------------------------------------------
_NOTE = re.compile(r"<note\b.*?</note>", re.S)
_BREAK = re.compile(r'<(?:div[^>]*type="(?:x-p|book)"|chapter|lg|l\b)[^>]*>')
_TAG = re.compile(r"<[^>]+>")
_TITLE = re.compile(r"<title\b.*?</title>", re.S)


def osis_to_text(osis: str) -> str:
    """Plain text of an OSIS fragment: footnotes and titles dropped, paragraph markers -> newlines."""
    s = _TITLE.sub("\n", _NOTE.sub("", osis))
    s = _TAG.sub("", _BREAK.sub("\n", s))
    s = html.unescape(s)
    lines = (re.sub(r"[ \t]+", " ", ln).strip() for ln in s.split("\n"))
    return "\n".join(ln for ln in lines if ln)


def read_ztext(module_dir: Path) -> list[str]:
    """Decompressed OSIS blocks (one per book, roughly) of a SWORD zText module, OT then NT."""
    blocks = []
    for testament in ("ot", "nt"):
        bzs, bzz = module_dir / f"{testament}.bzs", module_dir / f"{testament}.bzz"
        if not bzs.exists():
            continue
        index, data = bzs.read_bytes(), bzz.read_bytes()
        for i in range(0, len(index) - 11, 12):
            off, size, _usize = struct.unpack("<III", index[i : i + 12])
            if size:
                blocks.append(zlib.decompress(data[off : off + size]).decode("utf-8", "replace"))
    return blocks


def bible_documents(root: Path) -> list[str]:
    mods = sorted((root / "usr/share/sword/modules/texts/ztext").glob("*"))
    docs = []
    for block in (b for m in mods for b in read_ztext(m)):
        paras = osis_to_text(block).split("\n")
        docs += ["\n".join(paras[i : i + 8]) for i in range(0, len(paras), 8)]  # ~8 paragraphs per document
    return [d for d in docs if len(d) > 40]


def wordnet_documents(root: Path) -> list[str]:
    lines = []
    for pos in ("noun", "verb", "adj", "adv"):
        for ln in (root / f"usr/share/wordnet/data.{pos}").read_text("latin-1").splitlines():
            if ln.startswith("  ") or " | " not in ln:
                continue  # licence header
            head, gloss = ln.split(" | ", 1)
            lemma = head.split()[4].replace("_", " ")
            lines.append(f"{re.sub(r'[(].*[)]$', '', lemma)}: {gloss.strip()}")
    return ["\n".join(lines[i : i + 20]) for i in range(0, len(lines), 20)]


def fortune_documents(root: Path) -> list[str]:
    docs = []
    for f in sorted((root / "usr/share/games/fortunes").iterdir()):
        if f.suffix in (".dat", ".u8") or f.is_dir() or f.name in ("ascii-art", "art"):
            continue
        for q in f.read_text("utf-8", "replace").split("\n%\n"):
            q = q.strip().replace("\t", " ")
            if len(q) > 20:
                docs.append(q)
    return docs


# ---- 3. split ---------------------------------------------------------------------------------------------
def build_corpus(cache: Path = DEFAULT_CACHE, seed: int = 0, heldout_every: int = 20) -> CorpusFiles:
    """Fetch, extract and split; writes `<cache>/train.txt` and `<cache>/heldout.txt`."""
    root = fetch(cache)
    docs = bible_documents(root) + wordnet_documents(root) + fortune_documents(root)
    random.Random(seed).shuffle(docs)
    held = docs[::heldout_every]
    train = [d for i, d in enumerate(docs) if i % heldout_every]
    t, h = DOC_SEP.join(train), DOC_SEP.join(held)
    atomic_write_text(cache / "train.txt", t)
    atomic_write_text(cache / "heldout.txt", h)
    return CorpusFiles(cache / "train.txt", cache / "heldout.txt", len(t), len(h))


def read_documents(path: Path) -> list[str]:
    return path.read_text("utf-8").split(DOC_SEP)
