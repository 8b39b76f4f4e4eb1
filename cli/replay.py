"""``tnrwatch replay <component>``: rebuild a component's output from the log.

Each component registers one coroutine in ``REPLAYERS``; the command dispatches to it. A
replayer takes the settings and returns a process exit code, showing a tqdm progress bar.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable, Coroutine
from typing import Any

from shared.settings import Settings, get_settings

Replayer = Callable[[Settings], Coroutine[Any, Any, int]]

# component -> "module:function" (imported lazily, so one component's imports never slow or
# break another's replay). Each engineer adds their component's line.
REPLAYERS: dict[str, str] = {
    "classifier": "services.classifier.replay:replay_classifier",
    "alerts": "services.alerts.replay:replay_alerts",
    "projections": "services.projections.rebuild:replay_projections",
}


def load_replayer(component: str) -> Replayer:
    module_name, _, function = REPLAYERS[component].partition(":")
    replayer: Replayer = getattr(importlib.import_module(module_name), function)
    return replayer


async def replay(args: argparse.Namespace) -> int:
    return await load_replayer(args.component)(get_settings())


def register(sub: Any) -> None:
    parser = sub.add_parser("replay", help="rebuild a component's output from the log")
    parser.add_argument("component", choices=sorted(REPLAYERS))
    parser.set_defaults(run=replay)
