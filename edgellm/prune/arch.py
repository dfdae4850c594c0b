"""Per-architecture surgery: which matrices make up a head, an FFN neuron and a layer, and how to slice them.

Two families are supported, recognised by their module structure (and named by `model_type` in errors):

- Encoders (edgellm.families lists what each refuses): the BERT layout (bert, roberta, xlm-roberta, electra,
  camembert): `encoder.layer[i].attention.self.{query, key, value}`, `attention.output.dense`, `intermediate.dense`,
  `output.dense`; DistilBERT (`transformer.layer[i].attention.{q,k,v,out}_lin`, `ffn.lin1/lin2`); DeBERTa-v2/v3
  (FFN neurons and layers: `intermediate.dense`, `output.dense`); ModernBERT (FFN neurons only: `mlp.Wi` holds
  input and gate rows). BERT-layout and DistilBERT heads are removed with Hugging Face's own `prune_heads`, which
  records them in `config.pruned_heads`, so a folder with uneven heads per layer reloads with `from_pretrained`.
  The FFN keeps the same width in every layer (`config.intermediate_size` is one number).
- Llama-family decoders (llama, mistral, qwen2, qwen3): `model.layers[i].self_attn.{q,k,v,o}_proj` and
  `mlp.{gate,up,down}_proj`. The unit of attention pruning is a KV group: one key/value head together with the
  query heads that share it (grouped-query attention). Every layer keeps the same number of groups and neurons,
  so the result is a plain config that `from_pretrained`, `generate` and any exporter (KV-cache shapes come from
  `config.num_key_value_heads`) handle.

Shapes in comments: H hidden size, d head size, g query heads per KV group, F FFN width.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator, Sequence

from edgellm.errors import PruningError

__all__ = ["Arch", "EncoderArch", "DistilBertArch", "DebertaV2Arch", "ModernBertArch", "DecoderArch", "arch_for",
           "check_supported", "ENCODER_ARCHS", "PRUNABLE_ENCODERS", "PRUNABLE_DECODERS"]

log = logging.getLogger(__name__)

PRUNABLE_DECODERS = ("llama", "mistral", "qwen2", "qwen3")  # model types DecoderArch slices (the exporter writes
# fewer: edgellm.exporting.decoder.EXPORTABLE_DECODERS; a pruned qwen3 stays a torch model)


def _slice_linear(linear: Any, index: Any, dim: int) -> Any:
    """A new nn.Linear keeping rows (dim=0, outputs) or columns (dim=1, inputs) `index`; weights copied."""
    import torch

    index = index.to(linear.weight.device)
    weight = linear.weight.detach().index_select(dim, index).clone()
    bias = None
    if linear.bias is not None:
        bias = linear.bias.detach().clone() if dim == 1 else linear.bias.detach()[index].clone()
    out_features, in_features = weight.shape
    new = torch.nn.Linear(in_features, out_features, bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    new.weight.requires_grad = linear.weight.requires_grad
    if bias is not None:
        new.bias.requires_grad = linear.bias.requires_grad
    return new


class Arch:
    """What pruning needs to know about one model family. Units: attention units (heads / KV groups), neurons."""

    family = ""
    #: what one attention unit is called in reports and errors
    unit_name = "head"
    #: every layer must keep the same number of attention units (the config holds one count)
    uniform_units = False

    def __init__(self, model: Any) -> None:
        self.model = model
        self.config = model.config

    # --- structure -------------------------------------------------------------------------------------------
    def layers(self) -> Any:
        raise NotImplementedError

    def set_layers(self, layers: Sequence[Any]) -> None:
        raise NotImplementedError

    def num_layers(self) -> int:
        return len(self.layers())

    def attention_units(self, layer: Any) -> int:
        """Attention units (heads, or KV groups) in `layer` now."""
        raise NotImplementedError

    def ffn_width(self, layer: Any) -> int:
        raise NotImplementedError

    def unit_output_columns(self, layer: Any) -> tuple[Any, int]:
        """(output projection weight (H, units*w), w): unit u owns columns [u*w, (u+1)*w)."""
        raise NotImplementedError

    def unit_input_rows(self, layer: Any, unit: int) -> list[Any]:
        """Weight rows (of q/k/v-like matrices) that unit `unit` owns, for magnitude scores."""
        raise NotImplementedError

    def ffn_output_weight(self, layer: Any) -> Any:
        """(H, F) matrix whose column j is neuron j's output weight."""
        raise NotImplementedError

    def ffn_input_weights(self, layer: Any) -> list[Any]:
        """(F, H) matrices whose row j feeds neuron j."""
        raise NotImplementedError

    def block_linears(self) -> Iterator[tuple[str, Any]]:
        """(name, nn.Linear) of every matrix inside the transformer blocks (targets of magnitude sparsity)."""
        import torch

        for i, layer in enumerate(self.layers()):
            for name, module in layer.named_modules():
                if isinstance(module, torch.nn.Linear):
                    yield f"layers.{i}.{name}", module

    # --- surgery ---------------------------------------------------------------------------------------------
    def keep_units(self, index: int, keep: Sequence[int]) -> None:
        """Keep attention units `keep` (positions 0..units-1 in the layer now) of layer `index`."""
        raise NotImplementedError

    def keep_neurons(self, index: int, keep: Sequence[int]) -> None:
        raise NotImplementedError

    def keep_layers(self, keep: Sequence[int]) -> None:
        """Keep only layers `keep` (indices now), renumbering their cache slots and the config."""
        layers = self.layers()
        kept = [layers[i] for i in keep]
        for new_index, layer in enumerate(kept):
            for module in layer.modules():
                if hasattr(module, "layer_idx"):
                    module.layer_idx = new_index
        self.set_layers(kept)
        self.config.num_hidden_layers = len(kept)
        types = getattr(self.config, "layer_types", None)
        if isinstance(types, list) and len(types) == len(layers):
            self.config.layer_types = [types[i] for i in keep]

    def check_shapes(self, units: list[int], widths: list[int]) -> None:
        """Refuse per-layer unit counts / FFN widths that the family's config cannot describe."""
        if len(set(widths)) > 1:
            raise PruningError(
                f"FFN widths would differ between layers ({widths}); {self.config.model_type} configs hold one "
                "intermediate_size, so remove the same number of neurons from every layer"
            )
        if self.uniform_units and len(set(units)) > 1:
            raise PruningError(
                f"KV groups would differ between layers ({units}); {self.config.model_type} configs hold one "
                "num_key_value_heads (the KV cache shape), so remove the same number of groups from every layer"
            )

    def finish(self) -> None:
        """Bring the config in line with the modules after surgery."""

    # --- accounting ------------------------------------------------------------------------------------------
    def flops_per_token(self, seq_len: int) -> int:
        """Multiply-adds x 2 per token through the blocks (and a decoder's LM head) at sequence length `seq_len`.

        Embedding lookups are free; attention scores and the weighted sum cost 2 x 2 x seq_len x (heads x d);
        a classifier head (once per sequence) is left out.
        """
        raise NotImplementedError

    def unit_params(self, layer: Any) -> int:
        """Parameters one attention unit of `layer` owns (what removing it saves)."""
        raise NotImplementedError

    def neuron_params(self, layer: Any) -> int:
        """Parameters one FFN neuron of `layer` owns."""
        raise NotImplementedError

    @staticmethod
    def layer_params(layer: Any) -> int:
        return sum(p.numel() for p in layer.parameters())

    def shape(self) -> dict[str, Any]:
        layers = self.layers()
        return {
            "layers": len(layers),
            f"{self.unit_name}s_per_layer": [self.attention_units(layer) for layer in layers],
            "ffn_per_layer": [self.ffn_width(layer) for layer in layers],
        }


