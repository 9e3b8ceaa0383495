"""The engine's environment switches (OPENCHAT_FAST_FORWARD, OPENCHAT_PACKED_LINEAR,
OPENCHAT_ATTENTION_KERNEL, OPENCHAT_PREFILL_THREAD, OPENCHAT_WIDE_THREADS): one reading of on/off words for all of them."""

from __future__ import annotations

import os

ON = ("1", "true", "on", "yes")
OFF = ("0", "false", "off", "no")


def env_switch(name: str, default: bool) -> bool:
    """The switch `name`: on or off when it says so (any case, spaces ignored), else `default`."""
    value = os.environ.get(name, "").strip().lower()
    if value in ON:
        return True
    if value in OFF:
        return False
    return default
