"""`domain_weights` is parsed once into a MixtureSpec: its kind decided from the text, the text given back by str."""

import pytest

from mixweight.sampling.spec import MixtureSpec
from mixweight.train.config import TrainConfig


@pytest.mark.parametrize(
    "text, kind, name",
    [
        ("natural", "named", "natural"),
        ("uniform", "named", "uniform"),
        ("online:odm", "online", "odm"),
        ("online:loss_share", "online", "loss_share"),  # any name: the registry judges it where the run starts
        ("doremi", "method", "doremi"),  # a pipeline arm naming a weights section
        ("w/domain_weights.json", "file", "w/domain_weights.json"),
        ("schedule.yaml", "file", "schedule.yaml"),
    ],
)
def test_each_form_gets_its_kind_and_gives_its_text_back(text, kind, name):
    spec = MixtureSpec.parse(text, methods=("doremi", "doge", "regmix"))
    assert (spec.kind, spec.name, str(spec)) == (kind, name, text)
    assert spec.online == (kind == "online")


def test_outside_a_pipeline_a_method_name_is_a_file_path():
    assert MixtureSpec.parse("doremi").kind == "file"


def test_a_train_config_parses_its_domain_weights():
    assert TrainConfig(domain_weights="online:doremi").mixture == MixtureSpec("online", "doremi")
    assert TrainConfig().mixture == MixtureSpec("named", "natural")
