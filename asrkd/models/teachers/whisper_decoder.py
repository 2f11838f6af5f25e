"""Whisper's text decoder in PyTorch, its byte-level BPE vocabulary, and the full model.

Weights are read from the same CTranslate2 ``model.bin`` as the encoder
(:func:`asrkd.models.teachers.whisper.encoder_state_from_ct2`); ``vocabulary.txt`` (one token
per line, as CTranslate2 stores it) and ``config.json`` (``suppress_ids``,
``suppress_ids_begin``, ``lang_ids``) beside it give the tokens and the suppression lists.

:class:`Whisper` is log-mel + encoder + decoder. Unlike the CTC teacher's encoder, which sees
un-padded input, the decoder needs what Whisper was trained on: every utterance is padded with
zeros to 30 s (3000 feature frames) before the encoder (:meth:`Whisper.encode_padded`).
Decoding (:mod:`asrkd.models.teachers.whisper_search`) is batched greedy or beam search.

Text comes out as Whisper writes it (cased, punctuated, digits); :func:`normalize_text`
turns it into the student's character set (see :mod:`asrkd.data.text`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from asrkd.models.teachers.whisper import (
    HOP_LENGTH,
    WhisperEncoder,
    WhisperLogMel,
    _count_layers,
    encoder_state_from_ct2,
)

SAMPLE_RATE = 16000
CHUNK_SECONDS = 30
CHUNK_SAMPLES = CHUNK_SECONDS * SAMPLE_RATE  # Whisper's fixed input window
CHUNK_FRAMES = CHUNK_SAMPLES // HOP_LENGTH  # 3000 log-mel frames -> 1500 encoder frames


# --------------------------------------------------------------------------- vocabulary
@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet: the printable character standing for each byte."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    chars, extra = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return {c: b for b, c in enumerate(chars)}


@dataclass
class WhisperVocabulary:
    """Whisper's tokens (id -> byte-level BPE string) and the ids decoding needs.

    ``multilingual`` is Whisper's own rule: a vocabulary of at least 51865 tokens (tiny.en,
    base.en, ... have 51864). English transcription is prompted with
    ``<|startoftranscript|><|en|><|transcribe|><|notimestamps|>`` on a multilingual model and
    ``<|startoftranscript|><|notimestamps|>`` on an English-only one.
    """

    tokens: list[str]
    suppress: tuple[int, ...] = ()
    suppress_begin: tuple[int, ...] = ()

    def __post_init__(self):
        self._ids = {t: i for i, t in enumerate(self.tokens)}
        for name in ("<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>"):
            if name not in self._ids:
                raise ValueError(f"not a Whisper vocabulary: it has no {name} token")

    def id(self, token: str) -> int:
        try:
            return self._ids[token]
        except KeyError:
            raise KeyError(f"the Whisper vocabulary has no token {token!r}") from None

    @property
    def eot(self) -> int:
        return self.id("<|endoftext|>")

    @property
    def multilingual(self) -> bool:
        return len(self.tokens) >= 51865

    @property
    def timestamp_begin(self) -> int:
        return self.id("<|0.00|>") if "<|0.00|>" in self._ids else len(self.tokens)

    def prompt(self, language: str = "en") -> list[int]:
        """The decoder's start tokens for transcription without timestamps."""
        ids = [self.id("<|startoftranscript|>")]
        if self.multilingual:
            ids += [self.id(f"<|{language}|>"), self.id("<|transcribe|>")]
        return ids + [self.id("<|notimestamps|>")]

    def decode(self, ids) -> str:
        """Text of token ids; special tokens (``<|...|>``, ids >= ``<|endoftext|>``) are dropped."""
        table = _byte_decoder()
        eot = self.eot
        data = bytearray()
        for i in ids:
            i = int(i)
            if i >= eot:
                continue
            data.extend(table[c] for c in self.tokens[i])
        return data.decode("utf-8", errors="replace").strip()

    @classmethod
    def from_dir(cls, directory: str | os.PathLike) -> WhisperVocabulary:
        """From a CTranslate2 Whisper folder: ``vocabulary.txt`` (+ ``config.json`` if present)."""
        directory = Path(directory)
        vocab = directory / "vocabulary.txt"
        if not vocab.is_file():
            raise FileNotFoundError(f"Whisper vocabulary not found: {vocab} (a CTranslate2 Whisper folder has one)")
        tokens = vocab.read_text(encoding="utf-8").split("\n")
        if tokens and tokens[-1] == "":
            tokens.pop()
        config = directory / "config.json"
        cfg = json.loads(config.read_text()) if config.is_file() else {}
        return cls(tokens, tuple(cfg.get("suppress_ids", ())), tuple(cfg.get("suppress_ids_begin", ())))


