import math
from collections import Counter

import pytest
import torch

from vidssl import backbones
from vidssl.tasks import ROTATION_SETS, ClipOrderTask, JointTask, RotationTask
from vidssl.tasks.clip_order import permutation_index, permutations
from vidssl.tasks.rotation import isotropic_lowpass, rotate, rotate_each, safe_crop_size


def g(seed=0):
    return torch.Generator().manual_seed(seed)


def clips(b=3, t=4, s=16, seed=0):
    return torch.randn(b, 3, t, s, s, generator=g(seed))


def test_rotating_back_recovers_the_clip_exactly():
    x = clips()
    for a in (0, 90, 180, 270):
        assert torch.equal(rotate(rotate(x, a), (360 - a) % 360), x)
    assert not torch.equal(rotate(x, 90), x)


def test_rotation_is_counter_clockwise_and_interpolation_agrees():
    frame = torch.zeros(1, 1, 1, 8, 8)
    frame[..., 0, 7] = 1  # top-right corner
    assert rotate(frame, 90)[..., 0, 0] == 1  # goes to top-left: counter-clockwise
    x = clips(s=20)
    exact, sampled = rotate(x, 90), rotate_each(x, torch.full((3,), 90.0))
    torch.testing.assert_close(sampled[..., 1:-1, 1:-1], exact[..., 1:-1, 1:-1], atol=1e-4, rtol=1e-4)


def test_all_rotations_batch_layout_and_labels():
    x = clips(b=3)
    task = RotationTask(8, "0,90,180,270")
    inputs, targets = task.make_batch(x, g())
    assert inputs.shape == (12, 3, 4, 16, 16)
    assert targets.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]  # block k = rotation k of every clip
    for i in range(12):
        angle = task.angles[targets[i]]
        assert torch.equal(inputs[i], rotate(x[i % 3], angle))


@pytest.mark.parametrize("rotations", ["0,90", "0,90,180", "90,180,270", "0,90,180,270"])
def test_table3_sets_random_mode(rotations):
    x = clips(b=16)
    task = RotationTask(8, rotations, mode="random")
    inputs, targets = task.make_batch(x, g(1))
    assert inputs.shape == x.shape and len(set(targets.tolist())) > 1
    for i in range(16):
        assert torch.equal(inputs[i], rotate(x[i], ROTATION_SETS[rotations][targets[i]]))
    assert task.head[-1].out_features == len(ROTATION_SETS[rotations])


def test_eight_way_crop_leaves_no_empty_pixels():
    ones = torch.ones(2, 3, 2, 32, 32)
    task = RotationTask(8, "8way")
    inputs, targets = task.make_batch(ones, g())
    side = safe_crop_size(32)
    assert inputs.shape == (16, 3, 2, side, side) and targets.tolist() == [k for k in range(8) for _ in range(2)]
    assert inputs.min() > 0.999  # no zero padding shows in any rotation


def test_regression_targets_are_the_angles():
    x = clips(b=4, s=24)
    task = RotationTask(8, "360", loss="l2")
    inputs, turns = task.make_batch(x, g(2))
    assert task.head[-1].out_features == 1 and ((turns >= 0) & (turns < 1)).all()
    side = safe_crop_size(24)
    expected = rotate_each(x, turns * 360)[
        ..., (24 - side) // 2 : (24 - side) // 2 + side, (24 - side) // 2 : (24 - side) // 2 + side
    ]
    torch.testing.assert_close(inputs, isotropic_lowpass(expected))  # every angle resampled alike
    out = turns[:, None] + 0.01  # a nearly right prediction
    assert task.loss(out, turns).item() == pytest.approx(1e-4, rel=1e-3)
    assert task.metrics(out, turns)["acc"] == 1.0
    wrapped = torch.tensor([[0.99]]), torch.tensor([0.01])  # 356 vs 4 degrees: 8 degrees apart
    assert task.metrics(*wrapped)["deg_err"] == pytest.approx(7.2, abs=0.01)


def test_rotation_errors():
    with pytest.raises(ValueError, match="unknown rotation set '0,45'"):
        RotationTask(8, "0,45")
    with pytest.raises(ValueError, match="square"):
        RotationTask(8).make_batch(torch.zeros(1, 3, 2, 8, 12), g())


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_permutation_index_is_a_bijection(n):
    perms = permutations(n)
    assert len(perms) == math.factorial(n)
    assert [permutation_index(p.tolist()) for p in perms] == list(range(len(perms)))
    assert len({tuple(p.tolist()) for p in perms}) == len(perms)


def test_shuffled_tuples_follow_the_target_permutation():
    b, n = 64, 3
    ordered = torch.arange(n).float().view(1, n, 1, 1, 1, 1).expand(b, n, 3, 2, 4, 4).clone()
    task = ClipOrderTask(8, n)
    inputs, targets = task.make_batch(ordered, g(3))
    for i in range(b):
        perm = permutations(n)[targets[i]].tolist()
        assert [int(inputs[i, pos, 0, 0, 0, 0]) for pos in range(n)] == perm  # position holds clip perm[pos]
    assert set(Counter(targets.tolist())) == set(range(6))  # every order is drawn


def test_clip_order_head_as_the_paper():
    task = ClipOrderTask(16, num_clips=4)
    assert len(task.pairs) == 6 and task.pair_fc.in_features == 32 and task.fc.out_features == 24
    model = backbones.build("r3d_10", width=0.125)
    task = ClipOrderTask(model.num_features, 3)
    loss, metrics = task.step(model, torch.randn(2, 3, 3, 4, 16, 16), g())
    assert loss.item() > 0 and 0 <= metrics["live_units"] <= 1
    with pytest.raises(ValueError, match="2 to 5 clips"):
        ClipOrderTask(8, 6)


def test_joint_task_sums_weighted_losses():
    model = backbones.build("r3d_10", width=0.125)
    rot, order = RotationTask(model.num_features), ClipOrderTask(model.num_features, 2)
    joint = JointTask(rot, order, rotation_weight=0.5, order_weight=2.0)
    x = torch.randn(2, 2, 3, 4, 16, 16)
    model.eval()
    loss, m = joint.step(model, x, g())
    assert loss.item() == pytest.approx(0.5 * m["rotation_loss"] + 2.0 * m["order_loss"], rel=1e-5)


@pytest.mark.parametrize("task_name", ["rotation", "clip_order"])
def test_loss_falls_on_one_batch(task_name):
    torch.manual_seed(0)
    model = backbones.build("r3d_10", width=0.125)
    task = (
        RotationTask(model.num_features)
        if task_name == "rotation"
        else ClipOrderTask(model.num_features, 3, head="centered")
    )
    x = torch.randn(4, 3, 4, 16, 16) if task_name == "rotation" else torch.randn(4, 3, 3, 4, 16, 16)
    opt = torch.optim.Adam(list(model.parameters()) + list(task.parameters()), lr=3e-3)
    losses = []
    for _ in range(25):
        loss, _ = task.step(model, x, g(0))  # the same draw every time: memorisable
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