class EncoderArch(Arch):
    """BERT layout (bert, roberta, xlm-roberta, electra, camembert). Subclasses name their own modules through the
    accessors below (`attention`, `qkv`, `attention_out`, `ffn_in`, `ffn_out`)."""

    family = "encoder"
    unit_name = "head"
    ffn_key = "intermediate_size"  # the config field holding the FFN width

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        self.base = model.base_model

    def layers(self) -> Any:
        return self.base.encoder.layer

    def set_layers(self, layers: Sequence[Any]) -> None:
        import torch

        self.base.encoder.layer = torch.nn.ModuleList(layers)

    # --- the modules of one layer (BERT names) ---------------------------------------------------------------
    def attention(self, layer: Any) -> Any:
        return layer.attention.self

    def qkv(self, layer: Any) -> list[Any]:
        """The Linear layers whose output rows are grouped by head (query, key, value; (heads*d, H) each)."""
        attn = self.attention(layer)
        return [attn.query, attn.key, attn.value]

    def attention_out(self, layer: Any) -> Any:
        return layer.attention.output.dense  # (H, heads*d)

    def head_size(self, layer: Any) -> int:
        return int(self.attention(layer).attention_head_size)

    def ffn_in(self, layer: Any) -> Any:
        return layer.intermediate.dense  # (F, H)

    def ffn_out(self, layer: Any) -> Any:
        return layer.output.dense  # (H, F)

    def set_ffn(self, layer: Any, ffn_in: Any, ffn_out: Any) -> None:
        layer.intermediate.dense = ffn_in
        layer.output.dense = ffn_out

    def keep_layers(self, keep: Sequence[int]) -> None:
        pruned = dict(getattr(self.config, "pruned_heads", {}) or {})
        renumbered = {}
        for new_index, old_index in enumerate(keep):
            heads = pruned.get(old_index, pruned.get(str(old_index)))  # type: ignore[call-overload]
            if heads:
                renumbered[new_index] = list(heads)
        super().keep_layers(keep)
        self.config.pruned_heads = renumbered  # HF re-applies these (original head numbers) on from_pretrained

    def attention_units(self, layer: Any) -> int:
        return int(self.qkv(layer)[0].out_features) // self.head_size(layer)

    def ffn_width(self, layer: Any) -> int:
        return int(self.ffn_out(layer).in_features)

    def unit_output_columns(self, layer: Any) -> tuple[Any, int]:
        return self.attention_out(layer).weight, self.head_size(layer)

    def unit_input_rows(self, layer: Any, unit: int) -> list[Any]:
        d = self.head_size(layer)
        rows = slice(unit * d, (unit + 1) * d)
        return [m.weight[rows] for m in self.qkv(layer)]

    def ffn_output_weight(self, layer: Any) -> Any:
        return self.ffn_out(layer).weight

    def ffn_input_weights(self, layer: Any) -> list[Any]:
        return [self.ffn_in(layer).weight]

    def _original_heads(self, layer: Any) -> list[int]:
        """Original head numbers of the heads still present, in order (HF keeps `pruned_heads` per layer)."""
        total = int(self.config.num_attention_heads)
        gone = set(layer.attention.pruned_heads)
        return [h for h in range(total) if h not in gone]

    def unit_params(self, layer: Any) -> int:
        d, hidden = self.head_size(layer), int(self.qkv(layer)[0].in_features)
        biases = sum(d for m in self.qkv(layer) if m.bias is not None)
        return (len(self.qkv(layer)) + 1) * hidden * d + biases  # q, k, v rows (+ biases), output columns

    def neuron_params(self, layer: Any) -> int:
        inter = self.ffn_in(layer)
        rows = int(inter.out_features) // self.ffn_width(layer)  # 2 for a gated FFN (one input and one gate row)
        bias = 1 if inter.bias is not None else 0
        return rows * (int(inter.in_features) + bias) + int(self.ffn_out(layer).out_features)

    def keep_units(self, index: int, keep: Sequence[int]) -> None:
        layer = self.layers()[index]
        present = self._original_heads(layer)
        drop = [present[i] for i in range(len(present)) if i not in set(keep)]
        if drop:
            self.model.prune_heads({index: drop})  # records original numbers in config.pruned_heads

    def keep_neurons(self, index: int, keep: Sequence[int]) -> None:
        import torch

        layer = self.layers()[index]
        idx = torch.as_tensor(sorted(keep), dtype=torch.long)
        self.set_ffn(layer, _slice_linear(self.ffn_in(layer), self._ffn_rows(layer, idx), 0),
                     _slice_linear(self.ffn_out(layer), idx, 1))

    def _ffn_rows(self, layer: Any, idx: Any) -> Any:
        """Rows of the FFN input matrix that neurons `idx` own."""
        return idx

    def finish(self) -> None:
        layers = self.layers()
        self.check_shapes([self.attention_units(layer) for layer in layers], [self.ffn_width(layer) for layer in layers])
        setattr(self.config, self.ffn_key, self.ffn_width(layers[0]))
        pruned = getattr(self.config, "pruned_heads", None) or {}
        self.config.pruned_heads = {int(k): sorted(int(h) for h in v) for k, v in pruned.items() if v}

    def flops_per_token(self, seq_len: int) -> int:
        hidden = int(self.config.hidden_size)
        total = 0
        for layer in self.layers():
            width = self.attention_units(layer) * self.head_size(layer)  # heads x d
            total += 2 * (3 * hidden * width + width * hidden)  # q, k, v, output projection
            total += 2 * 2 * seq_len * width  # scores and weighted sum
            total += 2 * (int(self.ffn_in(layer).out_features) + self.ffn_width(layer)) * hidden
        return int(total)


