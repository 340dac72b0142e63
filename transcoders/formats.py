"""Transcoder files: our format and circuit-tracer's, both read and written exactly.

Ours (a directory): `config.json` (TranscoderConfig) + `encoder.safetensors` (W_enc [L,F,D], b_enc [L,F],
threshold [L,F] for JumpReLU, b_dec [L,D], W_skip [L,D,D] if skip) + `decoder.safetensors` (W_dec_{l} [F,n_out,D]).
circuit-tracer's: `config.yaml` (model_kind, feature_input_hook, feature_output_hook) and
  PLT (`transcoder_set`): layer_{i}.safetensors with W_enc [F,D], W_dec [F,D], b_enc [F], b_dec [D],
      optional activation_function.threshold [F] (absent: ReLU), optional W_skip [D,D]; or a release config whose
      `transcoders:` list names one file per layer by hf:// URI (local Hugging Face cache, tracer.hub) or relative
      path: Gemma Scope params.npz, Gemma Scope 2 or circuit-tracer safetensors (transcoders.formats_release);
  CLT (`cross_layer_transcoder`): W_enc_{i}.safetensors with W_enc_{i}, b_enc_{i}, threshold_{i}, b_dec_{i}
      (bias of target layer i), optional W_skip_{i}; W_dec_{i}.safetensors with W_dec_{i} [F, L-i, D].
1. Detect: config.json -> ours, config.yaml -> circuit-tracer's; else an error.
2. Read the config, then the encoder tensors; decoders eagerly or as LazyRows (memory-mapped row reads).
3. Check shapes against the config and the config against the model; every failure is one TranscoderLoadError line.
4. Save: weights first, the config last, every file atomically (a partial directory has no config).
"""

from __future__ import annotations

import logging
import re
from enum import StrEnum
from pathlib import Path

import torch
import yaml
from pydantic import ValidationError
from torch import nn

from tracer.errors import TranscoderLoadError
from tracer.finite import check_finite
from tracer.hub import TRANSCODER_SHORT_NAMES, cached_path, resolve_transcoders
from tracer.io import atomic_save_safetensors, atomic_write_text
from tracer.models import HookPoint, ModelConfig
from transcoders.clt import Transcoder
from transcoders.config import ActivationKind, DType, TranscoderConfig, TranscoderKind
from transcoders.formats_release import first_line, lazy_rows, read_layer_file, read_safetensors

log = logging.getLogger(__name__)
DEFAULT_TRANSCODERS = Path(__file__).resolve().parent.parent / "tracer" / "assets" / "default_clt"


class TranscoderFormat(StrEnum):
    OURS = "ours"
    CIRCUIT_TRACER = "circuit-tracer"


class CtModelKind(StrEnum):
    PLT = "transcoder_set"
    CLT = "cross_layer_transcoder"


# TransformerLens names: `ln2.hook_normalized` is x / rms(x) (LayerNorm: (x - mean) / std) BEFORE ln2's weight and
# bias (Gemma Scope's input hook); `mlp.hook_in` is after them.
CT_HOOKS = {"hook_resid_mid": HookPoint.RESID_MID, "mlp.hook_in": HookPoint.MLP_IN,
            "ln2.hook_normalized": HookPoint.LN2_NORMALIZED, "hook_mlp_out": HookPoint.MLP_OUT,
            "mlp.hook_out": HookPoint.MLP_OUT}  # fmt: skip
CT_HOOK_NAMES = {HookPoint.RESID_MID: "hook_resid_mid", HookPoint.MLP_IN: "mlp.hook_in",
                 HookPoint.LN2_NORMALIZED: "ln2.hook_normalized", HookPoint.MLP_OUT: "hook_mlp_out"}  # fmt: skip


def _get(tensors: dict[str, torch.Tensor], name: str, shape: tuple[int, ...], where: Path) -> torch.Tensor:
    if name not in tensors:
        raise TranscoderLoadError(f"{where} lacks the tensor {name}")
    t = tensors[name]
    if tuple(t.shape) != shape:
        raise TranscoderLoadError(f"{where}: {name} has shape {tuple(t.shape)}, expected {shape}")
    return t


