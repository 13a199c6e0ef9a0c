"""Tiny random-weight Wan checkpoints in the diffusers layout, built offline in code.

Every component is real (the classes the published checkpoints use) but a few thousand
parameters in size, so the engine's real loading and generation code runs on a CPU in seconds:

- a T5-style tokenizer TRAINED HERE with the `tokenizers` library on a small corpus (no download),
- a tiny UMT5EncoderModel, a tiny AutoencoderKLWan (8x spatial, 4x temporal, like the real one),
- tiny WanTransformer3DModel(s) and the flow-matching UniPC scheduler Wan uses,
- for the Wan2.1 FLF2V layout, a tiny CLIPVisionModel image encoder and its CLIPImageProcessor,
- a LoRA adapter file (random, non-zero) for the attention projections, as `load_lora_weights` reads it.

Layouts (each saved with the pipeline's own `save_pretrained`):
  t2v      WanPipeline: one transformer (Wan2.1 T2V style)
  i2v_moe  WanImageToVideoPipeline: transformer + transformer_2 + boundary_ratio, no image encoder
           (Wan2.2 I2V-A14B style: two experts)
  ti2v     WanPipeline with expand_timesteps and the Wan2.2 VAE (Wan2.2 TI2V-5B style): t2v and i2v
  flf2v    WanImageToVideoPipeline: one transformer with image cross-attention and the first+last
           frame position embedding, CLIP image encoder (Wan2.1 FLF2V-14B style)
"""

from __future__ import annotations

from pathlib import Path

import torch

