import os
import tempfile
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One of scripts/test.sh's parallel workers (one per core): one torch thread each, for this process and the
    # ones its tests start. Two workers of two intra-op threads on two cores ran some tests 15x slower.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

# Ray points this link at each new session's directory (ray.init, `serve run`, `ray start`, in any process).
RAY_SESSION_LINK = Path(tempfile.gettempdir()) / "ray" / "session_latest"
_RAY_BEFORE = pytest.StashKey[str | None]()


def _ray_session() -> str | None:
    try:
        return os.readlink(RAY_SESSION_LINK)
    except OSError:
        return None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    item.stash[_RAY_BEFORE] = _ray_session()


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item):
    """A test that starts Ray must carry `@pytest.mark.ray`: scripts/test.sh runs the unmarked tests in parallel
    and the Ray ones one at a time after them (two Ray sessions on a 2-core machine starve each other's timing).
    Checked here from Ray's session link, so a new Ray test cannot slip into the parallel run unnoticed."""
    if item.get_closest_marker("ray") is None and _ray_session() != item.stash.get(_RAY_BEFORE, None):
        pytest.fail(f"{item.nodeid} started Ray: mark it @pytest.mark.ray (scripts/test.sh runs those serially)")


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """The demo model and its adapters (app/demo.py), written once per session."""
    from app.demo import build_demo

    return build_demo(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def llm(demo):
    """An offline LLM of the demo model with every demo adapter, float32 on the CPU (one per test module)."""
    from app import LLM

    return LLM(model=str(demo / "model"), adapters=str(demo / "adapters"), device="cpu", dtype="float32")


@pytest.fixture(scope="module", params=["gqa", "mha", "phi3", "gemma3", "olmo2"])
def tp_case(request, tmp_path_factory):
    """The tensor-parallel tests' case (tests/test_tp.py on the CPU, tests/test_tp_gpu.py on GPUs): a tiny
    model with grouped-query or multi-head attention, Phi-3's (fused qkv_proj / gate_up_proj weights and
    adapters, each part split over the ranks by itself) or Gemma 3's (q/k head norms replicated on every
    rank, sliding-window layers) or OLMo 2's (q / k norms over all heads: a sum over the ranks),
    and the PEFT adapters of tests/tp_common.py SPECS,
    as (model dir, {adapter name: dir})."""
    from tests.models import make_model, make_peft_adapters
    from tests.tp_common import SPECS

    root = tmp_path_factory.mktemp(f"tp-{request.param}")
    model = make_model(root, request.param)
    return model, make_peft_adapters(root, model, SPECS)
