"""IF's UNets: ``UNet`` (stage I) and ``SuperResUNet`` (stages II/III).

The ADM/guided-diffusion UNet with IF's text conditioning (deepfloyd_if/model/unet.py), re-implemented with
the official module names, so an official ``pytorch_model.bin`` loads with ``strict=True``:

* FiLM ResBlocks (``use_scale_shift_norm``), parameter-free resampling (avg-pool / nearest) inside ResBlocks;
* fused attention: text tokens are projected (``encoder_kv``) and **prepended** to the keys and values of
  the image self-attention, one softmax over [L text + HW image] keys, no text mask (as the official code);
* attention pooling of the raw text states into the time embedding (``encoder_pooling``);
* stage II/III: the (noise-augmented) low-res image is concatenated to x_t, the augmentation timestep is
  embedded (``aug_proj``) and added, one GELU on the summed embedding, ResBlock outputs scaled by 0.7071;
* 6 output channels: eps and the learned-range variance interpolation value v in [-1, 1].

Attention runs through ``F.scaled_dot_product_attention``; kernel-1 Conv1d layers run as matmuls on tokens.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from ..config import UNetConfig
from ..nn import GELU, GroupNorm32, TokenLinear, attention, timestep_embedding, zero_module
from .attention_position import add_position, attach_position
from .text_adapter import adapt_pooled, adapt_text, attach_text_adapter, fold_white_attn

SKIP_SCALE = 0.7071  # IF's constant (not exactly 1/sqrt(2)); https://arxiv.org/abs/2104.07636


class ResBlock(nn.Module):
    """GN -> GELU -> [resample] -> conv3x3 -> FiLM(GN) -> GELU -> conv3x3, plus a (1x1) skip."""

    def __init__(self, ch: int, emb_ch: int, out_ch: int, *, dropout: float = 0.0, up: bool = False,
                 down: bool = False, efficient_activation: bool = False, scale_skip: bool = False):
        super().__init__()
        self.up, self.down, self.scale_skip = up, down, scale_skip
        self.in_layers = nn.Sequential(GroupNorm32(ch), GELU(), nn.Conv2d(ch, out_ch, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.Identity() if efficient_activation else GELU(),
                                        nn.Linear(emb_ch, 2 * out_ch))
        self.out_layers = nn.Sequential(GroupNorm32(out_ch), GELU(), nn.Dropout(dropout),
                                        zero_module(nn.Conv2d(out_ch, out_ch, 3, padding=1)))
        self.skip_connection = nn.Identity() if out_ch == ch else nn.Conv2d(ch, out_ch, 1)

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            return F.interpolate(x, scale_factor=2, mode="nearest")
        if self.down:
            return F.avg_pool2d(x, 2)
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        norm_in, act_in, conv_in = self.in_layers
        h = act_in(norm_in(x))  # [B, C, H, W]
        h = conv_in(self._resample(h))  # [B, C', H', W']
        x = self._resample(x)
        scale, shift = self.emb_layers(emb).to(h.dtype)[:, :, None, None].chunk(2, dim=1)  # [B, C', 1, 1]
        norm_out, act_out, drop, conv_out = self.out_layers
        h = torch.addcmul(shift, norm_out(h), 1 + scale)  # FiLM: GN(h) * (1 + scale) + shift
        h = conv_out(drop(act_out(h)))
        h = h.add_(self.skip_connection(x))  # in place on the conv output: autograd needs neither operand
        return h.mul_(SKIP_SCALE) if self.scale_skip else h


class AttentionBlock(nn.Module):
    """Self-attention over the image with the text tokens joined to its keys and values (Imagen style)."""

    def __init__(self, ch: int, head_ch: int, encoder_channels: int, *, disable_self_attention: bool = False,
                 position: bool = False):
        super().__init__()
        if ch % head_ch:
            raise ValueError(f"attention width {ch} is not divisible by the head width {head_ch}")
        self.heads, self.head_ch = ch // head_ch, head_ch
        self.self_attention = not disable_self_attention
        self.norm = GroupNorm32(ch)
        # IF's kernel-1 Conv1d projections, as linear maps over tokens called through their forward (adapters wrap them)
        self.qkv = TokenLinear(ch, 3 * ch if self.self_attention else ch)
        self.encoder_kv = TokenLinear(encoder_channels, 2 * ch)
        self.norm_encoder = GroupNorm32(encoder_channels)
        self.proj_out = zero_module(TokenLinear(ch, ch))
        self.text_maps: list[torch.Tensor] | None = None  # a list while UNet.record_text_attention is on
        if position:  # not in IF (models/attention_position.py); zero-initialised: starts as the block without it
            attach_position(self, ch)

    def text_keys_values(self, encoder_out: torch.Tensor) -> torch.Tensor:
        """The text tokens' keys and values, [B, L, 2C] (head-interleaved), from encoder_out [B, C_enc, L]:
        GroupNorm over [B, C_enc, L] (channel groups across all L tokens), then the projection. Prompt-only
        work: ``UNet.encode_text`` does it once per sampling run."""
        return self.encoder_kv(self.norm_encoder(encoder_out).transpose(1, 2))

    def forward(self, x: torch.Tensor, encoder_out: torch.Tensor | None,
                text_kv: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, C, H, W]; the text as ``encoder_out`` [B, C_enc, L], or as its ``text_keys_values``."""
        b, c, hgt, wid = x.shape
        n, d = self.heads, self.head_ch
        tokens = self.norm(x).permute(0, 2, 3, 1).reshape(b, hgt * wid, c)  # [B, HW, C] (free if channels_last)
        if hasattr(self, "pos_proj"):
            tokens = add_position(self, tokens, hgt, wid)
        # qkv rows are head-interleaved: [q_h0, k_h0, v_h0, q_h1, ...], 64 rows each
        qkv = self.qkv(tokens)  # [B, HW, 3C]
        parts = 3 if self.self_attention else 1
        qkv = qkv.view(b, hgt * wid, n, parts, d).permute(3, 0, 2, 1, 4)  # [parts, B, n, HW, d]
        if text_kv is None:
            text_kv = self.text_keys_values(encoder_out.to(x.dtype))
        ekv = text_kv.view(b, -1, n, 2, d).permute(3, 0, 2, 1, 4)  # [2, B, n, L, d]
        q = qkv[0]
        if self.self_attention:
            k = torch.cat([ekv[0], qkv[1]], dim=2)  # [B, n, L + HW, d]: text tokens first
            v = torch.cat([ekv[1], qkv[2]], dim=2)
        else:
            k, v = ekv[0], ekv[1]
        if self.text_maps is None:
            a = attention(q, k, v)  # [B, n, HW, d]
        else:  # recording (UNet.record_text_attention): the same attention with its weights kept, in fp32
            w = torch.softmax((q.float() @ k.float().transpose(-1, -2)) * d ** -0.5, dim=-1)  # [B, n, HW, L(+HW)]
            maps = w[..., :ekv.shape[3]].mean(1).transpose(1, 2)  # [B, L, HW]: each pixel's weight on each token
            self.text_maps.append(maps.reshape(b, -1, hgt, wid))  # [B, L, H, W]
            a = (w @ v.float()).to(v.dtype)
        a = a.transpose(1, 2).reshape(b, hgt * wid, c)  # [B, HW, C]
        h = self.proj_out(a).view(b, hgt, wid, c).permute(0, 3, 1, 2)  # [B, C, H, W] (NHWC memory)
        if x.is_contiguous():  # an NCHW model (UNet.set_layout): the next conv gets NCHW, not a mix (4% of a step)
            h = h.contiguous()
        return h.add_(x)