def _check_model(cfg: TranscoderConfig, model_cfg: ModelConfig | None, path: Path) -> None:
    if model_cfg is None:
        return
    if path.resolve() == DEFAULT_TRANSCODERS.resolve() and (cfg.d_model, cfg.n_layers) != (model_cfg.d_model,
                                                                                           model_cfg.n_layers):
        raise TranscoderLoadError(
            f"the bundled CLT belongs to the bundled model ({cfg.n_layers} layers, d_model {cfg.d_model}), not to this "
            f"{model_cfg.family} model ({model_cfg.n_layers} layers, d_model {model_cfg.d_model}): pass --transcoders "
            "(a folder, or a cached release: gemma, llama, qwen3-4b, ...) or train some with `tracer transcoders "
            "train --model MODEL --out DIR`")  # fmt: skip
    if cfg.d_model != model_cfg.d_model:
        raise TranscoderLoadError(f"transcoders in {path} have d_model {cfg.d_model}, the model {model_cfg.d_model}")
    if cfg.n_layers != model_cfg.n_layers:
        raise TranscoderLoadError(
            f"transcoders in {path} cover {cfg.n_layers} layers, the model has {model_cfg.n_layers}"
        )


def _fill(tc: Transcoder, enc: dict[str, torch.Tensor], dec: list[torch.Tensor] | None) -> Transcoder:
    """Assign tensors (already in our layout and checked) to the module built on the meta device: no second copy
    of the encoders in memory (a dtype change converts once)."""
    dt, cfg = tc.cfg.dtype.torch, tc.cfg
    for name, t in enc.items():
        setattr(tc, name, nn.Parameter(t.to(dt), requires_grad=False))
    if dec is not None:
        assert tc.W_dec is not None
        for s, t in enumerate(dec):
            tc.W_dec[s] = nn.Parameter(t.reshape(cfg.n_features, cfg.n_out(s), cfg.d_model).to(dt),
                                       requires_grad=False)  # fmt: skip
    left = [n for n, p in tc.named_parameters() if p.is_meta]
    if left:
        raise TranscoderLoadError(f"transcoder tensors missing: {', '.join(left[:3])}")
    return tc.requires_grad_(False)


# ---- ours ----------------------------------------------------------------------------------------------------


def _load_ours(path: Path, lazy: bool) -> tuple[TranscoderConfig, dict[str, torch.Tensor], list]:
    try:
        cfg = TranscoderConfig.model_validate_json((path / "config.json").read_text())
    except (ValidationError, ValueError) as e:
        msg = e.errors()[0]["msg"] if isinstance(e, ValidationError) else first_line(e)
        raise TranscoderLoadError(f"invalid {path / 'config.json'}: {msg}") from None
    L, F, D = cfg.n_layers, cfg.n_features, cfg.d_model
    raw = read_safetensors(path / "encoder.safetensors")
    shapes = {"W_enc": (L, F, D), "b_enc": (L, F), "b_dec": (L, D)}
    if cfg.activation == ActivationKind.JUMPRELU:
        shapes["threshold"] = (L, F)
    if cfg.skip:
        shapes["W_skip"] = (L, D, D)
    enc = {
        ("theta" if k == "threshold" else k): _get(raw, k, s, path / "encoder.safetensors") for k, s in shapes.items()
    }
    dec_path = path / "decoder.safetensors"
    if lazy:
        decs = [lazy_rows(dec_path, f"W_dec_{s}") for s in range(L)]
        for s, lz in enumerate(decs):
            if lz.shape != (F, cfg.n_out(s), D):
                raise TranscoderLoadError(
                    f"{dec_path}: W_dec_{s} has shape {lz.shape}, expected {(F, cfg.n_out(s), D)}"
                )
        return cfg, enc, decs
    raw = read_safetensors(dec_path)
    return cfg, enc, [_get(raw, f"W_dec_{s}", (F, cfg.n_out(s), D), dec_path) for s in range(L)]


def _save_ours(tc: Transcoder, path: Path) -> None:
    enc = {"W_enc": tc.W_enc, "b_enc": tc.b_enc, "b_dec": tc.b_dec}
    if tc.theta is not None:
        enc["threshold"] = tc.theta
    if tc.W_skip is not None:
        enc["W_skip"] = tc.W_skip
    atomic_save_safetensors({k: v.detach().cpu() for k, v in enc.items()}, path / "encoder.safetensors")
    dec = {f"W_dec_{s}": tc.decoder(s).detach().cpu() for s in range(tc.cfg.n_layers)}
    atomic_save_safetensors(dec, path / "decoder.safetensors")
    # exclude_none: only `layers` can be None, and a full set's config.json stays as before
    atomic_write_text(path / "config.json", tc.cfg.model_dump_json(indent=2, exclude_none=True) + "\n")


