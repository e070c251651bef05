"""irforge's one tensor table against transformers' own models: names, shapes, tying, TP."""

from __future__ import annotations

import pytest

from irforge.facts.presets import get_preset
from irforge.facts.tensor_kinds import expected_shapes, hf_shapes
from irforge.stages.sharding import split_dim
from model_helpers import model_config, tiny_llama, tiny_mistral


@pytest.mark.parametrize(
    "make", [tiny_llama, lambda: tiny_llama(tied=True), tiny_mistral], ids=["llama", "tied", "nemo"]
)
def test_hf_names_and_shapes_are_transformers(make) -> None:  # noqa: ANN001
    hf = make()
    state = {k: tuple(v.shape) for k, v in hf.state_dict().items()}
    if hf.config.tie_word_embeddings:
        state.pop("lm_head.weight")  # the same tensor as the embedding
    assert hf_shapes(model_config(hf)) == state


def test_every_split_tensor_divides_for_the_seed_models_at_tp8() -> None:
    config = get_preset("llama-3.1-405b")
    shapes = expected_shapes(config)
    split = {n: s for n, s in shapes.items() if split_dim(n) is not None}
    assert len(split) == 126 * 7 + 1  # q, k, v, o, gate, up, down per block, and output
    assert all(s[split_dim(n)] % 8 == 0 for n, s in split.items())
    assert split_dim("token_embd.weight") is None and split_dim("blk.3.ffn_norm.weight") is None
    assert split_dim("blk.3.attn_q.weight") == 0 and split_dim("blk.3.attn_output.weight") == 1
