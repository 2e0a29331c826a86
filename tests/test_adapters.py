"""Adapter validation: a bad adapter is refused with a clear error naming the file and the reason, and
a refused adapter leaves the registry and the pool as they were."""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from app import LLM, SamplingParams
from app.demo import build_demo, write_peft_adapter
from app.llm import adapter_dirs
from app.lora.adapter import (
    AdapterError,
    check_adapter_name,
    confine_path,
    load_peft_adapter,
    max_adapter_bytes,
    pack_adapter,
)
from app.model.llama import ModelArgs
from kernels.lora_ref import gather_virtual
from tests.models import ALL, HFReference, make_model, make_peft_adapters


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("ad"), "gqa")


@pytest.fixture(scope="module")
def demo():
    return build_demo()


@pytest.fixture(scope="module")
def llm(model):
    return LLM(model=str(model), device="cpu", dtype="float32", lora={"max_lora_rank": 32})


def good(tmp_path, model, name="good", rank=4, targets=("q_proj", "v_proj")):
    d = tmp_path / name
    write_peft_adapter(d, model, rank, 8.0, list(targets))
    return d


def edit_config(d, **kv):
    cfg = json.loads((d / "adapter_config.json").read_text())
    cfg.update(kv)
    (d / "adapter_config.json").write_text(json.dumps(cfg))


def snapshot(llm):
    e = llm.engine
    return dict(adapters=dict(e.adapters), runner=set(e.executor.adapters), stats=e.pool_stats())


def refused(llm, d, *needles):
    before = snapshot(llm)
    with pytest.raises(AdapterError) as ei:
        llm.add_adapter("bad", str(d))
    msg = str(ei.value)
    for n in needles:
        assert n in msg, msg
    assert snapshot(llm) == before
    llm.engine.pool.check()
    return msg


def test_pickle_is_refused(llm, model, tmp_path):
    d = good(tmp_path, model)
    (d / "adapter_model.safetensors").rename(d / "adapter_model.bin")
    refused(llm, d, "adapter_model.bin", "pickle")


def test_dora_modules_to_save_bias_refused(llm, model, tmp_path):
    """Config settings whose LoRA is not x @ A^T @ B^T * scale, or that contradict the file, are refused."""
    cfg, st = "adapter_config.json", "adapter_model.safetensors"
    for i, (key, val, file, needle) in enumerate(
        [
            ("use_dora", True, cfg, "DoRA"),
            ("modules_to_save", ["lm_head"], cfg, "modules_to_save"),
            ("bias", "lora_only", cfg, "bias"),
            ("lora_bias", True, cfg, "lora_bias"),
            ("alora_invocation_tokens", [5, 6], cfg, "aLoRA"),
            ("use_qalora", True, cfg, "QALoRA"),
            ("layers_to_transform", [0, 7], cfg, "layers_to_transform"),
            ("rank_pattern", {"q_proj": 2}, st, "do not fit"),  # the file has rank 4 everywhere
            ("rank_pattern", {"q_pr(oj": 2}, cfg, "regular expression"),
            ("alpha_pattern", {"q_proj": "x"}, cfg, "lora_alpha"),
        ]
    ):
        d = good(tmp_path, model, name=f"g-{i}")
        edit_config(d, **{key: val})
        refused(llm, d, file, needle)