# ---- circuit-tracer ------------------------------------------------------------------------------------------


def _ct_hook(name: object, key: str, path: Path) -> HookPoint:
    short = re.sub(r"^blocks\.\d+\.", "", str(name))
    if short not in CT_HOOKS:
        raise TranscoderLoadError(f"{path}: unknown {key} {name!r}; known: {', '.join(CT_HOOKS)}")
    return CT_HOOKS[short]


def _ct_files(path: Path, pattern: str) -> int:
    """Number of consecutive files pattern.format(i) from i = 0."""
    n = 0
    while (path / pattern.format(n)).exists():
        n += 1
    if n == 0:
        raise TranscoderLoadError(f"{path} has no {pattern.format(0)}")
    return n


def _load_ct(path: Path, lazy: bool) -> tuple[TranscoderConfig, dict[str, torch.Tensor], list]:
    try:
        meta = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise TranscoderLoadError(f"invalid {path / 'config.yaml'}: {first_line(e)}") from None
    if not isinstance(meta, dict):
        raise TranscoderLoadError(f"invalid {path / 'config.yaml'}: not a mapping")
    try:
        kind = CtModelKind(meta.get("model_kind"))
    except ValueError:
        raise TranscoderLoadError(f"{path / 'config.yaml'}: unknown model_kind {meta.get('model_kind')!r}") from None
    hooks = (_ct_hook(meta.get("feature_input_hook"), "feature_input_hook", path),
             _ct_hook(meta.get("feature_output_hook"), "feature_output_hook", path))  # fmt: skip
    # refused before its files are looked up: a missing one would otherwise ask for a download that cannot be read
    if kind == CtModelKind.CLT and any(str(n).startswith("hf://") for n in meta.get("transcoders") or ()):
        raise TranscoderLoadError(f"{path / 'config.yaml'}: CLTs listed file by file (Gemma Scope 2 CLTs) are not "
                                  "supported; circuit-tracer's W_enc_i/W_dec_i CLT layout is")  # fmt: skip
    files = _release_files(path, meta)
    if kind == CtModelKind.CLT:
        enc, decs, dims = _read_ct_clt(path, lazy)
    else:
        enc, decs, dims = _read_ct_plt(path, lazy, files)
    extra = meta.get("clt_tracer") or {}
    if not isinstance(extra, dict):
        raise TranscoderLoadError(f"invalid {path / 'config.yaml'}: clt_tracer is not a mapping")
    try:
        cfg = TranscoderConfig(
            kind=TranscoderKind.CLT if kind == CtModelKind.CLT else TranscoderKind.PLT, n_layers=dims[0],
            n_features=dims[1], d_model=dims[2], input_hook=hooks[0], output_hook=hooks[1],
            activation=ActivationKind.JUMPRELU if "theta" in enc else ActivationKind.RELU, skip="W_skip" in enc,
            model_name=str(meta.get("model_name") or ""), model_hash=str(extra.get("model_hash", "")),
            dtype=DType.of(enc["W_enc"].dtype), jumprelu_bandwidth=float(extra.get("jumprelu_bandwidth", 0.1)),
            layers=extra.get("layers"),
        )  # fmt: skip
    except (ValidationError, ValueError) as e:
        raise TranscoderLoadError(f"unsupported transcoders in {path}: {first_line(e)}") from None
    return cfg, enc, decs


def _optional(r: dict[str, torch.Tensor], name: str, ours: str, shape: tuple[int, ...], f: Path) -> dict:
    return {ours: _get(r, name, shape, f)} if name in r else {}


def _release_files(path: Path, meta: dict) -> list[Path] | None:
    """The per-layer files a release config names (`transcoders:` list of hf:// URIs or paths relative to the
    config), resolved against the local Hugging Face cache; None when the config names none."""
    names = meta.get("transcoders")
    if not names:
        return None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise TranscoderLoadError(f"{path / 'config.yaml'}: `transcoders` must be a list of file names or hf:// URIs")
    return [cached_path(n) if n.startswith("hf://") else path / n for n in names]


