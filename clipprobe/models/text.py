"""Text encoding without the padding: a causal text tower pooled at the end-of-text token never looks past it.

open_clip's ``CLIP.encode_text`` runs every text at the full context length (77 positions), most of them
padding. In a tower with a causal attention mask and ``argmax`` pooling (the end-of-text token, the largest
id), the pooled output depends only on the positions up to that token, so a batch cut after its longest
text gives the same features (to float rounding: sums of the same numbers in another order) at a fraction of
the cost. Towers where padding matters (bidirectional, ``last`` or ``first`` pooling, Hugging Face towers) run
at full length, as before.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def trims_padding(model: Any) -> bool:
    """Whether :func:`encode_text` cuts the padding for this model: an open_clip ``CLIP`` whose text tower has a
    causal mask and pools at the end-of-text token (``argmax``), and whose ``encode_text`` was not replaced on the
    instance (a wrapper's or a test's replacement is called as it is)."""
    from open_clip.model import CLIP

    return (isinstance(model, CLIP) and "encode_text" not in vars(model)
            and getattr(model, "attn_mask", None) is not None
            and getattr(model, "text_pool_type", None) == "argmax"
            and getattr(model, "positional_embedding", None) is not None)  # fmt: skip


def text_length(tokens: torch.Tensor) -> int:
    """Positions up to and including the longest text's end-of-text token (the largest id of each row)."""
    return int(tokens.argmax(dim=-1).max()) + 1 if tokens.numel() else tokens.shape[-1]


def encode_text(model: Any, tokens: torch.Tensor, normalize: bool = False, length: int | None = None) -> torch.Tensor:
    """``model.encode_text(tokens)``, on the first ``length`` positions (default: :func:`text_length`, read from
    the tokens: pass it when they are on a GPU, to spare a device sync) when :func:`trims_padding` allows."""
    if not trims_padding(model):
        return model.encode_text(tokens, normalize=normalize)
    n = min(tokens.shape[-1], text_length(tokens) if length is None else length)
    text = tokens[:, :n]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(text).to(cast_dtype) + model.positional_embedding[:n].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:n, :n])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), text.argmax(dim=-1)]  # open_clip's argmax pooling
    if model.text_projection is not None:
        x = (
            model.text_projection(x)
            if isinstance(model.text_projection, torch.nn.Linear)
            else x @ model.text_projection
        )
    return F.normalize(x, dim=-1) if normalize else x
