"""The shape of the code (docs/architecture.md): folders that import only downwards, small modules, no import
circles, the server kept to HTTP/WebSocket, and typed events that metrics and limits subscribe to."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from avatar.config import load_config
from avatar.events import LATENCY_STAGES, ErrorRaised, TurnEnded, TurnStarted, to_wire
from avatar.net.limits import ConnectionGuard
from avatar.net.metrics import ServerMetrics, parse_text_format
from tests.harness import open_harness, wait_for

PACKAGE = Path(__file__).resolve().parent.parent / "avatar"
MAX_LINES = 450


def _modules() -> dict[str, Path]:
    return {".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): path
            for path in PACKAGE.rglob("*.py")}


# The folders, lowest first (docs/architecture.md). A module imports from its own folder and from the folders
# listed for it: never upwards, and never sideways into another entry point.
BASE = {"avatar", "avatar.config", "avatar.errors", "avatar.events", "avatar.faults", "avatar.language"}
LAYERS = {
    "models": set(),
    "face": {"models"},
    "knowledge": set(),
    "media": {"models", "face"},
    "conversation": {"models", "face", "knowledge", "media"},
    "runtime": {"models", "face", "knowledge", "media", "conversation"},
    "net": {"models", "media", "conversation", "runtime"},
    "kiosk": {"media", "conversation", "runtime", "net"},
    "live": {"models", "face", "knowledge", "media", "conversation", "runtime", "net"},
    "tools": {"models", "face", "knowledge", "media", "conversation", "runtime", "net"},
}


def _folder(module: str) -> str:
    """"avatar.net.server" -> "net"; a base module or the command line -> its own name."""
    return "base" if module in BASE else module.split(".")[1]


def _imports(path: Path, module: str, known: set[str], *, deferred: bool = False) -> set[str]:
    """avatar modules imported at module level, or anywhere (functions, TYPE_CHECKING) with ``deferred``."""
    found = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in (ast.walk(tree) if deferred else tree.body):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            # "from pkg import submodule" imports the submodule; "from pkg import name" the module itself.
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def test_folders_import_only_downwards_counting_imports_inside_functions():
    modules = _modules()
    top_level = {name for name in modules if name.count(".") == 1 and modules[name].name != "__init__.py"}
    # Directly in avatar/: only the shared basics and the command line; everything else has its folder.
    assert top_level <= BASE | {"avatar.cli", "avatar.__main__"}, top_level - BASE
    wrong = []
    for name, path in modules.items():
        folder = _folder(name)
        if folder in ("cli", "__main__"):
            continue
        allowed = {"base", folder} | LAYERS.get(folder, set())
        for dep in _imports(path, name, set(modules), deferred=True):
            if _folder(dep) not in allowed:
                wrong.append(f"{name} -> {dep}")
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(wrong))


def test_the_server_knows_no_entry_point():
    """The kiosk and the livestream plug into the server (net.doors.FrontDoor); server.py never names them."""
    source = (PACKAGE / "net" / "server.py").read_text(encoding="utf-8").lower()
    assert "kiosk" not in source and "camera" not in source and "live." not in source


def test_base_modules_import_only_each_other():
    modules = _modules()
    for name in BASE & set(modules):
        assert _imports(modules[name], name, set(modules), deferred=True) <= BASE, name


def test_the_layering_can_fail():
    """The check above sees an upward import made inside a function."""
    source = "def f():\n    from avatar.net.server import AvatarServer\n"
    path = PACKAGE.parent / "tests" / "data" / "_layering_probe.py"
    path.write_text(source, encoding="utf-8")
    try:
        modules = set(_modules())
        assert "avatar.net.server" in _imports(path, "avatar.conversation.probe", modules, deferred=True)
        assert "avatar.net.server" not in _imports(path, "avatar.conversation.probe", modules)
    finally:
        path.unlink()


def test_no_module_is_over_450_lines():
    paths = [*_modules().values(), *(PACKAGE.parent / "tests").glob("*.py")]
    long = {str(path.relative_to(PACKAGE.parent)): n for path in paths
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


# A Han range written out: the bounds of the blocks (U+3400, U+4E00, U+9FFF) as escapes in either case, or
# a range that starts at the character itself ("[一-龥]").
HAN_RANGE = re.compile(r"\\u(?:3400|4e00|9fff)|\\U0000(?:3400|4e00|9fff)|[\u3400\u4e00]-", re.I)


def _han_ranges(source: str) -> int:
    return len(HAN_RANGE.findall(source))


def test_the_cjk_character_class_is_written_once():
    """Chinese is recognised the same way everywhere: only avatar/language.py writes the Han ranges (four
    copies, one of them narrower, had drifted apart)."""
    found = {str(path.relative_to(PACKAGE.parent)): n for path in _modules().values()
             if (n := _han_ranges(path.read_text(encoding="utf-8")))}
    assert list(found) == ["avatar/language.py"], found
    # The check sees the copies that were there: the full class, and the narrower one (no U+4E00 in it).
    assert _han_ranges(r'_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")') == 3
    assert _han_ranges(r'_CJK = re.compile(r"[\u3400-\u9fff]")') == 2
    assert _han_ranges("HAN = '[\u4e00-\u9fa5]'") == 1  # the characters themselves


def test_no_import_circles_and_the_server_does_not_reach_into_the_face():
    modules = _modules()
    graph = {name: _imports(path, name, set(modules)) for name, path in modules.items()}
    # A package importing its own submodules for re-export is not a circle.
    graph = {name: {dep for dep in deps if not (dep.startswith(name + ".") and modules[name].name == "__init__.py")}
             for name, deps in graph.items()}
    state: dict[str, int] = {}
    circles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in graph[node]:
            if state.get(dep) == 1:
                circles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])
    assert not circles, f"import circles: {circles}"
    assert not {dep for dep in graph["avatar.net.server"] if dep.startswith("avatar.face")}


def test_wire_json_comes_from_typed_events_in_one_place():
    ended = TurnEnded(3, "text", "Hello there.", "Hello", True, 2205, {"endpoint": 12.0})
    latency, end = to_wire(ended)
    assert latency["type"] == "latency" and latency["endpoint_ms"] == 12.0
    assert set(latency) == {"type", "turn_id", "source", "knowledge_ms"} | {f"{stage}_ms" for stage in LATENCY_STAGES}
    assert latency["knowledge_ms"] is None  # no knowledge base: null, not 0
    assert end == {"type": "turn_end", "turn_id": 3, "reply": "Hello there.", "heard": "Hello",
                   "interrupted": True, "audio_samples": 2205, "sources": []}
    assert to_wire(ErrorRaised("rate_limited", "slow down", limit="limits.turns_per_minute"))[0]["limit"] == \
        "limits.turns_per_minute"


async def test_metrics_and_limits_receive_typed_events(tmp_path):
    harness = open_harness(tmp_path, heard_everything=True)
    metrics = ServerMetrics()
    guard = ConnectionGuard(load_config(None, {"limits": {"turns_per_minute": 2}}).limits)
    seen = []
    harness.bus.subscribe(metrics.observe)
    harness.bus.subscribe(guard.observe)
    harness.bus.subscribe(lambda event: seen.append(type(event)))
    try:
        harness.session.on_text("Hello?")
        await wait_for(lambda: TurnEnded in seen)
        harness.session.on_text("And again?")
        await wait_for(lambda: seen.count(TurnEnded) == 2)
    finally:
        harness.close()
    assert seen.count(TurnStarted) == 2
    # The limit counted both turns from the typed TurnStarted events: a third is refused.
    assert guard.on_text_turn() is not None and guard.on_text_turn().limit == "limits.turns_per_minute"
    values = parse_text_format(metrics.render())
    assert values['avatar_turns_total{source="text"}'] == 2
    assert values['avatar_stage_latency_seconds_count{stage="llm_first_token"}'] == 2
