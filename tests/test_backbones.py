import pytest
import torch

from vidssl import backbones
from vidssl.cli import main
from vidssl.info import backbone_info

# Parameter counts at full width, without any classifier (the papers' architectures; see issue #3).
PAPER_PARAMS = {
    "c3d": 27_661_440,
    "r3d_10": 14_361_792,
    "r21d_10": 14_365_303,
    "r3d_18": 33_166_272,
    "r2plus1d_18": 31_300_125,  # torchvision's 31,505,325 without its 400-class fc (512 x 400 + 400)
    "resnet18_3d": 33_030_080,
}


def test_registry_holds_the_six_backbones():
    assert backbones.names() == list(PAPER_PARAMS)
    with pytest.raises(ValueError, match="unknown backbone 'r50'; choose one of c3d, r3d_10"):
        backbones.build("r50")


@pytest.mark.parametrize("name", list(PAPER_PARAMS))
def test_contract_on_a_tiny_clip(name):
    torch.manual_seed(0)
    model = backbones.build(name, width=0.25)
    x = torch.randn(2, 3, 4, 32, 32)
    out = model(x)
    assert out.shape == (2, model.num_features) == (2, 128)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    grad = model.first_conv.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    assert isinstance(model.first_conv, torch.nn.Conv3d) and model.first_conv.in_channels == 3


@pytest.mark.parametrize("name", list(PAPER_PARAMS))
def test_exact_parameter_count_at_full_width(name):
    with torch.device("meta"):
        model = backbones.build(name)
    assert backbones.num_params(model) == PAPER_PARAMS[name]


@pytest.mark.parametrize("name", list(PAPER_PARAMS))
def test_blocks_conv1_to_conv5_hold_every_parameter(name):
    with torch.device("meta"):
        model = backbones.build(name)
    assert model.block_names == ("conv1", "conv2", "conv3", "conv4", "conv5")
    in_blocks = sum(backbones.num_params(getattr(model, b)) for b in model.block_names)
    assert in_blocks == PAPER_PARAMS[name]  # freezing "before conv_k" can name every weight
    assert model.first_conv is next(m for m in model.conv1.modules() if isinstance(m, torch.nn.Conv3d))


@pytest.mark.parametrize("name", ["c3d", "r3d_10", "r21d_10", "r3d_18", "r2plus1d_18"])
def test_vcop_shapes_at_16x112x112(name):
    info = backbone_info(name)
    assert info["feature"] == 512
    assert info["conv5"] == "512x2x7x7"  # as the clip-order paper gives
    assert info["retrieval"] == 9216  # conv5 max-pooled (1,2,2): 512 x 2 x 3 x 3


@pytest.mark.parametrize("name", ["c3d", "r3d_10"])
def test_per_block_features_stop_the_network_at_that_block(name):
    """conv2..conv4 are those blocks' own maps averaged (their channel counts), computed by running
    the blocks up to there; pooled is the backbone's output; vcop its conv5 max-pooled."""
    torch.manual_seed(0)
    model = backbones.build(name, width=0.25).eval()
    x = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():
        maps, h = {}, x
        for b in model.block_names:
            h = maps[b] = getattr(model, b)(h)
        for b in ("conv2", "conv3", "conv4"):
            f = backbones.clip_feature(model, x, b)
            assert f.shape == (2, maps[b].shape[1])
            torch.testing.assert_close(f, maps[b].mean(dim=(2, 3, 4)))
        torch.testing.assert_close(backbones.clip_feature(model, x, "pooled"), model(x))
        vcop = backbones.retrieval_feature(maps["conv5"])
        torch.testing.assert_close(backbones.clip_feature(model, x, "vcop"), vcop)
    with pytest.raises(ValueError, match="unknown feature 'conv5x'; choose one of pooled, vcop, conv2"):
        backbones.clip_feature(model, x, "conv5x")


def test_resnet18_3d_shapes_and_type_a_shortcut():
    info = backbone_info("resnet18_3d")
    assert info["feature"] == 512 and info["conv5"] == "512x1x4x4"
    block = backbones.build("resnet18_3d", width=0.25).conv3[0]
    assert sum(p.numel() for p in block.shortcut.parameters()) == 0
    x = torch.randn(1, 16, 4, 8, 8)
    y = block.shortcut(x)
    assert y.shape == (1, 32, 2, 4, 4)
    assert torch.equal(y[:, :16], x[:, :, ::2, ::2, ::2]) and (y[:, 16:] == 0).all()


def test_r21d_mid_channels_follow_the_formula():
    model = backbones.build("r21d_10")
    spatial, _, _, temporal = model.conv2[0].conv1  # 64 -> 64, 3x3x3
    assert spatial.out_channels == (3 * 9 * 64 * 64) // (9 * 64 + 3 * 64) == 144
    assert spatial.kernel_size == (1, 3, 3) and temporal.kernel_size == (3, 1, 1)
    stem = model.conv1[0][0]
    assert stem.out_channels == (3 * 49 * 3 * 64) // (49 * 3 + 3 * 64) == 83


def test_width_multiplier_scales_channels():
    model = backbones.build("r3d_10", width=0.5)
    assert model.num_features == 256 and model.first_conv.out_channels == 32
    with pytest.raises(ValueError, match="width must be positive"):
        backbones.build("c3d", width=0)


def test_flops_are_counted():
    r3d = backbone_info("r3d_18")
    assert 80 < r3d["gflops"] < 83  # 40.7 G multiply-adds, as torchvision lists for r3d_18
    assert backbone_info("r3d_10", frames=8)["gflops"] < backbone_info("r3d_10")["gflops"]


def test_info_command(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for name, count in PAPER_PARAMS.items():
        assert name in out and f"{count:,}" in out
    assert main(["info", "--backbone", "nope"]) == 2
    assert "unknown backbone" in capsys.readouterr().err


@pytest.mark.parametrize("name", list(PAPER_PARAMS))
def test_any_clip_size_works(name):
    model = backbones.build(name, width=0.25).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 5, 40, 52)).shape == (1, 128)


def _saved_bytes(model, x):
    """Bytes autograd keeps for the backward pass of one forward (what --grad-checkpointing cuts)."""
    total = 0

    def keep(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        out = model(x)
    return out, total


@pytest.mark.parametrize("name", ["r3d_18", "c3d"])
def test_grad_checkpointing_gives_the_same_step_with_less_memory(name):
    torch.manual_seed(0)
    plain = backbones.build(name, width=0.25)
    saving = backbones.set_grad_checkpointing(backbones.build(name, width=0.25))
    saving.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 8, 48, 48)
    results = []
    for model in (plain, saving):
        out, saved = _saved_bytes(model, x)
        out.square().sum().backward()
        results.append((out, saved, [p.grad for p in model.parameters()], list(model.buffers())))
    (out_a, saved_a, grads_a, bufs_a), (out_b, saved_b, grads_b, bufs_b) = results
    assert torch.equal(out_a, out_b)
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))
    # batch-norm running statistics are updated once per step, not again by the recomputation
    assert all(torch.equal(a, b) for a, b in zip(bufs_a, bufs_b))
    assert (
        int(saving.conv2[0].bn1.num_batches_tracked if name == "r3d_18" else saving.conv2[1].num_batches_tracked) == 1
    )
    assert saved_b < saved_a / 3, (saved_a, saved_b)
    saving.eval()  # nothing to recompute without a backward pass
    with torch.no_grad():
        assert torch.allclose(saving(x), plain.eval()(x))
