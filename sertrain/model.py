"""Multi-task CNN + attention-based BLSTM (Liu et al. 2023 on the ACRNN front end).

Shape walk-through for the ``paper`` config and a ``[B, 3, 300, 40]`` input::

    conv 5x3 x128, BN, max-pool 2x4, LeakyReLU   -> [B, 128, 150, 10]
    5 x (conv 5x3 x256, BN, LeakyReLU)           -> [B, 256, 150, 10]
    per time step: flatten 256*10, linear 768    -> [B, 150, 768]
    BLSTM 128 per direction (packed: padding never enters the recurrence) -> [B, 150, 256]
    additive attention, softmax over valid steps -> [B, 256]
    shared embedding (linear, LeakyReLU, dropout) -> heads: emotion, gender, speaker (+ arousal, valence, dominance when active)

Padding: segments shorter than the window are zero-padded, with their valid frame count.
The model is exactly invariant to what the padded frames contain: every conv block's input
is multiplied by the time mask (so padding acts like the conv's own zero padding), the valid length is carried through each time pooling (ceil division: a pooled
step with any real frame is valid), the BLSTM runs on a packed sequence, and attention
gives padded steps zero weight. Only batch-norm statistics in training mode see the zeros.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from serprep.features import feature_kind

from .config import ModelConfig
from .errors import InputError
from .tasks import TASKS, head_sizes

#: The feature kind sertrain trains on (a name of ``serprep.features.FEATURE_KINDS``). Prediction
#: computes log-Mel from audio and a checkpoint records no kind, so any other kind is refused
#: when a store is opened for training or evaluation (:meth:`InputSpec.from_reader`).
TRAINABLE_FEATURE_KIND = "logmel"
#: Its channels per frame (static, delta, delta-delta): what every checkpoint's model takes.
TRAINABLE_CHANNELS = len(feature_kind(TRAINABLE_FEATURE_KIND).channels)


@dataclass(frozen=True)
class InputSpec:
    """What a model was built for: the store's feature and segment configuration."""

    n_mels: int
    frames: int
    channels: int = TRAINABLE_CHANNELS
    #: The store's full FeatureConfig as canonical JSON (sorted keys) for exact comparison.
    feature_config_json: str = ""
    #: Base hop between the store's windows (0 = unknown, not compared). The model does not
    #: depend on it, but it decides how utterances are cut for validation, test and predict:
    #: scoring windows cut with another hop is not the evaluation the model was selected by.
    hop: int = 0

    @classmethod
    def from_reader(cls, reader: Any) -> "InputSpec":
        """The spec of a store's segments (a ``StoreReader`` or a union of them): channels from
        the store's feature kind (serprep reads a schema 2 store, which has none, as log-Mel);
        a kind sertrain does not train on is refused in one line."""
        kind, channels = str(reader.feature_kind), tuple(reader.feature_channels)
        if kind != TRAINABLE_FEATURE_KIND:
            raise InputError(f"{getattr(reader, 'path', 'store')}: store features are of kind {kind!r} "
                             f"({len(channels)} channels); sertrain trains on {TRAINABLE_FEATURE_KIND} stores only")
        fc = reader.feature_config
        return cls(
            n_mels=int(fc.n_mels),
            frames=int(reader.segment_config.frames),
            channels=len(channels),
            feature_config_json=json.dumps(fc.to_dict(), sort_keys=True),
            hop=int(reader.segment_config.hop),
        )


