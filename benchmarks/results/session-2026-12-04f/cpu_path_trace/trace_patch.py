"""A temporary patch (run from the repository root, never committed to the serving code): writes a
time.monotonic() stamp per point of a request's way to its first token, one file per process under
/tmp/trace, for analyze.py. `git checkout deployments/` removes it."""

from pathlib import Path

T = """
def _T(tag, rid=""):
    import os as _os, time as _time
    _os.makedirs("/tmp/trace", exist_ok=True)
    with open(f"/tmp/trace/{_os.getpid()}.log", "a") as _f:
        _f.write(f"{_time.monotonic():.6f} {tag} {rid}\\n")
"""
MARKER = '\nlogger = logging.getLogger("ray.serve")\n'


def patch(path: str, subs: list[tuple[str, str]]) -> None:
    p = Path(path)
    s = p.read_text()
    assert MARKER in s, path
    s = s.replace(MARKER, MARKER + T, 1)
    for old, new in subs:
        assert old in s, (path, old)
        s = s.replace(old, new, 1)
    p.write_text(s)


patch("deployments/ingress.py", [
    ("        received = self._received(request)\n        await self._require_group()\n        adapter = await self._resolve_model(body.model)\n        texts = body.prompts()",
     "        received = self._received(request)\n        _T('A')\n        await self._require_group()\n        adapter = await self._resolve_model(body.model)\n        texts = body.prompts()"),
    ("        sub.start(requests, adapter)\n", "        [_T('B', r[0]) for r in requests]\n        sub.start(requests, adapter)\n"),
    ("                delta = self._absorb(c, out)\n", "                _T('I', c.index)\n                delta = self._absorb(c, out)\n"),
])  # fmt: skip
patch("deployments/subscription.py", [
    ("                for rid, item in batch.items():\n                    st = self.streams.get(rid)",
     "                for rid, item in batch.items():\n                    _T('H', rid)\n                    st = self.streams.get(rid)"),
])  # fmt: skip
patch("deployments/group.py", [
    ("        box = self._boxes.get(subscriber)\n        if box is None:", "        [_T('C', r[0]) for r in requests]\n        box = self._boxes.get(subscriber)\n        if box is None:"),
    ("        if isinstance(cmd, AddRequest):\n", "        if isinstance(cmd, AddRequest):\n            _T('E', cmd.request_id)\n"),
    ("            box = self._routes.get(rid)\n            if box is not None:\n                item = self._stream_item(out)",
     "            box = self._routes.get(rid)\n            if box is not None:\n                _T('F', rid)\n                item = self._stream_item(out)"),
    ("                yield await box.get()\n", "                _b = await box.get()\n                [_T('G', r) for r in _b]\n                yield _b\n"),
])  # fmt: skip
