"""QT-Opt building blocks: network shapes and tiling, CEM, target math, replay buffer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rcan.qtopt.cem import CEMConfig, cem_maximize
from rcan.qtopt.losses import bellman_targets, clipped_double_q_values
from rcan.qtopt.network import QNetConfig, QNetwork, count_macs, count_parameters, random_shift
from rcan.qtopt.replay import (
    EpisodeSteps,
    ReplayBuffer,
    load_replays,
    mc_returns,
    nstep_returns,
    padded_object_pixels,
    save_replays,
)


@pytest.mark.parametrize(
    ("channels", "keypoints", "gripper", "readout"),
    [(3, 0, False, False), (6, 0, False, False), (3, 16, False, False), (3, 0, True, False), (6, 0, True, True)],
)
def test_network_shapes(channels: int, keypoints: int, gripper: bool, readout: bool) -> None:
    torch.manual_seed(0)
    net = QNetwork(
        QNetConfig(in_channels=channels, keypoints=keypoints, gripper_keypoint=gripper, target_readout=readout)
    )
    images = torch.randint(0, 256, (2, channels, 64, 64), dtype=torch.uint8)
    states = torch.tensor([[0.0, 0.2], [1.0, 0.05]])
    assert net(images, states, torch.rand(2, 6) * 2 - 1).shape == (2,)
    assert net(images, states, torch.rand(2, 5, 6) * 2 - 1).shape == (2, 5)
    assert net.features(images).shape == (2, *net.feature_shape)
    tower, head = count_macs(net)
    assert tower > 10 * head > 0 and count_parameters(net) < 200_000


@pytest.mark.parametrize(
    ("keypoints", "gripper", "readout", "yaw", "fingers", "offsets", "wall"),
    [
        (0, False, False, False, False, False, False),
        (8, False, False, False, False, False, False),
        (0, True, False, False, False, False, False),
        (0, True, True, False, False, False, False),
        (0, True, True, False, False, True, False),
        (0, True, True, True, False, False, False),
        (0, True, True, True, False, False, True),
        (0, True, True, True, True, False, False),
        (0, True, True, True, True, True, True),
        (0, True, 2, False, False, False, False),
        (0, True, 3, True, True, False, False),
    ],
)
def test_tiled_candidates_equal_one_by_one(
    keypoints: int, gripper: bool, readout: int, yaw: bool, fingers: bool, offsets: bool, wall: bool
) -> None:
    """``readout``: False, or True/an int (the read-out's ``readout_levels``)."""
    torch.manual_seed(1)
    net = QNetwork(
        QNetConfig(
            keypoints=keypoints,
            gripper_keypoint=gripper,
            target_readout=bool(readout),
            readout_levels=max(1, int(readout)),
            gripper_yaw=yaw,
            finger_readout=fingers,
            object_offsets=offsets,
            wall_yaw=wall,
        )
    )
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    states = torch.rand(3, 2)
    cands = torch.rand(3, 7, 6) * 2 - 1
    with torch.no_grad():
        tiled = net.head(net.features(images), states, cands, chunk=8)  # chunking path too
        single = torch.stack([net(images, states, cands[:, j]) for j in range(7)], dim=1)
    torch.testing.assert_close(tiled, single, rtol=1e-5, atol=1e-5)


def test_wrong_channels_rejected() -> None:
    with pytest.raises(ValueError, match="in_channels"):
        QNetConfig(in_channels=4)
    with pytest.raises(ValueError, match="target_readout"):
        QNetConfig(target_readout=True, gripper_keypoint=False)
    with pytest.raises(ValueError, match="gripper_yaw needs target_readout"):
        QNetConfig(gripper_keypoint=True, gripper_yaw=True)
    with pytest.raises(ValueError, match="readout_levels"):
        QNetConfig(gripper_keypoint=True, target_readout=True, readout_levels=4)
    with pytest.raises(ValueError, match="finger_readout needs gripper_yaw"):
        QNetConfig(gripper_keypoint=True, target_readout=True, finger_readout=True)
    with pytest.raises(ValueError, match="object_offsets needs target_readout"):
        QNetConfig(gripper_keypoint=True, object_offsets=True)
    with pytest.raises(ValueError, match="wall_yaw needs gripper_yaw"):
        QNetConfig(gripper_keypoint=True, target_readout=True, wall_yaw=True)


def test_global_pool_reads_a_finer_map_at_the_global_heads_cost() -> None:
    """strides (2, 2, 1) + global_pool 2: the read-out gets a 16x16 fused map, the global head still sees
    8x8 (its MACs per candidate grow only by the read-out's own); candidates tile exactly; a pool that does
    not divide the map is refused."""
    torch.manual_seed(2)
    base = dict(gripper_keypoint=True, target_readout=True, object_offsets=True)
    net = QNetwork(QNetConfig(strides=(2, 2, 1), global_pool=2, **base))
    coarse = QNetwork(QNetConfig(**base))
    assert net.feature_shape[-1] == 16 and coarse.feature_shape[-1] == 8
    assert net.fc[0].in_features == coarse.fc[0].in_features
    assert count_macs(net)[1] < 1.2 * count_macs(coarse)[1]
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    states, cands = torch.rand(2, 2), torch.rand(2, 5, 6)
    with torch.no_grad():
        tiled = net.head(net.features(images), states, cands, chunk=4)
        single = torch.stack([net(images, states, cands[:, j]) for j in range(5)], dim=1)
    torch.testing.assert_close(tiled, single, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="global_pool"):
        QNetwork(QNetConfig(global_pool=3, **base))
    with pytest.raises(ValueError, match="global_pool"):
        QNetConfig(global_pool=0)


def test_learning_rate_falls_linearly_then_stays() -> None:
    from rcan.qtopt.args import learning_rate, make_args

    constant = make_args("tiny")
    assert learning_rate(constant, 0) == learning_rate(constant, 10**6) == constant.lr
    decay = make_args("tiny", lr=1e-3, lr_final=1e-4, lr_decay_steps=100)
    assert learning_rate(decay, 0) == pytest.approx(1e-3)
    assert learning_rate(decay, 50) == pytest.approx(5.5e-4)
    assert learning_rate(decay, 100) == learning_rate(decay, 5000) == pytest.approx(1e-4)
    with pytest.raises(ValueError, match="lr_decay_steps"):
        make_args("tiny", lr_decay_steps=0)


def test_nearest_offsets_and_offset_points_by_hand() -> None:
    """Offsets point from each point to the nearest present grasp point, in cells, clipped; rows without
    objects give NaN; the sampled points are the landing point, some near objects and some anywhere."""
    from rcan.qtopt.losses import nearest_offsets, offset_points

    nan = float("nan")
    centres = torch.tensor([[[0.0, 0.0], [0.5, 0.5], [nan, nan]], [[nan, nan], [nan, nan], [nan, nan]]])
    points = torch.tensor([[[0.1, 0.0], [0.5, 0.25], [-1.0, -1.0]], [[0.0, 0.0], [0.1, 0.1], [0.2, 0.2]]])
    off = nearest_offsets(points, centres, cells=4.0, limit=1.5)
    torch.testing.assert_close(off[0, 0], torch.tensor([-0.4, 0.0]))
    torch.testing.assert_close(off[0, 1], torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(off[0, 2], torch.tensor([1.5, 1.5]))  # 4 cells away: clipped
    assert torch.isnan(off[1]).all()
    g = torch.Generator().manual_seed(0)
    landing = torch.tensor([[0.3, 0.3], [nan, nan]])
    pts = offset_points(centres, landing, extra=6, spread=0.01, generator=g)
    assert pts.shape == (2, 7, 2)
    torch.testing.assert_close(pts[0, 0], landing[0])
    d = torch.cdist(pts[0, 1:4], centres[0, :2]).min(dim=1).values
    assert (d < 0.05).all()  # around a present object, never the absent slot
    assert torch.isnan(pts[1, :4]).all() and torch.isfinite(pts[:, 4:]).all()
    assert (pts[:, 4:].abs() <= 1).all()


def test_object_offset_loss_learns_and_skips_unlabelled_rows() -> None:
    """A few steps on one batch reduce the loss; a batch without labels costs nothing."""
    from rcan.qtopt.losses import object_offset_loss

    torch.manual_seed(0)
    net = QNetwork(QNetConfig(gripper_keypoint=True, target_readout=True, object_offsets=True))
    images = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    centres = torch.full((4, 8, 2), float("nan"))
    centres[:, :3] = torch.rand(4, 3, 2) * 1.6 - 0.8
    landing, shifts = torch.rand(4, 2) * 2 - 1, torch.zeros(4, 2)
    g = torch.Generator().manual_seed(1)
    nan = torch.full_like(centres, float("nan"))
    assert float(object_offset_loss(net, net.features(images), nan, landing, shifts, 64, 6, g)) == 0.0
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        g.manual_seed(1)  # the same points every step: the loss must fall on them
        loss = object_offset_loss(net, net.features(images), centres, landing, shifts, 64, 6, g)
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.3 * losses[0]


def test_wall_yaw_loss_learns_the_sign_where_moves_land_and_feeds_the_alignment() -> None:
    """The wall-yaw read-out learns a sign that depends on where in the image a move lands (left half +1,
    right half -1, at the shifted landing point); unlabelled rows cost nothing; the local head's logits
    depend on the read sign times the closing yaw."""
    from rcan.qtopt.losses import wall_yaw_loss

    torch.manual_seed(0)
    net = QNetwork(QNetConfig(gripper_keypoint=True, target_readout=True, gripper_yaw=True, wall_yaw=True))
    images = torch.randint(0, 256, (8, 3, 64, 64), dtype=torch.uint8)
    landing = torch.rand(8, 2) * 1.6 - 0.8
    shifts = torch.randint(-4, 5, (8, 2)).float()
    where = landing + shifts * (2.0 / 64)
    signs = torch.where(where[:, 0] < 0, 1.0, -1.0)
    nan = torch.full_like(signs, float("nan"))
    assert float(wall_yaw_loss(net, net.features(images), nan, landing, shifts, 64)) == 0.0
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(60):
        loss = wall_yaw_loss(net, net.features(images), signs, landing, shifts, 64)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        logits = net.wall_yaw_logits(net.features(images), where[:, None])[:, 0]
    assert float(loss.detach()) < 0.2 and ((logits > 0) == (signs > 0)).all()
    # The local head's input carries w * cos(2 psi): zeroing the alignment weight changes the logits.
    feats, states, cands = net.features(images), torch.rand(8, 2), torch.rand(8, 5, 6) * 2 - 1
    with torch.no_grad():
        before = net._local_logits(feats, states, cands)
        net.local_head[0].weight[:, -1] = 0.0
        after = net._local_logits(feats, states, cands)
    assert not torch.allclose(before, after)


def test_finger_loss_ignores_finger_order_and_missing_labels() -> None:
    """The fingers are interchangeable: a label that is the prediction with its fingers swapped costs
    nothing; unlabelled rows count for nothing; a few steps on one batch reduce the loss."""
    from rcan.qtopt.losses import finger_aux_loss

    torch.manual_seed(0)
    net = QNetwork(QNetConfig(gripper_keypoint=True, target_readout=True, gripper_yaw=True, finger_readout=True))
    images = torch.randint(0, 256, (6, 3, 64, 64), dtype=torch.uint8)
    states, actions, shifts = torch.rand(6, 2), torch.rand(6, 6) * 2 - 1, torch.zeros(6, 2)
    with torch.no_grad():
        pred = net.finger_pixels(net.features(images), states, actions[:, None])[:, 0]  # (6, 2, 2)
    swapped = pred.flip(1).reshape(6, 4)
    with torch.no_grad():
        assert float(finger_aux_loss(net, net.features(images), states, actions, swapped, shifts, 64)) < 1e-10
    nan = torch.full((6, 4), float("nan"))
    assert float(finger_aux_loss(net, net.features(images), states, actions, nan, shifts, 64)) == 0.0
    label = torch.rand(6, 4) * 2 - 1
    label[0] = float("nan")
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        loss = finger_aux_loss(net, net.features(images), states, actions, label, shifts, 64)
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.5 * first


def test_turn_yaw_vector_adds_the_angle() -> None:
    from rcan.qtopt.network import turn_yaw_vector

    psi, turn = torch.tensor([0.3, -1.2, 2.0]), torch.tensor([0.2, -0.5, 1.4])
    u = torch.stack([torch.cos(2 * psi), torch.sin(2 * psi)], dim=-1)
    want = torch.stack([torch.cos(2 * (psi + turn)), torch.sin(2 * (psi + turn))], dim=-1)
    torch.testing.assert_close(turn_yaw_vector(u, turn), want)


def test_gripper_yaw_learns_a_bar_angle() -> None:
    """The keypoint and yaw losses teach the network to find a bar and read its angle modulo 180 degrees,
    through random shifts, to within ~15 degrees on average."""
    from rcan.qtopt.losses import gripper_aux_loss, yaw_aux_loss

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    net = QNetwork(
        QNetConfig(
            gripper_keypoint=True, target_readout=True, gripper_yaw=True, image_size=32, channels=(16, 16), strides=(2, 2)
        )
    )
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")

    def batch(n: int) -> tuple[torch.Tensor, ...]:
        centre = torch.randint(9, 23, (n, 2), generator=gen).float()  # (x, y) pixel
        psi = (torch.rand(n, generator=gen) * 2 - 1) * math.pi
        dx, dy = xs[None] - centre[:, 0, None, None], ys[None] - centre[:, 1, None, None]
        along = dx * torch.cos(psi)[:, None, None] + dy * torch.sin(psi)[:, None, None]
        across = -dx * torch.sin(psi)[:, None, None] + dy * torch.cos(psi)[:, None, None]
        bar = (along.abs() <= 5) & (across.abs() <= 1.2)
        images = torch.where(bar[:, None], 250, 40).expand(n, 3, 32, 32).to(torch.uint8)
        return images, (centre * 2 + 1) / 32 - 1, psi

    for _ in range(500):
        images, here, psi = batch(32)
        shifted, shifts = random_shift(images, 2, gen, return_shifts=True)
        feats = net.features(shifted)
        loss = gripper_aux_loss(net, feats, here, shifts, 32) + yaw_aux_loss(net, feats, psi)
        opt.zero_grad()
        loss.backward()
        opt.step()
    images, _, psi = batch(64)
    with torch.no_grad():
        u = net.gripper_yaw_vector(net.features(images))
    got = torch.atan2(u[:, 1], u[:, 0]) / 2
    err = torch.remainder(got - psi + math.pi / 2, math.pi) - math.pi / 2  # modulo 180 degrees
    assert float(err.abs().mean()) < math.radians(15)
    assert float(yaw_aux_loss(net, net.features(images), torch.full((64,), float("nan")))) == 0.0


def test_readout_patch_reads_a_grid_around_the_landing_point() -> None:
    """``readout_patch=3``: nine points one stride-4 cell apart, the centre first, all nine going to the
    local head; candidates tile exactly; even sizes and patches with the finger read-out are refused."""
    torch.manual_seed(3)
    net = QNetwork(QNetConfig(gripper_keypoint=True, target_readout=True, readout_patch=3))
    with torch.no_grad():
        feats = net.features(torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8))
        offsets = net._patch_offsets(feats)
        assert offsets.shape == (9, 2) and offsets[0].abs().max() == 0
        assert sorted({round(v, 4) for v in offsets.flatten().tolist()}) == [-0.125, 0.0, 0.125]
        states, cands = torch.rand(2, 2), torch.rand(2, 5, 6) * 2 - 1
        tiled = net.head(feats, states, cands)
        single = torch.stack([net.head(feats, states, cands[:, j : j + 1])[:, 0] for j in range(5)], dim=1)
        torch.testing.assert_close(tiled, single, rtol=1e-5, atol=1e-5)
    assert net.local_head[0].in_features == 9 * (32 + 16) + 6 + 2 + 2
    for bad in ({"readout_patch": 2}, {"readout_patch": 0}):
        with pytest.raises(ValueError, match="readout_patch"):
            QNetConfig(gripper_keypoint=True, target_readout=True, **bad)
    with pytest.raises(ValueError, match="readout_patch"):
        QNetConfig(gripper_keypoint=True, target_readout=True, gripper_yaw=True, finger_readout=True, readout_patch=3)


@pytest.mark.parametrize("levels", [1, 2])
def test_target_readout_only_reads_where_the_move_lands(levels: int) -> None:
    """The local head sees the feature maps only around the position the move reaches: changing the
    finest sampled map (stride 4, or stride 2 with ``readout_levels=2``) far from it leaves the logits
    alone, changing it there does not."""
    torch.manual_seed(2)
    net = QNetwork(QNetConfig(gripper_keypoint=True, target_readout=True, readout_levels=levels))
    with torch.no_grad():
        feats = net.features(torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8))
        maps = net._fine(feats)
        assert [m.shape[-1] for m in maps] == [32, 16][2 - levels :]
        states, action = torch.tensor([[0.0, 0.1]]), torch.rand(1, 1, 6) * 2 - 1
        x, y = net.move_pixels(feats, states, action)[0, 0].tolist()
        fine_side = maps[0].shape[-1]
        col = min(max(int((x + 1) / 2 * fine_side), 0), fine_side - 1)
        row = min(max(int((y + 1) / 2 * fine_side), 0), fine_side - 1)
        base = net._local_logits(feats, states, action)

        def edited(r: int, c: int) -> torch.Tensor:
            fine = [m.clone() for m in maps]
            fine[0][:, :, r, c] += 5.0
            packed = [torch.nn.functional.pixel_unshuffle(m, m.shape[-1] // 8) for m in fine]  # fused map: 8x8
            return net._local_logits(torch.cat([net._main(feats), *packed], 1), states, action)

        far = ((row + fine_side // 2) % fine_side, (col + fine_side // 2) % fine_side)
        torch.testing.assert_close(edited(*far), base)
        assert not torch.allclose(edited(row, col), base)


def test_target_readout_learns_where_a_move_takes_the_gripper() -> None:
    """With the keypoint's loss, the move loss alone teaches ``move_pixels`` where a move lands (here the
    marker moves by 0.2 image units per unit of dx and dy), through random shifts, to within half a cell."""
    from rcan.qtopt.losses import gripper_aux_loss, move_aux_loss

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    net = QNetwork(
        QNetConfig(gripper_keypoint=True, target_readout=True, image_size=32, channels=(16, 16), strides=(2, 2))
    )
    opt = torch.optim.Adam(net.parameters(), 3e-3)

    def batch(n: int) -> tuple[torch.Tensor, ...]:
        images = torch.full((n, 3, 32, 32), 40, dtype=torch.uint8)
        rc = torch.randint(6, 26, (n, 2), generator=gen)
        for i, (r, c) in enumerate(rc.tolist()):
            images[i, :, r - 1 : r + 2, c - 1 : c + 2] = 250
        here = (rc.flip(1).float() * 2 + 1) / 32 - 1
        actions = torch.rand(n, 6, generator=gen) * 2 - 1
        nxt = here + 0.2 * actions[:, :2]
        nxt[: n // 8] = float("nan")  # episode ends: no label
        return images, here, actions, nxt

    states = torch.zeros(32, 2)
    for _ in range(400):
        images, here, actions, nxt = batch(32)
        shifted, shifts = random_shift(images, 2, gen, return_shifts=True)
        feats = net.features(shifted)
        loss = gripper_aux_loss(net, feats, here, shifts, 32) + move_aux_loss(
            net, feats, states, actions, nxt, shifts, 32
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    images, here, actions, _ = batch(64)
    with torch.no_grad():
        pred = net.move_pixels(net.features(images), torch.zeros(64, 2), actions[:, None])[:, 0]
    err_cells = (pred - (here + 0.2 * actions[:, :2])).norm(dim=1) * 8 / 2
    assert float(err_cells.mean()) < 0.5
    nan = torch.full((64, 2), float("nan"))
    feats = net.features(images)
    assert float(move_aux_loss(net, feats, torch.zeros(64, 2), actions, nan, torch.zeros(64, 2), 32)) == 0.0


def test_random_shift_keeps_shape_and_content() -> None:
    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).view(2, 1, 8, 8)
    y = random_shift(x, 2, torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    assert torch.equal(random_shift(x, 0), x)
    # Every output pixel is some input pixel of the same image (replicate padding, integer shift).
    for i in range(2):
        assert set(y[i].flatten().tolist()) <= set(x[i].flatten().tolist())


def test_random_shift_reports_how_the_content_moved() -> None:
    x = torch.zeros(16, 1, 12, 12)
    x[:, 0, 5, 7] = 255.0  # row 5, column 7
    y, shifts = random_shift(x, 3, torch.Generator().manual_seed(4), return_shifts=True)
    for i in range(16):
        row, col = divmod(int(y[i, 0].argmax()), 12)
        assert (col, row) == (7 + int(shifts[i, 0]), 5 + int(shifts[i, 1]))
    assert shifts.abs().max() <= 3 and len({tuple(s) for s in shifts.tolist()}) > 4


def test_gripper_keypoint_learns_where_the_marker_is() -> None:
    """The auxiliary loss alone teaches the gripper keypoint to find a marker (to within a map cell),
    through random shifts whose movement the labels follow."""
    from rcan.qtopt.losses import gripper_aux_loss

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    net = QNetwork(QNetConfig(gripper_keypoint=True, image_size=32, channels=(16, 16), strides=(2, 2)))
    opt = torch.optim.Adam(net.parameters(), 3e-3)

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.full((n, 3, 32, 32), 40, dtype=torch.uint8)
        rc = torch.randint(6, 26, (n, 2), generator=gen)
        for i, (r, c) in enumerate(rc.tolist()):
            images[i, :, r - 1 : r + 2, c - 1 : c + 2] = 250
        centres = (rc.flip(1).float() * 2 + 1) / 32 - 1  # (x, y) of the marker's centre pixel
        return images, centres

    for _ in range(300):
        images, label = batch(32)
        shifted, shifts = random_shift(images, 2, gen, return_shifts=True)
        loss = gripper_aux_loss(net, net.features(shifted), label, shifts, 32)
        opt.zero_grad()
        loss.backward()
        opt.step()
    images, label = batch(64)
    with torch.no_grad():
        err_cells = (net.gripper_coords(net.features(images)) - label).norm(dim=1) * 8 / 2
    assert float(err_cells.mean()) < 0.5
    nan = torch.full((64, 2), float("nan"))
    assert float(gripper_aux_loss(net, net.features(images), nan, torch.zeros(64, 2), 32)) == 0.0


def test_cem_finds_maximum_of_smooth_function() -> None:
    target = torch.tensor([0.3, -0.5, 0.7, 0.1, -0.8, 0.4])

    def score(a: torch.Tensor) -> torch.Tensor:
        return -((a - target) ** 2).sum(-1)

    best, value = cem_maximize(score, 4, CEMConfig(64, 6, 6), generator=torch.Generator().manual_seed(0))
    assert best.shape == (4, 6) and value.shape == (4,)
    assert torch.all((best - target).abs() < 0.15)
    torch.testing.assert_close(value, score(best[:, None])[:, 0])


def test_cem_respects_box_and_config_checks() -> None:
    best, _ = cem_maximize(
        lambda a: a.sum(-1), 2, CEMConfig(32, 4, 3), generator=torch.Generator().manual_seed(0)
    )
    assert (
        torch.all(best <= 1.0)
        and torch.all(best >= -1.0)
        and torch.all(best > 0.3)
        and torch.all(best.sum(-1) > 4.0)
    )
    with pytest.raises(ValueError):
        CEMConfig(samples=4, elites=6)


def test_nstep_returns_hand_made() -> None:
    r = np.array([-0.05, -0.05, -0.05, 0.95], np.float32)  # success at the last step
    g = 0.9
    ret, disc, off = nstep_returns(r, g, 1)
    np.testing.assert_allclose(ret, r, atol=1e-6)
    np.testing.assert_allclose(disc, [g, g, g, 0.0])
    assert off.tolist() == [1, 1, 1, 0]
    ret, disc, off = nstep_returns(r, g, 3)
    np.testing.assert_allclose(ret[0], -0.05 - 0.05 * g - 0.05 * g * g, atol=1e-6)
    np.testing.assert_allclose(ret[1], -0.05 - 0.05 * g + 0.95 * g * g, atol=1e-6)  # truncated at terminal
    np.testing.assert_allclose(disc, [g**3, 0, 0, 0], atol=1e-6)
    assert off.tolist() == [3, 0, 0, 0]


def test_mc_returns_hand_made_and_stored_per_slot(tmp_path) -> None:
    r = np.array([0.0, 0.0, 1.0], np.float32)  # offset rewards: success at the last step
    np.testing.assert_allclose(mc_returns(r, 0.9), [0.81, 0.9, 1.0], atol=1e-6)
    np.testing.assert_allclose(mc_returns(np.zeros(4, np.float32), 0.9), np.zeros(4))
    buf = ReplayBuffer(16, (3, 8, 8), gamma=0.9, n_step=1)
    images = np.zeros((3, 3, 8, 8), np.uint8)
    buf.add_episode(EpisodeSteps(images, np.zeros((3, 2), np.float32), np.zeros((3, 6), np.float32), r))
    buf.add_episode(EpisodeSteps(images[:2], np.zeros((2, 2), np.float32), np.zeros((2, 6), np.float32), r[:2]))
    np.testing.assert_allclose(buf.mc_returns[:5], [0.81, 0.9, 1.0, 0.0, 0.0], atol=1e-6)
    batch = buf.sample(64, np.random.default_rng(0))
    allowed = np.array([0.0, 0.81, 0.9, 1.0])
    assert np.all(np.isclose(batch["mc_returns"][:, None], allowed[None], atol=1e-6).any(axis=1))
    save_replays(tmp_path / "r.npz", {"scripted": buf})
    assert load_replays(tmp_path / "r.npz")["scripted"].equals(buf)


def test_bellman_targets_terminal_and_bootstrap() -> None:
    returns = torch.tensor([0.95, -0.05, -0.05, -0.1])
    discounts = torch.tensor([0.0, 0.9, 0.0, 0.81])
    v = torch.tensor([0.7, 0.5, 0.9, 0.05])
    y = bellman_targets(returns, discounts, v)
    torch.testing.assert_close(y, torch.tensor([0.95, -0.05 + 0.45, 0.0, 0.0]))  # clipped to [0, 1]


def test_clipped_double_q_takes_min_at_target1_argmax() -> None:
    torch.manual_seed(2)
    t1, t2 = QNetwork(QNetConfig()), QNetwork(QNetConfig())
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    states = torch.rand(3, 2)
    cem = CEMConfig(16, 4, 2)
    v = clipped_double_q_values(t1, t2, images, states, cem, torch.Generator().manual_seed(5))
    with torch.no_grad():
        f1 = t1.features(images)
        a, l1 = cem_maximize(
            lambda c: t1.head(f1, states, c), 3, cem, generator=torch.Generator().manual_seed(5)
        )
        q1, q2 = torch.sigmoid(t1(images, states, a)), torch.sigmoid(t2(images, states, a))
    torch.testing.assert_close(v, torch.minimum(q1, q2))
    torch.testing.assert_close(torch.sigmoid(l1), q1)


def _episode(rng: np.random.Generator, t: int, tag: int) -> EpisodeSteps:
    images = np.full((t, 3, 4, 4), tag, np.uint8)
    images[:, 0, 0, 0] = np.arange(t)  # step index inside the episode
    states = np.stack([np.zeros(t), np.full(t, tag)], 1).astype(np.float32)
    actions = rng.uniform(-1, 1, (t, 6)).astype(np.float32)
    rewards = np.r_[np.full(t - 1, -0.05), 0.95].astype(np.float32)
    return EpisodeSteps(images, states, actions, rewards)


def test_replay_wraparound_keeps_bootstrap_in_episode(tmp_path) -> None:
    rng = np.random.default_rng(0)
    buf = ReplayBuffer(25, (3, 4, 4), gamma=0.9, n_step=2)
    lengths = [7, 9, 6, 8, 5, 9, 4]
    for tag, t in enumerate(lengths, start=1):
        buf.add_episode(_episode(rng, t, tag))
    assert buf.episodes == len(lengths) and buf.steps == sum(lengths)
    assert buf.filled <= 25 and len(buf) <= 25
    batch = buf.sample(500, rng)
    tags, nxt_tags = batch["images"][:, 1, 0, 0], batch["next_images"][:, 1, 0, 0]
    assert np.array_equal(tags, nxt_tags)  # the bootstrap image belongs to the same episode
    boot = batch["discounts"] > 0
    step, nxt_step = batch["images"][:, 0, 0, 0].astype(int), batch["next_images"][:, 0, 0, 0].astype(int)
    assert np.all(nxt_step[boot] == step[boot] + 2)
    np.testing.assert_allclose(batch["discounts"][boot], 0.81, rtol=1e-6)
    assert np.all(batch["states"][:, 1] == tags)

    path = save_replays(tmp_path / "replay.npz", {"a": buf, "b": ReplayBuffer(10, (3, 4, 4))})
    loaded = load_replays(path)
    assert set(loaded) == {"a", "b"} and loaded["a"].equals(buf) and len(loaded["b"]) == 0
    assert loaded["a"].pos == buf.pos and loaded["a"].gamma == buf.gamma and loaded["a"].n_step == 2
    # The loaded buffer samples identically.
    b1, b2 = buf.sample(10, np.random.default_rng(3)), loaded["a"].sample(10, np.random.default_rng(3))
    assert all(np.array_equal(b1[k], b2[k], equal_nan=True) for k in b1)


def test_replay_keeps_where_the_gripper_is_next() -> None:
    """``tool_pixels_after`` is the next step's label inside an episode, unknown (NaN) at its last step and
    for episodes without labels."""
    rng = np.random.default_rng(0)
    buf = ReplayBuffer(40, (3, 4, 4), n_step=3)
    for tag, t in enumerate((5, 7), start=1):
        ep = _episode(rng, t, tag)
        pixels = np.stack([np.arange(t), np.full(t, tag)], 1).astype(np.float32)
        buf.add_episode(EpisodeSteps(ep.images, ep.states, ep.actions, ep.rewards, tool_pixels=pixels))
    buf.add_episode(_episode(rng, 4, 3))  # no labels
    batch = buf.sample(300, rng)
    step, tag = batch["images"][:, 0, 0, 0].astype(int), batch["images"][:, 1, 0, 0].astype(int)
    last = step == np.where(tag == 1, 4, 6)
    labelled = (tag < 3) & ~last
    assert np.array_equal(batch["tool_pixels_after"][labelled, 0], step[labelled] + 1)
    assert np.array_equal(batch["tool_pixels_after"][labelled, 1], tag[labelled])
    assert np.isnan(batch["tool_pixels_after"][~labelled]).all() and (~labelled).sum() > 0 and last.any()
    assert ReplayBuffer.from_arrays(buf.to_arrays()).equals(buf)
    assert np.isnan(batch["tool_yaws"]).all()  # these episodes carry no yaws
    ep = _episode(rng, 3, 4)
    buf.add_episode(EpisodeSteps(ep.images, ep.states, ep.actions, ep.rewards, tool_yaws=np.array([0.1, 0.2, 0.3])))
    known = buf.tool_yaws[np.isfinite(buf.tool_yaws)]
    np.testing.assert_allclose(known, [0.1, 0.2, 0.3], rtol=1e-6)
    assert ReplayBuffer.from_arrays(buf.to_arrays()).equals(buf)
    ep = _episode(rng, 2, 5)
    fingers = np.arange(8, dtype=np.float32).reshape(2, 4)
    buf.add_episode(EpisodeSteps(ep.images, ep.states, ep.actions, ep.rewards, finger_pixels=fingers))
    known = buf.finger_pixels[np.isfinite(buf.finger_pixels).all(axis=1)]
    np.testing.assert_array_equal(known, fingers)  # the step's own label: the last step has one too
    assert ReplayBuffer.from_arrays(buf.to_arrays()).equals(buf)
    ep = _episode(rng, 2, 6)
    centres = np.stack([padded_object_pixels([[0.1, 0.2], [0.3, -0.4]]), padded_object_pixels(None)])
    buf.add_episode(EpisodeSteps(ep.images, ep.states, ep.actions, ep.rewards, object_pixels=centres))
    known = buf.object_pixels[np.isfinite(buf.object_pixels).all(axis=2).any(axis=1)]
    np.testing.assert_array_equal(known, centres[:1])  # the second step's slots are all absent
    assert ReplayBuffer.from_arrays(buf.to_arrays()).equals(buf)
    with pytest.raises(ValueError, match="at most"):
        padded_object_pixels(np.zeros((9, 2)))


def test_replay_errors(tmp_path) -> None:
    buf = ReplayBuffer(5, (3, 4, 4))
    with pytest.raises(ValueError, match="empty"):
        buf.sample(2, np.random.default_rng(0))
    with pytest.raises(ValueError, match="does not fit"):
        buf.add_episode(_episode(np.random.default_rng(0), 6, 1))
    with pytest.raises(FileNotFoundError):
        load_replays(tmp_path / "missing.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError):
        load_replays(tmp_path / "bad.npz")
    assert math.isclose(ReplayBuffer(3, (3, 4, 4), gamma=0.5).gamma, 0.5)


def test_mixed_sample_fractions_and_fallbacks() -> None:
    from rcan.qtopt.replay import mixed_sample

    shape = (3, 8, 8)

    def filled(n_episodes: int, marker: float) -> ReplayBuffer:
        buf = ReplayBuffer(200, shape, 0.9, 1)
        for _ in range(n_episodes):
            t = 4
            buf.add_episode(
                EpisodeSteps(
                    np.zeros((t, *shape), np.uint8),
                    np.zeros((t, 2), np.float32),
                    np.full((t, 6), marker, np.float32),
                    np.zeros(t, np.float32),
                )
            )
        return buf

    rng = np.random.default_rng(0)
    buffers = {"policy": filled(10, 0.5), "scripted": filled(10, -0.5), "real": filled(1, 0.9)}
    b = mixed_sample(buffers, 16, (("policy", 0.25), ("scripted", 1.0)), rng)
    assert (b["actions"][:, 0] == 0.5).sum() == 4 and (b["actions"][:, 0] == -0.5).sum() == 12
    # A buffer holding less than a batch gives nothing yet; the last one gives the rest.
    b = mixed_sample(buffers, 16, (("real", 0.5), ("policy", 1.0)), rng)
    assert (b["actions"][:, 0] == 0.5).all()
    # An empty last buffer is replaced by the first non-empty one of the mix.
    buffers["scripted"] = ReplayBuffer(200, shape, 0.9, 1)
    b = mixed_sample(buffers, 8, (("real", 0.5), ("scripted", 1.0)), rng)
    assert (b["actions"][:, 0] == 0.9).all()


def test_outcome_sampling_draws_last_steps_and_survives_a_round_trip() -> None:
    """``outcomes`` puts that share of a batch on episodes' last steps (exactly the slots whose target is
    the outcome), keeps the rest uniform, still ends episodes correctly after the ring wraps, and
    falls back to uniform for a buffer saved before last steps were recorded."""
    from rcan.qtopt.replay import mixed_sample

    rng = np.random.default_rng(0)
    buf = ReplayBuffer(30, (3, 4, 4), n_step=3)
    lengths = (9, 7, 8, 9, 6)  # the ring wraps at the fourth episode
    for tag, t in enumerate(lengths, start=1):
        buf.add_episode(_episode(rng, t, tag))
    live = np.flatnonzero(buf.valid[: buf.filled])
    step = buf.images[live, 0, 0, 0].astype(int)
    last_of = {tag: t - 1 for tag, t in enumerate(lengths, start=1)}
    is_last = step == np.array([last_of[int(tag)] for tag in buf.images[live, 1, 0, 0]])
    np.testing.assert_array_equal(buf.ends[live], is_last)  # ends flag exactly the valid last steps

    def last_share(batch: dict[str, np.ndarray]) -> float:
        tags, steps = batch["images"][:, 1, 0, 0].astype(int), batch["images"][:, 0, 0, 0].astype(int)
        return float(np.mean(steps == np.array([last_of[int(t)] for t in tags])))

    uniform = last_share(buf.sample(4000, rng))
    assert abs(uniform - is_last.mean()) < 0.03
    mixed = buf.sample(4000, rng, outcomes=0.5)
    assert abs(last_share(mixed) - (0.5 + 0.5 * is_last.mean())) < 0.03
    assert np.all(mixed["discounts"][:2000] == 0) and np.allclose(mixed["returns"][:2000], 0.95)
    assert last_share(buf.sample(64, rng, outcomes=1.0)) == 1.0
    b = mixed_sample({"policy": buf, "scripted": buf}, 40, (("policy", 0.5), ("scripted", 1.0)), rng, outcomes=1.0)
    assert last_share(b) == 1.0 and len(b["images"]) == 40
    assert ReplayBuffer.from_arrays(buf.to_arrays()).equals(buf)
    old = {k: v for k, v in buf.to_arrays().items() if k != "ends"}  # a file from before `ends`
    restored = ReplayBuffer.from_arrays(old)
    assert not restored.ends.any()
    assert abs(last_share(restored.sample(4000, rng, outcomes=1.0)) - is_last.mean()) < 0.03


def test_mirror_rows_mirrors_images_actions_and_labels() -> None:
    """A mirrored row is the x -> -x image of its transition: both images flipped left-right, dx and dyaw
    negated (dy, dz, gripper, terminate kept), pixel labels' x and yaws negated, masks flipped; other rows
    and fields untouched, NaN labels stay NaN, and mirroring twice gives the batch back."""
    from rcan.qtopt.replay import mirror_rows

    rng = np.random.default_rng(0)
    b = 4
    batch = {
        "images": rng.integers(0, 255, (b, 3, 6, 6), dtype=np.uint8),
        "next_images": rng.integers(0, 255, (b, 3, 6, 6), dtype=np.uint8),
        "object_masks": rng.integers(0, 2, (b, 6, 6), dtype=np.uint8),
        "states": rng.normal(size=(b, 2)).astype(np.float32),
        "actions": rng.uniform(-1, 1, (b, 6)).astype(np.float32),
        "returns": rng.normal(size=b).astype(np.float32),
        "tool_pixels": rng.uniform(-1, 1, (b, 2)).astype(np.float32),
        "tool_pixels_after": np.r_[rng.uniform(-1, 1, (b - 1, 2)), [[np.nan, np.nan]]].astype(np.float32),
        "finger_pixels": rng.uniform(-1, 1, (b, 4)).astype(np.float32),
        "object_pixels": rng.uniform(-1, 1, (b, 8, 2)).astype(np.float32),
        "tool_yaws": rng.uniform(-3, 3, b).astype(np.float32),
        "wall_yaw_signs": np.array([1, -1, 1, -1], np.float32),
    }
    before = {k: v.copy() for k, v in batch.items()}
    rows = np.array([True, False, True, True])
    out = mirror_rows(batch, rows)
    for key in ("images", "next_images", "object_masks"):
        np.testing.assert_array_equal(out[key][rows], before[key][rows][..., ::-1])
    sign = np.array([-1, 1, 1, -1, 1, 1], np.float32)
    np.testing.assert_array_equal(out["actions"][rows], before["actions"][rows] * sign)
    np.testing.assert_array_equal(out["tool_pixels"][rows], before["tool_pixels"][rows] * [-1, 1])
    np.testing.assert_array_equal(out["finger_pixels"][rows], before["finger_pixels"][rows] * [-1, 1, -1, 1])
    np.testing.assert_array_equal(out["object_pixels"][rows], before["object_pixels"][rows] * [-1, 1])
    np.testing.assert_array_equal(out["tool_yaws"][rows], -before["tool_yaws"][rows])
    assert np.isnan(out["tool_pixels_after"][3]).all()
    for key in ("states", "returns", "wall_yaw_signs"):
        np.testing.assert_array_equal(out[key], before[key])
    for key, value in out.items():
        np.testing.assert_array_equal(value[~rows], before[key][~rows])
    again = mirror_rows(out, rows)
    for key, value in again.items():
        np.testing.assert_array_equal(value, before[key])


def test_keypoints_follow_the_bright_spot() -> None:
    """A keypoint whose heat is one map cell sits at that cell's coordinates."""
    net = QNetwork(QNetConfig(keypoints=1))
    with torch.no_grad():
        net.keypoint_conv.weight.zero_()
        net.keypoint_conv.bias.zero_()
        net.keypoint_conv.weight[0, 0] = 50.0
        feats = torch.zeros(1, *net.feature_shape)
        feats[0, 0, 2, 6] = 1.0  # row 2, column 6 of 8
        xy = net.keypoint_coords(feats)[0]
    torch.testing.assert_close(xy, torch.tensor([-1 + 2 * 6 / 7, -1 + 2 * 2 / 7]), atol=1e-3, rtol=0)


def test_weights_pushed_to_collectors_are_copies() -> None:
    """The process queue pickles later, in a feeder thread, while the optimizer updates parameters in
    place: what a collector gets must be the weights at the push, not a mix of two gradient steps."""
    from rcan.qtopt.collectors import LocalCollectors

    class Captured:
        def __init__(self) -> None:
            self.items: list = []

        def put(self, item) -> None:
            self.items.append(item)

    coll = object.__new__(LocalCollectors)  # no processes: only the push is under test
    coll._weights = [Captured()]
    net = torch.nn.Linear(2, 2)
    coll.set_weights(net.state_dict(), version=3)
    with torch.no_grad():
        net.weight.add_(1.0)  # the next gradient step, in place
    version, arrays = coll._weights[0].items[0]
    assert version == 3 and not np.allclose(arrays["weight"], net.weight.detach().numpy())
