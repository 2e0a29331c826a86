"""A TP-group deployment class for tests that stays in its constructor, as a group does while it builds and
warms up its engine, until a file exists (imported by Ray workers as `tests.gated_group`)."""

from __future__ import annotations

import os
import time

from deployments.group import SLoRAGroup


class GatedGroup(SLoRAGroup):
    def __init__(self, gate: str, *args, **kwargs):
        while not os.path.exists(gate):
            time.sleep(0.05)
        super().__init__(*args, **kwargs)
