"""The GPT-NeoX model in plain PyTorch (nanoGPT style): norm, rotary, attention, MLP, block, config, model.

Parameter names follow Hugging Face's `GPTNeoXForCausalLM` minus the `gpt_neox.` prefix, so weights
move between the two by renaming only (see trainer.checkpoint). Nothing here knows about
torch.distributed, DeepSpeed or data: trainer.engine wraps this model from outside.

Hot ops go through `trainer.kernels` (fused CUDA where built, PyTorch reference otherwise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from trainer import kernels


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss over `targets != -100`; logits (b, s, v), targets (b, s)."""
    return kernels.cross_entropy(logits, targets)


class LayerNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.layer_norm(x, self.weight, self.bias, self.eps)


class Rotary(nn.Module):
    """cos/sin tables for rotate-half rotary on the first `rot_dim` channels of each head."""

    def __init__(self, rot_dim: int, max_positions: int, base: float) -> None:
        super().__init__()
        self.rot_dim = rot_dim
        inv_freq = 1.0 / (base ** (torch.arange(0, rot_dim, 2, dtype=torch.float) / rot_dim))
        freqs = torch.outer(torch.arange(max_positions, dtype=torch.float), inv_freq)  # (pos, rot/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (pos, rot)
        # not persistent: derived from the config, never part of a checkpoint
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def forward(self, seq_len: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cos[:seq_len].to(dtype), self.sin[:seq_len].to(dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.hidden_size // cfg.num_heads
        self.query_key_value = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.dropout = cfg.attention_dropout

    def forward(self, x: torch.Tensor, rotary: Rotary) -> torch.Tensor:
        b, s, h = x.shape
        qkv = self.query_key_value(x).view(b, s, self.num_heads, 3 * self.head_dim)  # each head [q; k; v]
        qkv = qkv.transpose(1, 2)  # (b, heads, s, 3 * head_dim)
        q, k, v = qkv.chunk(3, dim=-1)  # each (b, heads, s, head_dim)
        if rotary.rot_dim > 0:
            cos, sin = rotary(s, q.dtype)  # (s, rot_dim)
            q, k = kernels.rotary(q, cos, sin, rotary.rot_dim), kernels.rotary(k, cos, sin, rotary.rot_dim)
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )  # (b, heads, s, head_dim); SDPA's default scale is 1/sqrt(head_dim)
        y = y.transpose(1, 2).reshape(b, s, h)
        return self.dense(y)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dense_h_to_4h = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.dense_4h_to_h = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.activation = cfg.activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation == "gelu_tanh" and type(self.dense_h_to_4h) is not nn.Linear:
            # swapped for torchao's Float8Linear (fp8: true): its own matmul, then inductor fuses bias + GELU
            x = F.gelu(self.dense_h_to_4h(x), approximate="tanh")
        elif self.activation == "gelu_tanh":
            # bias added inside the fused kernel, as gpt-neox's bias-gelu fusion does
            x = kernels.bias_gelu(F.linear(x, self.dense_h_to_4h.weight), self.dense_h_to_4h.bias)
        else:
            x = F.gelu(self.dense_h_to_4h(x))
        return self.dense_4h_to_h(x)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps)
        self.post_attention_layernorm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps)
        self.attention = Attention(cfg)
        self.mlp = MLP(cfg)
        self.parallel_residual = cfg.parallel_residual
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def forward(self, x: torch.Tensor, rotary: Rotary) -> torch.Tensor:
        attn = self.dropout(self.attention(self.input_layernorm(x), rotary))
        if self.parallel_residual:  # gpt_j_residual: x + attn(ln1(x)) + mlp(ln2(x))
            return x + attn + self.dropout(self.mlp(self.post_attention_layernorm(x)))
        h = x + attn
        return h + self.dropout(self.mlp(self.post_attention_layernorm(h)))


ACTIVATIONS = ("gelu", "gelu_tanh")