class DistilBertArch(EncoderArch):
    """`distilbert.transformer.layer[i]`: attention.{q,k,v,out}_lin, ffn.lin1 / lin2; HF's `prune_heads`."""

    ffn_key = "hidden_dim"

    def layers(self) -> Any:
        return self.base.transformer.layer

    def set_layers(self, layers: Sequence[Any]) -> None:
        import torch

        self.base.transformer.layer = torch.nn.ModuleList(layers)

    def attention(self, layer: Any) -> Any:
        return layer.attention

    def qkv(self, layer: Any) -> list[Any]:
        return [layer.attention.q_lin, layer.attention.k_lin, layer.attention.v_lin]

    def attention_out(self, layer: Any) -> Any:
        return layer.attention.out_lin

    def ffn_in(self, layer: Any) -> Any:
        return layer.ffn.lin1

    def ffn_out(self, layer: Any) -> Any:
        return layer.ffn.lin2

    def set_ffn(self, layer: Any, ffn_in: Any, ffn_out: Any) -> None:
        layer.ffn.lin1, layer.ffn.lin2 = ffn_in, ffn_out


class DebertaV2Arch(EncoderArch):
    """`deberta.encoder.layer[i].attention.self.{query,key,value}_proj` (+ pos_{key,query}_proj when the relative
    positions have their own projections), `intermediate.dense`, `output.dense`. FFN neurons and layers; heads
    are refused (edgellm.families): DeBERTa's attention output is built hidden x hidden whatever the head count."""

    def qkv(self, layer: Any) -> list[Any]:
        attn = layer.attention.self
        extra = [getattr(attn, n) for n in ("pos_key_proj", "pos_query_proj") if hasattr(attn, n)]
        return [attn.query_proj, attn.key_proj, attn.value_proj, *extra]

    def keep_units(self, index: int, keep: Sequence[int]) -> None:
        from edgellm.families import require

        require(self.config, "prune.heads")