# --------------------------------------------------------------------------- decoder
KVCache = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values (B, H, t, d)


def _heads(x: torch.Tensor, n_head: int) -> torch.Tensor:
    B, T, D = x.shape
    return x.view(B, T, n_head, D // n_head).transpose(1, 2)


class DecoderBlock(nn.Module):
    """Pre-LN: causal self-attention, cross-attention to the audio, MLP (exact GELU)."""

    def __init__(self, n_state: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.attn_ln = nn.LayerNorm(n_state)
        self.attn_qkv = nn.Linear(n_state, 3 * n_state)  # fused Q, K, V (K's bias stored as 0)
        self.attn_out = nn.Linear(n_state, n_state)
        self.cross_ln = nn.LayerNorm(n_state)
        self.cross_q = nn.Linear(n_state, n_state)
        self.cross_kv = nn.Linear(n_state, 2 * n_state)  # fused K, V of the audio features
        self.cross_out = nn.Linear(n_state, n_state)
        self.mlp_ln = nn.LayerNorm(n_state)
        self.mlp = nn.Sequential(nn.Linear(n_state, 4 * n_state), nn.GELU(), nn.Linear(4 * n_state, n_state))

    def audio_kv(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.cross_kv(audio).chunk(2, dim=-1)
        return _heads(k, self.n_head), _heads(v, self.n_head)

    def forward(
        self,
        x: torch.Tensor,
        audio_kv: tuple[torch.Tensor, torch.Tensor],
        past: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        B, L, D = x.shape
        q, k, v = (_heads(t, self.n_head) for t in self.attn_qkv(self.attn_ln(x)).chunk(3, dim=-1))
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        # New tokens see every cached one and the new ones up to themselves.
        mask = None
        if L > 1:
            t = k.size(2)
            mask = torch.ones(L, t, dtype=torch.bool, device=x.device).tril(t - L)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.attn_out(y.transpose(1, 2).reshape(B, L, D))
        q = _heads(self.cross_q(self.cross_ln(x)), self.n_head)
        y = F.scaled_dot_product_attention(q, *audio_kv)
        x = x + self.cross_out(y.transpose(1, 2).reshape(B, L, D))
        return x + self.mlp(self.mlp_ln(x)), (k, v)


class WhisperTextDecoder(nn.Module):
    """Whisper's decoder with a key/value cache.

    ``forward(tokens (B, L), audio_kv, cache) -> (logits (B, L, n_vocab) fp32, cache)``: the
    tokens continue the ones the cache holds (positions ``cache length .. + L - 1``);
    ``audio_kv = decoder.audio_kv(encoder_output (B, 1500, n_state))`` is computed once per
    utterance. Output logits use the token embedding as the projection (tied, as Whisper).
    """

    def __init__(self, n_vocab: int, n_ctx: int = 448, n_state: int = 384, n_head: int = 6, n_layer: int = 4):
        super().__init__()
        self.n_vocab, self.n_ctx, self.n_state, self.n_head, self.n_layer = n_vocab, n_ctx, n_state, n_head, n_layer
        self.token_embedding = nn.Embedding(n_vocab, n_state)
        self.register_buffer("positional_embedding", torch.zeros(n_ctx, n_state))
        self.blocks = nn.ModuleList(DecoderBlock(n_state, n_head) for _ in range(n_layer))
        self.ln = nn.LayerNorm(n_state)

    @property
    def dims(self) -> dict[str, int]:
        return dict(
            n_vocab=self.n_vocab, n_ctx=self.n_ctx, n_state=self.n_state, n_head=self.n_head, n_layer=self.n_layer
        )

    def audio_kv(self, audio: torch.Tensor) -> KVCache:
        return [block.audio_kv(audio) for block in self.blocks]

    def forward(
        self, tokens: torch.Tensor, audio_kv: KVCache, cache: KVCache | None = None
    ) -> tuple[torch.Tensor, KVCache]:
        start = 0 if cache is None else cache[0][0].size(2)
        if start + tokens.size(1) > self.n_ctx:
            raise ValueError(f"the decoder holds at most {self.n_ctx} tokens, asked for {start + tokens.size(1)}")
        x = self.token_embedding(tokens) + self.positional_embedding[start : start + tokens.size(1)]
        new_cache: KVCache = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, audio_kv[i], None if cache is None else cache[i])
            new_cache.append(kv)
        logits = self.ln(x) @ self.token_embedding.weight.t()
        return logits.float(), new_cache


def decoder_state_from_ct2(path: str | os.PathLike) -> tuple[dict[str, int], dict[str, torch.Tensor]]:
    """Decoder dims and state dict (this module's names, fp32) from a CTranslate2 Whisper ``model.bin``."""
    from asrkd.models.teachers.ct2 import read_ct2_model

    m = read_ct2_model(path, prefix="decoder/")
    if m.spec != "WhisperSpec":
        raise ValueError(f"{m.path} holds a {m.spec or 'unnamed'} model, not a Whisper model (WhisperSpec)")
    emb, pos = m["decoder/embeddings/weight"], m["decoder/position_encodings/encodings"]
    dims = dict(
        n_vocab=emb.shape[0],
        n_ctx=pos.shape[0],
        n_state=emb.shape[1],
        n_head=int(m.scalar("decoder/num_heads")),
        n_layer=_count_layers(m.variables, r"^decoder/layer_(\d+)/"),
    )
    sd = {
        "token_embedding.weight": emb,
        "positional_embedding": pos,
        "ln.weight": m["decoder/layer_norm/gamma"],
        "ln.bias": m["decoder/layer_norm/beta"],
    }
    names = {
        "attn_ln": "self_attention/layer_norm",
        "attn_qkv": "self_attention/linear_0",
        "attn_out": "self_attention/linear_1",
        "cross_ln": "attention/layer_norm",
        "cross_q": "attention/linear_0",
        "cross_kv": "attention/linear_1",
        "cross_out": "attention/linear_2",
        "mlp_ln": "ffn/layer_norm",
        "mlp.0": "ffn/linear_0",
        "mlp.2": "ffn/linear_1",
    }
    for i in range(dims["n_layer"]):
        for ours, theirs in names.items():
            src = f"decoder/layer_{i}/{theirs}/"
            norm = theirs.endswith("layer_norm")
            sd[f"blocks.{i}.{ours}.weight"] = m[src + ("gamma" if norm else "weight")]
            sd[f"blocks.{i}.{ours}.bias"] = m[src + ("beta" if norm else "bias")]
    return dims, sd


# --------------------------------------------------------------------------- full model
class Whisper(nn.Module):
    """Whisper as a sequence-to-sequence recogniser: log-mel, encoder, decoder, vocabulary.

    ``encode_padded(waves (B, N) 16 kHz, lengths (B,)) -> audio (B, 1500, n_state)``; decode
    with :func:`asrkd.models.teachers.whisper_search.transcribe`.
    """

    def __init__(self, encoder: WhisperEncoder, decoder: WhisperTextDecoder, vocab: WhisperVocabulary):
        super().__init__()
        if len(vocab.tokens) != decoder.n_vocab:
            raise ValueError(f"the vocabulary has {len(vocab.tokens)} tokens, the decoder {decoder.n_vocab}")
        self.frontend = WhisperLogMel(encoder.n_mels)
        self.encoder = encoder
        self.decoder = decoder
        self.vocab = vocab

    def encode_padded(self, waves: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Each utterance (at most 30 s) zero-padded to 30 s, as Whisper was trained."""
        if waves.size(1) > CHUNK_SAMPLES or (lengths.numel() and int(lengths.max()) > CHUNK_SAMPLES):
            raise ValueError(
                f"Whisper's decoder takes at most {CHUNK_SECONDS} s per utterance, got "
                f"{int(lengths.max()) / SAMPLE_RATE:.1f} s (split longer audio first)"
            )
        padded = waves.new_zeros(waves.size(0), CHUNK_SAMPLES)
        valid = torch.arange(waves.size(1), device=waves.device)[None, :] < lengths[:, None]
        padded[:, : waves.size(1)] = waves.masked_fill(~valid, 0.0)
        full = torch.full_like(lengths, CHUNK_SAMPLES)
        feats, frames = self.frontend(padded, full)
        return self.encoder(feats, frames)[0]


def whisper_dir(path: str | os.PathLike) -> Path:
    """The CTranslate2 folder of a ``model.bin`` path or folder."""
    path = Path(path)
    return path if path.is_dir() else path.parent


def load_whisper(path: str | os.PathLike) -> Whisper:
    """The full Whisper (fp32, eval) from a CTranslate2 folder or its ``model.bin``."""
    from asrkd.models.teachers.whisper import WhisperEncoder

    directory = whisper_dir(path)
    model_bin = directory / "model.bin"
    vocab = WhisperVocabulary.from_dir(directory)
    enc_dims, enc_sd = encoder_state_from_ct2(model_bin)
    dec_dims, dec_sd = decoder_state_from_ct2(model_bin)
    encoder, decoder = WhisperEncoder(**enc_dims), WhisperTextDecoder(**dec_dims)
    encoder.load_state_dict({k: v.contiguous() for k, v in enc_sd.items()})
    decoder.load_state_dict({k: v.contiguous() for k, v in dec_sd.items()})
    model = Whisper(encoder, decoder, vocab).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
