"""The deployed predictor's connected-component post-processing (numpy, medseg/deploy/postprocess.py) equals
mode=crossval's (scipy.ndimage, medseg/crossval/postprocess.py) in 2D and 3D."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.crossval import postprocess as reference
from medseg.deploy import postprocess as twin

OPS = [
    {1: "largest_component", 2: "largest_foreground", 3: "largest_component"},
    {1: "largest_foreground", 3: "largest_foreground"},
    {2: "largest_component"},
]


def _random_labels(rng: np.random.Generator, ndim: int) -> np.ndarray:
    shape = tuple(int(s) for s in rng.integers(1, 16 if ndim == 3 else 40, size=ndim))
    labels = rng.integers(0, 4, size=shape) * (rng.random(shape) < rng.uniform(0.05, 0.9))
    return labels.astype(np.int16)


@pytest.mark.parametrize("ndim", [2, 3])
def test_random_masks_are_post_processed_as_mode_crossval_does(ndim: int) -> None:
    rng = np.random.default_rng(ndim)
    for _ in range(150):
        labels = _random_labels(rng, ndim)
        assert np.array_equal(twin.largest_component_mask(labels > 0), reference.largest_foreground(labels))
        for ops in OPS:
            assert np.array_equal(twin.apply_postprocessing(labels, ops), reference.apply_postprocessing(labels, ops))


def _structured(ndim: int) -> list[np.ndarray]:
    """Masks where connectivity and ties decide: voxels touching only at a corner (joined by full
    connectivity), two equal components (the first in C order wins), a long serpentine,
    a class inside another's box, an empty class and a single voxel."""
    shape = (20, 18, 9)[:ndim]
    diagonal = np.zeros(shape, np.int16)
    for i in range(min(shape)):
        diagonal[(i,) * ndim] = 1
    diagonal[(-1,) * ndim] = 1  # an island after the diagonal
    ties = np.zeros(shape, np.int16)
    ties[(slice(1, 4),) * ndim] = 2
    ties[(slice(8, 11),) * ndim] = 2
    ties[(slice(14, 16),) * ndim] = 1
    snake = np.zeros(shape, np.int16)  # a serpentine one voxel wide through the plane, and an island
    plane = snake if ndim == 2 else snake[..., 4]
    plane[0::2, :16] = 3
    plane[1::4, 15] = 3
    plane[3::4, 0] = 3
    snake[(0,) * ndim] = 1
    snake[(-1,) * ndim] = 3
    nested = np.zeros(shape, np.int16)
    nested[(slice(2, 15),) * ndim] = 1
    nested[(slice(5, 8),) * ndim] = 2
    nested[(slice(16, 18),) * ndim] = 2
    single = np.zeros(shape, np.int16)
    single[(3,) * ndim] = 1
    return [diagonal, ties, snake, nested, single, np.zeros(shape, np.int16)]


@pytest.mark.parametrize("ndim", [2, 3])
def test_structured_masks_are_post_processed_as_mode_crossval_does(ndim: int) -> None:
    from scipy.ndimage import generate_binary_structure, label

    for labels in _structured(ndim):
        for ops in OPS:
            assert np.array_equal(twin.apply_postprocessing(labels, ops), reference.apply_postprocessing(labels, ops))
    diagonal = _structured(ndim)[0]
    assert twin.largest_component_mask(diagonal > 0).sum() == min(diagonal.shape)  # corner neighbours joined
    snake = _structured(ndim)[2] == 3
    assert label(snake, structure=generate_binary_structure(ndim, ndim))[1] == 2
    assert twin.largest_component_mask(snake).sum() == snake.sum() - 1


def test_the_operations_and_the_deploy_imports_match() -> None:
    import ast
    from pathlib import Path

    from medseg.deploy.manifest import OPERATIONS

    assert twin.OPERATIONS == reference.OPERATIONS == OPERATIONS
    tree = ast.parse(Path(twin.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not any(m.split(".")[0] == "scipy" for m in imported)
