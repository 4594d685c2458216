"""An animated GIF of one episode: what a person watches to judge a driving agent.

Each frame: on the left the env's top-down overview (larger than the network's input: road, other
vehicles, the ego in red, the route ahead in green); on the right the four stacked 84x84 frames the
network sees, and below them the action (steer, throttle/brake) as bars, with speed and progress.
Needs an env with `overview()` (the embedded simulator).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

PolicyFn = Callable[[dict[str, np.ndarray]], np.ndarray]

PANEL = 2 * 84 + 4
"""Width of the right panel: the four frames in a 2 x 2 grid."""
HEIGHT = 2 * 88 + 6 + 2 * 28 + 34
"""Least frame height: the four frames, two action bars and two lines of text."""


def record_episode(env: Any, act: PolicyFn, seed: int, path: Path, fps: int = 5, max_steps: int = 10_000,
                   overview_px: int = 256) -> dict[str, Any]:
    """Drive one episode with `act`, write it to `path` (GIF); returns frames, size (w, h) and the outcome."""
    if not hasattr(env, "overview"):
        raise TypeError(f"{type(env).__name__} has no top-down overview(): videos need the embedded simulator")
    obs, info = env.reset(seed=seed)
    frames, total, step, done, action = [], 0.0, 0, False, np.zeros(2, np.float32)
    while True:
        if not done:
            action = np.asarray(act(obs), dtype=np.float32)
        frames.append(_compose(env.overview(overview_px), obs["image"], action, info, step, total, done))
        if done or step >= max_steps:
            break
        obs, r, term, trunc, info = env.step(action)
        total, step, done = total + float(r), step + 1, bool(term or trunc)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0,
                   optimize=False)
    return {"path": str(path), "frames": len(frames), "size": frames[0].size, "steps": step, "return": total,
            "route_completion": float(info.get("route_completion", 0.0)),
            "collision": bool(info.get("collision", False)), "off_road": bool(info.get("off_road", False))}


def _compose(overview: np.ndarray, stack: np.ndarray, action: np.ndarray, info: dict[str, Any], step: int,
             total: float, done: bool) -> Any:
    from PIL import Image, ImageDraw

    side = overview.shape[0]
    canvas = Image.new("RGB", (side + PANEL + 8, max(side, HEIGHT)), (24, 24, 24))
    canvas.paste(Image.fromarray(overview), (0, 0))
    x0 = side + 8
    for k in range(stack.shape[0]):  # oldest first, as the network gets them
        canvas.paste(Image.fromarray(stack[k]).convert("RGB"), (x0 + (k % 2) * 88, (k // 2) * 88))
    draw = ImageDraw.Draw(canvas)
    y = 2 * 88 + 6
    for name, value in (("steer", float(action[0])), ("throttle" if action[1] >= 0 else "brake", float(action[1]))):
        draw.text((x0, y), f"{name} {value:+.2f}", fill=(230, 230, 230))
        mid = x0 + PANEL // 2
        draw.rectangle((x0, y + 14, x0 + PANEL - 1, y + 22), outline=(120, 120, 120))
        end = mid + int(value * (PANEL // 2 - 1))
        draw.rectangle((min(mid, end), y + 15, max(mid, end), y + 21),
                       fill=(90, 160, 240) if name == "steer" else (80, 200, 90) if value >= 0 else (230, 80, 60))
        y += 28
    state = "done" if done else f"step {step}"
    draw.text((x0, y), f"{state}  {info.get('speed', 0.0):.1f} m/s", fill=(230, 230, 230))
    draw.text((x0, y + 14), f"route {info.get('route_completion', 0.0):.0%}  return {total:.1f}",
              fill=(230, 230, 230))
    if done:
        ending = "collision" if info.get("collision") else "off road" if info.get("off_road") else \
            "route complete" if info.get("route_completion", 0.0) >= 1.0 else "time limit"
        draw.text((4, 4), ending, fill=(255, 220, 80))
    return canvas