class ModernBertArch(EncoderArch):
    """`model.layers[i]`: attn.Wqkv (3 x heads*d, H) and attn.Wo, a gated FFN mlp.Wi (2F, H: input rows then gate
    rows) and mlp.Wo (H, F). FFN neurons only: heads and layers are refused (edgellm.families)."""

    def layers(self) -> Any:
        return self.base.layers

    def set_layers(self, layers: Sequence[Any]) -> None:
        import torch

        self.base.layers = torch.nn.ModuleList(layers)

    def keep_layers(self, keep: Sequence[int]) -> None:
        from edgellm.families import require

        require(self.config, "prune.layers")

    def attention(self, layer: Any) -> Any:
        return layer.attn

    def head_size(self, layer: Any) -> int:
        return int(layer.attn.head_dim)

    def attention_units(self, layer: Any) -> int:
        return int(layer.attn.num_heads)

    def qkv(self, layer: Any) -> list[Any]:
        return [layer.attn.Wqkv]

    def unit_input_rows(self, layer: Any, unit: int) -> list[Any]:
        d, width = self.head_size(layer), self.attention_units(layer) * self.head_size(layer)
        w = layer.attn.Wqkv.weight  # (3 x heads*d, H): query, key, value blocks
        return [w[part * width + unit * d : part * width + (unit + 1) * d] for part in range(3)]

    def unit_params(self, layer: Any) -> int:
        d, hidden = self.head_size(layer), int(self.config.hidden_size)
        return 4 * hidden * d + (3 * d if layer.attn.Wqkv.bias is not None else 0)

    def attention_out(self, layer: Any) -> Any:
        return layer.attn.Wo

    def keep_units(self, index: int, keep: Sequence[int]) -> None:
        from edgellm.families import require

        require(self.config, "prune.heads")

    def ffn_in(self, layer: Any) -> Any:
        return layer.mlp.Wi

    def ffn_out(self, layer: Any) -> Any:
        return layer.mlp.Wo

    def set_ffn(self, layer: Any, ffn_in: Any, ffn_out: Any) -> None:
        layer.mlp.Wi, layer.mlp.Wo = ffn_in, ffn_out

    def ffn_input_weights(self, layer: Any) -> list[Any]:
        w, width = layer.mlp.Wi.weight, self.ffn_width(layer)
        return [w[:width], w[width:]]  # input and gate rows of each neuron

    def _ffn_rows(self, layer: Any, idx: Any) -> Any:
        import torch

        return torch.cat([idx, idx + self.ffn_width(layer)])


