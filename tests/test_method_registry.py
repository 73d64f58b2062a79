"""A weights method is one registry entry: a plug-in module found by the CLI, the pipeline and `weights verify`.

tests/plugins/temperature_method.py is docs/design.md's example ("Adding a weights method"), word for word;
importing it is the only change: no mixweight file knows its name.
"""

import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml

from mixweight.cli import main
from mixweight.domain import methods as registry
from mixweight.errors import MixweightError

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "tests" / "plugins" / "temperature_method.py"


@pytest.fixture
def temperature(monkeypatch):
    """The plug-in registered for this test only (the registry is restored afterwards)."""
    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))
    spec = importlib.util.spec_from_file_location("temperature_method", PLUGIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_design_doc_shows_the_plugin_word_for_word():
    design = (REPO / "docs" / "design.md").read_text()
    section = design[design.index("**Adding a weights method**") :]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)[:1]
    assert code.strip() in PLUGIN.read_text()


def test_the_cli_lists_and_runs_a_registered_method(temperature, synth_corpus, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["weights", "--help"])
    assert "temperature" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["weights", "temperature", "--help"])
    assert "--temperature" in capsys.readouterr().out  # its options are flags, from its config class
    out = tmp_path / "w.json"
    main(["weights", "temperature", "--data", synth_corpus, "--out", str(out), "--temperature", "3"])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    artifact = json.loads(out.read_text())
    assert printed["method"] == "temperature" and artifact["method"] == {"name": "temperature", "temperature": 3.0}
    counts = artifact["provenance"]["domain_token_counts"]
    expected = [counts[d] ** (1 / 3) for d in artifact["domains"]]
    assert artifact["weights"] == pytest.approx([e / sum(expected) for e in expected], abs=1e-12)


def test_weights_verify_checks_a_registered_method(temperature, synth_corpus, tmp_path):
    out = tmp_path / "w.json"
    main(["weights", "temperature", "--data", synth_corpus, "--out", str(out), "--temperature", "0.5"])
    assert "temperature weights match" in registry.verify_file(out)
    edited = json.loads(out.read_text())
    edited["weights"] = [1.0] + [0.0] * (len(edited["weights"]) - 1)
    out.write_text(json.dumps(edited))
    with pytest.raises(MixweightError, match="not tokens"):
        registry.verify_file(out)


def test_the_pipeline_runs_a_registered_method_as_a_section(temperature, tiny_spec, tmp_path):
    from mixweight.pipeline import load_pipeline_config, run_pipeline

    config = {
        "data": {"synthetic": {"seed": 0, "tokens_per_domain": 4096, "seq_len": 64}},
        "train": {"model": tiny_spec, "steps": 2, "batch_size": 8, "warmup_steps": 1, "eval_every": 0,
                  "eval_blocks": 2, "progress": False},
        "temperature": {"temperature": 4.0},
        "arms": {"tempered": {"domain_weights": "temperature"}},
        "seeds": [0],
        "progress": False,
    }  # fmt: skip
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    loaded = load_pipeline_config(path)
    assert loaded.section("temperature").temperature == 4.0
    out = tmp_path / "out"
    report = run_pipeline(loaded, out)
    weights = json.loads((out / "weights" / "temperature" / "domain_weights.json").read_text())
    assert weights["method"]["temperature"] == 4.0
    assert (out / "runs" / "tempered-seed0" / "eval.json").is_file() and "tempered" in report["arms"]
    path.write_text(yaml.safe_dump({**config, "temperature": {"temperature": -1}}))
    with pytest.raises(MixweightError, match="'temperature' must be > 0"):
        load_pipeline_config(path)


def test_without_the_plugin_the_name_is_unknown(synth_corpus, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["weights", "temperature", "--data", synth_corpus, "--out", str(tmp_path / "w.json")])
    assert exit_info.value.code == 2 and "invalid choice: 'temperature'" in capsys.readouterr().err
    assert not (tmp_path / "w.json").exists()


def test_installed_plugins_are_loaded_from_their_entry_points(monkeypatch):
    loaded = []

    class Entry:
        name, value = "temperature", "temperature_method"

        def load(self):
            loaded.append(self.name)

    class Broken(Entry):
        def load(self):
            raise ImportError("no module named temperature_method")

    monkeypatch.setattr(registry, "_plugins_loaded", False)
    monkeypatch.setattr(
        "importlib.metadata.entry_points", lambda group: [Entry()] if group == registry.PLUGIN_GROUP else []
    )
    registry.methods()
    registry.methods()
    assert loaded == ["temperature"]  # once
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    monkeypatch.setattr("importlib.metadata.entry_points", lambda group: [Broken()])
    with pytest.raises(MixweightError, match="plug-in 'temperature' \\(temperature_method\\) failed to load"):
        registry.methods()
