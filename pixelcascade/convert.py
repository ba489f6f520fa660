"""State-dict maps between official IF checkpoints, diffusers' ``UNet2DConditionModel`` and ours.

Ours uses the official module names, so an official ``pytorch_model.bin`` loads strictly as it is.
diffusers splits IF's head-interleaved ``qkv`` / ``encoder_kv`` 1x1 convs into ``to_q/to_k/to_v`` and
``add_k_proj/add_v_proj`` Linear layers (diffusers ``scripts/convert_if.py``); ``official_to_diffusers``
and ``diffusers_to_official`` do that both ways; configs too (``config_from_official_yaml``,
``config_from_diffusers``, ``infer_unet_config``). Reading model files is ``model_files.py``'s job.
"""

from __future__ import annotations

import torch

from .config import ConfigError, UNetConfig
from .models.unet import SKIP_SCALE
from .tensorfiles import CheckpointError, read_tensors, write_safetensors  # noqa: F401  (re-exported)

# --------------------------------------------------------------------------------------------------
# official <-> diffusers


def _block_map(cfg: UNetConfig) -> list[tuple[str, str, str]]:
    """(official prefix, diffusers prefix, kind) for every resnet / attention module, in model order."""
    out = [("input_blocks.0.0", "conv_in", "plain")]
    levels, attn = len(cfg.channel_mult), set(cfg.attention_ds)
    i, ds = 1, 1
    for lvl in range(levels):
        for k in range(cfg.num_res_blocks[lvl]):
            out.append((f"input_blocks.{i}.0", f"down_blocks.{lvl}.resnets.{k}", "res"))
            if ds in attn:
                out.append((f"input_blocks.{i}.1", f"down_blocks.{lvl}.attentions.{k}", "attn"))
            i += 1
        if lvl != levels - 1:
            out.append((f"input_blocks.{i}.0", f"down_blocks.{lvl}.downsamplers.0", "res"))
            i += 1
            ds *= 2
    out += [("middle_block.0", "mid_block.resnets.0", "res"), ("middle_block.1", "mid_block.attentions.0", "attn"),
            ("middle_block.2", "mid_block.resnets.1", "res")]
    j = 0
    for lvl in reversed(range(levels)):
        ul = levels - 1 - lvl
        has_attn = ds in attn
        for k in range(cfg.num_res_blocks[lvl] + 1):
            out.append((f"output_blocks.{j}.0", f"up_blocks.{ul}.resnets.{k}", "res"))
            if has_attn:
                out.append((f"output_blocks.{j}.1", f"up_blocks.{ul}.attentions.{k}", "attn"))
            if lvl and k == cfg.num_res_blocks[lvl]:
                out.append((f"output_blocks.{j}.{2 if has_attn else 1}", f"up_blocks.{ul}.upsamplers.0", "res"))
                ds //= 2
            j += 1
    out += [("out.0", "conv_norm_out", "plain"), ("out.2", "conv_out", "plain"),
            ("time_embed.0", "time_embedding.linear_1", "plain"), ("time_embed.2", "time_embedding.linear_2", "plain"),
            ("encoder_proj", "encoder_hid_proj", "plain"),
            ("encoder_pooling.0", "add_embedding.norm1", "plain"), ("encoder_pooling.1", "add_embedding.pool", "plain"),
            ("encoder_pooling.2", "add_embedding.proj", "plain"), ("encoder_pooling.3", "add_embedding.norm2", "plain"),
            ("aug_proj.0", "class_embedding.linear_1", "plain"), ("aug_proj.2", "class_embedding.linear_2", "plain")]
    return out


_RES = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
        "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
_ATTN = {"norm": "group_norm", "norm_encoder": "norm_cross", "proj_out": "to_out.0"}


_ATTN_OURS = {"qkv", "encoder_kv", *_ATTN}  # an attention block's modules on each side
_ATTN_DIFFUSERS = {"to_q", "to_k", "to_v", "add_k_proj", "add_v_proj", *_ATTN.values()}


