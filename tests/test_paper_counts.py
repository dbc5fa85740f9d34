"""Candidate-feature counts of the paper's backbones from shapes alone (random init, no
weights): the reference tap set of ResNet-50 gives the cost table's N = 30,440 at T=512,
and no input size or target size on a wide grid gives its other two values (docs/paper_setup.md)."""
from __future__ import annotations

import pytest

from head2toe.backbones import create_backbone
from head2toe.pooling import pooled_size

COST_TABLE_N = (30440, 467688, 1696552)  # analysis/published/cost.csv, the slides' cost table


@pytest.fixture(scope="module")
def r50_shapes():
    out = {}
    for size in (224, 240):
        b = create_backbone("resnet50", weights="random", input_size=size)
        out[size] = [i["shape"] for i in b.feature_info()]
    return out


def count(shapes, t, edge="global"):
    return sum(pooled_size(s, t, edge) for s in shapes)


def test_reference_taps_and_geometry():
    b = create_backbone("resnet50", weights="random")
    names = b.layer_names
    assert b.input_size == 240 and b.spec.timm_id == "resnet50.tv_in1k"
    assert len(names) == 52 and names[:2] == ["after_root", "block1_unit1_layer0"]
    assert names[-3:] == ["pre_logits_pre_pooling", "pre_logits", "logits"]
    assert {f"block{i + 1}_unit{k + 1}_layer{l}" for i, n in enumerate([3, 4, 6, 3]) for k in range(n) for l in range(3)} <= set(names)
    shapes = {i["name"]: i["shape"] for i in b.feature_info()}
    # layer0 is the unit's input, layer1/2 the outputs of its first two convolutions (stride on the 3x3)
    assert shapes["block2_unit1_layer0"] == (256, 60, 60) and shapes["block2_unit1_layer1"] == (128, 60, 60)
    assert shapes["block2_unit1_layer2"] == (128, 30, 30) and shapes["pre_logits_pre_pooling"] == (2048, 8, 8)


@pytest.mark.parametrize("size", [224, 240])
def test_resnet50_gives_the_cost_tables_n_at_t512(r50_shapes, size):
    assert count(r50_shapes[size], 512) == COST_TABLE_N[0]


def test_resnet50_counts_at_the_paper_configs_target_sizes(r50_shapes):
    assert [count(r50_shapes[224], t) for t in (8192, 16384)] == [524904, 1306472]
    assert [count(r50_shapes[240], t) for t in (8192, 16384)] == [406248, 1542248]


def test_no_target_size_gives_the_tables_other_two_values(r50_shapes):
    """Every multiple of 128 up to 65,536, both input sizes, both pool-size-0 rules."""
    for size, shapes in r50_shapes.items():
        for edge in ("global", "clamp"):
            got = {count(shapes, t, edge) for t in range(128, 65537, 128)}
            assert not got & set(COST_TABLE_N[1:]), (size, edge)


def test_vit_b16_reference_taps():
    b = create_backbone("vit_b16", weights="random")
    names = b.layer_names
    assert b.spec.timm_id == "vit_base_patch16_224.augreg_in1k" and b.input_size == 224
    assert names[:3] == ["root_output_with_cls", "position_embedded_input", "encoder_0_pre_attn"]
    assert names[-3:] == ["encoded_sequence", "cls_embedded", "pre_logits"] and "logits" not in names
    assert len(names) == 2 + 12 * 4 + 3
    info = {i["name"]: i["shape"] for i in b.feature_info()}
    assert info["root_output_with_cls"] == (197, 768) and info["encoder_0_mlp_1"] == (197, 3072)
    assert [count(info.values(), t) for t in (512, 8192, 16384)] == [68352, 374784, 814848]


def test_vit_root_taps_are_the_embedding_before_and_after_position_embeddings():
    import torch

    b = create_backbone("vit_b16", weights="random", input_size=32)
    with torch.inference_mode():
        acts = b.forward_taps(torch.randn(2, 3, 32, 32))
    assert torch.allclose(acts["position_embedded_input"] - acts["root_output_with_cls"], b.model.pos_embed.expand(2, -1, -1), atol=1e-5)
    assert torch.allclose(acts["root_output_with_cls"][:, 0], b.model.cls_token[:, 0].expand(2, -1))
    assert torch.equal(acts["cls_embedded"], acts["encoded_sequence"][:, 0])
