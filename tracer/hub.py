"""Offline resolution of Hugging Face names against the local Hugging Face cache (never the network).

1. Cache root: `HF_HUB_CACHE` (or its older name `HUGGINGFACE_HUB_CACHE`), else `HF_HOME/hub`, else
   `XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub` (huggingface_hub's order).
2. Names: a repository `org/name`, optionally with a subfolder and a revision (`org/name/sub/dir@rev`), or an
   `hf://org/name/path/to/file?revision=rev` URI (circuit-tracer's release configs); short names of circuit-tracer's
   releases (`gemma`, `llama`, `qwen3-4b`, ...) map to their repositories.
3. Snapshot: `models--org--name/refs/<rev>` holds the commit whose files live in `snapshots/<commit>/`; a commit
   hash names its snapshot directly; with no refs file, a single snapshot is used.
4. Missing: one line naming the repository (and file), the folder it would be in, and the command that downloads
   it on a machine with network. Nothing here downloads.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import NamedTuple
from urllib.parse import parse_qs, urlparse

from tracer.errors import ModelLoadError, TranscoderLoadError

# circuit-tracer's short names (its README and loaders) -> candidate repositories, first found in the cache wins
TRANSCODER_SHORT_NAMES: dict[str, tuple[str, ...]] = {
    "gemma": ("mwhanna/gemma-scope-transcoders", "mntss/gemma-scope-transcoders"),
    "llama": ("mntss/transcoder-Llama-3.2-1B",),
    "gemma-clt-426k": ("mntss/clt-gemma-2-2b-426k",),
    "gemma-clt-2.5m": ("mntss/clt-gemma-2-2b-2.5M",),
    "llama-clt": ("mntss/clt-llama-3.2-1b-524k",),
    "qwen3-0.6b": ("mwhanna/qwen3-0.6b-transcoders-lowl0",),
    "qwen3-1.7b": ("mwhanna/qwen3-1.7b-transcoders-lowl0",),
    "qwen3-4b": ("mwhanna/qwen3-4b-transcoders",),
    "qwen3-8b": ("mwhanna/qwen3-8b-transcoders",),
    "qwen3-14b": ("mwhanna/qwen3-14b-transcoders-lowl0",),
}
_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(/[^@]*)?(@[\w./-]+)?$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


class NotInCacheError(ModelLoadError, TranscoderLoadError):
    """A named repository or file is not in the local Hugging Face cache (a model or a transcoder error)."""


class HfRef(NamedTuple):
    repo_id: str  # org/name
    path: str  # file or subfolder inside the repository ('' = its root)
    revision: str  # branch, tag or commit ('main' by default)

    @classmethod
    def parse(cls, ref: str) -> HfRef:
        """`hf://org/name/path?revision=r` or `org/name[/sub][@rev]`."""
        if ref.startswith("hf://"):
            u = urlparse(ref)
            repo, _, path = u.path.lstrip("/").partition("/")
            rev = parse_qs(u.query).get("revision", ["main"])[0] or "main"
            return cls(f"{u.netloc}/{repo}", path, rev)
        name, _, rev = ref.partition("@")
        org, repo, *rest = name.split("/")
        return cls(f"{org}/{repo}", "/".join(rest), rev or "main")

    def __str__(self) -> str:
        return "/".join(p for p in (self.repo_id, self.path) if p) + (
            f"@{self.revision}" if self.revision != "main" else "")  # fmt: skip


def looks_like_repo(name: str) -> bool:
    """True for `org/name`-style strings (and hf:// URIs) that are not existing local paths."""
    return name.startswith("hf://") or (bool(_REPO.match(name)) and not Path(name).exists())


def cache_root() -> Path:
    """huggingface_hub's cache folder (empty variables count as unset)."""
    env = os.environ.get
    if hub := env("HF_HUB_CACHE") or env("HUGGINGFACE_HUB_CACHE"):  # the second: its older name
        return Path(hub).expanduser()
    home = env("HF_HOME") or Path(env("XDG_CACHE_HOME") or "~/.cache") / "huggingface"
    return Path(home).expanduser() / "hub"


def _download_hint(ref: HfRef) -> str:
    rev = f" --revision {ref.revision}" if ref.revision != "main" else ""
    file = f" {ref.path}" if ref.path and "." in Path(ref.path).name else ""
    return f"`huggingface-cli download {ref.repo_id}{file}{rev}` (with HF_HUB_CACHE={cache_root()})"


def snapshot_dir(ref: HfRef) -> Path:
    """The snapshot folder of ref's repository and revision in the local cache (models, then datasets)."""
    folder = "--".join(["models", *ref.repo_id.split("/")])
    repo = cache_root() / folder
    if not repo.is_dir():
        raise NotInCacheError(f"{ref.repo_id} is not in the local Hugging Face cache ({repo} does not exist); "
                              f"download it where there is network: {_download_hint(ref)}")  # fmt: skip
    refs = repo / "refs" / ref.revision
    snaps = repo / "snapshots"
    if refs.is_file():
        commit = refs.read_text().strip()
    elif _COMMIT.match(ref.revision):
        commit = ref.revision
    else:
        found = sorted(p.name for p in snaps.iterdir()) if snaps.is_dir() else []
        if len(found) != 1 or ref.revision != "main":
            raise NotInCacheError(f"revision {ref.revision!r} of {ref.repo_id} is not in the local Hugging Face cache "
                                  f"({repo}); download it: {_download_hint(ref)}")  # fmt: skip
        commit = found[0]
    snap = snaps / commit
    if not snap.is_dir():
        raise NotInCacheError(f"{ref.repo_id}@{ref.revision} points to snapshot {commit[:12]}, missing from {snaps}; "
                              f"download it: {_download_hint(ref)}")  # fmt: skip
    return snap


def cached_path(ref: HfRef | str) -> Path:
    """The local file or folder `ref` names (its path inside the snapshot), or a one-line NotInCacheError."""
    ref = HfRef.parse(ref) if isinstance(ref, str) else ref
    p = snapshot_dir(ref) / ref.path
    if not p.exists():  # a broken symlink (blob not downloaded) also lands here
        raise NotInCacheError(f"{ref.path} of {ref.repo_id} is not in the local Hugging Face cache (expected "
                              f"{p}); download it: {_download_hint(ref)}")  # fmt: skip
    return p


def resolve_model(name: str | Path | None) -> Path | None:
    """An existing local path as is; else `org/name[@rev]` -> its snapshot folder in the cache."""
    if name is None or Path(name).exists() or not looks_like_repo(str(name)):
        return Path(name) if name is not None else None
    return cached_path(str(name))


def resolve_transcoders(name: str | Path | None) -> Path | None:
    """An existing local folder as is; else a circuit-tracer short name or `org/name[/subfolder][@rev]` -> its
    cached folder."""
    if name is None or Path(name).exists():
        return Path(name) if name is not None else None
    key = str(name)
    if key in TRANSCODER_SHORT_NAMES:
        repos = TRANSCODER_SHORT_NAMES[key]
        for repo in repos:
            try:
                return cached_path(repo)
            except NotInCacheError:
                continue
        return cached_path(repos[0])  # the error names the first candidate
    return cached_path(key) if looks_like_repo(key) else Path(name)