class AttentionPooling(nn.Module):
    """CLIP-style attention pooling of text tokens to one vector (IF's ``encoder_pooling.1``).

    A class token (mean of the tokens + a learned position) attends over [cls; tokens]; only its output
    is returned. Computed algebraically without projecting every token (same result, ~30x fewer FLOPs):
    score_hj = q_h . (W_k,h x_j + b_k,h) = (W_k,h^T q_h) . x_j + q_h . b_k,h, and
    out_h = sum_j a_hj (W_v,h x_j + b_v,h) = W_v,h (sum_j a_hj x_j) + b_v,h   (softmax weights sum to 1).
    """

    def __init__(self, heads: int, dim: int):
        super().__init__()
        self.heads, self.dim = heads, dim
        self.positional_embedding = nn.Parameter(torch.empty(1, dim))
        if not self.positional_embedding.is_meta:  # arithmetic on the meta device imports torch._dynamo (1 s)
            nn.init.normal_(self.positional_embedding, std=dim**-0.5)
        self.k_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, length, dim = x.shape
        n, d = self.heads, dim // self.heads
        cls = x.mean(dim=1, keepdim=True) + self.positional_embedding.to(x.dtype)  # [B, 1, D]
        xs = torch.cat([cls, x], dim=1)  # [B, L+1, D]
        q = self.q_proj(cls[:, 0]).view(b, n, d)  # [B, n, d]
        wk = self.k_proj.weight.view(n, d, dim)  # [n, d, D]
        qk = torch.einsum("bnd,ndD->bnD", q, wk)  # [B, n, D] = W_k,h^T q_h
        qb = (q * self.k_proj.bias.view(n, d)).sum(-1, keepdim=True)  # [B, n, 1]
        scores = (torch.einsum("bnD,blD->bnl", qk, xs) + qb) / math.sqrt(d)  # [B, n, L+1]
        w = torch.softmax(scores.float(), dim=-1).to(x.dtype)
        z = torch.einsum("bnl,blD->bnD", w, xs)  # [B, n, D] attention-weighted tokens
        wv = self.v_proj.weight.view(n, d, dim)  # [n, d, D]
        out = torch.einsum("bnD,ndD->bnd", z, wv) + self.v_proj.bias.view(n, d)  # [B, n, d]
        return out.reshape(b, dim)


