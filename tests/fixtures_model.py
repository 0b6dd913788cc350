"""Tiny diffusion bases and FeatInv runs, built from configs and saved like real ones (reusable by any test).

    from tests.fixtures_model import make_tiny_sd, make_tiny_pixel_base, make_tiny_run

All builders are deterministic (seeded) and take well under a second apart from the backbone.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

TINY_BACKBONE = "timm:tf_efficientnet_lite0"
TINY_INPUT_SIZE = 64


def _tiny_clip_tokenizer(folder: Path) -> None:
    """A character-level CLIP BPE vocabulary (no merges) in the files a real SD checkpoint ships."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in string.ascii_lowercase + string.digits + ",.-!?'":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 8, "tokenizer_class": "CLIPTokenizer"}))


def make_tiny_sd(tmp_path: Path, name: str = "tiny_sd") -> Path:
    """A Stable-Diffusion-layout folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/):
    16 px images, 4×8×8 latents, UNet widths (8, 16), CLIP width 16."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = Path(tmp_path) / name
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=4,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
        layers_per_block=1, norm_num_groups=4, sample_size=16,
    )
    _tiny_clip_tokenizer(folder / "tokenizer")
    vocab_size = len(json.loads((folder / "tokenizer" / "vocab.json").read_text()))
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=8, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    ))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    text_encoder.save_pretrained(folder / "text_encoder")
    scheduler.save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDIMScheduler"], "safety_checker": [None, None], "feature_extractor": [None, None],
    }))
    return folder


def make_tiny_pixel_base(tmp_path: Path, name: str = "pixel_base", resolution: int = 16) -> Path:
    """A saved, untrained pixel base: 16 px, UNet widths (8, 16), cross-attention width 8."""
    from featinv.diffusion.bases import PixelBase

    base = PixelBase.create(resolution=resolution, widths=(8, 16), cross_attention_dim=8, attention_head_dim=4, seed=0)
    return base.save_pretrained(Path(tmp_path) / name)


def perturb_controlnet(model, scale: float = 0.05, seed: int = 1) -> None:
    """Give the zero-initialised convs small random weights so the ControlNet actually changes outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.controlnet.named_parameters():
            if "controlnet_" in name or "conv_out" in name or "proj_out" in name:
                param.add_(torch.randn(param.shape, generator=gen) * scale)


def make_tiny_model(tmp_path: Path, pooled: bool = False, base: str = "pixel", encoder: str = "conv",
                    perturb: bool = True):
    """A FeatInv model on the real backbone code (random weights, 64 px input) and a tiny saved base."""
    from featinv.diffusion.model import FeatInv

    base_dir = make_tiny_sd(tmp_path) if base == "sd" else make_tiny_pixel_base(tmp_path)
    encoder_kwargs = {"hidden": 8} if encoder == "conv" else {"dim": 16, "num_latents": 4, "heads": 2, "depth": 1}
    torch.manual_seed(0)
    model = FeatInv.create(TINY_BACKBONE, f"{base}:{base_dir}", pooled=pooled, encoder=encoder,
                           encoder_kwargs=encoder_kwargs, backbone_weights="none", input_size=TINY_INPUT_SIZE)
    if perturb:
        perturb_controlnet(model)
    return model


def make_tiny_run(tmp_path: Path, pooled: bool = False, base: str = "pixel", encoder: str = "conv",
                  name: str = "run") -> Path:
    """A saved FeatInv run folder (``FeatInv.from_pretrained`` loads it); ControlNet weights slightly perturbed."""
    model = make_tiny_model(tmp_path, pooled=pooled, base=base, encoder=encoder)
    return model.save_pretrained(Path(tmp_path) / name)


def make_tiny_images(folder: Path, count: int = 2, size: int = 24) -> Path:
    """A few small, deterministic RGB PNGs."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    for i in range(count):
        pixels = (torch.rand(size, size, 3, generator=gen) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"img{i}.png")
    return folder


def make_tiny_photos() -> dict:
    """Two small deterministic pictures with structure: uniform noise (40x48) and a colour ramp (40x40)."""
    import numpy as np
    from PIL import Image

    gen = np.random.default_rng(0)
    noise = Image.fromarray((gen.random((40, 48, 3)) * 255).astype(np.uint8))
    yy, xx = np.mgrid[0:40, 0:40]
    ramp = Image.fromarray(np.stack([xx * 6, yy * 6, 255 - xx * 3], -1).astype(np.uint8))
    return {"noise.png": noise, "ramp.png": ramp}