def _refuse_unmapped(sd: dict[str, torch.Tensor], side: str, attn_modules: set[str], cfg: UNetConfig) -> None:
    """Every key of ``sd`` (``side``: "ours" or "diffusers") must have a place on the other side: a layer IF does
    not have (the text_* options, attention position) would otherwise be dropped, and the converted model would
    compute something else without a word."""
    blocks = [(dif if side == "diffusers" else off, kind) for off, dif, kind in _block_map(cfg)]
    prefixes = [p for p, _ in blocks]
    attn = {p for p, kind in blocks if kind == "attn"}
    unknown = []
    for key in sd:
        owner = next((p for p in prefixes if key.startswith(p + ".")), None)
        if owner is None:
            unknown.append(key)
        elif owner in attn:
            mod = key[len(owner) + 1:].rsplit(".", 1)[0]
            if mod not in attn_modules:
                unknown.append(key)
    if unknown:
        raise CheckpointError(f"{len(unknown)} weights have no counterpart in diffusers' IF UNet (first: "
                              f"{', '.join(unknown[:3])}): this model has layers IF does not (unet.text_* or "
                              "unet.attention_position options), so it cannot be converted without changing what "
                              "it computes")


def _split_heads(w: torch.Tensor, head_ch: int, parts: int) -> list[torch.Tensor]:
    """Rows [p0_h0, p1_h0, ..., p0_h1, ...] (chunks of head_ch) -> one tensor per part (diffusers split_attentions)."""
    chunks = w.reshape(-1, parts, head_ch, *w.shape[1:])  # [heads, parts, head_ch, ...]
    return [chunks[:, p].reshape(-1, *w.shape[1:]) for p in range(parts)]


def _join_heads(ws: list[torch.Tensor], head_ch: int) -> torch.Tensor:
    stacked = torch.stack([w.reshape(-1, head_ch, *w.shape[1:]) for w in ws], dim=1)  # [heads, parts, head_ch, ...]
    return stacked.reshape(-1, *ws[0].shape[1:])


def official_to_diffusers(sd: dict[str, torch.Tensor], cfg: UNetConfig) -> dict[str, torch.Tensor]:
    """An official-layout (= ours) state dict -> diffusers ``UNet2DConditionModel`` keys."""
    if cfg.encoder_dim == cfg.encoder_channels:
        raise ConfigError("diffusers' IF UNet always has encoder_hid_proj; encoder_dim == encoder_channels has none")
    _refuse_unmapped(sd, "ours", _ATTN_OURS, cfg)
    out: dict[str, torch.Tensor] = {}
    hc = cfg.num_head_channels
    for off, dif, kind in _block_map(cfg):
        sub = {k[len(off) + 1:]: v for k, v in sd.items() if k.startswith(off + ".")}
        for name, v in sub.items():
            mod, param = name.rsplit(".", 1) if "." in name else ("", name)
            if kind == "res":
                out[f"{dif}.{_RES[mod]}.{param}"] = v
            elif kind == "attn":
                if mod == "qkv":
                    w = v[..., 0] if v.ndim == 3 else v
                    parts = w.shape[0] // (sd[f"{off}.proj_out.weight"].shape[0])
                    names = ["to_q", "to_k", "to_v"][:parts]
                    for n, piece in zip(names, _split_heads(w, hc, parts)):
                        out[f"{dif}.{n}.{param}"] = piece
                elif mod == "encoder_kv":
                    w = v[..., 0] if v.ndim == 3 else v
                    for n, piece in zip(["add_k_proj", "add_v_proj"], _split_heads(w, hc, 2)):
                        out[f"{dif}.{n}.{param}"] = piece
                else:
                    out[f"{dif}.{_ATTN[mod]}.{param}"] = v[..., 0] if mod == "proj_out" and param == "weight" else v
            else:
                out[f"{dif}.{name}"] = v
    return out