@dataclass
class ModelConfig:
    vocab_size: int = 50432  # already padded (gpt-neox pads to a multiple of 128 x tensor parallel)
    hidden_size: int = 6144
    num_layers: int = 44
    num_heads: int = 64
    intermediate_size: int = 0  # 0 means 4 x hidden_size
    max_position_embeddings: int = 2048
    rotary_pct: float = 0.25  # share of each head's channels that rotary touches
    rotary_base: float = 10000.0
    layer_norm_eps: float = 1e-5
    parallel_residual: bool = True  # gpt_j_residual
    tied_embeddings: bool = False  # gpt-neox "no-weight-tying: true" means untied
    activation: str = "gelu_tanh"  # gpt-neox trains with tanh GELU ("gelu_fast" in HF); "gelu" is exact
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    checkpoint_activations: bool = False  # a run setting, recorded; trainer.engine applies it
    init_std: float = 0.0  # 0 means small_init: sqrt(2 / (5 * hidden))

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}"
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} is not one of {ACTIVATIONS}")
        if not 0.0 <= self.rotary_pct <= 1.0:
            raise ValueError(f"rotary_pct {self.rotary_pct} is outside [0, 1]")
        if self.intermediate_size == 0:
            self.intermediate_size = 4 * self.hidden_size

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def rot_dim(self) -> int:
        return int(self.head_dim * self.rotary_pct)

    def num_params(self) -> int:
        h, f, v, n = self.hidden_size, self.intermediate_size, self.vocab_size, self.num_layers
        per_block = 4 * h * h + 4 * h + 2 * h * f + f + h + 4 * h
        return v * h * (1 if self.tied_embeddings else 2) + n * per_block + 2 * h

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward = 3 x forward), attention scores included."""
        h, f, v, n = self.hidden_size, self.intermediate_size, self.vocab_size, self.num_layers
        matmul = n * (4 * h * h + 2 * h * f) + v * h
        attention = n * seq_len * h  # QK^T and AV, causal halves neither in SDPA's count here
        return 3 * 2 * (matmul + attention)


class GPTNeoX(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_in = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.final_layer_norm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps)
        self.embed_out = (
            None if cfg.tied_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        )
        self.rotary = Rotary(cfg.rot_dim, cfg.max_position_embeddings, cfg.rotary_base)
        # a run setting, not architecture: trainer.engine sets it from the NeoX config key 'fused-output-loss'
        self.fused_loss = False
        self.init_weights()

    def init_weights(self) -> None:
        """gpt-neox's small_init everywhere, wang_init on the two projections back into the residual."""
        std = self.cfg.init_std or math.sqrt(2 / (5 * self.cfg.hidden_size))
        out_std = 2 / (self.cfg.num_layers * math.sqrt(self.cfg.hidden_size))
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif "layernorm" in name or "layer_norm" in name:
                nn.init.ones_(p)
            elif name.endswith(("attention.dense.weight", "dense_4h_to_h.weight")):
                nn.init.normal_(p, std=out_std)
            else:
                nn.init.normal_(p, std=std)

    def set_dropout(self, hidden: float, attention: float | None = None) -> None:
        """The run's dropout (a training setting, not architecture): `hidden` after attention and MLP,
        `attention` on the attention probabilities (default: `hidden`)."""
        attention = hidden if attention is None else attention
        self.cfg.hidden_dropout, self.cfg.attention_dropout = hidden, attention
        for block in self.layers:
            block.dropout.p = hidden
            block.attention.dropout = attention

    def output_weight(self) -> torch.Tensor:
        return self.embed_in.weight if self.embed_out is None else self.embed_out.weight

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (b, s) -> logits (b, s, vocab); with targets (b, s), the mean next-token loss instead
        (-100 ignored), computed in token chunks without the full logits when `fused_loss` is set."""
        s = input_ids.shape[1]
        if s > self.cfg.max_position_embeddings:
            raise ValueError(
                f"sequence length {s} exceeds max_position_embeddings {self.cfg.max_position_embeddings}"
            )
        x = self.embed_in(input_ids)  # (b, s, h)
        for block in self.layers:  # checkpoint-activations wraps blocks from outside: trainer.engine
            x = block(x, self.rotary)
        x = self.final_layer_norm(x)
        if targets is not None and self.fused_loss:
            from trainer.fused_loss import linear_cross_entropy

            return linear_cross_entropy(x, self.output_weight(), targets)
        logits = F.linear(x, self.output_weight())  # (b, s, vocab)
        return logits if targets is None else cross_entropy(logits, targets)
