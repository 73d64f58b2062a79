"""An online mixer is one registered class: a plug-in module trained with, resumed, verified and run as a pipeline arm.

tests/plugins/loss_share_mixer.py is docs/design.md's example ("Adding an online mixer"), word for word; importing
it is the only change: no mixweight file knows its name.
"""

import importlib.util
import json
import re
from pathlib import Path

import pytest

from mixweight.cli import main
from mixweight.domain.methods import verify_file
from mixweight.errors import MixweightError
from mixweight.train import mixers as registry

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "tests" / "plugins" / "loss_share_mixer.py"


@pytest.fixture
def loss_share(monkeypatch):
    """The plug-in registered for this test only (the registry is restored afterwards)."""
    registry.mixers()  # the built-in ones and installed plug-ins, loaded once
    monkeypatch.setattr(registry, "MIXERS", dict(registry.MIXERS))
    spec = importlib.util.spec_from_file_location("loss_share_mixer", PLUGIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _train(corpus, spec, out, *extra, steps=6):
    args = f"--steps {steps} --batch-size 8 --lr 3e-3 --warmup-steps 1 --eval-every 0 --eval-blocks 2"
    args += " --checkpoint-every 3 --log-every 1 --no-progress --domain-weights online:loss_share --mixing.every 2"
    return ["train", "--data", corpus, "--model", spec, "--out", str(out), *args.split(), *extra]


def test_the_design_doc_shows_the_plugin_word_for_word():
    design = (REPO / "docs" / "design.md").read_text()
    section = design[design.index("**Adding an online mixer**") :]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)[:1]
    assert code.strip() in PLUGIN.read_text()


def test_a_registered_mixer_trains_resumes_and_verifies(loss_share, synth_corpus, tiny_spec, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    power = ("--mixing.loss-share.power", "2")  # the plug-in's own option: a flag made from its Options class
    main(_train(synth_corpus, tiny_spec, straight, *power))
    artifact = json.loads((straight / "domain_weights.json").read_text())
    assert artifact["method"]["name"] == "online:loss_share" and [e["step"] for e in artifact["trajectory"]] == [
        0,
        2,
        4,
    ]
    measured = [e for e in artifact["trajectory"][1:] if min(e["signal"]) > 0]
    assert measured  # a phase chosen once every domain had a loss samples them in proportion to it
    for entry in measured:  # in proportion to the mean loss squared: the option reached the mixer
        squares = [s**2 for s in entry["signal"]]
        assert entry["weights"] == pytest.approx([s / sum(squares) for s in squares], rel=1e-12)
    assert artifact["method"]["power"] == 2.0
    assert artifact["trajectory"][2]["weights"] != artifact["trajectory"][1]["weights"]
    records = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert {r["online_mixing"]["method"] for r in records if "online_mixing" in r} == {"loss_share"}
    assert "recomputed 3 online:loss_share phases" in verify_file(straight / "domain_weights.json")

    observe = loss_share.LossShareMixer.observe

    def interrupted(self, step, result, micro_batches):
        if step == 4:  # checkpoint step-3 is written, inside the phase that began at 2
            raise KeyboardInterrupt
        observe(self, step, result, micro_batches)

    loss_share.LossShareMixer.observe = interrupted
    with pytest.raises(KeyboardInterrupt):
        main(_train(synth_corpus, tiny_spec, resumed, *power))
    loss_share.LossShareMixer.observe = observe
    main([*_train(synth_corpus, tiny_spec, resumed, *power), "--resume"])
    assert (resumed / "domain_weights.json").read_text() == (straight / "domain_weights.json").read_text()

    edited = tmp_path / "edited.json"
    artifact["trajectory"][2]["weights"] = artifact["trajectory"][1]["weights"]
    edited.write_text(json.dumps(artifact))
    with pytest.raises(
        MixweightError, match="does not replay: first deviation above the tolerance 1e-06 at phase at step 4"
    ):
        verify_file(edited)


def test_the_pipeline_runs_a_registered_mixer_as_an_arm(loss_share, tiny_spec, tmp_path):
    from mixweight.pipeline import load_pipeline_config, run_pipeline

    config = {
        "data": {"synthetic": {"seed": 0, "tokens_per_domain": 4096, "seq_len": 64}},
        "train": {"model": tiny_spec, "steps": 4, "batch_size": 8, "warmup_steps": 1, "eval_every": 0,
                  "eval_blocks": 2, "progress": False},
        "arms": {"uniform": {"domain_weights": "uniform"},
                 "shared": {"domain_weights": "online:loss_share", "mixing": {"every": 2, "loss_share": {"power": 3}}}},
        "seeds": [0],
        "progress": False,
    }  # fmt: skip
    import yaml

    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    report = run_pipeline(load_pipeline_config(path), out)
    weights = json.loads((out / "runs" / "shared-seed0" / "domain_weights.json").read_text())
    assert weights["method"]["name"] == "online:loss_share" and "shared" in report["arms"]
    assert weights["method"]["power"] == 3.0  # the arm's block reached the plug-in


def test_without_the_plugin_the_name_is_unknown_and_nothing_is_written(synth_corpus, tiny_spec, tmp_path, cli_refuses):
    line = cli_refuses(_train(synth_corpus, tiny_spec, tmp_path / "run"))
    assert "unknown online method" in line and "online:odm" in line and "online:doremi" in line
    assert not (tmp_path / "run").exists()


def test_installed_mixers_are_loaded_from_their_entry_points(monkeypatch):
    loaded = []

    class Entry:
        name, value = "loss_share", "loss_share_mixer"

        def load(self):
            loaded.append(self.name)

    class Broken(Entry):
        def load(self):
            raise ImportError("no module named loss_share_mixer")

    monkeypatch.setattr(registry, "_loaded", False)
    monkeypatch.setattr(
        "importlib.metadata.entry_points", lambda group: [Entry()] if group == registry.PLUGIN_GROUP else []
    )
    registry.mixers()
    registry.mixers()
    assert loaded == ["loss_share"]  # once
    monkeypatch.setattr(registry, "_loaded", False)
    monkeypatch.setattr("importlib.metadata.entry_points", lambda group: [Broken()])
    with pytest.raises(MixweightError, match="online mixer plug-in 'loss_share' \\(loss_share_mixer\\) failed to load"):
        registry.mixers()


def test_a_static_run_has_a_mixer_that_decides_nothing():
    static = registry.StaticMixer()
    assert not static.phase_due(5) and static.probe is None and static.step_metrics() == {}
    assert static.checkpoint_state() == {} and static.resume({"step": 3}, 1) == []
    with pytest.raises(NotImplementedError):
        static.start_phase(4)


def test_a_mixer_may_not_take_the_name_of_a_mixing_key():
    class Every(registry.OnlineMixer):
        name = "every"

    with pytest.raises(ValueError, match="'every' names a key of the mixing block"):
        registry.register_mixer(Every)
