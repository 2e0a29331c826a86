"""Offline API, as users of vLLM expect:

llm = LLM(model="dir", adapters="dir-of-adapter-dirs" or {"name": "path"}, device="cpu", dtype="float32")
outs = llm.generate(["a prompt", [1, 2, 3]], adapters=["some-adapter", None],
                    sampling_params=SamplingParams(max_tokens=16, temperature=0.0))
"""

from __future__ import annotations

from pathlib import Path

from app.config import EngineConfig
from app.engine import Engine
from app.lora.adapter import AdapterError, check_adapter_name
from app.request import RequestOutput, SamplingParams


def adapter_dirs(adapters: str | Path | dict[str, str] | None) -> dict[str, str]:
    """{name: path} from a mapping or a directory whose sub-directories are PEFT adapters (name = folder
    name). Raises AdapterError, naming the folder, when a name is not a valid adapter name: the service's
    builder calls this, so a bad folder stops `serve run` before anything starts."""
    if adapters is None:
        return {}
    if isinstance(adapters, dict):
        found = {k: str(v) for k, v in adapters.items()}
    else:
        root = Path(adapters)
        if not root.is_dir():
            raise FileNotFoundError(f"adapter directory {root} does not exist")
        found = {d.name: str(d) for d in sorted(root.iterdir()) if (d / "adapter_config.json").is_file()}
    for name, path in found.items():
        try:
            check_adapter_name(name)
        except AdapterError as e:
            raise AdapterError(f"adapter {path}: {e}") from None
    return found


class LLM:
    def __init__(self, model: str, adapters: str | dict[str, str] | None = None, **config):
        self.engine = Engine(EngineConfig(model=str(model), **config))
        self.engine.add_adapters(adapter_dirs(adapters))
        self.engine.warmup_adapter_graphs()  # the decode graphs of these adapters' LoRA groups (with warm-up on)

    def add_adapter(self, name: str, path: str) -> None:
        self.engine.add_adapter(name, path)

    def remove_adapter(self, name: str) -> None:
        self.engine.remove_adapter(name)

    def generate(
        self,
        prompts: list[str | list[int]] | str,
        sampling_params: SamplingParams | list | None = None,
        adapters: list[str | None] | str | None = None,
    ) -> list[RequestOutput]:
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        n = len(prompts)
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params or SamplingParams()] * n
        names = adapters if isinstance(adapters, list) else [adapters] * n
        if len(params) != n or len(names) != n:
            raise ValueError("prompts, sampling_params and adapters must have the same length")
        ids = []
        try:
            for p, sp, a in zip(prompts, params, names):
                ids.append(self.engine.add_request(p, sp, a))
        except Exception:
            for rid in ids:
                self.engine.abort(rid)
            raise
        done: dict[str, RequestOutput] = {}
        while self.engine.has_unfinished():
            for o in self.engine.step():
                if o.finished:
                    done[o.request_id] = o
        return [done[i] for i in ids]