def check_input_spec(built_for: InputSpec, store: InputSpec, store_name: str) -> None:
    """Refuse features a model was not built for, naming the first mismatch in one line."""
    if built_for.channels != store.channels:
        raise InputError(
            f"{store_name}: store has {store.channels} channels per frame but the model was built for {built_for.channels}"
        )
    if built_for.n_mels != store.n_mels:
        raise InputError(
            f"{store_name}: store has n_mels {store.n_mels} but the model was built for {built_for.n_mels}"
        )
    if built_for.frames != store.frames:
        raise InputError(
            f"{store_name}: store has {store.frames}-frame segments but the model was built for "
            f"{built_for.frames}"
        )
    if built_for.hop and store.hop and built_for.hop != store.hop:
        raise InputError(
            f"{store_name}: segment config mismatch: hop is {store.hop} in the store but "
            f"{built_for.hop} in the checkpoint"
        )
    if built_for.feature_config_json and store.feature_config_json:
        a = json.loads(built_for.feature_config_json)
        b = json.loads(store.feature_config_json)
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        if diff:
            k = diff[0]
            raise InputError(
                f"{store_name}: feature config mismatch: {k} is {b.get(k)!r} in the store but "
                f"{a.get(k)!r} in the checkpoint" + (f" (and {len(diff) - 1} more)" if len(diff) > 1 else "")
            )


def pooled_lengths(lengths: torch.Tensor, pool: int, out_size: int) -> torch.Tensor:
    """Valid lengths after a time pooling of ``pool`` (ceil, clamped to [1, out_size])."""
    if pool == 1:
        return lengths.clamp(1, out_size)
    return torch.div(lengths + pool - 1, pool, rounding_mode="floor").clamp(1, out_size)


def time_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """Boolean ``[B, size]``: True for valid steps."""
    return torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]


