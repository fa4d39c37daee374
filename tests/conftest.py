import os

import pytest
import torch

# Without a GPU the Triton kernels run in Triton's CPU interpreter. The flag is read when the
# kernels are defined, so it must be set before pairformer_fb's Triton module is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture
def no_tf32():
    """fp32 matmuls without TF32 for one test (references compared at fp32 tolerances), restored
    after it: the switch is process-wide, and a test that left it off changed the next test's
    numerics in the same worker."""
    matmul = torch.backends.cuda.matmul
    old = matmul.allow_tf32
    matmul.allow_tf32 = False
    yield
    matmul.allow_tf32 = old
