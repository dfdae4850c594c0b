"""Per-architecture surgery: which matrices make up a head, an FFN neuron and a layer, and how to slice them.

Two families are supported, recognised by their module structure (and named by `model_type` in errors):

- BERT-family encoders (bert, roberta, xlm-roberta, electra, camembert): `encoder.layer[i].attention.self.{query,
  key, value}`, `attention.output.dense`, `intermediate.dense`, `output.dense`. Heads are removed with Hugging Face's
  own `prune_heads`, which records them in `config.pruned_heads`, so a folder with uneven heads per layer reloads
  with `from_pretrained`. The FFN keeps the same width in every layer (`config.intermediate_size` is one number).
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

__all__ = ["Arch", "EncoderArch", "DecoderArch", "arch_for", "check_supported", "PRUNABLE_ENCODERS", "PRUNABLE_DECODERS"]

log = logging.getLogger(__name__)

PRUNABLE_ENCODERS = ("bert", "roberta", "xlm-roberta", "electra", "camembert")  # model types EncoderArch slices
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
        if self.family == "decoder" and len(set(units)) > 1:
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
    family = "encoder"
    unit_name = "head"

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        self.base = model.base_model

    def layers(self) -> Any:
        return self.base.encoder.layer

    def set_layers(self, layers: Sequence[Any]) -> None:
        import torch

        self.base.encoder.layer = torch.nn.ModuleList(layers)

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
        return int(layer.attention.self.num_attention_heads)

    def ffn_width(self, layer: Any) -> int:
        return int(layer.intermediate.dense.out_features)

    def unit_output_columns(self, layer: Any) -> tuple[Any, int]:
        return layer.attention.output.dense.weight, int(layer.attention.self.attention_head_size)

    def unit_input_rows(self, layer: Any, unit: int) -> list[Any]:
        attn = layer.attention.self
        d = attn.attention_head_size
        rows = slice(unit * d, (unit + 1) * d)
        return [attn.query.weight[rows], attn.key.weight[rows], attn.value.weight[rows]]

    def ffn_output_weight(self, layer: Any) -> Any:
        return layer.output.dense.weight

    def ffn_input_weights(self, layer: Any) -> list[Any]:
        return [layer.intermediate.dense.weight]

    def _original_heads(self, layer: Any) -> list[int]:
        """Original head numbers of the heads still present, in order (HF keeps `pruned_heads` per layer)."""
        total = int(self.config.num_attention_heads)
        gone = set(layer.attention.pruned_heads)
        return [h for h in range(total) if h not in gone]

    def unit_params(self, layer: Any) -> int:
        attn = layer.attention.self
        d, hidden = int(attn.attention_head_size), int(attn.query.in_features)
        biases = sum(d for m in (attn.query, attn.key, attn.value) if m.bias is not None)
        return 4 * hidden * d + biases  # q, k, v rows (+ biases) and output-projection columns

    def neuron_params(self, layer: Any) -> int:
        inter = layer.intermediate.dense
        return 2 * int(inter.in_features) + (1 if inter.bias is not None else 0)

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
        layer.intermediate.dense = _slice_linear(layer.intermediate.dense, idx, 0)
        layer.output.dense = _slice_linear(layer.output.dense, idx, 1)

    def finish(self) -> None:
        layers = self.layers()
        self.check_shapes([self.attention_units(layer) for layer in layers], [self.ffn_width(layer) for layer in layers])
        self.config.intermediate_size = self.ffn_width(layers[0])
        self.config.pruned_heads = {int(k): sorted(int(h) for h in v) for k, v in self.config.pruned_heads.items() if v}

    def flops_per_token(self, seq_len: int) -> int:
        hidden = int(self.config.hidden_size)
        total = 0
        for layer in self.layers():
            attn = layer.attention.self
            width = int(attn.all_head_size)  # heads x d
            total += 2 * (3 * hidden * width + width * hidden)  # q, k, v, output projection
            total += 2 * 2 * seq_len * width  # scores and weighted sum
            total += 2 * 2 * hidden * self.ffn_width(layer)
        return int(total)


class DecoderArch(Arch):
    family = "decoder"
    unit_name = "kv_group"

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
    base = getattr(model, "base_model", None)
    if model_type in PRUNABLE_ENCODERS and hasattr(getattr(base, "encoder", None), "layer"):
        layer = base.encoder.layer[0] if len(base.encoder.layer) else None
        if layer is not None and hasattr(layer, "attention") and hasattr(layer.attention, "self"):
            return EncoderArch(model)
    if model_type in PRUNABLE_DECODERS:
        inner = getattr(model, "model", model)
        layers = getattr(inner, "layers", None)
        if layers is not None and len(layers) and hasattr(layers[0], "self_attn") and hasattr(layers[0], "mlp"):
            return DecoderArch(model)
    raise _unsupported(name, model_type)


def check_supported(config: Any) -> None:
    """PruningError naming the architecture when `config`'s family cannot be pruned (before loading weights)."""
    model_type = getattr(config, "model_type", None)
    if model_type not in PRUNABLE_ENCODERS + PRUNABLE_DECODERS:
        name = (getattr(config, "architectures", None) or [type(config).__name__])[0]
        raise _unsupported(name, model_type)


def _unsupported(name: str, model_type: Any) -> PruningError:
    return PruningError(
        f"cannot prune {name} (model_type {model_type!r}): structured pruning supports BERT-family encoders "
        f"({', '.join(PRUNABLE_ENCODERS)}) and Llama-family decoders ({', '.join(PRUNABLE_DECODERS)})"
    )