def diffusers_to_official(sd: dict[str, torch.Tensor], cfg: UNetConfig) -> dict[str, torch.Tensor]:
    """diffusers ``UNet2DConditionModel`` keys -> the official layout (ours)."""
    _refuse_unmapped(sd, "diffusers", _ATTN_DIFFUSERS, cfg)
    out: dict[str, torch.Tensor] = {}
    hc = cfg.num_head_channels
    res_inv = {v: k for k, v in _RES.items()}
    attn_inv = {v: k for k, v in _ATTN.items()}
    for off, dif, kind in _block_map(cfg):
        sub = {k[len(dif) + 1:]: v for k, v in sd.items() if k.startswith(dif + ".")}
        if kind == "res":
            for name, v in sub.items():
                mod, param = name.rsplit(".", 1)
                out[f"{off}.{res_inv[mod]}.{param}"] = v
        elif kind == "attn":
            for param in ("weight", "bias"):
                qkv = [sub[f"{n}.{param}"] for n in ("to_q", "to_k", "to_v") if f"{n}.{param}" in sub]
                w = _join_heads(qkv, hc)
                out[f"{off}.qkv.{param}"] = w[..., None] if param == "weight" else w
                ekv = _join_heads([sub[f"add_k_proj.{param}"], sub[f"add_v_proj.{param}"]], hc)
                out[f"{off}.encoder_kv.{param}"] = ekv[..., None] if param == "weight" else ekv
                for d, o in attn_inv.items():
                    v = sub[f"{d}.{param}"]
                    out[f"{off}.{o}.{param}"] = v[..., None] if o == "proj_out" and param == "weight" else v
        else:
            for name, v in sub.items():
                out[f"{off}.{name}"] = v
    return out


