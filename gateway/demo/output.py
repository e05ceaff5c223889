"""How the demo prints: lines within a 100-column terminal, photos shown as their size
(never their base64), the story wrapped under its `[who]` tag."""

from __future__ import annotations

import textwrap
from typing import Any

WIDTH = 100  # the demo's lines fit a 100-column terminal


def fit(line: str, width: int = WIDTH) -> str:
    """`line`, cut to `width` columns with an ellipsis."""
    return line if len(line) <= width else f"{line[: width - 1]}…"


def say(text: str) -> None:
    """Print a line of the demo's story, wrapped at WIDTH under its `[who]` tag."""
    print(textwrap.fill(text, WIDTH, subsequent_indent=" " * 11), flush=True)


def shown_args(args: dict[str, Any]) -> dict[str, Any]:
    """Command arguments as the demo prints them: photos as their size, not their base64."""

    def jpeg(b64: str) -> str:
        return f"{len(b64) * 3 // 4 / 1000:.1f} kB"

    shown: dict[str, Any] = {}
    for key, value in args.items():
        if key.endswith("_b64") and isinstance(value, str):
            shown[key.removesuffix("_b64")] = f"<{jpeg(value)}>"
        elif key.endswith("_b64") and isinstance(value, list):
            sizes = ", ".join(jpeg(v) for v in value if isinstance(v, str))
            shown[key.removesuffix("_b64")] = f"<{len(value)} photos: {sizes}>"
        elif len(str(value)) > 64:
            shown[key] = f"<{len(str(value))} characters>"
        else:
            shown[key] = value
    return shown