def test_rank_alpha_patterns_and_partial_layers_equal_peft(tmp_path):
    """PEFT adapters whose ranks and alphas differ per module and per layer (rank_pattern, alpha_pattern,
    also with rsLoRA), or that cover only some layers (layers_to_transform, a regex target_modules): the
    engine's greedy tokens equal transformers + PEFT's, in one mixed batch with a plain adapter."""
    model = make_model(tmp_path, "gqa")
    specs = {
        "ranks": (
            8,
            16.0,
            ALL,
            False,
            {
                "rank_pattern": {"q_proj": 2, "model.layers.1.mlp.down_proj": 24},
                "alpha_pattern": {"v_proj": 3.0, r"layers\.0\.mlp\.up_proj": 40.0},
            },
        ),
        "ranks-rs": (
            4,
            8.0,
            ["k_proj", "o_proj", "gate_proj"],
            True,
            {"rank_pattern": {"layers.0.self_attn.o_proj": 12}, "alpha_pattern": {"gate_proj": 2.0}},
        ),
        "layer1": (6, 12.0, ["q_proj", "v_proj", "down_proj"], False, {"layers_to_transform": [1]}),
        "regex": (5, 10.0, r".*\.layers\.0\.(self_attn\.(q|k)_proj|mlp\.up_proj)", False),
        "plain": (4, 8.0, ["q_proj", "v_proj"], False),
    }
    adapters = make_peft_adapters(tmp_path, model, specs)
    cfg = json.loads((adapters["ranks"] / "adapter_config.json").read_text())
    assert cfg["rank_pattern"] and cfg["alpha_pattern"]
    ref = HFReference(model, adapters)
    llm = LLM(
        model=str(model),
        adapters={k: str(v) for k, v in adapters.items()},
        device="cpu",
        dtype="float32",
        lora={"max_lora_rank": 32},
    )
    assert llm.engine.adapters["ranks"].rank == 24  # the largest rank of any module
    prompts = [[5, 9, 11, 40, 3, 17], [8, 2, 33], [61, 7, 7, 19, 4, 4, 30, 12, 9]]
    reqs = [(ids, a) for a in [*specs, None] for ids in prompts[:2]] + [(prompts[2], a) for a in specs]
    outs = llm.generate(
        [ids for ids, _ in reqs],
        adapters=[a for _, a in reqs],
        sampling_params=SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True),
    )
    bad = [
        (a, o.token_ids, ref.greedy(ids, a, 8))
        for (ids, a), o in zip(reqs, outs)
        if o.token_ids != ref.greedy(ids, a, 8)
    ]
    assert not bad, bad
    got = {(tuple(ids), a): o.token_ids for (ids, a), o in zip(reqs, outs)}
    for a in specs:  # every adapter changes some output (so the comparison above can see it)
        assert any(got[(tuple(ids), a)] != got[(tuple(ids), None)] for ids in prompts[:2]), a


def test_rank_above_max_refused(llm, model, tmp_path):
    d = good(tmp_path, model, rank=64)
    refused(llm, d, "rank 64", "max_lora_rank=32")