class DecoderArch(Arch):
    family = "decoder"
    unit_name = "kv_group"
    uniform_units = True

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        self.base = model.model if hasattr(model, "model") else model

    def layers(self) -> Any:
        return self.base.layers

    def set_layers(self, layers: Sequence[Any]) -> None:
        import torch

        self.base.layers = torch.nn.ModuleList(layers)

    @staticmethod
    def _dims(layer: Any) -> tuple[int, int, int]:
        """(KV groups, query heads per group g, head size d) of a layer now."""
        attn = layer.self_attn
        d = int(attn.head_dim)
        groups = int(attn.k_proj.out_features) // d
        per_group = int(attn.q_proj.out_features) // d // groups
        return groups, per_group, d

    def attention_units(self, layer: Any) -> int:
        return self._dims(layer)[0]

    def ffn_width(self, layer: Any) -> int:
        return int(layer.mlp.down_proj.in_features)

    def unit_output_columns(self, layer: Any) -> tuple[Any, int]:
        _, per_group, d = self._dims(layer)
        return layer.self_attn.o_proj.weight, per_group * d

    def unit_input_rows(self, layer: Any, unit: int) -> list[Any]:
        _, per_group, d = self._dims(layer)
        attn = layer.self_attn
        q = slice(unit * per_group * d, (unit + 1) * per_group * d)
        kv = slice(unit * d, (unit + 1) * d)
        return [attn.q_proj.weight[q], attn.k_proj.weight[kv], attn.v_proj.weight[kv]]

    def ffn_output_weight(self, layer: Any) -> Any:
        return layer.mlp.down_proj.weight

    def ffn_input_weights(self, layer: Any) -> list[Any]:
        return [layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight]

    def unit_params(self, layer: Any) -> int:
        _, g, d = self._dims(layer)
        attn = layer.self_attn
        hidden = int(attn.q_proj.in_features)
        biases = sum(n * d for m, n in ((attn.q_proj, g), (attn.k_proj, 1), (attn.v_proj, 1)) if m.bias is not None)
        return (2 * g + 2) * d * hidden + biases  # g query heads, one key and one value head, output columns

    def neuron_params(self, layer: Any) -> int:
        mlp = layer.mlp
        hidden = int(mlp.down_proj.out_features)
        return 3 * hidden + sum(1 for m in (mlp.gate_proj, mlp.up_proj) if m.bias is not None)

    def keep_units(self, index: int, keep: Sequence[int]) -> None:
        import torch

        layer = self.layers()[index]
        _, per_group, d = self._dims(layer)
        keep = sorted(keep)
        q_rows = torch.as_tensor([r for u in keep for r in range(u * per_group * d, (u + 1) * per_group * d)])
        kv_rows = torch.as_tensor([r for u in keep for r in range(u * d, (u + 1) * d)])
        attn = layer.self_attn
        attn.q_proj = _slice_linear(attn.q_proj, q_rows, 0)  # (g*d*groups, H)
        attn.k_proj = _slice_linear(attn.k_proj, kv_rows, 0)  # (d*groups, H)
        attn.v_proj = _slice_linear(attn.v_proj, kv_rows, 0)
        attn.o_proj = _slice_linear(attn.o_proj, q_rows, 1)  # (H, g*d*groups)
        # num_key_value_groups (g) is unchanged: whole groups go. Views use -1 for the head count.

    def keep_neurons(self, index: int, keep: Sequence[int]) -> None:
        import torch

        mlp = self.layers()[index].mlp
        idx = torch.as_tensor(sorted(keep), dtype=torch.long)
        mlp.gate_proj = _slice_linear(mlp.gate_proj, idx, 0)
        mlp.up_proj = _slice_linear(mlp.up_proj, idx, 0)
        mlp.down_proj = _slice_linear(mlp.down_proj, idx, 1)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = len(idx)

    def finish(self) -> None:
        layers = self.layers()
        self.check_shapes([self.attention_units(layer) for layer in layers], [self.ffn_width(layer) for layer in layers])
        groups, per_group, d = self._dims(layers[0])
        self.config.head_dim = d  # explicit: hidden_size // num_attention_heads no longer gives it
        self.config.num_key_value_heads = groups
        self.config.num_attention_heads = groups * per_group
        self.config.intermediate_size = self.ffn_width(layers[0])

    def flops_per_token(self, seq_len: int) -> int:
        hidden = int(self.config.hidden_size)
        total = 0
        for layer in self.layers():
            groups, per_group, d = self._dims(layer)
            q, kv = groups * per_group * d, groups * d
            total += 2 * (hidden * q + 2 * hidden * kv + q * hidden)
            total += 2 * 2 * seq_len * q
            total += 2 * 3 * hidden * self.ffn_width(layer)
        head = self.model.get_output_embeddings() if hasattr(self.model, "get_output_embeddings") else None
        if head is not None:
            total += 2 * int(head.in_features) * int(head.out_features)
        return int(total)