class UNet(nn.Module):
    """IF stage I UNet. ``forward(x, t, text_emb)`` -> [B, out_channels, H, W] (eps and variance values)."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        mc, ted = cfg.model_channels, cfg.time_embed_dim
        attn_ds, no_self = cfg.attention_ds, tuple(cfg.image_size // r for r in cfg.disable_self_attentions)
        res = dict(emb_ch=ted, dropout=cfg.dropout, efficient_activation=cfg.efficient_activation,
                   scale_skip=cfg.scale_skip_connection)

        def attn(ch, ds):
            return AttentionBlock(ch, cfg.num_head_channels, cfg.encoder_channels,
                                  disable_self_attention=ds in no_self, position=cfg.attention_position)

        self.time_embed = nn.Sequential(nn.Linear(mc, ted), GELU(), nn.Linear(ted, ted))
        ch = mc * cfg.channel_mult[0]
        self.input_blocks = nn.ModuleList([nn.ModuleList([nn.Conv2d(cfg.in_channels, ch, 3, padding=1)])])
        skip_chs, ds = [ch], 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks[level]):
                layers = [ResBlock(ch, out_ch=mc * mult, **res)]
                ch = mc * mult
                if ds in attn_ds:
                    layers.append(attn(ch, ds))
                self.input_blocks.append(nn.ModuleList(layers))
                skip_chs.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(nn.ModuleList([ResBlock(ch, out_ch=ch, down=True, **res)]))
                skip_chs.append(ch)
                ds *= 2
        self.middle_block = nn.ModuleList([ResBlock(ch, out_ch=ch, **res), attn(ch, ds),
                                           ResBlock(ch, out_ch=ch, **res)])
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks[level] + 1):
                layers = [ResBlock(ch + skip_chs.pop(), out_ch=mc * mult, **res)]
                ch = mc * mult
                if ds in attn_ds:
                    layers.append(attn(ch, ds))
                if level and i == cfg.num_res_blocks[level]:
                    layers.append(ResBlock(ch, out_ch=ch, up=True, **res))
                    ds //= 2
                self.output_blocks.append(nn.ModuleList(layers))
        self.out = nn.Sequential(GroupNorm32(ch), GELU(),
                                 zero_module(nn.Conv2d(mc * cfg.channel_mult[0], cfg.out_channels, 3, padding=1)))
        self.encoder_pooling = nn.Sequential(nn.LayerNorm(cfg.encoder_dim),
                                             AttentionPooling(cfg.att_pool_heads, cfg.encoder_dim),
                                             nn.Linear(cfg.encoder_dim, ted), nn.LayerNorm(ted))
        self.encoder_proj = (nn.Identity() if cfg.encoder_dim == cfg.encoder_channels
                             else nn.Linear(cfg.encoder_dim, cfg.encoder_channels))
        attach_text_adapter(self, cfg.adapter)  # not in IF: absent unless the config asks for it
        self.attention_blocks = [m for m in self.modules() if isinstance(m, AttentionBlock)]  # no new state
        for i, blk in enumerate(self.attention_blocks):
            blk.kv_index = i  # its entry in encode_text's per-block keys and values
        self.set_layout(channels_last=True)

    def set_layout(self, channels_last: bool) -> UNet:
        """Run NHWC (oneDNN's native conv layout; attention tokens become free views) or NCHW: an execution choice,
        not part of the config. Sampling and fp32 training are fastest channels-last. Half-precision training on a
        CPU is faster NCHW: PyTorch's channels-last GroupNorm backward is up to 40x slower than its NCHW one in
        bf16 (45 ms against 1.1 ms at 16x64x64x64), more than the convolutions gain (an if64-t5xxl training step
        in bf16: 4.30 -> 3.89 s; under bf16 autocast 4.34 -> 4.07 s; 2 AMD EPYC cores)."""
        self.channels_last = channels_last
        return self.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)

    @property
    def dtype(self) -> torch.dtype:
        return self.time_embed[0].weight.dtype

    @contextmanager
    def record_text_attention(self):
        """Within the block, every attention block's forward appends its pixels' attention weights on the text
        tokens ([B, L, H, W], the mean over heads) to the yielded list, in the order the blocks run (layout
        guidance reads them; gradients flow through them)."""
        maps: list[torch.Tensor] = []
        blocks = [m for m in self.modules() if isinstance(m, AttentionBlock)]
        for m in blocks:
            m.text_maps = maps
        try:
            yield maps
        finally:
            for m in blocks:
                m.text_maps = None

    # -- inputs -----------------------------------------------------------------------------------
    def check_inputs(self, x: torch.Tensor, text_emb: torch.Tensor) -> None:
        cfg = self.cfg
        expect_in = cfg.in_channels - (3 if cfg.super_res else 0)
        if x.ndim != 4 or x.shape[1] != expect_in:
            raise ValueError(f"x must be [B, {expect_in}, H, W]; got {tuple(x.shape)}")
        div = cfg.min_divisor
        if x.shape[2] % div or x.shape[3] % div:
            raise ValueError(
                f"image size {x.shape[2]}x{x.shape[3]} cannot be divided by {div} (this UNet has "
                f"{len(cfg.channel_mult)} levels): use a height and width that are multiples of {div}"
            )
        if text_emb.ndim != 3 or text_emb.shape[-1] != cfg.encoder_dim:
            raise ValueError(
                f"text_emb must be [B, L, {cfg.encoder_dim}] for this model (encoder_dim={cfg.encoder_dim}); "
                f"got {tuple(text_emb.shape)}: encode the prompt with the text encoder the model was trained with"
            )
        if text_emb.shape[0] != x.shape[0]:
            raise ValueError(f"batch mismatch: x has {x.shape[0]} images, text_emb {text_emb.shape[0]} prompts")

    def encode_text(self, text_emb: torch.Tensor, pooled_text_emb: torch.Tensor | None = None,
                    keys_values: bool = True):
        """Text-only work of a forward pass, reusable across sampling steps (IF's ``use_cache``).

        Returns (encoder_out [B, C_enc, L] for cross-attention, encoder_pool [B, ted] for the embedding, and each
        attention block's text keys and values: a tuple of [B, L, 2C], so that no step projects the prompt again;
        left out with ``keys_values=False`` (a single forward pass: each block computes its own) and for a model
        sharded by FSDP, whose blocks hold their weights only inside their own forward).
        ``pooled_text_emb`` (IF's ``timestep_text_emb``, e.g. a style prompt) feeds the pooling path only.
        """
        text_emb = text_emb.to(self.dtype)
        attn_src, pool_src = adapt_text(self, self.cfg.adapter, text_emb)  # IF's configs: both are text_emb
        encoder_out = self.encoder_proj(attn_src).transpose(1, 2)  # [B, C_enc, L]
        if pooled_text_emb is not None:  # a style prompt: through the same input map as the prompt's own states
            pool_src = adapt_pooled(self, self.cfg.adapter, pooled_text_emb.to(self.dtype))
        pooled = self.encoder_pooling(pool_src)  # [B, ted]
        if not keys_values or self.weights_streamed or _sharded(self.attention_blocks):
            return encoder_out, pooled
        text_kv = tuple(blk.text_keys_values(encoder_out) for blk in self.attention_blocks)
        return encoder_out, pooled, text_kv  # per block [B, L, 2C]

    def fold_white_attn(self) -> None:
        """See :func:`~pixelcascade.models.text_adapter.fold_white_attn`."""
        fold_white_attn(self, self.cfg.adapter)

    # -- forward ------------------------------------------------------------------------------------
    # training: keep only each block's input and recompute the block's inside during the backward pass (about a
    # third more compute for a fraction of the activation memory); set by train.grad_checkpointing
    gradient_checkpointing = False
    # offload.WeightStreamer: a block's weights are on the device only inside its own forward, so the text
    # keys/values are not precomputed for all blocks (each block projects its own)
    weights_streamed = False

    def _run(self, h: torch.Tensor, emb: torch.Tensor, encoder_out: torch.Tensor,
             text_kv: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
        if self.channels_last:  # NHWC: oneDNN's native conv layout, and attention tokens become free views
            h = h.contiguous(memory_format=torch.channels_last)
        apply = _apply
        if self.gradient_checkpointing and torch.is_grad_enabled():
            apply = _apply_checkpointed
        skips = []
        for block in self.input_blocks:
            h = apply(block, h, emb, encoder_out, text_kv)
            skips.append(h)
        h = apply(self.middle_block, h, emb, encoder_out, text_kv)
        for block in self.output_blocks:
            h = apply(block, torch.cat([h, skips.pop()], dim=1), emb, encoder_out, text_kv)
        return self.out(h).contiguous()

    def _embed(self, t: torch.Tensor, encoder_pool: torch.Tensor, extra: torch.Tensor | None = None):
        emb = self.time_embed(timestep_embedding(t, self.cfg.model_channels).to(self.dtype))  # [B, ted]
        emb = emb + encoder_pool.to(emb.dtype)
        if extra is not None:
            emb = emb + extra.to(emb.dtype)
        return F.gelu(emb) if self.cfg.efficient_activation else emb

    def forward(self, x: torch.Tensor, t: torch.Tensor, text_emb: torch.Tensor | None = None, *,
                text_cond: tuple | None = None,
                pooled_text_emb: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, 3, H, W]; t: [B] float timesteps in [0, 999]; text_emb: [B, L, encoder_dim].

        ``text_cond`` (from ``encode_text``) replaces ``text_emb`` to skip the text work.
        """
        if text_cond is None:
            self.check_inputs(x, text_emb)
            text_cond = self.encode_text(text_emb, pooled_text_emb, keys_values=False)
        encoder_out, encoder_pool, *text_kv = text_cond  # text_kv: absent in a (encoder_out, pool) pair
        t = _as_batch(t, x)
        return self._run(x.to(self.dtype), self._embed(t, encoder_pool), encoder_out, *text_kv)


class SuperResUNet(UNet):
    """IF stage II/III UNet: x_t concatenated with the (already noise-augmented) up-sampled low-res image.

    ``forward(x, t, text_emb, low_res=..., aug_t=...)`` where ``low_res`` is [B, 3, H, W] at x's size (the
    pipeline up-samples and noises it, see ``diffusion.guidance.noise_augment``) and ``aug_t`` [B] are the
    integer augmentation timesteps (``int(aug_level * 1000)``).
    """

    def __init__(self, cfg: UNetConfig):
        super().__init__(cfg)
        mc, ted = cfg.model_channels, cfg.time_embed_dim
        self.aug_proj = nn.Sequential(nn.Linear(mc, ted), GELU(), nn.Linear(ted, ted))

    def forward(self, x: torch.Tensor, t: torch.Tensor, text_emb: torch.Tensor | None = None, *,
                low_res: torch.Tensor, aug_t: torch.Tensor,
                text_cond: tuple | None = None,
                pooled_text_emb: torch.Tensor | None = None) -> torch.Tensor:
        if low_res.shape[0] != x.shape[0] or low_res.shape[1] != 3 or low_res.shape[2:] != x.shape[2:]:
            raise ValueError(
                f"low_res must be the up-sampled, noise-augmented image at x's size {tuple(x.shape)}; got "
                f"{tuple(low_res.shape)} (up-sample it with diffusion.guidance.noise_augment)"
            )
        if text_cond is None:
            self.check_inputs(x, text_emb)
            text_cond = self.encode_text(text_emb, pooled_text_emb, keys_values=False)
        encoder_out, encoder_pool, *text_kv = text_cond
        t, aug_t = _as_batch(t, x), _as_batch(aug_t, x)
        aug_emb = self.aug_proj(timestep_embedding(aug_t, self.cfg.model_channels).to(self.dtype))
        h = torch.cat([x, low_res.to(x.dtype)], dim=1).to(self.dtype)  # [B, 6, H, W]
        return self._run(h, self._embed(t, encoder_pool, aug_emb), encoder_out, *text_kv)


def _apply(block: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor, encoder_out: torch.Tensor,
           text_kv: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
    for layer in block:
        if isinstance(layer, ResBlock):
            h = layer(h, emb)
        elif isinstance(layer, AttentionBlock):
            h = layer(h, encoder_out, None if text_kv is None else text_kv[layer.kv_index])
        else:
            h = layer(h)
    return h


def _sharded(blocks: list[nn.Module]) -> bool:
    """Whether FSDP2 shards these blocks (their parameters are DTensors outside their forward)."""
    return any(type(p).__name__ == "DTensor" for blk in blocks[:1] for p in blk.parameters())


def _as_batch(t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(t, device=x.device)
    return t.expand(x.shape[0]) if t.ndim == 0 else t


def build_unet(cfg: UNetConfig) -> UNet:
    return SuperResUNet(cfg) if cfg.super_res else UNet(cfg)


def _apply_checkpointed(block: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor, encoder_out: torch.Tensor,
                        text_kv: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
    from torch.utils.checkpoint import checkpoint
    return checkpoint(_apply, block, h, emb, encoder_out, text_kv, use_reentrant=False)
