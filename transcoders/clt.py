"""Cross-layer (CLT) and per-layer (PLT) transcoders: one module, the kind decides the decoder shapes.

Shapes: T tokens, L layers, F features per layer, D d_model. The decoder of source layer l is
`W_dec[l]` [F, n_out(l), D]; slice k writes to layer l+k (CLT: n_out = L-l; PLT: n_out = 1, slice 0 -> layer l).
1. Encode: `pre[t, l] = W_enc[l] @ x[t, l] + b_enc[l]`, then the activation (JumpReLU / ReLU / TopK).
2. Decode: `y[t, l] = b_dec[l] + Σ_{s ≤ l} W_dec[s][:, l-s]ᵀ a[t, s]` (PLT: s = l only).
3. Skip: `x[t, l] @ W_skip[l]ᵀ` added to the output when the config has a skip connection.
4. Lazy decoders: rows are read from a memory-mapped safetensors file, so only active features are materialised.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.functional import embedding_bag

from transcoders.activations import jumprelu, topk
from transcoders.config import ActivationKind, TranscoderConfig, TranscoderKind

SPARSE_RATIO = 16  # decode a source layer sparsely when under 1/16 of its activations are non-zero
_ST_DTYPES = {"F32": (np.float32, None), "F16": (np.float16, None), "F64": (np.float64, None),
              "BF16": (np.uint16, torch.bfloat16)}  # fmt: skip


class LazyRows:
    """One tensor of a safetensors file, read by first-dim rows through a memory map (nothing read up front)."""

    def __init__(self, path: Path, name: str) -> None:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        info = header[name]
        if info["dtype"] not in _ST_DTYPES:
            raise ValueError(f"unsupported dtype {info['dtype']} of {name}")
        self.path, self.name, self.shape = path, name, tuple(info["shape"])
        self._np, self._view = _ST_DTYPES[info["dtype"]]
        self._offset = 8 + n + info["data_offsets"][0]
        if info["data_offsets"][1] - info["data_offsets"][0] != int(np.prod(self.shape)) * np.dtype(self._np).itemsize:
            raise ValueError(f"tensor {name} has a size that does not match its shape")
        if 8 + n + info["data_offsets"][1] > path.stat().st_size:
            raise ValueError(f"file is truncated (tensor {name} ends past its end)")
        self._mm: np.ndarray | None = None

    @classmethod
    def at(cls, path: Path, name: str, shape: tuple[int, ...], dtype: np.dtype, offset: int) -> LazyRows:
        """Rows of a raw C-order array of `dtype` at byte `offset` of `path` (e.g. an uncompressed .npy in a zip)."""
        self = cls.__new__(cls)
        self.path, self.name, self.shape = path, name, shape
        self._np, self._view, self._offset = dtype, None, offset
        if offset + int(np.prod(shape)) * dtype.itemsize > path.stat().st_size:
            raise ValueError(f"file is truncated (tensor {name} ends past its end)")
        self._mm = None
        return self

    @classmethod
    def in_memory(cls, path: Path, name: str, a: np.ndarray) -> LazyRows:
        """The same interface over an array already read whole (a zip-compressed .npy member cannot be mapped)."""
        self = cls.__new__(cls)
        self.path, self.name, self.shape = path, name, tuple(a.shape)
        self._np, self._view, self._offset, self._mm = a.dtype, None, 0, a
        return self

    def _map(self) -> np.ndarray:
        if self._mm is None:
            self._mm = np.memmap(self.path, dtype=self._np, mode="r", offset=self._offset, shape=self.shape)
        return self._mm

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(a))
        return t.view(self._view) if self._view is not None else t

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """Rows idx [n] -> [n, *shape[1:]]; only those rows' pages are read."""
        return self._tensor(self._map()[idx.cpu().numpy()])

    def full(self) -> torch.Tensor:
        return self._tensor(np.array(self._map()))