def test_shape_and_target_mismatch_refused(llm, model, tmp_path):
    d = good(tmp_path, model)
    f = d / "adapter_model.safetensors"
    t = load_file(str(f))
    key = next(k for k in t if "q_proj.lora_B" in k)
    t[key] = torch.zeros(t[key].shape[0] + 1, t[key].shape[1])
    save_file(t, str(f))
    refused(llm, d, "adapter_model.safetensors", "do not fit")

    d = good(tmp_path, model, name="emb")
    t = load_file(str(d / "adapter_model.safetensors"))
    t["base_model.model.model.embed_tokens.lora_embedding_A"] = torch.zeros(4, 8)
    save_file(t, str(d / "adapter_model.safetensors"))
    refused(llm, d, "embed_tokens")

    d = good(tmp_path, model, name="missing-layer")
    t = load_file(str(d / "adapter_model.safetensors"))
    save_file({k: v for k, v in t.items() if ".layers.1." not in k}, str(d / "adapter_model.safetensors"))
    refused(llm, d, "missing for layers [1]")

    d = good(tmp_path, model, name="corrupt")
    (d / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    refused(llm, d, "could not be read")

    d = good(tmp_path, model, name="nan")
    t = load_file(str(d / "adapter_model.safetensors"))
    t[next(iter(t))][0, 0] = float("nan")
    save_file(t, str(d / "adapter_model.safetensors"))
    refused(llm, d, "NaN")

    # the finiteness check sums each target first: an Inf in a later layer is found and named; large finite
    # values whose sum overflows are not refused
    d = good(tmp_path, model, name="inf")
    t = load_file(str(d / "adapter_model.safetensors"))
    key = next(k for k in t if ".layers.1." in k and "lora_B" in k)
    t[key][0, 0] = float("-inf")
    save_file(t, str(d / "adapter_model.safetensors"))
    refused(llm, d, "layer 1 ", "NaN or Inf")
    d = good(tmp_path, model, name="huge")
    t = load_file(str(d / "adapter_model.safetensors"))
    for k in t:
        if "lora_A" in k:
            t[k][:, :2] = 3e38
    save_file(t, str(d / "adapter_model.safetensors"))
    llm.add_adapter("huge", str(d))
    llm.remove_adapter("huge")


def test_fused_and_split_targets_match_their_model(llm, model, tmp_path):
    """A Phi-3 adapter (qkv_proj, gate_up_proj) on a model with q/k/v and gate/up projections is refused,
    and the other way round, each naming the model's own targets; on its model a fused adapter's parts
    share A and split B's rows."""
    phi3 = make_model(tmp_path, "phi3")
    fused = make_peft_adapters(tmp_path, phi3, {"f": (4, 8.0, ["q_proj", "k_proj", "v_proj", "up_proj"], False)})["f"]
    msg = refused(llm, fused, "supported targets: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj")
    assert "targets 'qkv_proj'" in msg or "targets 'gate_up_proj'" in msg, msg
    split = good(tmp_path, model)
    args = ModelArgs.from_dir(phi3)
    with pytest.raises(AdapterError, match="targets 'q_proj'; supported targets: qkv_proj, gate_up_proj"):
        load_peft_adapter("s", split, args, 32)
    w = load_peft_adapter("f", fused, args, 32)
    assert set(w.targets) == {"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"}  # up_proj: all of gate_up
    t = load_file(str(fused / "adapter_model.safetensors"))
    b = next(v for k, v in t.items() if "layers.0.self_attn.qkv_proj.lora_B" in k)
    a = next(v for k, v in t.items() if "layers.0.self_attn.qkv_proj.lora_A" in k)
    q, kv = args.num_heads * args.head_dim, args.num_kv_heads * args.head_dim
    for part, rows in (("q_proj", b[:q]), ("k_proj", b[q : q + kv]), ("v_proj", b[q + kv :])):
        A, B = w.targets[part]
        assert torch.equal(A[0], a) and torch.equal(B[0], rows)


def test_missing_files_refused(llm, tmp_path):
    refused(llm, tmp_path / "nope", "not a directory")
    (tmp_path / "empty").mkdir()
    refused(llm, tmp_path / "empty", "adapter_config.json is missing")


def test_refused_adapter_does_not_disturb_running_requests(llm, model, tmp_path):
    """Requests in flight keep going while a bad adapter is refused between steps."""
    llm.add_adapter("ok", str(good(tmp_path, model, name="ok")))
    e = llm.engine
    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    rid = e.add_request([5, 6, 7], params, adapter="ok")
    outs = e.step()
    bad = good(tmp_path, model, name="bad2")
    edit_config(bad, use_dora=True)
    with pytest.raises(AdapterError):
        e.add_adapter("bad2", str(bad))
    while e.has_unfinished():
        outs += e.step()
    assert outs[-1].request_id == rid and outs[-1].finished and len(outs[-1].token_ids) == 6
    alone = llm.generate([[5, 6, 7]], params, adapters=["ok"])[0]
    assert alone.token_ids == outs[-1].token_ids
    llm.remove_adapter("ok")
    assert "ok" not in e.adapters and not e.pool.is_resident("ok")
    e.pool.check()


def test_duplicate_and_unknown_names(llm, model, tmp_path):
    llm.add_adapter("dup", str(good(tmp_path, model, name="dup")))
    with pytest.raises(AdapterError, match="already loaded"):
        llm.add_adapter("dup", str(good(tmp_path, model, name="dup2")))
    with pytest.raises(KeyError):
        llm.engine.add_request([1, 2], adapter="nope")
    with pytest.raises(KeyError):
        llm.remove_adapter("nope")
    llm.remove_adapter("dup")


def test_confine_path(tmp_path):
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    assert confine_path(str(root / "a"), [str(root)]) == (root / "a").resolve()
    os.symlink(outside, root / "link")
    for bad in (root / ".." / "outside", root / "link", tmp_path / "rootx"):  # rootx: a sibling sharing the prefix
        with pytest.raises(AdapterError, match="outside the allowed adapter roots"):
            confine_path(str(bad), [str(root)])
    with pytest.raises(AdapterError, match="disabled"):
        confine_path(str(root / "a"), [])
    with pytest.raises(AdapterError, match="control characters"):
        confine_path(str(root / "a") + "\x00x", [str(root)])


@pytest.mark.parametrize("which", ["adapter_model.safetensors", "adapter_config.json"])
def test_file_symlink_out_of_the_roots_is_refused(llm, model, tmp_path, which):
    """Run-time loads (with roots) read only files that resolve under the roots: a file symlink inside an
    allowed adapter directory that points outside is refused; the same adapter loads without roots
    (offline, startup adapters) and with a symlink that stays inside the root."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    src = good(outside, model, name="src")
    d = root / "a"
    d.mkdir(parents=True)
    for f in ("adapter_model.safetensors", "adapter_config.json"):
        shutil.copy(src / f, d / f)
    (d / which).unlink()
    os.symlink(src / which, d / which)
    before = snapshot(llm)
    with pytest.raises(AdapterError, match="outside the allowed adapter roots") as ei:
        llm.engine.add_adapter("linked", str(d), roots=[str(root)])
    assert str(src) not in str(ei.value)  # the link's target is not revealed
    assert snapshot(llm) == before
    inside = root / "real"
    shutil.copytree(src, inside)
    (d / which).unlink()
    os.symlink(inside / which, d / which)
    llm.engine.add_adapter("linked", str(d), roots=[str(root)])
    llm.remove_adapter("linked")


def test_adapter_names(llm, model, tmp_path):
    """Names are ASCII letters, digits and . _ : - (not first), at most 128 characters, no '..'."""
    for ok in ("demo-r4-attn", "a", "ft:llama:org:v1.2", "A_b.c-9", "x" * 128):
        assert check_adapter_name(ok) == ok
    for bad in ("", "..", "a..b", ".hidden", "-x", "a/b", "a b", "a\x00b", "a\u202eb", "é", "x" * 129, "x" * 100_000):
        with pytest.raises(AdapterError, match="invalid adapter name") as ei:
            check_adapter_name(bad)
        assert len(str(ei.value)) < 300
    d = good(tmp_path, model, name="named")
    before = snapshot(llm)
    for bad in ("a/b", "..", "sloray/warmup-x", "x" * 200):
        with pytest.raises(AdapterError, match="invalid adapter name"):
            llm.add_adapter(bad, str(d))
    assert snapshot(llm) == before


def test_startup_adapter_dir_with_a_bad_folder_name(model, tmp_path, demo):
    """A folder whose name is not a valid adapter name stops the build (serve run) with an error naming it."""
    from deployments.builder import BuildArgs, resolve

    root = tmp_path / "adapters"
    good(root, model, name="fine-1")
    good(root, model, name="bad name")
    with pytest.raises(AdapterError, match="bad name.*invalid adapter name"):
        adapter_dirs(root)
    with pytest.raises(AdapterError, match="bad name"):
        resolve(BuildArgs(model=str(demo / "model"), adapter_dir=str(root), device="cpu"))
    (root / "bad name").rename(root / "good-2")
    assert set(adapter_dirs(root)) == {"fine-1", "good-2"}
    assert set(adapter_dirs(demo / "adapters")) >= {"demo-r1-qv", "demo-r64-all"}


def with_prefix(d, prefix: str) -> None:
    """Renames the adapter's tensors to `<prefix>.layers.N...` (PEFT matches patterns against that name)."""
    f = d / "adapter_model.safetensors"
    tensors = load_file(str(f))
    save_file({prefix + k[k.index(".layers.") :]: v for k, v in tensors.items()}, str(f))


@pytest.mark.timeout(60)
def test_catastrophic_patterns_are_matched_fast_or_refused(llm, model, tmp_path):
    """rank_pattern / alpha_pattern are regexes matched against module names whose prefix the file sets:
    nested quantifiers that backtrack for minutes in Python's `re` ((a+)+c froze streams for 18.5 s) are
    matched at once, or refused within a second when they still take too long; so are oversized pattern
    sets, patterns and tensor names."""
    d = good(tmp_path, model, name="pat", rank=4)
    with_prefix(d, "a" * 200)
    edit_config(d, rank_pattern={"(a+)+c": 2, "(.*)*x": 3, "((\\w|\\.)*)*y": 5}, alpha_pattern={"(a+)+b": 1.0})
    t0 = time.monotonic()
    llm.add_adapter("pat", str(d))
    assert time.monotonic() - t0 < 5 and llm.engine.adapters["pat"].rank == 4  # no pattern matched
    llm.remove_adapter("pat")
    edit_config(d, rank_pattern={"(a|aa)+c": 2})
    t0 = time.monotonic()
    msg = refused(llm, d, "(a|aa)+c", "too long")
    assert time.monotonic() - t0 < 5, msg
    edit_config(d, rank_pattern={f"p{i}": 4 for i in range(5000)})
    refused(llm, d, "at most 4096 entries")
    edit_config(d, rank_pattern={"q" * 600: 4})
    refused(llm, d, "longer than 512 characters")
    edit_config(d, rank_pattern={})
    with_prefix(d, "b" * 300)
    refused(llm, d, "tensor name", "longer than 256")


def test_size_budgets(llm, model, tmp_path):
    """A weights file larger than any valid adapter of the base model, a huge config and a config that
    is not an object are refused before the weights are read."""
    d = good(tmp_path, model, name="size", rank=4)
    limit = max_adapter_bytes(ModelArgs.from_dir(model), 32)
    with open(d / "adapter_model.safetensors", "ab") as f:
        f.truncate(limit + 1)
    refused(llm, d, "bytes, more than any adapter of this base model", "max_lora_rank=32")
    d = good(tmp_path, model, name="size2", rank=4)
    (d / "adapter_config.json").write_text(json.dumps({"r": 4, "pad": "x" * (1 << 20)}))
    refused(llm, d, "larger than")
    (d / "adapter_config.json").write_text("[1, 2]")
    refused(llm, d, "JSON object")


def test_rslora_scale_and_packing_layout(model, tmp_path):
    """rsLoRA uses alpha/sqrt(r); the packed pages hold exactly A and B^T at the layout's offsets, also
    for each tensor-parallel shard (column-parallel: A rows split, rank padded; row-parallel: A columns)."""
    args = ModelArgs.from_dir(model)
    d = tmp_path / "rs"
    write_peft_adapter(d, model, 3, 6.0, ["q_proj", "o_proj", "down_proj"], use_rslora=True)
    w = load_peft_adapter("rs", d, args, 64)
    assert w.scale == pytest.approx(6.0 / 3**0.5)
    edit_config(d, use_rslora=False)
    assert load_peft_adapter("rs", d, args, 64).scale == pytest.approx(2.0)
    page_elems = 100  # rows straddle page boundaries
    p = pack_adapter(w, page_elems, torch.float32)
    pool = p.data[1].view(-1, page_elems)  # layer 1, pages in order
    pages = torch.arange(p.layout.num_pages)
    for m, (A, B) in w.targets.items():
        t = p.layout.targets[m]
        assert torch.equal(gather_virtual(pool, pages, t.a_off, 3, A.shape[2]), A[1])
        assert torch.equal(gather_virtual(pool, pages, t.b_off, 3, B.shape[1]), B[1].t())
    for rank in range(2):
        p = pack_adapter(w, page_elems, torch.float32, tp_rank=rank, tp_size=2)
        pool = p.data[0].view(-1, page_elems)
        q, o = p.layout.targets["q_proj"], p.layout.targets["o_proj"]
        A, B = w.targets["q_proj"]
        A_pad = torch.cat([A[0], torch.zeros(1, A.shape[2])])  # rank 3 padded to 4
        assert (q.rank_a, q.rank_b) == (2, 4)
        assert torch.equal(gather_virtual(pool, pages, q.a_off, 2, A.shape[2]), A_pad[2 * rank : 2 * rank + 2])
        half = B.shape[1] // 2
        Bt = torch.cat([B[0].t(), torch.zeros(1, B.shape[1])])[:, rank * half : (rank + 1) * half]
        assert torch.equal(gather_virtual(pool, pages, q.b_off, 4, half), Bt)
        A, B = w.targets["o_proj"]
        cols = A.shape[2] // 2
        assert (o.rank_a, o.rank_b) == (3, 3)
        assert torch.equal(gather_virtual(pool, pages, o.a_off, 3, cols), A[0][:, rank * cols : (rank + 1) * cols])


def test_demo_adapters_load_in_peft(tmp_path):
    """The demo's adapter files are real PEFT checkpoints: PEFT itself loads them."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from app.demo import build_demo

    root = build_demo(tmp_path / "demo")
    base = AutoModelForCausalLM.from_pretrained(str(root / "model"))
    names = sorted(p.name for p in (root / "adapters").iterdir())
    m = PeftModel.from_pretrained(base, str(root / "adapters" / names[0]))
    assert any("lora_A" in n for n, _ in m.named_parameters())
    shutil.rmtree(root)
