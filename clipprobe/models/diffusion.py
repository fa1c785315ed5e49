"""A tiny pixel-space text-to-image diffusion model conditioned on a frozen CLIP text tower (README "Does the
first-named object dominate generated images?").

The smallest model in the family of Stable Diffusion that still has its one part that matters here: a denoiser
(diffusers ``UNet2DConditionModel``) cross-attending to the per-token states of a frozen CLIP text encoder (the
final layer after ``ln_final``, all context positions, as Stable Diffusion conditions on CLIP's last hidden
state). It works on pixels (no VAE) at 32 px, is trained on a clipprobe corpus's shards with the epsilon
objective, 10% of captions dropped for classifier-free guidance and an EMA of the weights, and draws with DDIM.

A trained model is a folder::

    clipprobe_t2i.json        format, image size, encoder (architecture, source checkpoint sha256), training
    unet/                     diffusers UNet2DConditionModel.save_pretrained (EMA weights)
    scheduler/                diffusers DDIMScheduler.save_pretrained
    text_encoder.safetensors  the frozen CLIP's weights (the text tower is what is used)

which the ``t2i`` probe takes as ``--t2i_model FOLDER`` like a diffusers pipeline folder.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from clipprobe.errors import UserError

MANIFEST = "clipprobe_t2i.json"
FORMAT = 1


def is_tiny_t2i(folder: str | Path) -> bool:
    """True if ``folder`` holds a model written by :func:`train_tiny_t2i`."""
    return (Path(folder) / MANIFEST).is_file()


class FrozenTextTower(torch.nn.Module):
    """The per-token final states of an open_clip ``CLIP`` text tower (its own mask and positions), frozen."""

    def __init__(self, clip: torch.nn.Module) -> None:
        super().__init__()
        if not all(hasattr(clip, a) for a in ("token_embedding", "positional_embedding", "transformer", "ln_final")):
            raise UserError(f"the t2i demo conditions on an open_clip CLIP text tower; {type(clip).__name__} has none "
                            "(use a clipprobe or open_clip architecture with a built-in text transformer)")  # fmt: skip
        self.clip = clip.eval().requires_grad_(False)
        self.width = int(clip.ln_final.normalized_shape[0])

    @torch.no_grad()
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        c = self.clip
        cast = c.transformer.get_cast_dtype()
        x = c.token_embedding(tokens).to(cast) + c.positional_embedding.to(cast)
        x = c.transformer(x, attn_mask=c.attn_mask)
        return c.ln_final(x).float()


def build_unet(cross_dim: int, image_size: int = 32, channels: tuple[int, ...] = (32, 64, 64, 64)) -> Any:
    """The denoiser: ResNet blocks at the two finest resolutions, cross-attention at the two coarsest."""
    from diffusers import UNet2DConditionModel

    k = len(channels)
    return UNet2DConditionModel(
        sample_size=image_size, in_channels=3, out_channels=3, block_out_channels=channels, layers_per_block=1,
        down_block_types=("DownBlock2D",) * (k - 2) + ("CrossAttnDownBlock2D",) * 2,
        up_block_types=("CrossAttnUpBlock2D",) * 2 + ("UpBlock2D",) * (k - 2),
        cross_attention_dim=cross_dim, attention_head_dim=8, norm_num_groups=8,
    )  # fmt: skip


@dataclass
class TrainConfig:
    """How a tiny t2i model is trained (recorded in its manifest)."""

    steps: int = 2000
    batch_size: int = 32
    lr: float = 5e-4
    warmup_steps: int = 100
    ema: float = 0.995
    p_uncond: float = 0.1
    image_size: int = 32
    channels: tuple[int, ...] = (32, 64, 64, 64)
    max_samples: int | None = None
    seed: int = 0


def load_corpus(urls: list[str], image_size: int, max_samples: int | None = None,
                progress: bool = True) -> tuple[torch.Tensor, list[str]]:  # fmt: skip
    """Every (image, caption) of the shards in order, images resized to ``image_size`` in [-1, 1] (a 32-px
    corpus of 20,000 images is 250 MB as float32: kept in memory, decoded once)."""
    import numpy as np
    import webdataset as wds
    from PIL import Image
    from tqdm.auto import tqdm

    images, captions = [], []
    stream = wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("pil")
    for sample in tqdm(stream, desc="t2i corpus", disable=not progress, leave=False, total=max_samples):
        image = next((sample[k] for k in ("jpg", "png", "jpeg", "webp") if k in sample), None)
        caption = sample.get("txt")
        if image is None or not isinstance(caption, str):
            continue
        array = np.asarray(image.convert("RGB").resize((image_size, image_size), Image.BICUBIC), dtype=np.uint8)
        images.append(torch.from_numpy(array.copy()))
        captions.append(caption)
        if max_samples is not None and len(images) >= max_samples:
            break
    if not images:
        raise UserError(f"no image-caption samples in {urls[0]}...: give shards of 'clipprobe data corpus'")
    x = torch.stack(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    return x, captions


def train_tiny_t2i(shards: list[str], encoder_checkpoint: str, out: str | Path, cfg: TrainConfig,
                   progress: bool = True, log: Callable[[str], None] = print,
                   encoder_arch: str | None = None, device: str = "cpu") -> Path:  # fmt: skip
    """Train the denoiser on ``shards`` conditioned on the frozen text tower of ``encoder_checkpoint`` (its
    architecture ``encoder_arch`` when the file does not record it) and write the model folder ``out`` (staged:
    a failed run leaves nothing). On ``cuda`` the denoiser runs under bf16 autocast; the noise, timesteps and
    batches are drawn on the CPU from the seed, so the data a step sees does not depend on the device.

    Raises:
        UserError: an unreadable encoder checkpoint, shards without image-caption samples, or an encoder without
            an open_clip text transformer.
    """
    from diffusers import DDIMScheduler, DDPMScheduler
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    from clipprobe.fileio import file_sha256, staged_dir
    from clipprobe.models.load import load_model

    torch.manual_seed(cfg.seed)
    loaded = load_model(encoder_arch, encoder_checkpoint)
    text = FrozenTextTower(loaded.model)
    images, captions = load_corpus(shards, cfg.image_size, cfg.max_samples, progress)
    # Text states per unique caption, once (the tower is frozen): rows into a table.
    unique = sorted(set(captions)) + [""]
    row = {c: i for i, c in enumerate(unique)}
    states = torch.cat([text(loaded.tokenizer(unique[i : i + 512])) for i in range(0, len(unique), 512)])
    caption_rows = torch.tensor([row[c] for c in captions])
    dev = torch.device(device)
    states = states.to(dev)
    unet = build_unet(text.width, cfg.image_size, tuple(cfg.channels)).to(dev)
    ema = copy.deepcopy(unet).requires_grad_(False)
    noise = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="epsilon")
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup_steps)))
    g = torch.Generator().manual_seed(cfg.seed)
    start, losses = time.perf_counter(), []
    bar = tqdm(range(cfg.steps), desc="t2i denoiser", disable=not progress)
    for step in bar:
        idx = torch.randint(0, len(images), (cfg.batch_size,), generator=g)
        x0 = images[idx]
        x0 = torch.where(torch.rand(len(idx), 1, 1, 1, generator=g) < 0.5, x0, x0.flip(-1))  # mirror: objects too
        rows = caption_rows[idx].clone()
        rows[torch.rand(len(idx), generator=g) < cfg.p_uncond] = row[""]
        eps = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, noise.config.num_train_timesteps, (len(idx),), generator=g)
        x0, eps, t = x0.to(dev), eps.to(dev), t.to(dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            pred = unet(noise.add_noise(x0, eps, t), t, encoder_hidden_states=states[rows.to(dev)]).sample
        loss = torch.nn.functional.mse_loss(pred.float(), eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        decay = min(cfg.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), unet.parameters(), strict=True):
                pe.lerp_(p, 1 - decay)
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
        if not progress and (step + 1) % max(1, cfg.steps // 10) == 0:  # a line per tenth in logs
            log(f"t2i denoiser step {step + 1}/{cfg.steps}: loss {sum(losses[-50:]) / len(losses[-50:]):.4f}, "
                f"{(time.perf_counter() - start) / (step + 1):.2f} s/step")  # fmt: skip
    seconds = time.perf_counter() - start
    manifest = {
        "format": FORMAT, "image_size": cfg.image_size,
        "encoder": {"arch": loaded.name, "checkpoint": str(Path(encoder_checkpoint).resolve()),
                    "checkpoint_sha256": file_sha256(encoder_checkpoint) if Path(encoder_checkpoint).is_file()
                    else None},
        "train": {**asdict(cfg), "shards": list(shards), "samples": len(images), "seconds": round(seconds, 1),
                  "final_loss": round(sum(losses[-100:]) / len(losses[-100:]), 5)},
    }  # fmt: skip
    with staged_dir(out) as stage:
        ema.save_pretrained(stage / "unet", safe_serialization=True)
        DDIMScheduler.from_config(noise.config).save_pretrained(stage / "scheduler")
        save_file({k: v.contiguous() for k, v in loaded.model.state_dict().items()}, stage / "text_encoder.safetensors")
        (stage / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    log(f"trained the t2i denoiser for {cfg.steps} steps in {seconds / 60:.1f} min "
        f"(final loss {manifest['train']['final_loss']}) -> {out}")  # fmt: skip
    return Path(out)


class TinyT2I:
    """A trained tiny t2i model, drawing ``(prompt, seed, size) -> PIL image`` with DDIM and guidance (``many``:
    a batch of them at once)."""

    def __init__(self, folder: str | Path, device: str = "cpu", steps: int = 25, guidance: float = 3.0) -> None:
        from diffusers import DDIMScheduler, UNet2DConditionModel
        from safetensors.torch import load_file

        from clipprobe.models import create_random_model, register_configs

        folder = Path(folder)
        try:
            self.manifest = json.loads((folder / MANIFEST).read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"{folder / MANIFEST} cannot be read ({e}); retrain it with scripts/t2i_demo.py") from None
        if self.manifest.get("format") != FORMAT:
            raise UserError(f"{folder} holds a t2i model of format {self.manifest.get('format')}, this clipprobe "
                            f"reads format {FORMAT}: retrain it with scripts/t2i_demo.py")  # fmt: skip
        register_configs()
        clip = create_random_model(self.manifest["encoder"]["arch"])
        clip.load_state_dict(load_file(folder / "text_encoder.safetensors"))
        self.text = FrozenTextTower(clip).to(device)
        import open_clip

        self.tokenizer = open_clip.get_tokenizer(self.manifest["encoder"]["arch"])
        self.unet = UNet2DConditionModel.from_pretrained(folder / "unet").to(device).eval()
        self.scheduler = DDIMScheduler.from_pretrained(folder / "scheduler")
        self.device, self.steps, self.guidance = device, steps, guidance
        self.size = int(self.manifest["image_size"])

    def __call__(self, prompt: str, seed: int, size: int | None = None) -> Any:
        return self.many([prompt], [seed], size)[0]

    @torch.no_grad()
    def many(self, prompts: list[str], seeds: list[int], size: int | None = None) -> list[Any]:
        """One image per (prompt, seed), drawn together in one batch (each from its own seed's noise)."""
        from PIL import Image

        if size not in (None, self.size):
            raise UserError(
                f"this t2i model draws {self.size}-px images; drop the size option or set it to {self.size}"
            )
        k = len(prompts)
        cond = self.text(self.tokenizer([*prompts, *([""] * k)]).to(self.device))
        x = torch.cat([torch.randn((1, 3, self.size, self.size), generator=torch.Generator().manual_seed(s))
                       for s in seeds]).to(self.device)  # fmt: skip
        self.scheduler.set_timesteps(self.steps)
        for t in self.scheduler.timesteps:
            eps_c, eps_u = self.unet(torch.cat([x, x]), t, encoder_hidden_states=cond).sample.chunk(2)
            x = self.scheduler.step(eps_u + self.guidance * (eps_c - eps_u), t, x).prev_sample
        arrays = ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        return [Image.fromarray(a) for a in arrays]