class Transcoder(nn.Module):
    """A transcoder set for all layers of one model (CLT or PLT), see the module docstring."""

    def __init__(self, cfg: TranscoderConfig, lazy_decoders: list[LazyRows] | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        L, F, D = cfg.n_layers, cfg.n_features, cfg.d_model
        dt = cfg.dtype.torch
        self.W_enc = nn.Parameter(torch.zeros(L, F, D, dtype=dt))
        self.b_enc = nn.Parameter(torch.zeros(L, F, dtype=dt))
        # JumpReLU threshold θ in linear space; the trainer re-parameterises it as exp(log θ)
        self.theta = nn.Parameter(torch.zeros(L, F, dtype=dt)) if cfg.activation == ActivationKind.JUMPRELU else None
        self.b_dec = nn.Parameter(torch.zeros(L, D, dtype=dt))
        self.W_skip = nn.Parameter(torch.zeros(L, D, D, dtype=dt)) if cfg.skip else None
        self._lazy = lazy_decoders
        self.W_dec = None if lazy_decoders is not None else nn.ParameterList(
            nn.Parameter(torch.zeros(F, cfg.n_out(s), D, dtype=dt)) for s in range(L))  # fmt: skip

    @property
    def is_lazy(self) -> bool:
        return self.W_dec is None

    def threshold(self, layer: int) -> torch.Tensor:
        """JumpReLU threshold of layer [F] (zeros for ReLU/TopK: a = pre * (pre > 0) there)."""
        if self.theta is None:
            return torch.zeros(self.cfg.n_features, dtype=self.W_enc.dtype, device=self.W_enc.device)
        return self.theta[layer]

    # 1. Encode
    def pre_activations(self, x_TLD: torch.Tensor) -> torch.Tensor:
        """Input-hook values [T, L, D] -> pre-activations [T, L, F]."""
        return torch.bmm(x_TLD.transpose(0, 1), self.W_enc.transpose(1, 2)).transpose(0, 1) + self.b_enc

    def activations(self, pre_TLF: torch.Tensor) -> torch.Tensor:
        """Pre-activations [T, L, F] -> activations [T, L, F]."""
        act = self.cfg.activation
        if act == ActivationKind.JUMPRELU:
            assert self.theta is not None
            return jumprelu(pre_TLF, self.theta, self.cfg.jumprelu_bandwidth)
        if act == ActivationKind.RELU:
            return torch.relu(pre_TLF)
        return topk(pre_TLF, self.cfg.topk_k)

    def encode(self, x_TLD: torch.Tensor) -> torch.Tensor:
        return self.activations(self.pre_activations(x_TLD))

    # 2. Decode
    def decoder(self, layer: int) -> torch.Tensor:
        """Full decoder of source `layer` [F, n_out, D] (materialises every lazy decoder on first use)."""
        if self.W_dec is None:
            self.materialize()
        assert self.W_dec is not None
        return self.W_dec[layer]

    def materialize(self) -> None:
        """Read all lazy decoders into parameters (for full decoding, training or saving)."""
        if self._lazy is None:
            return
        dt, dev, cfg = self.W_enc.dtype, self.W_enc.device, self.cfg
        self.W_dec = nn.ParameterList(
            nn.Parameter(lz.full().reshape(cfg.n_features, cfg.n_out(s), cfg.d_model).to(dev, dt),
                         requires_grad=self.W_enc.requires_grad)
            for s, lz in enumerate(self._lazy))  # fmt: skip
        self._lazy = None

    def decode(self, acts_TLF: torch.Tensor, support_TLF: torch.Tensor | None = None) -> torch.Tensor:
        """Activations [T, L, F] -> reconstructed output-hook values [T, L, D], incl. b_dec, excl. skip.

        Sparse sources go through embedding_bag (cost ∝ non-zeros); `support` [T, L, F] bool marks the entries
        whose gradient is needed (default: the non-zeros; JumpReLU training adds the threshold's kernel window).
        """
        if self.W_dec is None:  # lazy decoders: read only the active features' rows (inference only)
            return self._decode_rows(acts_TLF)
        T, (L, D) = acts_TLF.shape[0], self.b_dec.shape
        out = self.b_dec.expand(T, L, D).clone()
        for s, a in enumerate(acts_TLF.unbind(1)):  # one gradient buffer for all layers
            W = self.decoder(s)
            W = W.reshape(W.shape[0], -1)  # [F, n_out·D]
            mask = (a != 0) if support_TLF is None else support_TLF[:, s]
            t_idx, f_idx = mask.nonzero(as_tuple=True)
            if len(t_idx) * SPARSE_RATIO < a.numel():
                counts = torch.bincount(t_idx, minlength=T)
                y = embedding_bag(f_idx, W, counts.cumsum(0) - counts, mode="sum", per_sample_weights=a[t_idx, f_idx])
            else:
                y = a @ W
            y = y.view(T, -1, D)  # [T, n_out, D]
            if self.cfg.kind == TranscoderKind.CLT:
                out[:, s:] += y
            else:
                out[:, s] += y[:, 0]
        return out

    def _decode_rows(self, acts_TLF: torch.Tensor) -> torch.Tensor:
        """`decode` from memory-mapped rows of the non-zero features only: a lazy set never materialises."""
        T, (L, D) = acts_TLF.shape[0], self.b_dec.shape
        out = self.b_dec.expand(T, L, D).clone()
        for s in range(L):
            t, f = acts_TLF[:, s].nonzero(as_tuple=True)
            if len(t):
                feats, inv = f.unique(return_inverse=True)
                rows = self.decoder_rows(s, feats).to(out.dtype)  # [n, L, D], zero where it does not write
                out.index_add_(0, t, acts_TLF[t, s, f].to(out.dtype)[:, None, None] * rows[inv])
        return out

    def decode_entries(self, n_tokens: int, t_idx: torch.Tensor, l_idx: torch.Tensor, f_idx: torch.Tensor,
                       vals: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """Like decode, from sparse activations given as entries (token, layer, feature, value) [n] each, sorted
        by token within each layer (as `nonzero` returns them) -> [T, L, D]; cost ∝ entries."""
        L, D = self.b_dec.shape
        out = self.b_dec.expand(n_tokens, L, D).clone()
        for s in range(L):
            m = l_idx == s
            t, f = t_idx[m], f_idx[m]
            W = self.decoder(s)
            counts = torch.bincount(t, minlength=n_tokens)
            y = embedding_bag(f, W.reshape(W.shape[0], -1), counts.cumsum(0) - counts, mode="sum",
                              per_sample_weights=vals[m]).view(n_tokens, -1, D)  # fmt: skip
            if self.cfg.kind == TranscoderKind.CLT:
                out[:, s:] += y
            else:
                out[:, s] += y[:, 0]
        return out

    def decoder_rows(self, layer: int, features: torch.Tensor) -> torch.Tensor:
        """Decoder vectors of features (layer, f) for every output layer [n, L, D]; zero where they do not write."""
        cfg = self.cfg
        if self.W_dec is not None:
            rows = self.W_dec[layer][features]
        else:
            assert self._lazy is not None
            rows = self._lazy[layer].rows(features).to(self.W_enc.device, self.W_enc.dtype)
        rows = rows.reshape(len(features), cfg.n_out(layer), cfg.d_model)
        out = rows.new_zeros(len(features), cfg.n_layers, cfg.d_model)
        out[:, layer : layer + cfg.n_out(layer)] = rows
        return out

    def decoder_norms(self) -> torch.Tensor:
        """‖concatenated decoder‖ of every feature [L, F]."""
        return torch.stack([self.decoder(s).pow(2).sum((1, 2)).sqrt() for s in range(self.cfg.n_layers)])

    def encode_layer(self, x_TD: torch.Tensor, layer: int) -> torch.Tensor:
        """One layer's activations [T, F] from its input-hook values [T, D] (for spliced runs)."""
        pre = x_TD @ self.W_enc[layer].T + self.b_enc[layer]
        if self.cfg.activation == ActivationKind.JUMPRELU:
            return pre * (pre > self.threshold(layer))
        if self.cfg.activation == ActivationKind.RELU:
            return torch.relu(pre)
        return topk(pre, self.cfg.topk_k)

    def decode_layer(self, acts: list[torch.Tensor], layer: int) -> torch.Tensor:
        """Output of `layer` [T, D] from the activations [T, F] of layers 0..layer (incl. b_dec, excl. skip)."""
        out = self.b_dec[layer].expand(acts[layer].shape[0], -1)
        sources = range(layer + 1) if self.cfg.kind == TranscoderKind.CLT else (layer,)
        for s in sources:
            out = out + acts[s] @ self.decoder(s)[:, layer - s]
        return out

    # 3. Skip
    def skip(self, x_TLD: torch.Tensor) -> torch.Tensor:
        """Skip term x[t, l] @ W_skip[l]ᵀ [T, L, D] (zeros without a skip connection)."""
        if self.W_skip is None:
            return torch.zeros_like(x_TLD)
        return torch.einsum("tld,led->tle", x_TLD, self.W_skip)

    def forward(self, x_TLD: torch.Tensor) -> torch.Tensor:
        """Reconstructed output-hook values [T, L, D] = decode(encode(x)) + skip(x)."""
        return self.decode(self.encode(x_TLD)) + self.skip(x_TLD)

    @torch.no_grad()
    def fold_scales(self, s_in: torch.Tensor, s_out: torch.Tensor) -> None:
        """Turn a transcoder trained on x·s_in[l] -> y·s_out[l] into one on raw x -> y (activations unchanged)."""
        s_in, s_out = s_in.to(self.W_enc), s_out.to(self.W_enc)
        self.W_enc.mul_(s_in[:, None, None])
        self.b_dec.div_(s_out[:, None])
        for s in range(self.cfg.n_layers):
            self.decoder(s).div_(s_out[s : s + self.cfg.n_out(s)][None, :, None])
        if self.W_skip is not None:
            self.W_skip.mul_((s_in / s_out)[:, None, None])