def _read_ct_plt(path: Path, lazy: bool, files: list[Path] | None = None):
    """Per-layer files, read one at a time into stacked tensors (the encoders are in memory once, plus one layer)."""
    if files is None:
        files = [path / f"layer_{i}.safetensors" for i in range(_ct_files(path, "layer_{}.safetensors"))]
    L = len(files)
    enc: dict[str, torch.Tensor] = {}
    decs: list = []
    for i, f in enumerate(files):
        lf = read_layer_file(f, lazy)
        if i == 0:
            F, D = lf.enc["W_enc"].shape
        per = {"W_enc": _get(lf.enc, "W_enc", (F, D), f), "b_enc": _get(lf.enc, "b_enc", (F,), f),
               "b_dec": _get(lf.enc, "b_dec", (D,), f), **_optional(lf.enc, "theta", "theta", (F,), f),
               **_optional(lf.enc, "W_skip", "W_skip", (D, D), f)}  # fmt: skip
        _stack_layer(enc, per, i, L)
        if tuple(lf.dec.shape) != (F, D):
            raise TranscoderLoadError(f"{f}: the decoder has shape {tuple(lf.dec.shape)}, expected {(F, D)}")
        decs.append(lf.dec)
    return enc, decs, (L, F, D)


def _stack_layer(enc: dict[str, torch.Tensor], per: dict[str, torch.Tensor], i: int, L: int) -> None:
    """Write layer i's tensors into the stacked `enc` ([L, ...] each, allocated at layer 0): one file at a time, so
    the encoders are in memory once; every layer must have the same tensors."""
    if i and set(per) != set(enc):
        raise TranscoderLoadError(f"tensor {sorted(set(per) ^ set(enc))[0]} is present for some layers only")
    for k, v in per.items():
        if i == 0:
            enc[k] = torch.empty((L, *v.shape), dtype=v.dtype)
        enc[k][i] = v


def _read_ct_clt(path: Path, lazy: bool):
    L = _ct_files(path, "W_enc_{}.safetensors")
    files = [path / f"W_enc_{i}.safetensors" for i in range(L)]
    enc: dict[str, torch.Tensor] = {}
    for i, f in enumerate(files):  # one file at a time into stacked tensors: the encoders are in memory once
        r = read_safetensors(f)
        if i == 0:
            if "W_enc_0" not in r:
                raise TranscoderLoadError(f"{f} lacks the tensor W_enc_0")
            F, D = r["W_enc_0"].shape
        per = {"W_enc": _get(r, f"W_enc_{i}", (F, D), f), "b_enc": _get(r, f"b_enc_{i}", (F,), f),
               "b_dec": _get(r, f"b_dec_{i}", (D,), f),
               **({"theta": _get(r, f"threshold_{i}", (F,), f)} if f"threshold_{i}" in r else {}),
               **({"W_skip": _get(r, f"W_skip_{i}", (D, D), f)} if f"W_skip_{i}" in r else {})}  # fmt: skip
        _stack_layer(enc, per, i, L)
        del r, per
    dfiles = [path / f"W_dec_{i}.safetensors" for i in range(L)]
    if lazy:
        decs: list = [lazy_rows(f, f"W_dec_{i}") for i, f in enumerate(dfiles)]
        for i, d in enumerate(decs):
            if d.shape != (F, L - i, D):
                raise TranscoderLoadError(f"{dfiles[i]}: W_dec_{i} has shape {d.shape}, expected {(F, L - i, D)}")
    else:
        decs = [_get(read_safetensors(f), f"W_dec_{i}", (F, L - i, D), f) for i, f in enumerate(dfiles)]
    return enc, decs, (L, F, D)


