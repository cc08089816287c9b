"""Window statistics against brute-force loops and closed forms."""

from __future__ import annotations

import pytest
import torch

from auditor.checks.windows import Windows, densest_window, region_mask, top_spot, region_share, window_side


def brute_force_densest(maps: torch.Tensor, side: int):
    shares, positions = [], []
    for m in maps.double():
        best, where = -1.0, None
        for r in range(m.shape[0] - side + 1):
            for c in range(m.shape[1] - side + 1):
                s = float(m[r:r + side, c:c + side].sum())
                if s > best:
                    best, where = s, (r, c)
        shares.append(best / float(m.sum()))
        positions.append(where)
    return shares, positions


def test_densest_window_equals_a_loop_over_every_window():
    maps = torch.rand(5, 12, 10) ** 4
    windows = densest_window(maps, 3)
    shares, positions = brute_force_densest(maps, 3)
    assert windows.share.tolist() == pytest.approx(shares, abs=1e-6)
    assert list(zip(windows.row.tolist(), windows.col.tolist())) == positions


def test_all_mass_in_one_window_scores_one_and_uniform_scores_the_floor():
    planted = torch.zeros(1, 28, 28)
    planted[0, 20:24, 3:7] = torch.rand(4, 4) + 0.1
    windows = densest_window(planted, 4)
    assert windows.share.item() == pytest.approx(1.0) and (windows.row.item(), windows.col.item()) == (20, 3)
    assert densest_window(torch.ones(1, 28, 28), 4).share.item() == pytest.approx(16 / 784)


def test_empty_and_nan_maps_have_no_share():
    maps = torch.stack([torch.zeros(8, 8), torch.full((8, 8), float("nan")), torch.ones(8, 8)])
    assert densest_window(maps, 2).share[:2].isnan().all() and not densest_window(maps, 2).share[2].isnan()


def test_hotspot_excess_counts_only_what_the_reference_does_not_show():
    def at(positions):
        rows, cols = zip(*positions)
        return Windows(torch.ones(len(positions)), torch.tensor(rows), torch.tensor(cols))

    errors = at([(0, 0)] * 8 + [(10, 10), (12, 3)])
    centre_reference = at([(10, 10)] * 9 + [(0, 1)])
    spot = top_spot(errors, centre_reference, side=4)
    assert (spot.row, spot.col) == (0, 0) and spot.recurrence == pytest.approx(0.8)
    assert spot.reference_recurrence == pytest.approx(0.1) and spot.excess == pytest.approx(0.7)
    assert spot.members.tolist() == [True] * 8 + [False, False]
    same_as_reference = top_spot(at([(10, 10)] * 8 + [(0, 0)] * 2), centre_reference, side=4)
    assert same_as_reference.excess < 0.25


def test_regions_and_their_mass():
    border = region_mask("border", 10, 10, thickness=0.1)
    assert border.sum() == 36 and not border[1:9, 1:9].any()
    box = region_mask((0.0, 0.5, 0.5, 1.0), 10, 10)
    assert box.sum() == 25 and box[0, 9] and not box[5, 5]
    maps = torch.zeros(2, 10, 10)
    maps[0, 0, :] = 1.0
    maps[0, 5, 5] = 1.0
    assert region_share(maps, border)[0].item() == pytest.approx(10 / 11) and region_share(maps, border)[1].isnan()
    assert window_side(0.15, 28) == 4 and window_side(0.001, 28) == 1