def diffusers_config(cfg: UNetConfig) -> dict:
    """The ``UNet2DConditionModel`` config equivalent to ``cfg`` (diffusers convert_if.py rules)."""
    if cfg.channel_mult[0] != 1:
        raise ConfigError("diffusers embeds timesteps at block_out_channels[0]; IF at model_channels: "
                          "channel_mult[0] must be 1 to convert")
    attn_ds, ds = set(cfg.attention_ds), 1
    no_self = {cfg.image_size // r for r in cfg.disable_self_attentions}
    down, only_cross = [], []
    for _lvl in range(len(cfg.channel_mult)):
        down.append("SimpleCrossAttnDownBlock2D" if ds in attn_ds else "ResnetDownsampleBlock2D")
        only_cross.append(ds in no_self)
        ds *= 2
    ds //= 2
    up = ["SimpleCrossAttnUpBlock2D" if d == "SimpleCrossAttnDownBlock2D" else "ResnetUpsampleBlock2D"
          for d in reversed(down)]
    conf = dict(
        sample_size=cfg.image_size, in_channels=cfg.in_channels, out_channels=cfg.out_channels,
        down_block_types=down, up_block_types=up, mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        block_out_channels=[cfg.model_channels * m for m in cfg.channel_mult],
        layers_per_block=list(cfg.num_res_blocks), cross_attention_dim=cfg.encoder_channels,
        attention_head_dim=cfg.num_head_channels, use_linear_projection=False, upcast_attention=False,
        cross_attention_norm="group_norm", addition_embed_type="text",
        addition_embed_type_num_heads=cfg.att_pool_heads, encoder_hid_dim=cfg.encoder_dim,
        encoder_hid_dim_type="text_proj", resnet_time_scale_shift="scale_shift", act_fn="gelu",
        time_embedding_dim=cfg.time_embed_dim, only_cross_attention=only_cross,
        mid_block_only_cross_attention=ds in no_self,
    )
    if cfg.super_res:
        conf.update(class_embed_type="timestep", time_embedding_act_fn="gelu" if cfg.efficient_activation else None,
                    resnet_skip_time_act=cfg.efficient_activation)
    if cfg.scale_skip_connection:
        conf.update(resnet_out_scale_factor=1 / SKIP_SCALE, mid_block_scale_factor=1 / SKIP_SCALE)
    return conf


def config_from_diffusers(conf: dict) -> UNetConfig:
    """Our ``UNetConfig`` from a diffusers IF ``unet/config.json``."""
    boc = conf["block_out_channels"]
    mc = boc[0]
    lpb = conf.get("layers_per_block", 2)
    lpb = [lpb] * len(boc) if isinstance(lpb, int) else lpb
    res, attn_res = conf.get("sample_size", 64), []
    for lvl, kind in enumerate(conf["down_block_types"]):
        if "CrossAttn" in kind:
            attn_res.append(res // 2**lvl)
    head = conf.get("attention_head_dim", 64)
    super_res = conf.get("class_embed_type") == "timestep"
    only_cross = conf.get("only_cross_attention", False)
    only_cross = [only_cross] * len(boc) if isinstance(only_cross, bool) else only_cross
    return UNetConfig(
        image_size=res, in_channels=conf.get("in_channels", 3), out_channels=conf.get("out_channels", 6),
        model_channels=mc, channel_mult=tuple(c // mc for c in boc), num_res_blocks=tuple(lpb),
        attention_resolutions=tuple(attn_res), num_head_channels=head if isinstance(head, int) else head[0],
        encoder_dim=conf["encoder_hid_dim"], encoder_channels=conf["cross_attention_dim"],
        att_pool_heads=conf.get("addition_embed_type_num_heads", 64),
        efficient_activation=bool(conf.get("resnet_skip_time_act", False)),
        scale_skip_connection=abs(conf.get("resnet_out_scale_factor", 1.0) - 1.0) > 1e-6,
        disable_self_attentions=tuple(res // 2**lvl for lvl, oc in enumerate(only_cross) if oc),
        super_res=super_res,
    )


def config_from_official_yaml(params: dict) -> UNetConfig:
    """Our ``UNetConfig`` from the ``params:`` section of an official IF ``config.yml``."""
    def ints(v):
        return tuple(int(c) for c in v.split(",")) if isinstance(v, str) else tuple(v)
    mult = ints(params.get("channel_mult", (1, 2, 4, 8)))
    nrb = params["num_res_blocks"]
    nrb = (nrb,) * len(mult) if isinstance(nrb, int) else tuple(nrb)
    dsa = params.get("disable_self_attentions") or ()
    return UNetConfig(
        image_size=int(params["image_size"]), in_channels=int(params["in_channels"]),
        out_channels=int(params["out_channels"]), model_channels=int(params["model_channels"]),
        channel_mult=mult, num_res_blocks=nrb, attention_resolutions=ints(params["attention_resolutions"]),
        num_head_channels=int(params.get("num_head_channels", 64)), encoder_dim=int(params["encoder_dim"]),
        encoder_channels=int(params["encoder_channels"]), att_pool_heads=int(params.get("att_pool_heads", 64)),
        efficient_activation=bool(params.get("efficient_activation", False)),
        scale_skip_connection=bool(params.get("scale_skip_connection", False)),
        disable_self_attentions=ints(dsa) if dsa and dsa is not True else (),
        super_res=int(params["in_channels"]) == 6,
    )


# --------------------------------------------------------------------------------------------------
def infer_unet_config(sd: dict[str, torch.Tensor]) -> UNetConfig:
    """Infer an official-layout config from tensor shapes alone (head size and pooling heads assumed 64)."""
    try:
        ted, mc = sd["time_embed.0.weight"].shape
        in_ch = sd["input_blocks.0.0.weight"].shape[1]
        out_ch = sd["out.2.weight"].shape[0]
        enc_dim = sd["encoder_pooling.0.weight"].shape[0]
        enc_ch = sd["encoder_proj.weight"].shape[0] if "encoder_proj.weight" in sd else enc_dim
    except KeyError as e:
        raise CheckpointError(f"cannot infer a UNet config: key {e} is missing; is this an IF UNet?") from None
    # Decoder levels are delimited by their up-sampling ResBlock (an extra ResBlock at sub-index 1 or 2),
    # which makes the layout unambiguous even where two levels share a width.
    levels, j, cur = [], 0, []
    while f"output_blocks.{j}.0.in_layers.2.weight" in sd:
        cur.append(j)
        sub = [k for k in (1, 2) if f"output_blocks.{j}.{k}.in_layers.2.weight" in sd]
        if sub:
            levels.append(cur)
            cur = []
        j += 1
    levels.append(cur)
    levels = levels[::-1]  # level 0 first
    widths = [sd[f"output_blocks.{blocks[0]}.0.in_layers.2.weight"].shape[0] for blocks in levels]
    nrb = [len(blocks) - 1 for blocks in levels]
    size = 64 if in_ch == 3 else 256
    attn_res = [size // 2**lv for lv, blocks in enumerate(levels) if f"output_blocks.{blocks[0]}.1.qkv.weight" in sd]
    return UNetConfig(image_size=size, in_channels=in_ch, out_channels=out_ch, model_channels=mc,
                      channel_mult=tuple(w // mc for w in widths), num_res_blocks=tuple(nrb),
                      attention_resolutions=tuple(attn_res), encoder_dim=enc_dim, encoder_channels=enc_ch,
                      efficient_activation=in_ch == 6, scale_skip_connection=in_ch == 6, super_res=in_ch == 6)