def _save_ct(tc: Transcoder, path: Path) -> None:
    cfg = tc.cfg
    if cfg.activation == ActivationKind.TOPK:
        raise TranscoderLoadError("circuit-tracer's format has no TopK activation; save TopK transcoders as 'ours'")
    cpu = lambda t: t.detach().cpu().contiguous()
    clt = cfg.kind == TranscoderKind.CLT
    files = []
    for i in range(cfg.n_layers):
        enc = {"W_enc": tc.W_enc[i], "b_enc": tc.b_enc[i], "b_dec": tc.b_dec[i]}
        if tc.theta is not None:
            enc["threshold" if clt else "activation_function.threshold"] = tc.theta[i]
        if tc.W_skip is not None:
            enc["W_skip"] = tc.W_skip[i]
        if clt:
            atomic_save_safetensors({f"{k}_{i}": cpu(v) for k, v in enc.items()}, path / f"W_enc_{i}.safetensors")
            atomic_save_safetensors({f"W_dec_{i}": cpu(tc.decoder(i))}, path / f"W_dec_{i}.safetensors")
            files += [f"W_enc_{i}.safetensors", f"W_dec_{i}.safetensors"]
        else:
            enc["W_dec"] = tc.decoder(i)[:, 0]
            atomic_save_safetensors({k: cpu(v) for k, v in enc.items()}, path / f"layer_{i}.safetensors")
            files.append(f"layer_{i}.safetensors")
    meta = {"model_kind": (CtModelKind.CLT if clt else CtModelKind.PLT).value, "model_name": cfg.model_name,
            "feature_input_hook": CT_HOOK_NAMES[cfg.input_hook], "feature_output_hook": CT_HOOK_NAMES[cfg.output_hook],
            "scan": cfg.model_name or None, "transcoders": files,
            "clt_tracer": {"model_hash": cfg.model_hash, "jumprelu_bandwidth": cfg.jumprelu_bandwidth}}  # fmt: skip
    if cfg.layers is not None:  # a partial set (--layers) keeps naming its layers
        meta["clt_tracer"]["layers"] = list(cfg.layers)
    atomic_write_text(path / "config.yaml", yaml.safe_dump(meta, sort_keys=False))


# ---- entry points --------------------------------------------------------------------------------------------


def detect_format(path: Path) -> TranscoderFormat:
    if not path.is_dir():
        short = f" (nor a short name: {', '.join(TRANSCODER_SHORT_NAMES)})" if len(path.parts) == 1 else ""
        raise TranscoderLoadError(f"transcoder directory {path} does not exist{short}")
    if (path / "config.json").exists():
        return TranscoderFormat.OURS
    if (path / "config.yaml").exists():
        return TranscoderFormat.CIRCUIT_TRACER
    raise TranscoderLoadError(f"{path} has no config.json (ours) or config.yaml (circuit-tracer)")


def load_transcoders(
    path: str | Path, model_cfg: ModelConfig | None = None, lazy: bool = False, dtype: torch.dtype | None = None
) -> Transcoder:
    """Load a transcoder set in either format from a folder, a circuit-tracer short name (`gemma`) or a repository
    name in the local Hugging Face cache; dtype None keeps the stored one. Decoders lazy if `lazy`."""
    path = resolve_transcoders(path) or Path(path)
    fmt = detect_format(path)
    cfg, enc, decs = (_load_ours if fmt == TranscoderFormat.OURS else _load_ct)(path, lazy)
    # lazy decoders are memory-mapped and not scanned: a NaN there shows up in the recorded errors
    check_finite([*enc.items(), *(() if lazy else ((f"W_dec_{s}", d) for s, d in enumerate(decs)))],
                 f"transcoders in {path}", TranscoderLoadError)  # fmt: skip
    _check_model(cfg, model_cfg, path)
    cfg = cfg.model_copy(update={"dtype": DType.of(dtype)}) if dtype is not None else cfg
    with torch.device("meta"):  # parameters are assigned by _fill, never allocated twice
        tc = Transcoder(cfg, lazy_decoders=decs if lazy else None)
    return _fill(tc, enc, None if lazy else decs)


def save_transcoders(tc: Transcoder, path: str | Path, fmt: TranscoderFormat = TranscoderFormat.OURS) -> None:
    """Write tc in `fmt` (atomic files; the config written last). The stored dtype is the module's."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tc.cfg = tc.cfg.model_copy(update={"dtype": DType.of(tc.W_enc.dtype)})
    (_save_ours if TranscoderFormat(fmt) == TranscoderFormat.OURS else _save_ct)(tc, path)
    log.info("saved transcoders to %s (%s)", path, TranscoderFormat(fmt).value)