class ConvBlock(nn.Module):
    """mask -> conv (time x freq, 'same' padding) -> batch norm -> max-pool -> LeakyReLU.

    Pooling before the activation is exact (max-pool commutes with a monotonic activation)
    and makes the element-wise work 8x smaller after a 2x4 pool; on a CPU those memory-bound
    passes cost more than the convolutions of the small config.
    """

    def __init__(self, c_in: int, c_out: int, kernel: tuple[int, int], pool: tuple[int, int], slope: float):
        super().__init__()
        # Odd kernels keep the size; bias is redundant before batch norm.
        self.conv = nn.Conv2d(c_in, c_out, kernel, padding=(kernel[0] // 2, kernel[1] // 2), bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.pool_size = tuple(pool)
        self.pool = nn.MaxPool2d(pool) if tuple(pool) != (1, 1) else nn.Identity()
        self.act = nn.LeakyReLU(slope)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Zero the padded steps of the input: the previous block left the BN shift there,
        # which this conv would spread into real frames. Masking every block's input makes
        # padding behave like the conv's own zero padding, whatever the padding held.
        x = x * time_mask(lengths, x.shape[2])[:, None, :, None].to(x.dtype)
        x = self.act(self.pool(self.bn(self.conv(x))))
        return x, pooled_lengths(lengths, self.pool_size[0], x.shape[2])


class MaskedAttention(nn.Module):
    """Additive attention pooling over time: ``softmax(v . tanh(W h))`` over valid steps only."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.proj = nn.Linear(dim, hidden)
        self.score = nn.Linear(hidden, 1, bias=False)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.score(torch.tanh(self.proj(h))).squeeze(-1)  # [B, T]
        scores = scores.float().masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=1)  # exactly 0 on padded steps
        pooled = torch.bmm(weights.unsqueeze(1).to(h.dtype), h).squeeze(1)
        return pooled, weights


class SERModel(nn.Module):
    """CNN -> BLSTM -> masked attention -> shared embedding -> emotion head and task heads.

    ``forward(x, valid)`` takes normalised features ``[B, 3, frames, n_mels]`` and valid
    frame counts ``[B]`` and returns a dict of outputs (``emotion`` logits, and one entry per
    auxiliary head: ``gender``, ``speaker`` when ``n_speakers > 0``, and ``arousal`` etc.
    ``[B, 1]`` when those tasks are in ``tasks``), the attention ``weights`` ``[B, T']`` and
    ``lengths`` ``[B]`` (valid steps after pooling).

    The auxiliary heads come from the task registry (:func:`sertrain.tasks.head_sizes`): the
    gender and speaker heads always (their state-dict keys ``gender_head.*`` and
    ``speaker_head.*`` are those of every older checkpoint), the others when ``tasks``
    (the active auxiliary tasks) name them. Each is the attribute ``<task>_head``.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        spec: InputSpec,
        n_emotions: int,
        n_genders: int,
        n_speakers: int,
        tasks: Sequence[str] = (),
    ):
        super().__init__()
        self.cfg = cfg
        self.spec = spec
        self.n_emotions, self.n_genders, self.n_speakers = n_emotions, n_genders, n_speakers
        #: ``{task: outputs}`` of the auxiliary heads, in registry order.
        self.task_heads = head_sizes({"genders": n_genders, "speakers": n_speakers}, tuple(tasks))
        blocks = []
        c_in, t, f = spec.channels, spec.frames, spec.n_mels
        for c_out, kernel, pool in zip(cfg.conv_channels, cfg.conv_kernels, cfg.conv_pools):
            if kernel[0] % 2 == 0 or kernel[1] % 2 == 0:
                raise InputError(f"model: conv kernels must be odd to keep the size, got {kernel}")
            blocks.append(ConvBlock(c_in, c_out, tuple(kernel), tuple(pool), cfg.leaky_slope))
            c_in, t, f = c_out, t // pool[0], f // pool[1]
            if t < 1 or f < 1:
                raise InputError(
                    f"model: pooling {cfg.conv_pools} leaves no time/frequency bins for input "
                    f"{spec.frames} frames x {spec.n_mels} mels"
                )
        self.blocks = nn.ModuleList(blocks)
        self.out_steps = t
        self.linear = nn.Sequential(nn.Linear(c_in * f, cfg.linear_dim), nn.LeakyReLU(cfg.leaky_slope))
        self.lstm = nn.LSTM(
            cfg.linear_dim,
            cfg.lstm_hidden,
            num_layers=cfg.lstm_layers,
            batch_first=True,
            bidirectional=True,
            dropout=cfg.dropout if cfg.lstm_layers > 1 else 0.0,
        )
        self.attention = MaskedAttention(2 * cfg.lstm_hidden, cfg.attention_dim)
        self.embedding = nn.Sequential(
            nn.Linear(2 * cfg.lstm_hidden, cfg.embedding_dim),
            nn.LeakyReLU(cfg.leaky_slope),
            nn.Dropout(cfg.dropout),
        )
        self.emotion_head = nn.Linear(cfg.embedding_dim, n_emotions)
        # Created in registry order: the order fixes the random initial weights. Speaker
        # classes are the fold's training speakers only (test speakers are unseen); without
        # any, speaker_head is None.
        for name in TASKS:
            size = self.task_heads.get(name)
            if size is not None or TASKS[name].legacy_head:
                setattr(self, f"{name}_head", nn.Linear(cfg.embedding_dim, size) if size else None)

    def forward(self, x: torch.Tensor, valid: torch.Tensor,
                valid_host: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Logits etc. of ``x`` (see the class docstring).

        ``valid_host``: the same valid counts as a CPU tensor, when ``valid`` lives on the
        accelerator. Packing needs the lengths on the host; computed from ``valid_host`` (or
        from ``valid`` itself when it is a CPU tensor) by :meth:`packing_lengths`, they never
        travel back from the device, so a step does not wait for the GPU. Without either, the
        device lengths are copied to the host (a synchronisation).
        """
        if x.dim() != 4 or x.shape[1] != self.spec.channels or x.shape[3] != self.spec.n_mels:
            raise InputError(
                f"model: expected input [B, {self.spec.channels}, frames, {self.spec.n_mels}], got {list(x.shape)}"
            )
        if valid_host is None and valid.device.type == "cpu":
            valid_host = valid
        host_lengths = self.packing_lengths(valid_host, x.shape[2]) if valid_host is not None else None
        if valid.device.type == "cpu" and x.device.type != "cpu":  # host counts: a non-blocking copy
            from .data import host_to_device

            (valid,) = host_to_device([valid], x.device)
        lengths = valid.to(device=x.device, dtype=torch.long).clamp(1, x.shape[2])
        # channels_last lets oneDNN/cuDNN pick their fast NHWC kernels (about 1.4x per CPU step).
        x = x.contiguous(memory_format=torch.channels_last)
        compiled = self._compiled if self.training else None
        h, lengths = (compiled[0] if compiled else self.frontend)(x, lengths)
        h = self.blstm(h, host_lengths if host_lengths is not None else lengths.cpu())
        result = (compiled[1] if compiled else self.head)(h, lengths)
        result["lengths"] = lengths
        return result

    def blstm(self, h: torch.Tensor, host_lengths: torch.Tensor) -> torch.Tensor:
        """The BLSTM over the valid steps of ``h`` ``[B, T', D]`` (``host_lengths``: a CPU tensor).

        Packing keeps padded steps out of both directions (the backward direction would
        otherwise start in the padding). This is ``pack_padded_sequence(enforce_sorted=False)``
        -> LSTM -> ``pad_packed_sequence`` step by step, with the same sort and the same
        values, but the batch order and its inverse are computed on the host and sent in one
        non-blocking copy: torch's functions copy the order to the device with a blocking
        copy and back with ``.cpu()``, two waits for the GPU per forward pass.
        """
        lengths, order = torch.sort(host_lengths, descending=True)  # as pack_padded_sequence sorts
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel())
        perm = torch.stack([order, inverse])
        if h.device.type == "cuda":
            perm = perm.pin_memory()
        perm = perm.to(h.device, non_blocking=True)
        packed = pack_padded_sequence(h.index_select(0, perm[0]), lengths, batch_first=True, enforce_sorted=True)
        out, _ = self.lstm(packed)
        padded, _ = pad_packed_sequence(out, batch_first=True, total_length=h.shape[1])
        return padded.index_select(0, perm[1])

    def frontend(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CNN blocks and the per-step linear projection: ``[B, C, T, M]`` -> ``[B, T', linear_dim]``
        and the valid lengths after pooling (fixed shapes: what :meth:`enable_compile` compiles)."""
        for block in self.blocks:
            x, lengths = block(x, lengths)
        b, c, t, f = x.shape
        return self.linear(x.permute(0, 2, 1, 3).reshape(b, t, c * f)), lengths

    def head(self, h: torch.Tensor, lengths: torch.Tensor) -> dict[str, torch.Tensor]:
        """Masked attention over the BLSTM output, the shared embedding and the heads."""
        mask = time_mask(lengths, h.shape[1])
        pooled, weights = self.attention(h, mask)
        emb = self.embedding(pooled)
        result = {"emotion": self.emotion_head(emb)}
        for name in self.task_heads:
            result[name] = getattr(self, f"{name}_head")(emb)
        result["weights"], result["embedding"] = weights, emb
        return result

    def packing_lengths(self, valid: torch.Tensor, frames: int) -> torch.Tensor:
        """Valid BLSTM steps per segment as a CPU int64 tensor, from valid frame counts on the
        host: the same integer arithmetic as the blocks apply on the device (clamp to
        ``[1, frames]``, then each time pooling's ceil division), so the result equals the
        ``lengths`` output without reading it back from the device."""
        lengths = valid.to(device="cpu", dtype=torch.long).clamp(1, frames)
        t = frames
        for block in self.blocks:
            t = t // block.pool_size[0]  # MaxPool2d(kernel = stride = pool): floor
            lengths = pooled_lengths(lengths, block.pool_size[0], t)
        return lengths

    #: (frontend, head) compiled by :meth:`enable_compile`, used in training mode; None = eager.
    _compiled: tuple[Any, Any] | None = None

    def enable_compile(self, mode: str = "default") -> "SERModel":
        """Compile the fixed-shape parts of the training forward pass with ``torch.compile``:
        :meth:`frontend` (convolutions, batch norm, pooling, masks, projection) and :meth:`head`.
        The packed BLSTM between them stays eager (its packed shape changes with every batch's
        lengths). Only training mode uses the compiled code (evaluation runs other batch sizes
        and batch-norm behaviour; it stays eager and uncompiled). ``mode`` is torch.compile's
        (``default``, ``reduce-overhead``: CUDA graphs, ``max-autotune``). Weights, state-dict
        keys and checkpoints are unchanged."""
        self._compiled = (torch.compile(self.frontend, mode=mode, dynamic=False),
                          torch.compile(self.head, mode=mode, dynamic=False))
        return self


def build_model(
    cfg: ModelConfig, spec: InputSpec, n_emotions: int, n_genders: int, n_speakers: int,
    tasks: Sequence[str] = (),
) -> SERModel:
    """Construct :class:`SERModel` (one code path for every named config), conv weights NHWC.
    ``tasks``: the active auxiliary tasks (``cfg.loss.active_tasks()``), which decide the
    heads beyond gender and speaker."""
    return SERModel(cfg, spec, n_emotions, n_genders, n_speakers, tasks).to(memory_format=torch.channels_last)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def forward_macs(cfg: ModelConfig, spec: InputSpec) -> float:
    """Approximate multiply-adds of one segment's forward pass (conv + linear + LSTM)."""
    macs = 0.0
    c_in, t, f = spec.channels, spec.frames, spec.n_mels
    for c_out, k, p in zip(cfg.conv_channels, cfg.conv_kernels, cfg.conv_pools):
        macs += t * f * c_out * c_in * k[0] * k[1]
        c_in, t, f = c_out, t // p[0], f // p[1]
    macs += t * c_in * f * cfg.linear_dim
    macs += t * 2 * 4 * cfg.lstm_hidden * (cfg.linear_dim + cfg.lstm_hidden) * cfg.lstm_layers
    return float(macs)


def training_flops(cfg: ModelConfig, spec: InputSpec, n_emotions: int = 4, n_genders: int = 2,
                   n_speakers: int = 8, batch: int = 2) -> float:
    """FLOPs of one full-length segment's training step, forward + backward, counted by
    ``torch.utils.flop_counter.FlopCounterMode`` on the CPU: every convolution and matrix
    product (linear layers, the BLSTM's gates, attention), 2 FLOPs per multiply-add; not the
    element-wise work (batch norm, activations, pooling, optimiser), which is memory-bound.
    Counted on the CPU because there the BLSTM runs as matrix products the counter sees (on
    CUDA it is one cuDNN call it does not count); the count is the same on any device. ``batch``
    segments of random features, all ``spec.frames`` long, divided by ``batch``."""
    from torch.utils.flop_counter import FlopCounterMode

    gen = torch.Generator().manual_seed(0)
    model = build_model(cfg, spec, n_emotions, n_genders, n_speakers).train()
    x = torch.randn(batch, spec.channels, spec.frames, spec.n_mels, generator=gen)
    valid = torch.full((batch,), spec.frames, dtype=torch.long)
    counter = FlopCounterMode(display=False)
    with counter:
        out = model(x, valid)
        loss = out["emotion"].float().logsumexp(1).mean() + out["gender"].float().logsumexp(1).mean()
        if "speaker" in out:
            loss = loss + out["speaker"].float().logsumexp(1).mean()
        loss.backward()
    return counter.get_total_flops() / batch


__all__ = [
    "InputSpec",
    "SERModel",
    "build_model",
    "check_input_spec",
    "count_parameters",
    "forward_macs",
    "pooled_lengths",
    "time_mask",
    "training_flops",
]