def arch_for(model: Any) -> Arch:
    """The surgery adapter for `model`, or PruningError naming the architecture we cannot prune."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    name = type(model).__name__
    if model_type in ENCODER_ARCHS:
        arch = ENCODER_ARCHS[model_type](model)
        layers = arch.layers()
        if len(layers) and arch.qkv(layers[0]):
            return arch
    if model_type in PRUNABLE_DECODERS:
        inner = getattr(model, "model", model)
        layers = getattr(inner, "layers", None)
        if layers is not None and len(layers) and hasattr(layers[0], "self_attn") and hasattr(layers[0], "mlp"):
            return DecoderArch(model)
    raise _unsupported(name, model_type)


def check_supported(config: Any, prune: Any = None) -> None:
    """Refuse, before loading weights: PruningError naming an architecture that cannot be pruned at all, and
    UnsupportedArchitectureError naming one whose family refuses a unit `prune` (a PruneConfig) asks to remove."""
    model_type = getattr(config, "model_type", None)
    if model_type not in PRUNABLE_ENCODERS + PRUNABLE_DECODERS:
        name = (getattr(config, "architectures", None) or [type(config).__name__])[0]
        raise _unsupported(name, model_type)
    if prune is not None and model_type in ENCODER_ARCHS:
        from edgellm.families import require

        budget = getattr(prune, "target_params", None) is not None
        for unit in ("heads", "ffn", "layers"):
            if getattr(prune, unit, 0) or (budget and unit != "layers"):
                require(config, f"prune.{unit}")


def _unsupported(name: str, model_type: Any) -> PruningError:
    return PruningError(
        f"cannot prune {name} (model_type {model_type!r}): structured pruning supports the encoders "
        f"{', '.join(PRUNABLE_ENCODERS)} and the decoders {', '.join(PRUNABLE_DECODERS)}"
    )


# model type -> the surgery adapter of its layout (what each family refuses: edgellm.families)
ENCODER_ARCHS: dict[str, type[EncoderArch]] = {
    "bert": EncoderArch, "roberta": EncoderArch, "xlm-roberta": EncoderArch, "electra": EncoderArch,
    "camembert": EncoderArch, "distilbert": DistilBertArch, "deberta-v2": DebertaV2Arch, "modernbert": ModernBertArch,
}
PRUNABLE_ENCODERS = tuple(ENCODER_ARCHS)