TEXT_DIM = 32  # UMT5 d_model == transformer text_dim
Z_DIM = 16  # VAE latent channels (the Wan2.1 VAE's 16, so its published latents mean/std apply)
TI2V_Z_DIM = 48  # the Wan2.2 VAE's latent channels
CLIP_DIM = 16
CLIP_TOKENS = (32 // 8) ** 2 + 1  # image_size 32, patch 8: 16 patches + the class token

CORPUS = [
    "A lighthouse at dawn, waves breaking on the rocks, seagulls circling overhead.",
    "A cat walks slowly across a sunny kitchen floor and looks at the camera.",
    "The subject floats up into the air, flying gently above the city at night.",
    "A red car drives along a mountain road in the rain, cinematic lighting.",
    "Close-up of a flower opening in time-lapse, soft focus, pastel colours.",
    "An astronaut rides a horse on the moon, high detail, slow camera move.",
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，",
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，",
    "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走",
    "一只小猫在阳光下的草地上奔跑，镜头缓慢推进。",
]


def build_tokenizer():
    """A small Unigram (SentencePiece-like, as T5/UMT5 use) tokenizer trained on CORPUS here, wrapped
    as a transformers fast tokenizer with T5's special tokens (<pad>=0, </s>=1, <unk>=2) and an
    end-of-sequence token appended to every text."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=400, special_tokens=["<pad>", "</s>", "<unk>"],
                                       unk_token="<unk>", show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", tok.token_to_id("</s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=512)


def tiny_text_encoder(vocab_size: int):
    from transformers import UMT5Config, UMT5EncoderModel

    cfg = UMT5Config(vocab_size=vocab_size, d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
                     relative_attention_num_buckets=8, relative_attention_max_distance=32, dropout_rate=0.0)
    return UMT5EncoderModel(cfg).eval()


def tiny_vae():
    """As small as AutoencoderKLWan allows while keeping the real structure: 3 spatial downsamples
    (8x) and 2 temporal ones (4x), 3 channels per stage, 16 latent channels."""
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(base_dim=3, z_dim=Z_DIM, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True]).eval()


def tiny_ti2v_vae():
    """The Wan2.2 VAE's structure (TI2V-5B): 2x2 patchified input, 16x spatial / 4x temporal, residual
    up/down-sampling, 48 latent channels; 4 channels per stage."""
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(base_dim=4, decoder_base_dim=4, z_dim=TI2V_Z_DIM, dim_mult=[1, 1, 1, 1],
                            num_res_blocks=1, temperal_downsample=[False, True, True], is_residual=True,
                            in_channels=12, out_channels=12, patch_size=2, scale_factor_spatial=16,
                            scale_factor_temporal=4, latents_mean=[0.0] * TI2V_Z_DIM,
                            latents_std=[1.0] * TI2V_Z_DIM).eval()


def tiny_transformer(in_channels: int = Z_DIM, *, image_dim: int | None = None,
                     pos_embed_seq_len: int | None = None, layers: int = 1, out_channels: int = Z_DIM,
                     head_dim: int = 12):
    """head_dim 12 (width 24) keeps the CPU tests fast; the GPU suite asks for 64 (width 128), so the fp8
    kernels, which take multiples of 16, have layers to quantize."""
    from diffusers import WanTransformer3DModel

    heads = 2
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=head_dim, in_channels=in_channels,
        out_channels=out_channels, text_dim=TEXT_DIM, freq_dim=32, ffn_dim=32, num_layers=layers,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", image_dim=image_dim,
        added_kv_proj_dim=heads * head_dim if image_dim else None, pos_embed_seq_len=pos_embed_seq_len,
        rope_max_seq_len=1024,
    ).eval()


def scheduler():
    """The scheduler the Wan diffusers checkpoints ship: UniPC on flow-matching sigmas."""
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                   num_train_timesteps=1000, flow_shift=3.0)


def tiny_image_encoder():
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    cfg = CLIPVisionConfig(hidden_size=CLIP_DIM, intermediate_size=32, projection_dim=CLIP_DIM,
                           num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return CLIPVisionModel(cfg).eval(), processor


def _common(seed: int) -> dict:
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    return {"tokenizer": tokenizer, "text_encoder": tiny_text_encoder(len(tokenizer)), "vae": tiny_vae(),
            "scheduler": scheduler()}


def build_t2v(path: Path, seed: int = 0, layers: int = 1, head_dim: int = 12) -> Path:
    from diffusers import WanPipeline

    parts = _common(seed)
    WanPipeline(**parts, transformer=tiny_transformer(layers=layers, head_dim=head_dim)).save_pretrained(path)
    return path


def build_ti2v(path: Path, seed: int = 4) -> Path:
    """Wan2.2 TI2V-5B style: one WanPipeline checkpoint with expand_timesteps (per-token timesteps),
    the Wan2.2 VAE, no image encoder; it does text-to-video and first-frame image-to-video."""
    from diffusers import WanPipeline

    parts = _common(seed)
    parts["vae"] = tiny_ti2v_vae()
    transformer = tiny_transformer(TI2V_Z_DIM, out_channels=TI2V_Z_DIM)
    WanPipeline(**parts, transformer=transformer, expand_timesteps=True).save_pretrained(path)
    return path


def build_i2v_two_experts(path: Path, seed: int = 1, boundary_ratio: float = 0.9) -> Path:
    from diffusers import WanImageToVideoPipeline

    parts = _common(seed)
    in_ch = 2 * Z_DIM + 4  # noisy latents + encoded condition video + 4-channel frame mask
    WanImageToVideoPipeline(**parts, transformer=tiny_transformer(in_ch),
                            transformer_2=tiny_transformer(in_ch),
                            boundary_ratio=boundary_ratio).save_pretrained(path)
    return path


def build_flf2v(path: Path, seed: int = 2) -> Path:
    from diffusers import WanImageToVideoPipeline

    parts = _common(seed)
    encoder, processor = tiny_image_encoder()
    transformer = tiny_transformer(2 * Z_DIM + 4, image_dim=CLIP_DIM, pos_embed_seq_len=2 * CLIP_TOKENS)
    WanImageToVideoPipeline(**parts, transformer=transformer, image_encoder=encoder,
                            image_processor=processor).save_pretrained(path)
    return path


def build_lora(checkpoint: Path, path: Path, seed: int = 3, rank: int = 4) -> Path:
    """A LoRA adapter for `checkpoint`'s transformer (attention projections), random and non-zero, saved
    as `pytorch_lora_weights.safetensors` in the diffusers LoRA format; returns the file path."""
    from diffusers import WanPipeline, WanTransformer3DModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(seed)
    transformer = WanTransformer3DModel.from_pretrained(checkpoint / "transformer")
    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=False,
                                       target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    with torch.no_grad():  # make the adapter's effect unmistakable on random weights
        for name, param in transformer.named_parameters():
            if "lora_B" in name:
                param.mul_(4.0)
    path.mkdir(parents=True, exist_ok=True)
    WanPipeline.save_lora_weights(path, transformer_lora_layers=get_peft_model_state_dict(transformer))
    return path / "pytorch_lora_weights.safetensors"
