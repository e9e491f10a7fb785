"""The README's Python API example runs as written (tiny profile, temporary data root)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def _section_code(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, f"no python example under '## {title}'"
    return blocks[0]


def test_python_api_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ATELIER_HOME", str(tmp_path))
    monkeypatch.delenv("ATELIER_PROFILE", raising=False)
    code = _section_code("Python API")
    assert 'Atelier(profile="tiny")' in code
    namespace: dict = {}
    exec(compile(code, str(README) + ":Python API", "exec"), namespace)
    out = capsys.readouterr().out
    session = namespace["session"]
    refs = [v.ref for v in session.history()]
    assert len(refs) >= 3  # generated, adjusted (from the uploaded path), generated again
    assert re.search(r"^img_[0-9a-f]+ \S+ \d+ \d+$", out, flags=re.M)  # ref, path, width, height
    assert re.search(r"^step \d+/\d+$", out, flags=re.M)  # progress events
    assert "generate_image" in out
    assert all(Path(p).is_relative_to(tmp_path) for p in re.findall(r"^img_\S+ (\S+)", out, flags=re.M))
