"""The loader: model files are executed once under a name of their own, which spawned process pools import too."""

from __future__ import annotations

import pickle
import textwrap
from pathlib import Path

import httpx
import pytest

from batchery import loader
from batchery.testing import running_server

PIPELINES = """
from pathlib import Path

from batchery.pipeline import CpuStep, Sequential

with Path(__file__).with_suffix(".runs").open("a") as runs:  # one line per execution of this file
    runs.write("ran\\n")


def reverse(text):
    return str(text)[::-1]


Reverse = Sequential("reverse", [CpuStep(reverse, kind="process", workers=1)])
Twice = Sequential("twice", [CpuStep(reverse, kind="process", workers=1), CpuStep(reverse, kind="thread")])
"""


def write(path: Path, source: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


def test_a_file_is_executed_once_for_all_its_targets(tmp_path: Path) -> None:
    source = write(tmp_path / "pipes.py", PIPELINES)
    reverse, twice, fn = (loader.load_model(f"{source}:{name}") for name in ("Reverse", "Twice", "reverse"))
    assert (tmp_path / "pipes.runs").read_text() == "ran\n"
    assert reverse.steps[0].fn is twice.steps[0].fn is fn
    assert pickle.loads(pickle.dumps(fn)) is fn


def test_files_with_one_stem_get_modules_of_their_own(tmp_path: Path) -> None:
    first = write(tmp_path / "a" / "model.py", "def which():\n    return 'a'\n")
    second = write(tmp_path / "b" / "model.py", "def which():\n    return 'b'\n")
    which_a, which_b = loader.load_model(f"{first}:which"), loader.load_model(f"{second}:which")
    assert (which_a(), which_b()) == ("a", "b")
    assert pickle.loads(pickle.dumps(which_a)) is which_a  # not shadowed by b/model.py


def test_a_reload_executes_the_file_again_and_older_objects_still_pickle(tmp_path: Path) -> None:
    source = write(tmp_path / "pipes.py", PIPELINES)
    old = loader.load_model(f"{source}:reverse")
    new = loader.load_model(f"{source}:reverse", fresh=True)
    assert (tmp_path / "pipes.runs").read_text() == "ran\nran\n"
    assert old is not new
    assert old.__module__ != new.__module__
    assert pickle.loads(pickle.dumps(old)) is old
    assert pickle.loads(pickle.dumps(new)) is new


@pytest.mark.slow
async def test_process_steps_defined_in_the_served_file_over_http(tmp_path: Path) -> None:
    source = write(tmp_path / "single.py", PIPELINES)
    pipelines = [loader.served(f"{source}:Reverse"), loader.served(f"{source}:Twice")]
    async with running_server(pipelines) as server, httpx.AsyncClient(base_url=server.url, timeout=60) as http:
        reversed_ = await http.post("/v1/models/reverse/predict", json={"inputs": ["abc", 12]})
        assert reversed_.status_code == 200, reversed_.text
        assert reversed_.json()["outputs"] == ["cba", "21"]
        twice = await http.post("/v1/models/twice/predict", json={"input": "abc"})
        assert twice.status_code == 200, twice.text
        assert twice.json()["output"] == "abc"


PROCESS_MODEL = """
import batchery
from batchery.workers.process import ProcessModel


class Shout(batchery.Model):
    name = "shout"
    workers = 1
    example = "warm"

    def predict(self, batch):
        return [text.upper() + "!" for text in batch]


Isolated = ProcessModel(Shout())
"""


async def test_a_process_model_whose_class_is_in_the_served_file_over_http(tmp_path: Path) -> None:
    source = write(tmp_path / "isolated.py", PROCESS_MODEL)
    async with (
        running_server([loader.served(f"{source}:Isolated")]) as server,
        httpx.AsyncClient(base_url=server.url, timeout=60) as http,
    ):
        answer = await http.post("/v1/models/shout/predict", json={"input": "hi"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["output"] == "HI!"


def test_a_served_file_imports_the_modules_beside_it_and_a_module_target_is_found_in_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "shouting_helpers_for_batchery.py").write_text("def shout(text):\n    return text.upper()\n")
    (tmp_path / "app.py").write_text(
        "from shouting_helpers_for_batchery import shout\n\n\nclass M:\n    def predict(self, batch):\n"
        "        return [shout(x) for x in batch]\n"
    )
    assert loader.load_model(f"{tmp_path / 'app.py'}:M").predict(["hi"]) == ["HI"]
    package = tmp_path / "elsewhere" / "servedpkg_for_batchery"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "model.py").write_text("class M:\n    def predict(self, batch):\n        return list(batch)\n")
    monkeypatch.chdir(package.parent)  # `batchery serve servedpkg_for_batchery.model:M` run from there
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p not in ("", ".")])
    assert loader.load_model("servedpkg_for_batchery.model:M").predict([1]) == [1]
